"""The reference loop: an ordinary module stepped one run at a time by the reference estimators
(`core.estimators`) and torch's own optimizers; what the stacked engine (`stack`) is checked
against, and what runs the methods and options the stack does not."""
import math
import time

import torch
from tqdm import tqdm  # plain text bars: no widgets in executed notebooks

from ..core.data import FLIPPABLE, random_crop_flip
from ..core.estimators import check_mode, gradient_writer, resolve_estimator
from ..core.methods import get_method
from ..core.optimizers import make_optimizer
from . import seeds
from .stack import accuracy


def batches(n: int, batch_size: int, generator: torch.Generator, device):
    order = torch.randperm(n, generator=generator).to(device)
    for i in range(0, n - batch_size + 1, batch_size):  # drop the ragged last batch
        yield order[i:i + batch_size]


def endless_batches(n: int, batch_size: int, generator: torch.Generator, device):
    """Batches of `batches`, epoch after epoch, for loops counted in steps."""
    while True:
        yield from batches(n, batch_size, generator, device)


def start_run(model, data, batch_size: int, optimizer: str, lr: float, weight_decay: float,
           seed: int):
    """What every loop begins with: checks, the optimizer, and the two seeded generators
    (batch order on the CPU; guesses on the data's device)."""
    n = len(data.train_y)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in 1..{n} (the training set), "
                         f"got {batch_size!r}")
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    return opt, seeds.batch_order(seed), seeds.guesses(seed, data.train_x.device)


def train(model, data, method: str = "w_transpose", *, epochs: int, batch_size: int = 128,
          optimizer: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
          mode: str = "global", seed: int = 0, progress: bool = True,
          method_options: dict | None = None, on_epoch=None, estimator: str = "auto",
          augment: bool = False) -> dict:
    """Train ``model`` on ``data`` (a `gradguess.core.data.Dataset` on the model's device).

    Every step draws a batch, writes the method's gradient into ``.grad`` and steps the
    optimizer. ``seed`` fixes the batch order and the guesses (initialise the model with
    ``torch.manual_seed`` before building it). A non-finite loss or weight ends the run:
    the result records ``diverged=True`` and the step, instead of raising.

    Returns a dict with per-epoch ``train_acc``, ``test_acc``, ``train_loss`` (mean over
    the epoch's steps), ``diverged``, ``diverged_at_step``, ``steps`` and ``seconds``.
    ``on_epoch(model) -> dict``, if given, is called before the first epoch and after each
    one; its values are appended to the history under its keys (e.g. `probes.probe`'s scores).
    ``estimator`` is one of `estimators.ESTIMATORS` (backprop ignores it); the history records the one
    used. ``augment``: random crops (padding 4) and, for datasets in `data.FLIPPABLE`, mirror
    images of every training batch, drawn from their own seeded generator.
    """
    get_method(method)
    check_mode(mode)
    estimator = resolve_estimator(estimator, model, method, mode, method_options or {})
    step = gradient_writer(method, mode, estimator)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    opt, order_rng, guess_rng = start_run(model, data, batch_size, optimizer, lr, weight_decay,
                                          seed)
    n, device = len(data.train_y), data.train_x.device
    augment_rng = seeds.augmentation(seed, device)
    flip = data.name in FLIPPABLE
    history = {"train_acc": [], "test_acc": [], "train_loss": [], "diverged": False,
               "diverged_at_step": None, "steps": 0, "estimator": estimator}
    start = time.perf_counter()
    bar = tqdm(total=epochs * (n // batch_size), disable=not progress, leave=False,
               desc=f"{method} {optimizer} lr={lr:g}")

    def observe():
        for key, value in (on_epoch(model) if on_epoch else {}).items():
            history.setdefault(key, []).append(value)

    observe()
    for _ in range(epochs):
        losses = []
        for idx in batches(n, batch_size, order_rng, device):
            x = data.train_x[idx]
            if augment:
                x = random_crop_flip(x, augment_rng, padding=4, flip=flip)
            loss = step(model, x, data.train_y[idx], guess_rng, **(method_options or {}))
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
        observe()
        bar.set_postfix(train=f"{history['train_acc'][-1]:.3f}",
                        test=f"{history['test_acc'][-1]:.3f}")
    bar.close()
    history["seconds"] = time.perf_counter() - start
    return history


def train_prompts(model, data, method: str, *, steps: int, eval_every: int,
                  batch_size: int = 64, lr: float = 1e-2, optimizer: str = "adamw",
                  seed: int = 0, cosine_repeats: int = 4, progress: bool = True) -> dict:
    """Prompt-tune a `gradguess.core.prompts.PromptedViT` for ``steps`` batches (Fig. 9).

    Every ``eval_every`` steps (and before the first) the history records the test accuracy
    and the cosine similarity of the method's guess with the true prompt gradient on a fixed
    training batch (mean of ``cosine_repeats`` guesses; 1.0 for backprop). A non-finite loss
    ends the run with ``diverged=True``.
    """
    from ..core.prompts import estimate_prompt_gradient, prompt_cosine  # torchvision, only here

    if not isinstance(steps, int) or steps < 1 or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"steps and eval_every must be integers >= 1, got {steps!r}, {eval_every!r}")
    opt, order_rng, guess_rng = start_run(model, data, batch_size, optimizer, lr, 0.0, seed)
    probe_rng = seeds.prompt_probes(seed, data.train_x.device)
    fixed_x, fixed_y = data.train_x[:batch_size], data.train_y[:batch_size]
    history = {"step": [], "test_acc": [], "cosine": [], "train_loss": [], "diverged": False}
    order = endless_batches(len(data.train_y), batch_size, order_rng, data.train_x.device)
    start = time.perf_counter()

    def observe(step):
        history["step"].append(step)
        history["test_acc"].append(accuracy(model, data.test_x, data.test_y, batch_size=512))
        space = get_method(method).space  # backprop's cosine is 1, the baseline guesses nothing
        history["cosine"].append(1.0 if space == "exact" else 0.0 if space == "none" else
                                 prompt_cosine(model, fixed_x, fixed_y, method, probe_rng,
                                               cosine_repeats))

    observe(0)
    for step in tqdm(range(1, steps + 1), disable=not progress, leave=False, desc=f"prompts {method}"):
        idx = next(order)
        loss = estimate_prompt_gradient(model, data.train_x[idx], data.train_y[idx], method, guess_rng)
        opt.step()
        if not math.isfinite(float(loss)):
            history["diverged"] = True
            break
        history["train_loss"].append(float(loss))
        if step % eval_every == 0:
            observe(step)
    history["seconds"] = time.perf_counter() - start
    return history
