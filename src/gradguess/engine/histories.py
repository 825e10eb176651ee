"""Training histories (the dicts `gradguess.engine.training.train` returns): how a stack of runs
records an epoch in them, and the numbers read off them: a run's final accuracy, its mean over
the last epochs, the best of a learning-rate sweep, the mean and spread over seeds, collapses,
and when a curve gets half-way.

A diverged run has no final accuracy (NaN): it is counted as diverged, never as a number.
"""
import math

import numpy as np


def final(history: dict, key: str = "train_acc") -> float:
    """The last recorded value of ``key``; NaN for a diverged run or an empty history."""
    values = history.get(key) or []
    return float("nan") if history.get("diverged") is True or not values else float(values[-1])


def last_mean(history: dict, key: str = "train_acc", last: int = 5) -> float:
    """The mean of the last ``last`` values of ``key`` (a collapse in the very last epoch
    weighs less); NaN for a diverged run or an empty history."""
    values = history.get(key) or []
    return float("nan") if history.get("diverged") is True or not values \
        else float(np.mean(values[-last:]))


def best_run(histories: list[dict], key: str = "train_acc") -> dict:
    """The run with the highest final ``key`` (a sweep's best learning rate); diverged runs
    lose to any that did not diverge."""
    return max(histories, key=lambda h: -math.inf if math.isnan(final(h, key)) else final(h, key))


def seed_summary(values) -> tuple[float, float, int]:
    """Mean and standard deviation of the finite ``values`` (one per seed) and how many were
    NaN (diverged)."""
    values = np.asarray(values, dtype=float)
    finite = values[~np.isnan(values)]
    if not len(finite):
        return float("nan"), float("nan"), len(values)
    return float(finite.mean()), float(finite.std()), int(np.isnan(values).sum())


def collapses(history: dict, key: str = "train_acc", drop: float = 0.1) -> int:
    """Epochs whose ``key`` fell more than ``drop`` below the run's best so far."""
    acc = np.asarray(history.get(key) or [], dtype=float)
    return int(np.sum(acc < np.maximum.accumulate(acc) - drop)) if len(acc) else 0


def half_way(steps, curve) -> float:
    """The first step at which ``curve`` has covered half of the way from its first value to
    its last; NaN if it never does."""
    curve = np.asarray(curve, dtype=float)
    start, end = curve[0], curve[-1]
    passed = np.nonzero((curve - start) * np.sign(end - start) >= 0.5 * abs(end - start))[0]
    return float(steps[passed[0]]) if len(passed) else float("nan")


def record_epoch(histories: list[dict], read: list[list[float]], step: int) -> list[int]:
    """Append one epoch of a stack of runs to their histories (`grid`, `mixer_grid`): ``read``
    is [mean loss, train accuracy, test accuracy, diverged (0/1), step it diverged at], each
    a list over the replicates, read back once. A run that diverged within the epoch records
    the step and not the epoch, as `training.train` ends a run; runs that had diverged before
    are left as they are. Returns the replicates still going."""
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
