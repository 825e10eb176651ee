"""The uncertainty of the statistics that decide the verdicts: standard errors over seeds,
inputs or steps, binomial standard errors of accuracies, and comparisons of (mean, standard
error) pairs decided only beyond their noise (`ledger.exceeds`: True, False, or None where the
noise cannot decide).

A standard error over a few seeds is itself noisy, so a comparison over seeds clears the
Student-t quantile of its degrees of freedom (`decisions.critical`: 12.71 standard errors with 2
seeds, 4.30 with 3, 3.18 with 4), not a fixed two; unpaired comparisons of two such means take
Welch's degrees of freedom (`welch_df`)."""
import math

import numpy as np

from .decisions import critical, exceeds


def mean_and_se(values) -> tuple[float, float]:
    """The mean of the finite ``values`` (one per seed, input or step) and its standard error
    s / sqrt(n), s the sample standard deviation; NaN where fewer than two are finite (a NaN
    standard error leaves every comparison undecided)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan")
    return mean, float(values.std(ddof=1) / math.sqrt(len(values)))


def binomial_se(accuracy: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy p measured on n images (the noise
    of the images drawn; the spread between training runs is not in it)."""
    p = float(np.clip(accuracy, 0.0, 1.0))
    return math.sqrt(p * (1 - p) / n)


def difference(a: tuple[float, float], b: tuple[float, float], weight: float = 1.0) -> tuple[float, float]:
    """a - weight * b for two independent (mean, SE) pairs, with SE sqrt(se_a^2 + weight^2 se_b^2)."""
    return a[0] - weight * b[0], math.hypot(a[1], weight * b[1])


def accuracy_difference(a: float, b: float, n: int, weight: float = 1.0) -> tuple[float, float]:
    """a - weight * b for two accuracies each measured on n images, in percentage points, with
    its binomial standard error in points."""
    gap, se = difference((a, binomial_se(a, n)), (b, binomial_se(b, n)), weight)
    return 100 * gap, 100 * se


def paired_difference(a, b, n: int, weight: float = 1.0) -> tuple[float, float]:
    """a - weight * b for the accuracies of runs paired by seed (one per seed, each measured on n
    images), in percentage points: the mean of the per-seed differences and its standard error
    over seeds, with the binomial error of the mean difference added (a few seeds can agree by
    chance; a single run's binomial error alone understates its noise several times over)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean, se = mean_and_se(100 * (a - weight * b))
    binomial = accuracy_difference(float(a.mean()), float(b.mean()), n, weight)[1] / math.sqrt(len(a))
    return mean, math.hypot(se, binomial)


def welch_df(se_a: float, df_a: float, se_b: float, df_b: float) -> float:
    """Welch-Satterthwaite degrees of freedom of a - b for two independent means with standard
    errors se_a, se_b on df_a, df_b degrees of freedom: (se_a^2 + se_b^2)^2 /
    (se_a^4 / df_a + se_b^4 / df_b); at least min(df_a, df_b), at most df_a + df_b."""
    if se_a == 0 and se_b == 0:
        return float(df_a + df_b)
    return (se_a ** 2 + se_b ** 2) ** 2 / (se_a ** 4 / df_a + se_b ** 4 / df_b)


def below(a: tuple[float, float], b: tuple[float, float], z: float | None = None,
          df: float | None = None) -> bool | None:
    """a < b beyond `critical` (of ``df``, or ``z``) standard errors of the difference; a and b
    are (mean, SE) pairs."""
    gap, se = difference(b, a)
    return exceeds(gap, 0.0, se, z, df)


def log_ratio(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """log(a / b) for two (mean, SE) pairs of positive statistics, with its delta-method standard
    error sqrt((se_a / a)^2 + (se_b / b)^2): the scale on which ratios and orderings of
    quantities that span decades are compared."""
    return math.log(a[0] / b[0]), math.hypot(a[1] / a[0], b[1] / b[0])


def ratio_at_least(a: tuple[float, float], b: tuple[float, float], threshold: float,
                   z: float | None = None) -> bool | None:
    """a / b >= threshold, decided on a log scale (`log_ratio`)."""
    value, se = log_ratio(a, b)
    return exceeds(value, math.log(threshold), se, z)


def ratio_at_most(a: tuple[float, float], b: tuple[float, float], threshold: float,
                  z: float | None = None) -> bool | None:
    """a / b <= threshold, decided on a log scale (`log_ratio`)."""
    value, se = log_ratio(a, b)
    return exceeds(math.log(threshold), value, se, z)


def ratio_factor(a: tuple[float, float], b: tuple[float, float], z: float | None = None) -> float:
    """The factor exp(z * SE of log(a / b)) within which the ratio a / b is known."""
    return math.exp((critical() if z is None else z) * log_ratio(a, b)[1])


def decided(condition: bool | None) -> str:
    """How a three-valued condition reads in a table."""
    return {True: "holds", False: "fails", None: "undecided"}[condition]
