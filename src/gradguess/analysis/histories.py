"""Numbers read off training histories (the dicts the runs of `gradguess.engine` return): a
run's final accuracy, its mean over the last epochs, the best of a learning-rate sweep, the
mean and spread over seeds, collapses, and when a curve gets half-way.

A diverged run has no final accuracy (NaN): it is counted as diverged, never as a number.
"""
import math

import numpy as np

from ..engine.stack import final  # noqa: F401  (the engine's reader, re-exported)


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
