"""The run functions the chapters cache: single runs (a stack of one, or the reference loop for
what only it runs), the reference runs the stacks are checked against, and replicates side by
side (`train_replicates`, Fig. 4's singular powers)."""
import time

import torch
from tqdm import tqdm

from ..core.estimators import backprop_gradient, estimate_gradient
from ..core.guesses import powered_weights
from ..core.metrics import effective_rank, replicate_cosines
from ..core.methods import get_method
from ..core.mixer import LocalMixer
from ..core.models import MLP, StackedMLP
from ..core.probes import probe
from . import seeds
from .grid import Run, stackable, train_stack
from .mixer_grid import STACKABLE, MixerRun, train_mixer_stack
from .prompt_stack import tune_prompt_stack
from .reference import endless_batches, start_run, train, train_prompts
from .stack import accuracy


# `train`'s keywords that only the reference loop serves, at the values the stack runs
_STACK_RUNS = {"mode": "global", "estimator": "auto", "augment": False, "on_epoch": None}
_STACK_TAKES = {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "method_options"}


def train_mlp(data, *, depth: int, width: int, method: str, seed: int = 0,
              probe_examples: int = 0, probe_method: str | None = None, probe_repeats: int = 1,
              **options) -> dict:
    """One run of a grid: an MLP initialised from ``seed``, trained as a stack of one
    (`grid.train_stack`), or by the reference loop (`reference_mlp`) where only it runs the
    method or options (de-biased Wᵀ, singular powers, ``mode="per_layer"``, an explicit
    ``estimator``, ``augment``, ``on_epoch``). ``options`` are `train`'s keywords. Returns
    `train`'s JSON-serialisable history (``estimator`` "stacked" for a stack of one).

    With ``probe_examples`` > 0 the run is probed before the first epoch and after each one
    (`probe` on the first ``probe_examples`` training images, ``probe_repeats`` guesses of
    ``probe_method``, default the run's own method, from `seeds.mlp_probes`).
    """
    probing = {"probe_examples": probe_examples, "probe_method": probe_method,
               "probe_repeats": probe_repeats}
    if not stackable(get_method(method)) or set(options) - _STACK_TAKES - set(_STACK_RUNS) \
            or any(options.get(k, v) != v for k, v in _STACK_RUNS.items()):
        return reference_mlp(data, depth=depth, width=width, method=method, seed=seed,
                             **probing, **options)
    run = Run(method, seed, options.get("lr", 1e-3), options.get("optimizer", "adamw"),
              options.get("weight_decay", 0.0), options.get("method_options"), probe_method)
    (history,) = train_stack(data, [run], depth=depth, width=width, epochs=options["epochs"],
                             batch_size=options.get("batch_size", 128),
                             probe_examples=probe_examples, probe_repeats=probe_repeats)
    del history["replicates"]
    return {**history, "estimator": "stacked"}


def reference_mlp(data, *, depth: int, width: int, method: str, seed: int = 0,
                  probe_examples: int = 0, probe_method: str | None = None,
                  probe_repeats: int = 1, **options) -> dict:
    """`train_mlp` by the reference loop: an `MLP` initialised from ``seed``, trained by
    `train` (no progress bar), probed as `train_mlp` probes it."""
    torch.manual_seed(seed)
    model = MLP(data.in_features, width, depth, data.num_classes).to(data.train_x.device)
    if probe_examples:
        x, y = data.train_x[:probe_examples], data.train_y[:probe_examples]
        rng = seeds.mlp_probes(seed, data.train_x.device)
        options["on_epoch"] = lambda m: probe(m, x, y, probe_method or method, rng,
                                              repeats=probe_repeats)
    return train(model, data, method, seed=seed, progress=False, **options)


def train_mixer(data, *, method: str, local: bool, epochs: int, seed: int = 0,
                augment: bool = False, optimizer: str = "adamw", lr: float = 1e-2,
                batch_size: int = 128, **architecture) -> dict:
    """One LocalMixer run (`gradguess.core.mixer.LocalMixer`, ``architecture`` its keywords:
    patch, channels, blocks, groups, ...), initialised from ``seed``: a stack of one
    (`mixer_grid.train_mixer_stack`) for the methods the stack runs, else `reference_mixer`."""
    settings = {"epochs": epochs, "optimizer": optimizer, "lr": lr, "batch_size": batch_size}
    if method not in STACKABLE:
        return reference_mixer(data, method=method, local=local, seed=seed, augment=augment,
                               **settings, **architecture)
    return train_mixer_stack(data, [MixerRun(method, local, augment, seed)], **settings,
                             **architecture)[0]


def reference_mixer(data, *, method: str, local: bool, epochs: int, seed: int = 0,
                    augment: bool = False, optimizer: str = "adamw", lr: float = 1e-2,
                    batch_size: int = 128, **architecture) -> dict:
    """`train_mixer` by the reference loop: a LocalMixer initialised from ``seed``, trained by
    `train`."""
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
    opt, order_rng, guess_rng = start_run(model, data, batch_size, optimizer, lr, weight_decay,
                                          seed)
    batches = endless_batches(len(data.train_y), batch_size, order_rng, data.train_x.device)
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


def tune_prompts(backbone, data, method: str, *, prompts: int, seed: int = 0,
                 **options) -> dict:
    """One prompt-tuning run: ``prompts`` prompt tokens and a new head on the frozen
    ``backbone``, initialised from ``seed``, trained as a stack of one
    (`prompt_stack.tune_prompt_stack`, ``options`` its keywords)."""
    return tune_prompt_stack(backbone, data, [(method, seed)], prompts=prompts, **options)[0]


def reference_prompts(backbone, data, method: str, *, prompts: int, seed: int = 0,
                      **options) -> dict:
    """`tune_prompts` by the reference loop: a `PromptedViT` initialised from ``seed``, trained
    by `train_prompts` (``options``)."""
    from ..core.prompts import PromptedViT  # torchvision, only here

    torch.manual_seed(seed)
    model = PromptedViT(backbone, prompts, data.num_classes).to(data.train_x.device)
    return train_prompts(model, data, method, seed=seed, progress=False, **options)


