"""Guess quality along backprop (Fig. 1): every method's guess scored against the true gradient
while a network trains by backprop."""
from tqdm import tqdm

from ..core.estimators import backprop_gradient, check_mode, guessed_gradient
from ..core.methods import get_method
from ..core.metrics import cosine_similarity, layer_cosines, one_step_effectiveness
from ..engine.reference import endless_batches, start_run


def guess_quality_along_backprop(model, data, methods, *, steps: int, batch_size: int = 128,
                                 lr: float = 1e-3, optimizer: str = "adamw",
                                 mode: str = "global", seed: int = 0,
                                 step_sizes=None, progress: bool = True,
                                 method_options: dict | None = None) -> dict:
    """Score each method's guess against the true gradient while training by backprop (Fig. 1).

    At each of ``steps`` batches: the true gradient, then every method's guess on the same
    batch and weights: its cosine similarity (whole network and per layer) and, if
    ``step_sizes`` is given, its one-step effectiveness relative to backprop, both with the
    guess in directional-descent form ("effectiveness") and at the scale of ``.grad``
    ("effectiveness_raw"). Then one backprop step. ``method_options`` maps a method to the
    options of its guess.

    Returns ``{method: {"cosine": [...], "layer_cosines": [[...], ...],
    "effectiveness": [...], "effectiveness_raw": [...]}}``.
    """
    for m in methods:
        get_method(m)
    check_mode(mode)
    opt, order_rng, guess_rng = start_run(model, data, batch_size, optimizer, lr, 0.0, seed)
    order = endless_batches(len(data.train_y), batch_size, order_rng, data.train_x.device)
    options = method_options or {}
    scores = {m: {"cosine": [], "layer_cosines": [], "effectiveness": [], "effectiveness_raw": []}
              for m in methods}
    for _ in tqdm(range(steps), disable=not progress, leave=False, desc=f"along backprop ({mode})"):
        idx = next(order)
        x, y = data.train_x[idx], data.train_y[idx]
        _, true = backprop_gradient(model, x, y)
        for m in methods:
            guess = guessed_gradient(model, x, y, m, mode, guess_rng, **options.get(m, {}))
            scores[m]["cosine"].append(cosine_similarity(guess, true))
            scores[m]["layer_cosines"].append(layer_cosines(model, guess, true))
            if step_sizes is not None:
                for key, unit in (("effectiveness", True), ("effectiveness_raw", False)):
                    scores[m][key].append(one_step_effectiveness(model, x, y, guess, true,
                                                                 step_sizes, unit))
        for p, g in zip((p for p in model.parameters() if p.requires_grad), true):
            p.grad = g
        opt.step()
    return scores
