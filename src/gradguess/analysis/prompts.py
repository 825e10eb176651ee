"""Numbers read off prompt-tuning runs."""
import math

from .histories import final


def final_accuracy(histories: list[dict], test_size: int) -> tuple[float, float]:
    """The mean final test accuracy of a method's runs (one history per seed, diverged runs
    left out) and its binomial standard error over the test images of every run counted
    (``test_size`` each): the noise of measuring, not of training. NaNs if every run diverged."""
    values = [final(history, "test_acc") for history in histories]
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    p = sum(values) / len(values)
    return p, math.sqrt(p * (1 - p) / (len(values) * test_size))
