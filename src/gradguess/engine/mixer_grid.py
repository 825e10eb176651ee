"""LocalMixer runs side by side: the LocalMixer chapter's grid as replicates of one computation.

A LocalMixer step at the book's sizes is a few hundred tiny kernels, so a GPU spends the run
waiting on launches. `train_mixer_stack` trains R runs (method x local x augmentation x seed)
of one architecture as the replicates of one stacked `LocalMixer` (`LocalMixer.stack`: the
mixer's own forward pass, losses and layer connections, on weights with a leading replicate
dimension): every kernel of a step serves all R runs. Replicate r is, number for number, the
run `training.reference_mixer` makes alone (tests check this in float64):

- its own initialisation (``torch.manual_seed(seed)`` then a `mixer.LocalMixer`, as
  `reference_mixer`), batch order, augmentation (`data.random_crop_flip_each`) and guesses
  (drawn per replicate through `guesses.ReplicateGenerators` in a run's order), each from
  its own generator (`seeds`);
- its own method and local flag. The guessing replicates share one forward pass (every
  pre-activation and loss), draw their guesses per method group on views of the stack, and
  share one JVP that scales them, as the reference estimator's global mode does (each local
  loss by its own derivative, `LocalMixer.local_losses`). The backprop replicates share one
  forward and one backward pass, which give their exact gradient at every pre-activation.
  Each layer's weight update is then one batched outer product per block of replicates.

Nothing is read back to the host during an epoch: losses, divergence (a non-finite loss or
weight ends a replicate's history, as it ends a run) and accuracies stay on the device and are
read once at the end of each epoch.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.data import FLIPPABLE
from ..core.estimators import resolve_estimator
from ..core.guesses import ReplicateGenerators
from ..core.losses import cross_entropy_per_example, error_vector
from ..core.methods import get_method, method_names
from ..core.mixer import LocalMixer
from ..core.models import Trace
from ..core.optimizers import StackedOptimizer
from . import checkpoints, seeds, stack as engine
from .stack import Job

# Backprop and the activation-space methods with a per-layer guess (the stack draws them from
# its own pre-activations, layer after layer, as a run draws them).
STACKABLE = method_names(lambda m: m.space == "exact" or (m.space == "activations"
                                                           and m.guess_at is not None))


@dataclass(frozen=True)
class MixerRun:
    """One run of the LocalMixer grid: what `train_mixer` takes besides the shared settings."""
    method: str
    local: bool
    augment: bool = False
    seed: int = 0


# R LocalMixers side by side: one LocalMixer whose weights carry a leading replicate dimension
StackedLocalMixer = LocalMixer.stack


@torch.no_grad()
def _write_grad(layer, kind: str, x_in: Tensor, grad_s: Tensor, lo: int, hi: int) -> None:
    """Replicates lo:hi's dL/dW = sum over batch and tokens of grad_s x_in^T
    (`models.write_linear_grad`), written into their slice of ``.grad``."""
    weight, bias = layer.weight.grad[lo:hi], layer.bias.grad[lo:hi]
    if kind == "channel":  # [R, B, T, G, out], [R, B, T, G, in]
        weight.copy_(torch.einsum("rbtgo,rbtgi->rgoi", grad_s, x_in))
        torch.sum(grad_s.flatten(1, 2), 1, out=bias)
        return
    g = grad_s.reshape(grad_s.shape[0], -1, grad_s.shape[-1])
    torch.bmm(g.transpose(1, 2), x_in.reshape(x_in.shape[0], -1, x_in.shape[-1]), out=weight)
    torch.sum(g, 1, out=bias)


class _Plan:
    """What a step of the stack needs, fixed at the start: the guessing replicates (the first
    ``active``, in groups of one method) and backprop's (the rest); per layer, which guessing
    replicates take an exact gradient instead of a guess (a local replicate's heads, a method's
    ``exact_last`` layer)."""

    def __init__(self, model: LocalMixer, stack: list[MixerRun]):
        methods = [get_method(run.method) for run in stack]
        self.model = model
        self.active = sum(m.space == "activations" for m in methods)
        self.groups, lo = [], 0  # (method, its part of the stack, lo, hi)
        for r in range(1, self.active + 1):
            if r == self.active or stack[r].method != stack[lo].method:
                self.groups.append((methods[lo], model.part(lo, r), lo, r))
                lo = r
        self.guessing = model.part(0, self.active) if self.active else None
        n, device = len(model.layers), model.local_rows.device
        self.exact = []  # per layer: None (no replicate exact), True (all) or a [A] mask
        for i in range(n):
            rows = [(model._kind(i) == "head" and run.local) or (i == n - 1 and m.exact_last)
                    for run, m in zip(stack[:self.active], methods)]
            self.exact.append(True if all(rows) else None if not any(rows)
                              else torch.tensor(rows, device=device))

    @torch.no_grad()
    def guessed(self, x: Tensor, targets: Tensor, pre: list[Tensor], generators) -> list[Tensor]:
        """dL/ds_i of the guessing replicates, as the reference estimator's global mode
        (`estimators._activation_space_step`): guesses y_i, one JVP of every replicate's
        losses (local slices, or the readout's loss) along them, (derivative) y_i / B."""
        n, batch, part = len(pre), targets.shape[-1], self.guessing
        ys = [[] for _ in range(n)]
        for method, view, lo, hi in self.groups:
            options = {"targets": targets[lo:hi]} if method.needs_targets else {}
            rng = ReplicateGenerators(generators[lo:hi])
            group_pre = [s[lo:hi] for s in pre]
            for i in range(n):  # layer after layer: each replicate draws as its run draws
                ys[i].append(method.guess_at(view, group_pre, i, rng, **options))
        ys = [torch.cat(y) if len(y) > 1 else y[0] for y in ys]
        rows = lambda mask, like: mask.view(-1, *[1] * (like.dim() - 1))
        tangents = [None if exact is True else y if exact is None else y.masked_fill(rows(exact, y), 0)
                    for y, exact in zip(ys, self.exact)]  # an exact site is not perturbed
        perturbed = [i for i, t in enumerate(tangents) if t is not None]

        def outputs(*deltas):
            perturbations = [None] * n
            for i, delta in zip(perturbed, deltas):
                perturbations[i] = delta
            readout, _, slices = part.losses(x, targets, perturbations)
            wanted = (slices,) if any(part.local) else ()
            return wanted + (() if all(part.local) else (cross_entropy_per_example(readout, targets),))

        derivatives = torch.func.jvp(outputs, tuple(torch.zeros_like(tangents[i]) for i in perturbed),
                                     tuple(tangents[i] for i in perturbed))[1]
        d_slices = derivatives[0] if any(part.local) else None
        d_readout = derivatives[-1] if not all(part.local) else None
        grads = []
        for i, (y, exact) in enumerate(zip(ys, self.exact)):
            if exact is not True:
                scale = part.local_scale(i, d_slices) if d_slices is not None else None
                if d_readout is not None:
                    end_to_end = d_readout.view(*d_readout.shape, *[1] * (y.dim() - 2))
                    scale = end_to_end if scale is None else torch.where(
                        rows(part.local_rows, y), scale, end_to_end)
                g = scale * y
            if exact is not None:
                error = error_vector(pre[i], targets)
                g = error if exact is True else torch.where(rows(exact, y), error, g)
            grads.append(g / batch)
        return grads

    def step(self, x: Tensor, targets: Tensor, generators) -> Tensor:
        """Write every replicate's gradient into ``.grad``, each replicate's guesses from its
        generator in ``generators``; return each replicate's batch loss."""
        model, a, losses = self.model, self.active, []
        for part, lo, hi in ((self.guessing, 0, a), (None, a, model.replicates)):
            if lo == hi:
                continue
            if part is not None:  # the guessing replicates: a forward pass, guesses, a JVP
                trace = Trace()
                with torch.no_grad():
                    loss = part.per_example_loss(x[lo:hi], targets[lo:hi], trace=trace).mean(-1)
                grads = self.guessed(x[lo:hi], targets[lo:hi], trace.preactivations, generators)
            else:  # backprop's: the exact dL/ds_i of a forward pass, by one backward pass
                loss, trace, grads = _backprop(model, x, targets, lo, hi)
            for i, (layer, x_in, g) in enumerate(zip(model.layers, trace.inputs, grads)):
                _write_grad(layer, model._kind(i), x_in.detach(), g, lo, hi)
            losses.append(loss.detach())
        return torch.cat(losses) if len(losses) > 1 else losses[0]


# Eager inside a compiled step (`step.Step`): a compiled torch.autograd.grad with respect to
# intermediate tensors returns zeros in torch 2.14 (the test_compiled_step tests catch it).
@torch.compiler.disable
def _backprop(model: LocalMixer, x: Tensor, targets: Tensor, lo: int, hi: int):
    """Replicates lo:hi's batch loss, forward trace and exact dL/ds_i (one backward pass)."""
    trace = Trace()
    with torch.enable_grad():
        part = model.part(lo, hi, detach=False)
        loss = part.per_example_loss(x[lo:hi], targets[lo:hi], trace=trace).mean(-1)
        grads = torch.autograd.grad(loss.sum(), trace.preactivations, materialize_grads=True)
    return loss, trace, grads


def _runs(runs) -> list[MixerRun]:
    """``runs`` as `MixerRun`s (also from dicts or (method, local, augment, seed) tuples), checked."""
    if isinstance(runs, (str, MixerRun, dict)) or not hasattr(runs, "__iter__"):
        raise TypeError(f"runs must be a list of MixerRun records, got {type(runs).__name__}")
    out = []
    for run in runs:
        if isinstance(run, dict):
            run = MixerRun(**run)
        elif isinstance(run, (tuple, list)):
            run = MixerRun(*run)
        if not isinstance(run, MixerRun):
            raise TypeError(f"a run is a MixerRun, a dict or a (method, local, augment, seed) "
                            f"tuple, got {run!r}")
        if run.method not in STACKABLE:
            get_method(run.method)  # an unknown method: its own error
            raise ValueError(f"the LocalMixer stack runs {', '.join(STACKABLE)}, not {run.method!r}")
        if not isinstance(run.local, bool) or not isinstance(run.augment, bool):
            raise TypeError(f"local and augment must be True or False, got {run!r}")
        if not isinstance(run.seed, int) or isinstance(run.seed, bool):
            raise TypeError(f"seed must be an integer, got {run!r}")
        out.append(run)
    if not out:
        raise ValueError("train_mixer_stack needs at least one run")
    return out


def train_mixer_stack(data, runs, *, epochs: int, batch_size: int = 128, lr: float = 1e-2,
                      optimizer: str = "adamw", max_replicates: int | None = None,
                      **architecture) -> list[dict]:
    """Train the LocalMixer ``runs`` (`MixerRun`s: method, local, augment, seed) side by side.

    Returns, in the order of ``runs``, the history ``reference_mixer(data, method=..., local=...,
    augment=..., seed=..., epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
    **architecture)`` would return for each run alone: per-epoch ``train_acc``, ``test_acc``,
    ``train_loss``, and ``diverged``, ``diverged_at_step``, ``steps``, ``estimator``, with
    ``seconds`` the stack's wall time. The runs share ``architecture`` (`LocalMixer`'s
    keywords), the optimizer and its learning rate. Methods: backprop and the activation-space
    guesses (`STACKABLE`), each in the global mode of the reference estimator. The run is
    checkpointed after every epoch and resumes from a saved state (`checkpoints`). With
    ``max_replicates``, consecutive chunks of the stack's order of at most that many runs each
    are trained one after another, each stored on its own (`checkpoints.chunks`), to bound
    memory; each replicate is still the run it is alone.
    """
    runs = _runs(runs)
    if max_replicates is not None and (not isinstance(max_replicates, int)
                                       or isinstance(max_replicates, bool) or max_replicates < 1):
        raise ValueError(f"max_replicates must be an integer >= 1 or None, got {max_replicates!r}")
    if "local" in architecture:
        raise TypeError("local is set per run (MixerRun.local), not in the architecture")
    engine.check_schedule("epochs", epochs)
    # the guessing replicates grouped by method, then backprop's
    order = engine.stack_order(runs, lambda run: (run.method,))
    if max_replicates is not None and len(runs) > max_replicates:
        parts = [order[lo:lo + max_replicates] for lo in range(0, len(order), max_replicates)]
        options = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                       **architecture)
        stacks = checkpoints.chunks(train_mixer_stack, [((data, [runs[r] for r in part]), options)
                                                        for part in parts])
        result = [None] * len(runs)
        for part, histories in zip(parts, stacks):
            for r, history in zip(part, histories):
                result[r] = history
        return result
    n, device = len(data.train_y), data.train_x.device
    engine.check_batch_size(batch_size, n)
    stack = [runs[r] for r in order]
    model, estimators = _stacked_model(data, stack, architecture)
    guesses = [seeds.guesses(run.seed, device) for run in stack]
    plan = _Plan(model, stack)
    job = Job(stack, order, list(model.parameters()), StackedOptimizer(model.parameters(),
                                                                       optimizer, lr),
              step=plan.step, record=engine.epoch_recorder(lambda: _accuracies(model, data)),
              histories=[engine.new_history(estimator=e) for e in estimators],
              train_x=data.train_x, train_y=data.train_y, batch_size=batch_size,
              steps=epochs * (n // batch_size), every=n // batch_size,
              generators={"guesses": guesses},
              augment=tuple(r for r, run in enumerate(stack) if run.augment),
              flip=data.name in FLIPPABLE,
              key=repr(("mixer", data.name, stack, epochs, batch_size, lr, optimizer,
                        sorted(architecture.items()))))
    return engine.run(job, desc=f"LocalMixer x{len(stack)}")


def _stacked_model(data, stack: list[MixerRun], architecture: dict):
    """Every run's LocalMixer, initialised as `train_mixer` initialises it, stacked with zero
    grads, and each run's estimator (as the reference loop names it)."""
    mixers = []
    for run in stack:
        torch.manual_seed(run.seed)
        mixers.append(LocalMixer(data.train_x.shape[1], data.num_classes, local=run.local,
                                 **architecture))
    size = mixers[0].image_size
    if data.train_x.shape[-1] != size or data.train_x.shape[-2] != size:
        raise ValueError(f"the LocalMixer was built for {size}x{size} images, got "
                         f"{tuple(data.train_x.shape[-2:])}; pad them "
                         f"(gradguess.core.data.pad_images)")
    estimators = [resolve_estimator("auto", m, run.method, "global", {})
                  for m, run in zip(mixers, stack)]
    model = LocalMixer.stack(mixers).to(data.train_x.device)
    for p in model.parameters():  # every step writes every replicate's slice
        p.grad = torch.zeros_like(p)
    return model, estimators


def _accuracies(model, data) -> tuple[Tensor, Tensor]:
    """Each replicate's train and test accuracy of the readout, on the device."""
    return (engine.correct(model, data.train_x, data.train_y, 1024).double() / len(data.train_y),
            engine.correct(model, data.test_x, data.test_y, 1024).double() / len(data.test_y))
