"""One training loop for every method, backprop included, and guess quality along backprop."""
import math
import time

import torch
from tqdm import tqdm  # plain text bars: no widgets in executed notebooks

from .estimators import (backprop_gradient, check_mode, estimate_gradient, get_method,
                         guessed_gradient)
from .metrics import cosine_similarity, layer_cosines, one_step_effectiveness
from .models import MLP

OPTIMIZERS = ("adamw", "sgd", "sgd_momentum", "stable_adamw")


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW, SGD without and with (heavy-ball) momentum, or StableAdamW (torch-optimi)."""
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "stable_adamw":
        from optimi import StableAdamW  # Wortsman et al. 2023, as maintained in torch-optimi
        params = list(params)
        on_gpu = all(p.is_cuda for p in params)  # optimi's Triton kernels need a GPU
        return StableAdamW(params, lr=lr, weight_decay=weight_decay,
                           triton=None if on_gpu else False)
    raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 4096) -> float:
    correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def _batches(n: int, batch_size: int, generator: torch.Generator, device):
    order = torch.randperm(n, generator=generator).to(device)
    for i in range(0, n - batch_size + 1, batch_size):  # drop the ragged last batch
        yield order[i:i + batch_size]


def _check_batch_size(batch_size: int, n: int) -> None:
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in 1..{n} (the training set), "
                         f"got {batch_size!r}")


def train(model, data, method: str = "w_transpose", *, epochs: int, batch_size: int = 128,
          optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
          mode: str = "global", seed: int = 0, progress: bool = True,
          method_options: dict | None = None) -> dict:
    """Train ``model`` on ``data`` (a `gradguess.data.Dataset` on the model's device).

    Every step draws a batch, writes the method's gradient into ``.grad`` and steps the
    optimizer. ``seed`` fixes the batch order and the guesses (initialise the model with
    ``torch.manual_seed`` before building it). A non-finite loss or weight ends the run:
    the result records ``diverged=True`` and the step, instead of raising.

    Returns a dict with per-epoch ``train_acc``, ``test_acc``, ``train_loss`` (mean over
    the epoch's steps), ``diverged``, ``diverged_at_step``, ``steps`` and ``seconds``.
    """
    get_method(method)
    check_mode(mode)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    n = len(data.train_y)
    _check_batch_size(batch_size, n)
    device = data.train_x.device
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    order_rng = torch.Generator().manual_seed(seed)
    guess_rng = torch.Generator(device=device).manual_seed(seed + 1)
    history = {"train_acc": [], "test_acc": [], "train_loss": [], "diverged": False,
               "diverged_at_step": None, "steps": 0}
    start = time.perf_counter()
    bar = tqdm(total=epochs * (n // batch_size), disable=not progress, leave=False,
               desc=f"{method} {optimizer} lr={lr:g}")
    for _ in range(epochs):
        losses = []
        for idx in _batches(n, batch_size, order_rng, device):
            loss = estimate_gradient(model, data.train_x[idx], data.train_y[idx], method, mode,
                                     guess_rng, **(method_options or {}))
            opt.step()
            history["steps"] += 1
            bar.update()
            if not math.isfinite(float(loss)) or not all(
                    torch.isfinite(p).all() for p in model.parameters()):
                history["diverged"], history["diverged_at_step"] = True, history["steps"]
                break
            losses.append(float(loss))
        if history["diverged"]:
            break
        history["train_loss"].append(sum(losses) / max(len(losses), 1))
        history["train_acc"].append(accuracy(model, data.train_x, data.train_y))
        history["test_acc"].append(accuracy(model, data.test_x, data.test_y))
        bar.set_postfix(train=f"{history['train_acc'][-1]:.3f}",
                        test=f"{history['test_acc'][-1]:.3f}")
    bar.close()
    history["seconds"] = time.perf_counter() - start
    return history


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
    n = len(data.train_y)
    _check_batch_size(batch_size, n)
    device = data.train_x.device
    opt = make_optimizer(optimizer, model.parameters(), lr)
    order_rng = torch.Generator().manual_seed(seed)
    guess_rng = torch.Generator(device=device).manual_seed(seed + 1)
    options = method_options or {}
    scores = {m: {"cosine": [], "layer_cosines": [], "effectiveness": [], "effectiveness_raw": []}
              for m in methods}
    batches = iter(())
    for _ in tqdm(range(steps), disable=not progress, leave=False, desc=f"along backprop ({mode})"):
        idx = next(batches, None)
        if idx is None:
            batches = _batches(n, batch_size, order_rng, device)
            idx = next(batches)
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



def train_mlp(data, *, depth: int, width: int, method: str, seed: int = 0, **options) -> dict:
    """One run of a grid: an MLP initialised from ``seed``, trained by `train` (no progress
    bar). ``options`` are `train`'s keywords. Returns `train`'s JSON-serialisable history."""
    torch.manual_seed(seed)
    model = MLP(data.in_features, width, depth, data.num_classes).to(data.train_x.device)
    return train(model, data, method, seed=seed, progress=False, **options)
