"""Scoring the guesses of a LocalMixer layer by layer, under each way of scaling them."""
import torch
from torch import Tensor

from ..core.mixer import LocalMixer
from ..core.probes import probe

# --- scoring the guesses of a LocalMixer, layer by layer ------------------------------------

# Ways of grouping the local losses and the JVPs that scale a guess: Ren et al.'s patch-group
# slices with one JVP (what training uses), one loss per block with one JVP (each layer's
# guess scaled by its block's total derivative), and the slices with one JVP per layer.
JVP_WAYS = {
    "patch-group losses, one JVP": dict(split_losses=True, mode="global"),
    "one loss per block, one JVP": dict(split_losses=False, mode="global"),
    "patch-group losses, a JVP per layer": dict(split_losses=True, mode="per_layer"),
}


def layer_names(model: LocalMixer) -> list[str]:
    """A name per layer of ``model.layers``, kind and block: "embed 1", "token 1", ..."""
    return [f"{model._kind(i)} {max(i - 1, 0) // 3 + 1}" for i in range(len(model.layers))]


def local_guess_cosines(model: LocalMixer, x: Tensor, targets: Tensor, method: str, *,
                        split_losses: bool = True, mode: str = "global", repeats: int = 10,
                        seed: int = 0) -> dict[str, float]:
    """Per layer (by `layer_names`), the mean cosine similarity of ``repeats`` guesses of
    ``method`` with the true local gradient on one batch, weight and bias together, without
    stepping (`gradguess.core.probes.probe`, guesses from a generator seeded ``seed``).

    ``split_losses`` and ``mode`` pick the way the guesses are scaled (`JVP_WAYS`): the
    model's own ``split_losses`` is restored afterwards."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    before, model.split_losses = model.split_losses, split_losses
    try:
        scores = probe(model, x, targets, method, generator, mode=mode, repeats=repeats)
    finally:
        model.split_losses = before
    return dict(zip(layer_names(model), scores["layer_cosines"]))
