"""Every seeded generator of a run, in one place: a run of seed s draws its batch order from s,
its guesses from s + 1, its augmentation from s + 2, its prompt-cosine probes from s + 3 and
its MLP probes from s + 1000 (its initialisation: ``torch.manual_seed(s)`` before its model is
built). The single runs and the stacks draw from these, so a replicate repeats its run."""
import torch


def batch_order(seed: int) -> torch.Generator:
    """The order of the training examples, epoch after epoch: on the CPU, whatever the device."""
    return torch.Generator().manual_seed(seed)


def guesses(seed: int, device) -> torch.Generator:
    """The method's guesses, on the data's device."""
    return torch.Generator(device=device).manual_seed(seed + 1)


def augmentation(seed: int, device) -> torch.Generator:
    """Random crops and flips of the training batches."""
    return torch.Generator(device=device).manual_seed(seed + 2)


def prompt_probes(seed: int, device) -> torch.Generator:
    """The guesses a prompt-tuning run's cosine observations draw."""
    return torch.Generator(device=device).manual_seed(seed + 3)


def mlp_probes(seed: int, device) -> torch.Generator:
    """The guesses an MLP run's probes (`core.probes.probe`) draw."""
    return torch.Generator(device=device).manual_seed(seed + 1000)
