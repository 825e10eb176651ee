"""One training loop for every method, backprop included, and guess quality along backprop."""
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm  # plain text bars: no widgets in executed notebooks

from ..core.data import FLIPPABLE, random_crop_flip
from ..core.estimators import (backprop_gradient, check_mode, estimate_gradient, gradient_writer,
                         guessed_gradient, resolve_estimator)
from ..core.metrics import (cosine_similarity, effective_rank, layer_cosines, one_step_effectiveness,
                      replicate_cosines)
from ..core.methods import get_method
from ..core.probes import probe
from ..core.models import MLP, StackedMLP
from ..core.optimizers import OPTIMIZERS, make_optimizer  # noqa: F401  (OPTIMIZERS: re-exported)


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 4096) -> float | list[float]:
    """Fraction of ``x`` classified as ``y``; one per replicate for a stacked model."""
    correct = sum((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum(-1)
                  for i in range(0, len(y), batch_size))
    fraction = correct.double() / len(y)
    return float(fraction) if fraction.dim() == 0 else fraction.tolist()


def _batches(n: int, batch_size: int, generator: torch.Generator, device):
    order = torch.randperm(n, generator=generator).to(device)
    for i in range(0, n - batch_size + 1, batch_size):  # drop the ragged last batch
        yield order[i:i + batch_size]


def _endless_batches(n: int, batch_size: int, generator: torch.Generator, device):
    """Batches of `_batches`, epoch after epoch, for loops counted in steps."""
    while True:
        yield from _batches(n, batch_size, generator, device)


def _start(model, data, batch_size: int, optimizer: str, lr: float, weight_decay: float,
           seed: int):
    """What every loop begins with: checks, the optimizer, and the two seeded generators
    (batch order on the CPU; guesses on the data's device)."""
    n = len(data.train_y)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in 1..{n} (the training set), "
                         f"got {batch_size!r}")
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    order_rng = torch.Generator().manual_seed(seed)
    guess_rng = torch.Generator(device=data.train_x.device).manual_seed(seed + 1)
    return opt, order_rng, guess_rng


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
    opt, order_rng, guess_rng = _start(model, data, batch_size, optimizer, lr, weight_decay, seed)
    n, device = len(data.train_y), data.train_x.device
    augment_rng = torch.Generator(device=device).manual_seed(seed + 2)
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
        for idx in _batches(n, batch_size, order_rng, device):
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
    opt, order_rng, guess_rng = _start(model, data, batch_size, optimizer, lr, 0.0, seed)
    batches = _endless_batches(len(data.train_y), batch_size, order_rng, data.train_x.device)
    options = method_options or {}
    scores = {m: {"cosine": [], "layer_cosines": [], "effectiveness": [], "effectiveness_raw": []}
              for m in methods}
    for _ in tqdm(range(steps), disable=not progress, leave=False, desc=f"along backprop ({mode})"):
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



def train_mlp(data, *, depth: int, width: int, method: str, seed: int = 0,
              probe_examples: int = 0, probe_method: str | None = None, probe_repeats: int = 1,
              **options) -> dict:
    """One run of a grid: an MLP initialised from ``seed``, trained by `train` (no progress
    bar). ``options`` are `train`'s keywords. Returns `train`'s JSON-serialisable history.

    With ``probe_examples`` > 0 the run is probed before the first epoch and after each one
    (`probe` on the first ``probe_examples`` training images, ``probe_repeats`` guesses of
    ``probe_method``, default the run's own method, from a generator seeded ``seed + 1000``).
    """
    torch.manual_seed(seed)
    model = MLP(data.in_features, width, depth, data.num_classes).to(data.train_x.device)
    if probe_examples:
        x, y = data.train_x[:probe_examples], data.train_y[:probe_examples]
        rng = torch.Generator(device=data.train_x.device).manual_seed(seed + 1000)
        options["on_epoch"] = lambda m: probe(m, x, y, probe_method or method, rng,
                                              repeats=probe_repeats)
    return train(model, data, method, seed=seed, progress=False, **options)


def train_mixer(data, *, method: str, local: bool, epochs: int, seed: int = 0,
                augment: bool = False, optimizer: str = "adamw", lr: float = 1e-2,
                batch_size: int = 128, **architecture) -> dict:
    """One LocalMixer run (`gradguess.core.mixer.LocalMixer`, ``architecture`` its keywords: patch,
    channels, blocks, groups, ...), initialised from ``seed`` and trained by `train`.
    `gradguess.engine.mixer_grid.train_mixer_stack` trains several side by side, each the same."""
    from ..core.mixer import LocalMixer

    torch.manual_seed(seed)
    model = LocalMixer(data.train_x.shape[1], data.num_classes, local=local, **architecture)
    return train(model.to(data.train_x.device), data, method, epochs=epochs, optimizer=optimizer,
                 lr=lr, batch_size=batch_size, seed=seed, augment=augment, progress=False)


def train_singular_powers(data, *, powers, depth: int, width: int, steps: int, lr: float,
                          batch_size: int = 128, seed: int = 0, record_every: int = 100,
                          svd_every: int = 1) -> dict:
    """Fig. 4: one `StackedMLP` replicate per entry of ``powers`` (repeat a p for several
    replicates), each trained with W^T guesses whose singular values are raised to its p,
    by `train_replicates`; the SVDs are refreshed every ``svd_every`` steps."""
    from ..core.guesses import powered_weights

    powers = list(powers)
    torch.manual_seed(seed)
    model = StackedMLP(data.in_features, width, depth, data.num_classes, replicates=len(powers))
    return train_replicates(model.to(data.train_x.device), data, "singular_power", steps=steps,
                            batch_size=batch_size, lr=lr, seed=seed, record_every=record_every,
                            method_options={"p": powers}, refresh_every=svd_every,
                            refresh_options=lambda m: {"weights": powered_weights(m, powers)},
                            progress=False)


def train_replicates(model: StackedMLP, data, method: str = "w_transpose", *, steps: int,
                     batch_size: int = 128, optimizer: str = "adamw", lr: float = 1e-3,
                     weight_decay: float = 0.0, seed: int = 0, record_every: int = 100,
                     method_options: dict | None = None, refresh_options=None,
                     refresh_every: int = 1, progress: bool = True) -> dict:
    """Train the R replicates of a `StackedMLP` side by side for ``steps`` batches.

    All replicates see the same batches (order fixed by ``seed``) and draw their own guesses.
    Every ``record_every`` steps (and at step 0) the guess about to be used is scored
    against the true gradient (cosine per replicate, whole network and per layer) and the
    effective rank of every weight matrix is taken. ``refresh_options(model) -> dict``, if
    given, recomputes guess options from the weights every ``refresh_every`` steps (the
    singular-value experiment's SVDs; exact at 1). Per-element optimizers (AdamW, SGD) keep
    replicates independent; StableAdamW, whose update clipping pools a whole tensor, would
    not, so it is refused here.

    Returns per record ``step``, ``cosine`` [R], ``layer_cosines`` [layers][R],
    ``effective_rank`` [layers][R], ``train_loss`` [R] (mean since the last record), and
    at the end ``train_acc``, ``test_acc`` [R], ``diverged`` [R], ``seconds``.
    """
    if get_method(method).space not in ("activations", "exact"):
        raise ValueError(f"train_replicates runs activation-space methods and backprop, "
                         f"not {method!r}")
    if optimizer == "stable_adamw":
        raise ValueError("StableAdamW clips updates per tensor, which would couple stacked "
                         "replicates; train them one by one with `train`")
    if not isinstance(steps, int) or steps < 1 or not isinstance(record_every, int) \
            or record_every < 1 or not isinstance(refresh_every, int) or refresh_every < 1:
        raise ValueError(f"steps, record_every and refresh_every must be integers >= 1, got "
                         f"{steps!r}, {record_every!r}, {refresh_every!r}")
    opt, order_rng, guess_rng = _start(model, data, batch_size, optimizer, lr, weight_decay, seed)
    batches = _endless_batches(len(data.train_y), batch_size, order_rng, data.train_x.device)
    options = dict(method_options or {})
    history = {"step": [], "cosine": [], "layer_cosines": [], "effective_rank": [],
               "train_loss": []}
    losses = []
    start = time.perf_counter()
    for step in tqdm(range(steps + 1), disable=not progress, leave=False,
                     desc=f"{method} x{model.replicates}"):
        idx = next(batches)
        x, y = data.train_x[idx], data.train_y[idx]
        if refresh_options is not None and step % refresh_every == 0:
            options.update(refresh_options(model))
        record = step % record_every == 0 or step == steps
        if record:
            _, true = backprop_gradient(model, x, y)
        loss = estimate_gradient(model, x, y, method, "global", guess_rng, **options)
        if record:
            guess = [p.grad for p in model.parameters()]
            history["step"].append(step)
            history["cosine"].append(replicate_cosines(guess, true).tolist())
            history["layer_cosines"].append([replicate_cosines(guess[2 * i:2 * i + 2],
                                                               true[2 * i:2 * i + 2]).tolist()
                                             for i in range(len(model.layers))])
            history["effective_rank"].append([effective_rank(layer.weight).tolist()
                                              for layer in model.layers])
            history["train_loss"].append(torch.stack(losses).mean(0).tolist() if losses
                                         else loss.tolist())
            losses = []
        if step == steps:
            break  # the last record scores the final weights; no step after it
        opt.step()
        losses.append(loss)
    finite = [bool(torch.isfinite(torch.stack([p[r].abs().max() for p in model.parameters()]))
                   .all()) for r in range(model.replicates)]
    history["diverged"] = [not f for f in finite]
    history["train_acc"] = accuracy(model, data.train_x, data.train_y)
    history["test_acc"] = accuracy(model, data.test_x, data.test_y)
    history["seconds"] = time.perf_counter() - start
    return history


def train_classifier(model, data, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0, progress: bool = True) -> dict:
    """Plain backprop with AdamW for any torch classifier ``model(x) -> logits`` (the
    backbone the prompt-tuning chapter pre-trains). Returns per-epoch ``test_acc``."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    opt, order_rng, _ = _start(model, data, batch_size, "adamw", lr, 0.0, seed)
    history = {"test_acc": []}
    n = len(data.train_y)
    for _ in tqdm(range(epochs), disable=not progress, leave=False, desc="pre-training"):
        model.train()
        for idx in _batches(n, batch_size, order_rng, data.train_x.device):
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


def tune_prompts(backbone, data, method: str, *, prompts: int, seed: int = 0,
                 **options) -> dict:
    """One prompt-tuning run: ``prompts`` prompt tokens and a new head on the frozen
    ``backbone``, initialised from ``seed`` and trained by `train_prompts` (``options``)."""
    from ..core.prompts import PromptedViT  # torchvision, only here

    torch.manual_seed(seed)
    model = PromptedViT(backbone, prompts, data.num_classes).to(data.train_x.device)
    return train_prompts(model, data, method, seed=seed, progress=False, **options)


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
    opt, order_rng, guess_rng = _start(model, data, batch_size, optimizer, lr, 0.0, seed)
    probe_rng = torch.Generator(device=data.train_x.device).manual_seed(seed + 3)
    fixed_x, fixed_y = data.train_x[:batch_size], data.train_y[:batch_size]
    history = {"step": [], "test_acc": [], "cosine": [], "train_loss": [], "diverged": False}
    batches = _endless_batches(len(data.train_y), batch_size, order_rng, data.train_x.device)
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
        idx = next(batches)
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


def _stacked_endless_batches(n: int, batch_size: int, generators, device):
    """`_endless_batches` for R generators side by side: per step [R, B], row r the batch that
    `_endless_batches(n, batch_size, generators[r], device)` gives at that step (the same
    draws), with one copy to the device per epoch for all R."""
    while True:
        order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        for i in range(0, n - batch_size + 1, batch_size):  # drop the ragged last batch
            yield order[:, i:i + batch_size]


def tune_prompt_stack(backbone, data, methods_and_seeds, *, prompts: int, steps: int,
                      eval_every: int, batch_size: int = 64, lr: float = 1e-2,
                      optimizer: str = "adamw", cosine_repeats: int = 4,
                      progress: bool = False) -> list[dict]:
    """`tune_prompts` for R (method, seed) runs on one frozen ``backbone`` and one ``data``,
    side by side: one history per run, in the order of ``methods_and_seeds``, each the one
    `tune_prompts(backbone, data, method, prompts=..., seed=seed, steps=..., ...)` returns
    for that run alone (same keys, same values up to float rounding), but ``seconds``: the
    stack's wall time.

    Run r is initialised as `tune_prompts` initialises it (``torch.manual_seed(seed)``, then a
    `PromptedViT`), draws its batches from a CPU generator seeded ``seed``, its guesses from
    one seeded ``seed + 1`` and its cosine probes from one seeded ``seed + 3`` (both on the
    data's device), and is observed at step 0 and every ``eval_every`` steps. A run whose loss
    turns non-finite stops recording there (``diverged``), as its single run stops; the
    others go on (its rows are still computed, their NaNs kept to themselves, until every run
    has diverged).

    The runs' prompts [R, P, D] and heads [R, C, D], [R, C] are stacked: a step is one backbone
    pass per kind of method over all its runs' examples, R * B at most
    (`prompts.estimate_stacked_prompt_gradients`), and one `StackedOptimizer` step, which
    moves every run as its own optimizer would (elementwise; StableAdamW's clipping is pooled
    per run). The step loop reads nothing back to the host: losses stay on the device until
    an observation (or the end) reads them once, which is also when divergence is seen; the
    batches' order goes to the device once per epoch for all runs. Observations loop over the
    runs, each as its own `PromptedViT`.
    """
    from ..core.optimizers import StackedOptimizer
    from ..core.prompts import (PROMPT_METHODS, PromptedViT, estimate_stacked_prompt_gradients,
                          prompt_cosine, prompt_stack_order)  # torchvision, only here

    runs = list(methods_and_seeds)
    if not runs:
        raise ValueError("tune_prompt_stack needs at least one (method, seed) run")
    for run in runs:
        if not (isinstance(run, (tuple, list)) and len(run) == 2 and isinstance(run[0], str)
                and isinstance(run[1], int) and not isinstance(run[1], bool)):
            raise ValueError(f"each run is a (method, seed) pair, a name and an integer; "
                             f"got {run!r}")
        if run[0] not in PROMPT_METHODS:
            raise ValueError(f"unknown prompt method {run[0]!r}; known: "
                             f"{', '.join(PROMPT_METHODS)}")
    if not isinstance(steps, int) or steps < 1 or not isinstance(eval_every, int) \
            or eval_every < 1:
        raise ValueError(f"steps and eval_every must be integers >= 1, got {steps!r}, "
                         f"{eval_every!r}")
    if not isinstance(cosine_repeats, int) or cosine_repeats < 1:
        raise ValueError(f"cosine_repeats must be an integer >= 1, got {cosine_repeats!r}")
    n, device = len(data.train_y), data.train_x.device
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in 1..{n} (the training set), "
                         f"got {batch_size!r}")
    order = prompt_stack_order([method for method, _ in runs])  # backprop, head only, guessed
    stack = [runs[r] for r in order]
    methods, R = [method for method, _ in stack], len(stack)
    models = []  # one per run, as tune_prompts builds it: its initialisation, its observations
    for _, seed in stack:
        torch.manual_seed(seed)
        models.append(PromptedViT(backbone, prompts, data.num_classes).to(device))
    # prompts [R, P, D], head weights [R, C, D] and biases [R, C]: what the stack trains
    stacked = [torch.stack([p.detach() for p in ps]).clone()
               for ps in zip(*[(m.prompts, m.head.weight, m.head.bias) for m in models])]
    opt = StackedOptimizer(stacked, optimizer, lr)
    batches = _stacked_endless_batches(n, batch_size, [torch.Generator().manual_seed(seed)
                                                       for _, seed in stack], device)
    guess_rngs = [torch.Generator(device=device).manual_seed(seed + 1) for _, seed in stack]
    probe_rngs = [torch.Generator(device=device).manual_seed(seed + 3) for _, seed in stack]
    fixed_x, fixed_y = data.train_x[:batch_size], data.train_y[:batch_size]
    histories = [{"step": [], "test_acc": [], "cosine": [], "train_loss": [], "diverged": False}
                 for _ in stack]
    start = time.perf_counter()

    def observe(step):  # as train_prompts observes, run by run, those still going
        for r, (model, history) in enumerate(zip(models, histories)):
            if history["diverged"]:
                continue
            with torch.no_grad():  # the run's own model, at the stack's values
                for p, rows in zip((model.prompts, model.head.weight, model.head.bias), stacked):
                    p.copy_(rows[r])
            space = get_method(methods[r]).space
            history["step"].append(step)
            history["test_acc"].append(accuracy(model, data.test_x, data.test_y, batch_size=512))
            history["cosine"].append(1.0 if space == "exact" else 0.0 if space == "none" else
                                     prompt_cosine(model, fixed_x, fixed_y, methods[r],
                                                   probe_rngs[r], cosine_repeats))

    def read(losses):  # the losses since the last read, [steps][R]: one read back
        for column, history in zip(zip(*torch.stack(losses).tolist()), histories):
            if history["diverged"]:
                continue
            for value in column:
                if not math.isfinite(value):  # the single run stops at this step
                    history["diverged"] = True
                    break
                history["train_loss"].append(value)

    observe(0)
    losses = []
    for step in tqdm(range(1, steps + 1), disable=not progress, leave=False,
                     desc=f"prompts x{R}"):
        idx = next(batches)  # [R, B]
        losses.append(estimate_stacked_prompt_gradients(
            models[0], *stacked, data.train_x[idx], data.train_y[idx], methods, guess_rngs))
        opt.step()
        if step % eval_every == 0 or step == steps:
            read(losses)
            losses = []
            if step % eval_every == 0:
                observe(step)
            if all(history["diverged"] for history in histories):
                break
    seconds = time.perf_counter() - start
    result = [None] * R
    for position, r in enumerate(order):
        result[r] = {**histories[position], "seconds": seconds}
    return result
