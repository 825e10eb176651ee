"""Networks trained by plain backprop before a chapter measures them: the backbone and the
tasks the prompt-tuning chapter tunes prompts on, and the trained MLPs and LocalMixers whose
guesses the bias, features and LocalMixer chapters score. Each is a run function a chapter
caches, so that no chapter trains a network outside the run store."""
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..core.data import as_rgb, inverted, load_image_task, pad_images
from ..core.mixer import LocalMixer
from ..core.models import MLP
from .reference import batches, start_run, train
from .stack import accuracy


def backprop_snapshots(model, data, *, epochs, **train_args) -> list[dict]:
    """``model``'s weights after each number of epochs in ``epochs`` (0: as built) of one
    backprop run (`reference.train`, ``train_args`` its keywords), copied to the CPU."""
    wanted, seen = sorted(set(epochs)), []

    def snapshot(m):
        if len(seen) in wanted:
            states[len(seen)] = {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}
        seen.append(None)
        return {}

    states = {}
    train(model, data, "backprop", epochs=max(wanted), on_epoch=snapshot, progress=False,
          **train_args)
    return [states[e] for e in epochs]


def mlp_snapshots(data, *, depth: int, width: int, epochs, lr: float, seed: int = 0,
                  batch_size: int = 128) -> list[dict]:
    """An `MLP` initialised from ``seed`` and trained by backprop with AdamW: its state dict
    after each number of ``epochs`` (`backprop_snapshots`)."""
    torch.manual_seed(seed)
    model = MLP(data.in_features, width, depth, data.num_classes).to(data.train_x.device)
    return backprop_snapshots(model, data, epochs=epochs, lr=lr, seed=seed,
                              batch_size=batch_size)


def mixer_snapshots(data, *, epochs, lr: float, batch_size: int = 128, seed: int = 0,
                    local: bool = True, **architecture) -> list[dict]:
    """A `LocalMixer` (``architecture`` its keywords) initialised from ``seed`` and trained by
    backprop (local losses where ``local``) with AdamW: its state dict after each number of
    ``epochs``."""
    torch.manual_seed(seed)
    model = LocalMixer(data.train_x.shape[1], data.num_classes, local=local, **architecture)
    return backprop_snapshots(model.to(data.train_x.device), data, epochs=epochs, lr=lr,
                              seed=seed, batch_size=batch_size)


def train_classifier(model, data, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0, progress: bool = True) -> dict:
    """Plain backprop with AdamW for any torch classifier ``model(x) -> logits`` (the
    backbone the prompt-tuning chapter pre-trains). Returns per-epoch ``test_acc``."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    opt, order_rng, _ = start_run(model, data, batch_size, "adamw", lr, 0.0, seed)
    history = {"test_acc": []}
    n = len(data.train_y)
    for _ in tqdm(range(epochs), disable=not progress, leave=False, desc="pre-training"):
        model.train()
        for idx in batches(n, batch_size, order_rng, data.train_x.device):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        model.eval()
        history["test_acc"].append(accuracy(model, data.test_x, data.test_y, batch_size=512))
    return history


def pretrain_vit(data, *, epochs: int, lr: float = 1e-3, seed: int = 0,
                 **architecture) -> dict:
    """A small torchvision ViT (`gradguess.core.prompts.small_vit`, ``architecture`` its keywords)
    pre-trained from ``seed`` by `train_classifier`: its state dict, with the test accuracy
    after each epoch under ``"test_acc"`` (a tensor)."""
    from ..core.prompts import small_vit  # torchvision, only here

    torch.manual_seed(seed)
    vit = small_vit(**architecture).to(data.train_x.device)
    history = train_classifier(vit, data, epochs=epochs, lr=lr, seed=seed, progress=False)
    return {**vit.state_dict(), "test_acc": torch.tensor(history["test_acc"])}


def small_backbone(state: dict, device, **architecture):
    """The small ViT of `pretrain_vit`'s ``state`` (``architecture`` its keywords), frozen."""
    from ..core.prompts import small_vit  # torchvision, only here

    vit = small_vit(**architecture).to(device)
    vit.load_state_dict(state)
    return vit.requires_grad_(False).eval()


def transfer_tasks(dataset: str, size: int, load) -> dict:
    """The small setting's tasks for a backbone pre-trained on ``dataset`` at ``size`` pixels:
    the other of MNIST and Fashion-MNIST, and ``dataset`` with inverted contrast, as RGB and
    padded to ``size``. ``load(name)`` gives a dataset (a chapter's `load`, on other images
    than pre-training's)."""
    other = "fashion-mnist" if dataset != "fashion-mnist" else "mnist"
    tasks = {}
    for name, task in [(other, load(other)), (f"{dataset}-inverted", inverted(load(dataset)))]:
        small = task.train_x.shape[-1] < size
        tasks[name] = as_rgb(pad_images(task, size) if small else task)
    return tasks


def paper_setting(weights, task_paths: dict | None, device):
    """The paper's setting: ViT-B/16 from torchvision's ``weights`` file, frozen, and the
    image-folder tasks ``task_paths`` ({"cub-200": path, ...}). Raises FileNotFoundError
    naming what is missing."""
    from ..core.prompts import load_vit_b16  # torchvision, only here

    backbone = load_vit_b16(weights).to(device).requires_grad_(False).eval()
    if not task_paths:
        raise FileNotFoundError("paper_tasks names no task: give {name: path} for "
                                "cub-200, stanford-cars, stanford-dogs")
    tasks = {name: load_image_task(name, path, device=device)
             for name, path in task_paths.items()}
    return backbone, tasks, f"ViT-B/16 ({Path(weights).name})"
