"""The stacked run engine: a grid of MLP training runs side by side in batched matmuls.

A grid of runs (methods x seeds x learning rates x optimizers x datasets) of one architecture
is R independent trainings whose steps are each far too small to keep a GPU busy. Here they
run as the R replicates of one `StackedMLP`: every layer is one batched matmul over all of
them, and replicate r is, number for number, the run `training.reference_mlp` makes alone
(tests check this in float64 for every method and optimizer):

- its own dataset (``data`` one `Dataset` for all, or a dict of them that each `Run` names by
  key; datasets of one stack share input features, classes and training-set size): its
  batches come from it, and it is evaluated and probed on it;
- its own initialisation (``torch.manual_seed(seed)`` then an `MLP`, as `reference_mlp`),
  batch order and guesses (its generators from `seeds`; inputs gathered per replicate,
  ``[R, B, in]``; guesses drawn through `guesses.ReplicateGenerators`);
- its own method and options: replicates are grouped by them. Activation-space guesses are
  drawn per group and carried through one shared tangent pass (the fused estimator,
  `gradguess.core.fused`); a weight-space guess (directional descent) carries its weight direction
  through a forward tangent pass; backprop replicates get the exact gradient from a batched
  backward pass. One forward pass serves all;
- its own optimizer, learning rate and weight decay (`optimizers.StackedOptimizer`, one
  update per block of consecutive replicates of one optimizer). `train_grid` runs a whole
  grid as one stack (or chunks of ``max_replicates``).

Nothing is read back to the host during an epoch: losses, divergence (a non-finite loss or
weight ends a replicate's history, as it ends a run) and accuracies stay on the device and are
read once at the end of each epoch.
"""
import json
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..core.guesses import ReplicateGenerators
from ..core.losses import cross_entropy_per_example, error_vector
from ..core.methods import get_method
from ..core.models import MLP, stack_mlps
from ..core.optimizers import StackedOptimizer
from ..core.probes import probe
from . import checkpoints, seeds, stack as engine
from .stack import Job, final


@dataclass(frozen=True)
class Run:
    """One run of a grid: what `train_mlp` takes besides the architecture and the epochs."""
    method: str
    seed: int = 0
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    options: dict | None = None  # of the method's guess, e.g. {"k": 2} for downstream
    probe_method: str | None = None  # whose guesses `train_stack`'s probes score (default: method)
    dataset: str | None = None  # its key in a dict of datasets (None: ``data`` is one Dataset)

    def group(self) -> tuple[str, str]:
        """Runs of one group share a method and its options."""
        return self.method, json.dumps(self.options or {}, sort_keys=True)


# Methods the stack runs: activation-space guesses with a per-layer form (`Method.guess_at`:
# the stack keeps every pre-activation, so a guess may read any layer), weight-space guesses
# and backprop.
def stackable(method) -> bool:
    return method.guess_at is not None or method.space in ("exact", "weights")


class _Replicates:
    """Replicates ``lo:hi`` of a stacked model, as the guesses see a model (``layers`` with
    their ``weight``, ``replicates``): views, no copies."""

    class _Layer:
        def __init__(self, layer, lo, hi):
            self.weight, self.bias = layer.weight[lo:hi], layer.bias[lo:hi]

    def __init__(self, model, lo: int, hi: int):
        self.layers = [self._Layer(layer, lo, hi) for layer in model.layers]
        self.replicates = hi - lo


def _groups(stack: list[Run]) -> list[tuple[object, dict, int, int]]:
    """(method record, options, lo, hi) for each block of runs of one group in the stack."""
    groups, lo = [], 0
    for r in range(1, len(stack) + 1):
        if r == len(stack) or stack[r].group() != stack[lo].group():
            groups.append((get_method(stack[lo].method), stack[lo].options or {}, lo, r))
            lo = r
    return groups


@torch.no_grad()
def stacked_step(model, x: Tensor, targets: Tensor, groups, generators) -> Tensor:
    """Write every replicate's gradient into ``.grad``: its method's guess scaled by its JVP
    (the fused estimator's update, paper A.4), directional descent's (g.v) v, or backprop's
    exact gradient. ``x`` is ``[R, B, in]``, ``targets`` ``[R, B]``; ``groups`` from `_groups`
    in stack order (`Method.stack_rank`: activation space, weight space, exact). Returns each
    replicate's batch loss."""
    layers, last, batch = model.layers, len(model.layers) - 1, targets.shape[-1]
    inputs, pre = [], []
    h = x
    for i, layer in enumerate(layers):
        inputs.append(h)
        pre.append(layer(h))
        h = torch.relu(pre[-1]) if i < last else None
    error = error_vector(pre[-1], targets)  # d loss_b / d logits_b
    loss = cross_entropy_per_example(pre[-1], targets).mean(-1)
    grad_s = [torch.empty_like(s) for s in pre]  # dL/ds_i of the activation and exact replicates
    guessed = [group for group in groups if group[0].space == "activations"]
    if guessed:
        _guessed_preactivation_grads(model, pre, error, targets, guessed, generators, grad_s, batch)
    for method, _, lo, hi in groups:
        if method.space == "exact":
            for i, g in enumerate(_exact_preactivation_grads(model, pre, error, lo, hi)):
                grad_s[i][lo:hi] = g
    # the blocks of replicates whose update is an outer product with the layer's input
    for a, b in _blocks([(lo, hi) for method, _, lo, hi in groups if method.space != "weights"]):
        for layer, h, g in zip(layers, inputs, grad_s):
            torch.matmul(g[a:b].transpose(-1, -2), h[a:b], out=layer.weight.grad[a:b])
            torch.sum(g[a:b], -2, out=layer.bias.grad[a:b])
    for method, options, lo, hi in groups:
        if method.space == "weights":
            _weight_space(model, inputs, pre, error, method, options, lo, hi, generators)
    return loss


def _blocks(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Consecutive (lo, hi) spans merged into blocks."""
    blocks = []
    for lo, hi in spans:
        if blocks and blocks[-1][1] == lo:
            blocks[-1] = (blocks[-1][0], hi)
        else:
            blocks.append((lo, hi))
    return blocks


def _exact_preactivation_grads(model, pre, error, lo, hi) -> list[Tensor]:
    """Backprop for replicates lo:hi: dL/ds_L = error / B, then the chain rule
    dL/ds_{i-1} = mask(s_{i-1}) * (dL/ds_i W_i), layer by layer."""
    g = error[lo:hi] / error.shape[-2]
    grads = [g]
    for i in range(len(pre) - 1, 0, -1):
        g = (g @ model.layers[i].weight[lo:hi]).masked_fill_(pre[i - 1][lo:hi] <= 0, 0)
        grads.append(g)
    return grads[::-1]


def _guessed_preactivation_grads(model, pre, error, targets, groups, generators, grad_s, batch):
    """The fused estimator over the activation-space replicates (a contiguous prefix): each
    group's guesses y_i, one tangent pass t_i = y_i + W_i (mask(s_{i-1}) * t_{i-1}), and
    dL/ds_i = (error . t_L) y_i / B per example; an ``exact_last`` method's last layer takes
    its guess (the error vector) as its exact gradient."""
    last, lo, hi = len(pre) - 1, groups[0][2], groups[-1][3]
    ys = [[] for _ in pre]
    exact_last = torch.zeros(hi - lo, dtype=torch.bool, device=error.device)
    for method, options, a, b in groups:
        view = _Replicates(model, a, b)
        if method.needs_targets:
            options = {**options, "targets": targets[a:b]}
        rng = ReplicateGenerators(generators[a:b])
        pre_group = [s[a:b] for s in pre]
        for i in range(last + 1):  # layer by layer: each replicate's draws in a run's order
            ys[i].append(method.guess_at(view, pre_group, i, rng, **options))
        exact_last[a - lo:b - lo] = method.exact_last
    ys = [torch.cat(y) if len(y) > 1 else y[0] for y in ys]
    tangent = None
    for i, layer in enumerate(model.layers):
        y = ys[i] if i < last else ys[i].masked_fill(exact_last.view(-1, 1, 1), 0)
        if tangent is None:
            tangent = y
        else:
            masked = tangent.masked_fill(pre[i - 1][lo:hi] <= 0, 0)
            tangent = torch.baddbmm(y, masked, layer.weight[lo:hi].transpose(-1, -2))
    derivative = (error[lo:hi] * tangent).sum(-1, keepdim=True)  # [A, B, 1]
    for i, y in enumerate(ys):
        scale = derivative if i < last else torch.where(exact_last.view(-1, 1, 1), 1.0, derivative)
        torch.mul(y, scale / batch, out=grad_s[i][lo:hi])


def _weight_space(model, inputs, pre, error, method, options, lo, hi, generators):
    """A weight-space guess (directional descent, paper §1, A.4) for replicates lo:hi: a
    direction v over all the weights (drawn per replicate in its parameter order, from the
    replicate's true gradient if the method reads it), its directional derivative g.v by a
    forward tangent pass, and .grad = (g.v) v."""
    params = [p for layer in model.layers for p in (layer.weight, layer.bias)]
    true = None
    if method.needs_true_gradient:
        grads = _exact_preactivation_grads(model, pre, error, lo, hi)
        true = [t for h, g in zip(inputs, grads) for t in (g.transpose(-1, -2) @ h[lo:hi], g.sum(-2))]
    per_replicate = []
    for r in range(lo, hi):
        extra = {"true_grads": [t[r - lo] for t in true]} if true is not None else {}
        per_replicate.append(method.guess([p[r] for p in params], generators[r], **options, **extra))
    v = [torch.stack(pieces) for pieces in zip(*per_replicate)]  # like params[k][lo:hi]
    tangent = None
    for i, layer in enumerate(model.layers):
        w, vw, vb = layer.weight[lo:hi], v[2 * i], v[2 * i + 1]
        t = torch.baddbmm(vb.unsqueeze(1), inputs[i][lo:hi], vw.transpose(-1, -2))  # W' x + b'
        if tangent is not None:  # + W (mask(s_{i-1}) * t_{i-1})
            t.baddbmm_(tangent.masked_fill(pre[i - 1][lo:hi] <= 0, 0), w.transpose(-1, -2))
        tangent = t
    derivative = (error[lo:hi] * tangent).sum(-1).mean(-1)  # of the batch-mean loss, [D]
    for p, direction in zip(params, v):
        torch.mul(direction, derivative.view(-1, *([1] * (direction.dim() - 1))),
                  out=p.grad[lo:hi])


def _order(runs: list[Run]) -> list[int]:
    """Stack order (`stack.stack_order`): by `Method.stack_rank` (activation space, weight
    space, backprop), so each estimator works on one contiguous block of replicates; within a
    rank by group, and within a group by optimizer, so that an optimizer's update covers
    blocks of consecutive replicates (`StackedOptimizer`'s segments). To keep those blocks
    few, within each rank an optimizer that the previous ranks also use comes first and one
    that later ranks use comes last (groups are placed by their optimizers' places).
    Otherwise the order of ``runs`` is kept (the sort is stable)."""
    rank = {id(run): get_method(run.method).stack_rank for run in runs}
    used = [{run.optimizer for run in runs if rank[id(run)] == k} for k in range(4)]

    def place(optimizer: str, k: int) -> tuple:
        later = any(optimizer in u for u in used[k + 1:])
        earlier = any(optimizer in u for u in used[:k])
        return later - earlier, optimizer

    group_place = {}
    for run in runs:
        key, here = (rank[id(run)], run.group()), place(run.optimizer, rank[id(run)])
        group_place[key] = min(group_place.get(key, here), here)
    return engine.stack_order(runs, lambda run: (
        group_place[rank[id(run)], run.group()], run.group(), place(run.optimizer, rank[id(run)])))


def _datasets(data, runs: list[Run]) -> tuple[list, list[int]]:
    """The datasets a stack of ``runs`` uses and, per run, the index of its own among them.
    ``data`` is one `Dataset` (every run's ``dataset`` None) or a dict of them by name (every
    run names one); those used must share input features, classes, training-set size,
    device and dtype."""
    if not isinstance(data, dict):
        named = sorted({run.dataset for run in runs if run.dataset is not None})
        if named:
            raise ValueError(f"runs name datasets ({', '.join(map(repr, named))}) but data is "
                             "one Dataset: pass a dict {name: Dataset}, or leave Run.dataset None")
        return [data], [0] * len(runs)
    names = []
    for run in runs:
        if run.dataset is None:
            raise ValueError(f"data is a dict of datasets ({', '.join(map(repr, data))}): every "
                             f"run names its own, but {run} names none")
        if run.dataset not in data:
            raise ValueError(f"unknown dataset {run.dataset!r}; the datasets given are "
                             f"{', '.join(map(repr, data))}")
        if run.dataset not in names:
            names.append(run.dataset)
    used = [data[name] for name in names]
    first = used[0]
    for name, d in zip(names, used):
        for what, get in (("input features", lambda d: d.in_features),
                          ("classes", lambda d: d.num_classes),
                          ("training examples", lambda d: len(d.train_y)),
                          ("device", lambda d: d.train_x.device),
                          ("dtype", lambda d: d.train_x.dtype)):
            if get(d) != get(first):
                raise ValueError(f"datasets of one stack must share their {what}: "
                                 f"{names[0]!r} has {get(first)}, {name!r} has {get(d)}")
    return used, [names.index(run.dataset) for run in runs]


def stackable_datasets(data: dict) -> list[list[str]]:
    """The names of ``data`` ({name: Dataset}) in groups that one stack can train together
    (sharing input features, classes, training-set size, device and dtype, as `train_stack`
    requires), in the order the names first appear."""
    groups = {}
    for name, d in data.items():
        shape = (d.in_features, d.num_classes, len(d.train_y), d.train_x.device, d.train_x.dtype)
        groups.setdefault(shape, []).append(name)
    return list(groups.values())


def _per_dataset(values: list[Tensor], index: Tensor | None) -> Tensor:
    """Replicate r's entry of ``values[its dataset]`` ([R] each): the evaluation of the whole
    stack on every dataset, each replicate's row picked from its own."""
    if index is None:
        return values[0]
    return torch.stack(values).gather(0, index.view(1, -1)).squeeze(0)


def train_stack(data, runs, *, depth: int, width: int, epochs: int, batch_size: int = 128,
                probe_examples: int = 0, probe_repeats: int = 1,
                progress: bool = False) -> list[dict]:
    """Train ``runs`` (`Run`s, of any methods the stack runs and any optimizers) side by side
    for ``epochs``, each on its own dataset: ``data`` is one `Dataset` for every run (whose
    ``dataset`` is then None) or a dict ``{name: Dataset}`` whose key each run names; the
    datasets a stack uses share input features, classes and training-set size (test sets may
    differ).

    Returns, in the order of ``runs``, the history `training.reference_mlp` returns for each
    run alone on its dataset (per-epoch ``train_acc``, ``test_acc``, ``train_loss``,
    ``diverged``, ``diverged_at_step``, ``steps``), with ``seconds`` the stack's wall time and
    ``replicates`` its size. With ``probe_examples`` > 0 every replicate is probed as
    `train_mlp` probes a run (`probes.probe`, before the first epoch and after each one, on
    its own dataset). Each epoch evaluates the whole stack on every dataset it uses. The run
    is checkpointed after every epoch and resumes from a saved state (`checkpoints`).
    """
    runs = _checked(runs, epochs)
    datasets, which = _datasets(data, runs)
    first = datasets[0]
    n = len(first.train_y)
    engine.check_batch_size(batch_size, n)
    order = _order(runs)
    stack = [runs[r] for r in order]
    model = _stacked_model(stack, first, depth, width)
    index = torch.tensor([which[r] for r in order], device=first.train_x.device)
    probes = _Probes([datasets[which[r]] for r in order], stack, probe_examples, probe_repeats)
    guesses = [seeds.guesses(run.seed, first.train_x.device) for run in stack]
    groups = _groups(stack)
    optimizers = ", ".join(dict.fromkeys(run.optimizer for run in stack))
    job = Job(stack, order, list(model.parameters()), StackedOptimizer(
                  model.parameters(), [r.optimizer for r in stack], [r.lr for r in stack],
                  [r.weight_decay for r in stack]),
              step=lambda x, y, generators: stacked_step(model, x, y, groups, generators),
              record=engine.epoch_recorder(lambda: _accuracies(model, datasets, index)),
              histories=[engine.new_history() for _ in stack],
              train_x=_end_to_end([d.train_x.flatten(1) for d in datasets]),
              train_y=_end_to_end([d.train_y for d in datasets]), batch_size=batch_size,
              steps=epochs * (n // batch_size), every=n // batch_size,
              observe=lambda histories, going, step: probes.observe(model, histories, going),
              generators={"guesses": guesses, "probes": probes.rngs}, n=n,
              offset=(index * n).view(-1, 1) if len(datasets) > 1 else None,
              key=repr(("mlp", depth, width, batch_size, epochs, probe_examples, probe_repeats,
                        stack, [d.name for d in datasets])),
              stamp={"replicates": len(stack)})
    return engine.run(job, progress=progress,
                      desc=f"stack of {len(stack)} ({depth}x{width}, {optimizers})")


def _end_to_end(tensors: list[Tensor]) -> Tensor:
    """The training sets end to end (replicate r's indices are shifted into its own)."""
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]


def _checked(runs, epochs) -> list[Run]:
    """``runs`` as `Run`s (also from dicts), each of a method the stack runs."""
    runs = [Run(**r) if isinstance(r, dict) else r for r in runs]
    if not runs:
        raise ValueError("train_stack needs at least one run")
    for run in runs:
        if not stackable(get_method(run.method)):
            raise ValueError(f"the stacked engine runs activation-space methods with a per-layer "
                             f"guess, weight-space guesses and backprop, not {run.method!r}")
    engine.check_schedule("epochs", epochs)
    return runs


def _stacked_model(stack: list[Run], data, depth: int, width: int):
    """Every run's MLP, initialised as `train_mlp` initialises it, stacked, with zero grads."""
    mlps = []
    for run in stack:
        torch.manual_seed(run.seed)
        mlps.append(MLP(data.in_features, width, depth, data.num_classes))
    model = stack_mlps(mlps).to(device=data.train_x.device, dtype=data.train_x.dtype)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    return model


def _accuracies(model, datasets, index: Tensor) -> tuple[Tensor, Tensor]:
    """Each replicate's train and test accuracy on its own dataset, on the device (the whole
    stack evaluated on every dataset)."""
    index = index if len(datasets) > 1 else None
    train = [engine.correct(model, d.train_x, d.train_y).double() / len(d.train_y)
             for d in datasets]
    test = [engine.correct(model, d.test_x, d.test_y).double() / len(d.test_y) for d in datasets]
    return _per_dataset(train, index), _per_dataset(test, index)


class _Probes:
    """`probes.probe` of replicates, once per epoch (outside the step loop): each replicate
    as its own `MLP`, on the first ``examples`` training images of its own dataset
    (``datasets[r]``), with its generator `seeds.mlp_probes`, as `training.reference_mlp`
    probes a run."""

    def __init__(self, datasets, stack, examples: int, repeats: int):
        self.batches = [(d.train_x[:examples], d.train_y[:examples]) for d in datasets]
        self.examples, self.repeats, self.stack = examples, repeats, stack
        self.rngs = [seeds.mlp_probes(run.seed, d.train_x.device)
                     for d, run in zip(datasets, stack)] if examples else []

    def observe(self, model, histories, replicates) -> None:
        for r in replicates if self.examples else ():
            run, (x, y) = self.stack[r], self.batches[r]
            scores = probe(model.unstack(r), x, y, run.probe_method or run.method,
                           self.rngs[r], repeats=self.repeats)
            for key, value in scores.items():
                histories[r].setdefault(key, []).append(value)


def train_grid(data, runs, *, depth: int, width: int, epochs: int, batch_size: int = 128,
               max_replicates: int | None = None, probe_examples: int = 0,
               probe_repeats: int = 1, progress: bool = False) -> list[dict]:
    """`train_stack` over a grid of ``runs`` of one architecture (any methods the stack runs,
    any optimizers; ``data`` one `Dataset` or a dict of them that the runs name): one stack,
    or with ``max_replicates`` consecutive chunks of the stack's order of at most that many
    runs each, to bound memory. Histories in ``runs``' order."""
    runs = [Run(**r) if isinstance(r, dict) else r for r in runs]
    if max_replicates is not None and (not isinstance(max_replicates, int) or max_replicates < 1):
        raise ValueError(f"max_replicates must be an integer >= 1 or None, got {max_replicates!r}")
    members = _order(runs)
    size = max_replicates or len(members)
    parts = [members[lo:lo + size] for lo in range(0, len(members), size)]
    options = dict(depth=depth, width=width, epochs=epochs, batch_size=batch_size,
                   probe_examples=probe_examples, probe_repeats=probe_repeats, progress=progress)
    # each chunk stored on its own, and independent of the others (`checkpoints.chunks`)
    stacks = checkpoints.chunks(train_stack, [((data, [runs[r] for r in part]), options)
                                              for part in parts])
    result = [None] * len(runs)
    for part, histories in zip(parts, stacks):
        for r, history in zip(part, histories):
            result[r] = history
    return result


def best_rate(sweep: dict) -> float | None:
    """The rate of ``sweep`` ({rate: history}) whose run ends with the highest train accuracy
    (the paper's choice, A.3); None where every rate diverged (a diverged run never wins)."""
    finite = {lr: final(h) for lr, h in sweep.items() if not math.isnan(final(h))}
    return max(finite, key=finite.get) if finite else None


def other_seeds(run_grid, data, runs, seeds: int, *, seed: int = 0, **grid_args) -> list:
    """Each of ``runs`` again, at its own rate, with seeds ``seed + 1 .. seed + seeds - 1``:
    one list of histories per run. ``run_grid(data, runs, **grid_args)`` trains runs side by
    side (`train_grid`, or a cached call of it)."""
    repeats = [replace(run, seed=seed + k) for run in runs for k in range(1, seeds)]
    repeated = run_grid(data, repeats, **grid_args) if repeats else []
    return [repeated[i * (seeds - 1):(i + 1) * (seeds - 1)] for i in range(len(runs))]


def rate_then_seeds(run_grid, data, cells, rates, seeds: int, *, seed: int = 0, **grid_args) -> list:
    """The paper's protocol for choosing a learning rate (A.3), on the runs' own terms: for each
    cell, a `Run` with its method, optimizer, dataset and options (its lr and seed ignored),
    train seed ``seed`` at every one of ``rates`` on the very data, architecture and epochs of
    ``grid_args`` that the cell is then trained with; keep the `best_rate`; then train seeds
    ``seed + 1 .. seed + seeds - 1`` at it (`other_seeds`). Returns, per cell in order, (the
    chosen rate, or None where every rate diverged; [history per seed]; {rate: the sweep's
    history})."""
    if seeds < 1 or not rates:
        raise ValueError(f"need at least one seed and one rate, got {seeds} seeds and rates {rates!r}")
    swept = run_grid(data, [replace(cell, seed=seed, lr=lr) for cell in cells for lr in rates],
                     **grid_args)
    sweeps = [dict(zip(rates, swept[i * len(rates):(i + 1) * len(rates)])) for i in range(len(cells))]
    chosen = [best_rate(sweep) for sweep in sweeps]
    kept = [lr if lr is not None else rates[0] for lr in chosen]
    repeated = other_seeds(run_grid, data, [replace(cell, seed=seed, lr=lr)
                                            for cell, lr in zip(cells, kept)],
                           seeds, seed=seed, **grid_args)
    return [(lr, [sweep[keep], *more], sweep)
            for lr, keep, sweep, more in zip(chosen, kept, sweeps, repeated)]
