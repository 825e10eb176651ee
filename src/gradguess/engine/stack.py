"""The stacked run engine: R runs of one model family trained side by side as the replicates of
one computation (every weight ``[R, ...]``), replicate r, number for number, the run it would
be alone (tests check this in float64 for every family, method and optimizer).

The engine owns what every family shares: the stack order (`Method.stack_rank`), each run's
seeded generators (`seeds`), the per-replicate optimizers (`StackedOptimizer`), the batch
orders and augmentation, divergence (a non-finite loss or weight ends a replicate's history,
as it ends a run), the read back to the host (once per ``every`` steps: nothing is read during
the steps between), observations, checkpoints (`checkpoints.save` at every read back,
`checkpoints.resume` at the start) and the histories, put back in the caller's order. A
family's adapter (`grid` for MLPs, `mixer_grid` for LocalMixers, `prompt_stack` for prompt
tuning) fills in a `Job`: how a step writes the replicates' gradients, how a read back is
recorded and what an observation measures.

The schedule is counted in steps of ``batch_size`` examples, ``n // batch_size`` per epoch (the
ragged last batch dropped), each epoch in a fresh order: an epoch-based family reads back once
per epoch (``every`` = steps per epoch), a step-based one every ``every`` steps and at the end.
"""
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from ..core.data import random_crop_flip_each
from ..core.methods import get_method
from ..core.optimizers import StackedOptimizer
from . import checkpoints, seeds
from .step import Step


@dataclass
class Job:
    """One stack's training, as a family's adapter describes it to `run`."""
    stack: list  # the runs in stack order, each with a ``seed``
    order: list[int]  # stack position -> the run's index in the caller's list
    params: list[Tensor]  # the replicates' weights, [R, ...]
    optimizer: StackedOptimizer
    step: Callable  # (x [R, B, ...], targets [R, B], generators) -> batch loss [R], gradients
    #                 in .grad; ``generators``: the guess generators (or a compiled step's stand-ins)
    record: Callable  # (histories, Tracker) at a read back -> stack positions still going
    histories: list[dict]
    train_x: Tensor  # one training set, or several end to end (see ``offset``)
    train_y: Tensor
    batch_size: int
    steps: int
    every: int  # steps between read backs
    observe: Callable = lambda histories, positions, step: None  # also at step 0
    generators: dict = field(default_factory=dict)  # name -> one per replicate (checkpointed);
    #                                                  the step draws from "guesses"
    n: int | None = None  # training examples per run (default: all of train_y)
    offset: Tensor | None = None  # [R, 1]: where each replicate's training set starts
    augment: tuple = ()  # stack positions whose batches are randomly cropped and flipped
    flip: bool = False
    key: str = ""  # the call a checkpoint belongs to
    stamp: dict = field(default_factory=dict)  # added to every history at the end


class Tracker:
    """What the device holds between read backs: the step, the losses since the last read
    (summed, ``loss_sum``, and one per step, ``losses``), and which replicates have diverged
    (``diverged``) at which step (``diverged_at``)."""

    def __init__(self, replicates: int, device):
        self.step, self.since, self.losses = 0, 0, []
        self.loss_sum = torch.zeros(replicates, dtype=torch.float64, device=device)
        self.diverged = torch.zeros(replicates, dtype=torch.bool, device=device)
        self.diverged_at = torch.zeros(replicates, dtype=torch.long, device=device)

    def track(self, loss: Tensor, bad: Tensor) -> None:
        """After a step: its losses, and which replicates' loss or weights turned non-finite
        (``bad``, `step.diverging`)."""
        self.step += 1
        self.since += 1
        self.diverged_at = torch.where(bad & ~self.diverged, self.step, self.diverged_at)
        self.diverged |= bad
        self.loss_sum += loss.nan_to_num().double()
        self.losses.append(loss)

    def reset(self) -> None:
        self.since, self.losses = 0, []
        self.loss_sum.zero_()


# --- what the families share --------------------------------------------------------------

def stack_order(runs, key: Callable = lambda run: ()) -> list[int]:
    """The runs' positions in a stack: by `Method.stack_rank`, then by ``key(run)`` (a family
    groups the runs its step serves together), stably."""
    return sorted(range(len(runs)), key=lambda r: (get_method(runs[r].method).stack_rank,
                                                   *key(runs[r])))


def check_schedule(name: str, value, least: int = 0) -> None:
    """An epoch or step count: an integer >= ``least``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


def check_batch_size(batch_size, n: int) -> None:
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be an integer in 1..{n} (the training set), "
                         f"got {batch_size!r}")


@torch.no_grad()
def correct(model, x: Tensor, y: Tensor, chunk: int = 4096) -> Tensor:
    """Correct predictions of ``model`` on ``x``, ``chunk`` examples at a time, on the device:
    one count, or one per replicate ([R]) for a stacked model."""
    return sum((model(x[i:i + chunk]).argmax(-1) == y[i:i + chunk]).sum(-1)
               for i in range(0, len(y), chunk))


def accuracy(model, x, y, batch_size: int = 4096) -> float | list[float]:
    """Fraction of ``x`` classified as ``y``; one per replicate for a stacked model."""
    fraction = correct(model, x, y, batch_size).double() / len(y)
    return float(fraction) if fraction.dim() == 0 else fraction.tolist()


def final(history: dict, key: str = "train_acc") -> float:
    """The last recorded value of ``key``; NaN for a diverged run or an empty history."""
    values = history.get(key) or []
    return float("nan") if history.get("diverged") is True or not values else float(values[-1])


def new_history(**extra) -> dict:
    """An epoch-based run's history before its first epoch."""
    return {"train_acc": [], "test_acc": [], "train_loss": [], "diverged": False,
            "diverged_at_step": None, "steps": 0, **extra}


def record_epoch(histories: list[dict], read: list[list[float]], step: int) -> list[int]:
    """Append one epoch of a stack of runs to their histories: ``read`` is [mean loss, train
    accuracy, test accuracy, diverged (0/1), step it diverged at], each a list over the
    replicates, read back once. A run that diverged within the epoch records the step and not
    the epoch, as `training.train` ends a run; runs that had diverged before are left as they
    are. Returns the replicates still going."""
    going = []
    for r, history in enumerate(histories):
        if history["diverged"]:
            continue
        if read[3][r]:
            history["diverged"], history["diverged_at_step"] = True, int(read[4][r])
            history["steps"] = int(read[4][r])
            continue
        history["steps"] = step
        history["train_loss"].append(read[0][r])
        history["train_acc"].append(read[1][r])
        history["test_acc"].append(read[2][r])
        going.append(r)
    return going


def epoch_recorder(accuracies: Callable) -> Callable:
    """A `Job.record` for an epoch-based family: the epoch's mean loss, ``accuracies()`` (train
    and test, [R] each, on the device) and divergence, read back in one go (`record_epoch`)."""
    def record(histories, t: Tracker) -> list[int]:
        train_acc, test_acc = accuracies()
        read = torch.stack([t.loss_sum / t.since, train_acc, test_acc, t.diverged.double(),
                            t.diverged_at.double()]).tolist()
        return record_epoch(histories, read, t.step)
    return record


# --- the loop -----------------------------------------------------------------------------

def run(job: Job, *, progress: bool = False, desc: str = "stack") -> list[dict]:
    """Train ``job``'s stack: ``job.steps`` steps, a read back (`Job.record`) every
    ``job.every`` steps and at the last, an observation (`Job.observe`) at step 0 and every
    ``job.every`` steps, until every replicate has diverged. Returns the histories in the
    caller's order, each with ``seconds``, the stack's wall time, and ``job.stamp``."""
    device, R = job.train_x.device, len(job.stack)
    gens = {"order": [seeds.batch_order(run.seed) for run in job.stack],
            "augment": [seeds.augmentation(job.stack[r].seed, device) for r in job.augment],
            **job.generators}
    t, n = Tracker(R, device), job.n or len(job.train_y)
    per_epoch, batches = n // job.batch_size, None
    resumed = _resume(job, t, gens)
    if resumed is None:
        job.observe(job.histories, range(R), 0)
    else:
        batches = resumed["batches"]
    start = time.perf_counter() - (resumed or {}).get("seconds", 0.0)
    step = Step(job.step, job.optimizer, job.params, job.generators.get("guesses", ()), device)
    bar = tqdm(total=job.steps, initial=t.step, disable=not progress, leave=False, desc=desc)
    while t.step < job.steps:
        at = t.step % per_epoch
        if at == 0:
            batches = _epoch_order(gens["order"], n, job.offset, device)
        idx = batches[:, at * job.batch_size:(at + 1) * job.batch_size]
        x = _augmented(job, job.train_x[idx], gens["augment"])
        t.track(*step(x, job.train_y[idx]))
        bar.update()
        if t.step % job.every == 0 or t.step == job.steps:
            if _read_back(job, t):
                break
            if checkpoints.active():  # a state is gathered only where it is kept
                checkpoints.save(_state(job, t, gens, batches if t.step % per_epoch else None,
                                        time.perf_counter() - start))
    bar.close()
    return _in_order(job, time.perf_counter() - start)


def _read_back(job: Job, t: Tracker) -> bool:
    """Record and observe; whether every replicate has diverged."""
    going = job.record(job.histories, t)
    t.reset()
    if t.step % job.every == 0:
        job.observe(job.histories, going, t.step)
    return all(history["diverged"] for history in job.histories)


def _epoch_order(generators, n: int, offset, device) -> Tensor:
    """[R, n]: each replicate's order of its training examples for an epoch, shifted into its
    own training set; one copy to the device for all."""
    batches = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
    return batches if offset is None else batches + offset


def _augmented(job: Job, x: Tensor, generators) -> Tensor:
    """The batches ``x`` [R, B, C, H, W], those of ``job.augment``'s replicates cropped (padding
    4) and flipped, each from its own generator."""
    if not job.augment:
        return x
    if len(job.augment) == len(job.stack):
        return random_crop_flip_each(x, generators, padding=4, flip=job.flip)
    rows = torch.tensor(job.augment, dtype=torch.long, device=x.device)
    return x.index_copy(0, rows, random_crop_flip_each(x[rows], generators, padding=4,
                                                       flip=job.flip))


def _in_order(job: Job, seconds: float) -> list[dict]:
    result = [None] * len(job.stack)
    for position, r in enumerate(job.order):
        result[r] = {**job.histories[position], "seconds": seconds, **job.stamp}
    return result


# --- checkpoints ----------------------------------------------------------------------------

def _state(job: Job, t: Tracker, gens: dict, batches, seconds: float) -> dict:
    """Everything a resumed run needs to go on as if never stopped (at a read back)."""
    return {"key": job.key, "step": t.step, "seconds": seconds, "histories": job.histories,
            "weights": [p.detach().cpu() for p in job.params],
            "optimizer": job.optimizer.state_dict(),
            "generators": {name: [g.get_state() for g in gs] for name, gs in gens.items()},
            "diverged": t.diverged.cpu(), "diverged_at": t.diverged_at.cpu(),
            "batches": None if batches is None else batches.cpu()}


def _resume(job: Job, t: Tracker, gens: dict) -> dict | None:
    """Restore the state an interrupted attempt at this very job saved, if any: its weights,
    optimizer, generators, histories and counters. A state of another call is ignored."""
    saved = checkpoints.resume()
    if saved is None or saved.get("key") != job.key:
        return None
    device = job.train_x.device
    with torch.no_grad():
        for p, w in zip(job.params, saved["weights"]):
            p.copy_(w)
    job.optimizer.load_state_dict(saved["optimizer"])
    for name, states in saved["generators"].items():
        for g, state in zip(gens[name], states):
            g.set_state(state)
    job.histories[:] = saved["histories"]
    t.step = saved["step"]
    t.diverged, t.diverged_at = saved["diverged"].to(device), saved["diverged_at"].to(device)
    batches = saved["batches"]
    return {"seconds": saved["seconds"], "batches": None if batches is None else batches.to(device)}
