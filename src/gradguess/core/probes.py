"""How good a method's guess is at the current weights, without stepping: its cosine
with the true gradient, whole and per layer, and every layer's effective rank."""
import torch

from .estimators import backprop_gradient, guessed_gradient
from .metrics import cosine_similarity, effective_rank, layer_cosines


def probe(model, x, targets, method: str, generator: torch.Generator, mode: str = "global",
          repeats: int = 1, **options) -> dict:
    """Score ``method``'s guess at the current weights on a fixed batch, without stepping.

    Returns its ``cosine`` with the true gradient and its ``layer_cosines`` (one per layer
    of ``model.layers``), each the mean over ``repeats`` independent guesses, and the
    ``effective_rank`` of every layer's weight matrix.
    """
    _, true = backprop_gradient(model, x, targets)
    cosines, per_layer = [], []
    for _ in range(repeats):
        guess = guessed_gradient(model, x, targets, method, mode, generator, **options)
        cosines.append(cosine_similarity(guess, true))
        per_layer.append(layer_cosines(model, guess, true))
    model.zero_grad(set_to_none=True)
    return {"cosine": sum(cosines) / repeats,
            "layer_cosines": [sum(c) / repeats for c in zip(*per_layer)],
            "effective_rank": [effective_rank(layer.weight) for layer in model.layers]}
