"""Verdicts decided three-valued against their noise: a condition holds, fails, or is
undecided (None) where its statistic lies within its uncertainty of a threshold; the
quantile a comparison over seeds must clear."""

VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive", "not tested")
NOT_TESTED = VERDICTS[4]


def verdict(reproduced: bool | None, partly: bool | None = False) -> str:
    """The verdict a rule gives from its two conditions, each True, False, or None where the
    data cannot decide it (a statistic within its uncertainty of a threshold): reproduced if the
    first holds; partly if only the second does; not reproduced if neither; inconclusive where
    an undecided condition could change which of these it is."""
    reproduced, partly = (None if c is None else bool(c) for c in (reproduced, partly))
    if reproduced is None or (reproduced is False and partly is None):
        return VERDICTS[3]
    return VERDICTS[0] if reproduced else VERDICTS[1] if partly else VERDICTS[2]


def critical(df: float | None = None, level: float = 0.95) -> float:
    """How many standard errors a difference must clear to count: the two-sided Student-t
    quantile t_{(1 + level)/2, df} for a statistic estimated over seeds with ``df`` degrees of
    freedom (12.71, 4.30 and 3.18 at 95% for 2, 3 and 4 seeds); 2 for a standard error whose
    own noise is negligible (binomial, Monte Carlo over many draws: ``df`` None)."""
    if df is None:
        return 2.0
    if not df >= 1:
        raise ValueError(f"a comparison over seeds needs at least 1 degree of freedom (2 seeds), got {df}")
    from scipy.stats import t
    return float(t.ppf((1 + level) / 2, df))


def exceeds(value: float, threshold: float, se: float, z: float | None = None,
            df: float | None = None) -> bool | None:
    """Whether ``value`` exceeds ``threshold`` beyond its noise: True if ``value - threshold
    > z * se``, False if ``< -z * se``, None (undecided) in between. ``se`` is the standard
    error of ``value`` (seed spread, Monte Carlo or binomial error); ``z`` is `critical` of its
    degrees of freedom ``df`` unless given."""
    if se < 0:
        raise ValueError(f"a standard error cannot be negative, got {se}")
    z = critical(df) if z is None else z
    margin = value - threshold
    return True if margin > z * se else False if margin < -z * se else None


def all_of(*conditions: bool | None) -> bool | None:
    """Three-valued 'and': False if any is False, else None if any is undecided, else True."""
    conditions = [None if c is None else bool(c) for c in conditions]
    return False if False in conditions else None if None in conditions else True


def any_of(*conditions: bool | None) -> bool | None:
    """Three-valued 'or': True if any is True, else None if any is undecided, else False."""
    conditions = [None if c is None else bool(c) for c in conditions]
    return True if True in conditions else None if None in conditions else False


def at_least(count: int, conditions) -> bool | None:
    """Three-valued 'at least ``count`` of ``conditions`` hold'."""
    conditions = [None if c is None else bool(c) for c in conditions]
    sure, possible = conditions.count(True), conditions.count(True) + conditions.count(None)
    return True if sure >= count else False if possible < count else None


def banded(low: float, high: float, reproduced_at: float, partly_at: float | None = None) -> dict:
    """A threshold rule decided by an interval [low, high] of its statistic (its uncertainty:
    a bootstrap interval, a seed spread): a threshold holds if the whole interval is at or above
    it, fails if the whole interval is below it, and is undecided if the interval straddles it.
    Returns `Ledger.record`'s ``reproduced`` and ``partly`` keywords."""
    if not low <= high:
        raise ValueError(f"an interval needs low <= high, got [{low}, {high}]")

    def holds(threshold):
        return True if low >= threshold else False if high < threshold else None

    return {"reproduced": holds(reproduced_at),
            "partly": False if partly_at is None else holds(partly_at)}
