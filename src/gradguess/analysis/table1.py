"""Table 1's statistics: a cell's mean ± std over seeds, the claimed pairwise orderings
(T1-order), and the gap to backprop by dataset with its steps' standard errors over seeds
(T1-gap); the standard errors themselves come from `gradguess.analysis.uncertainty`.

A cell is one dataset, architecture ``(depth, width)``, method and split (``"train"`` or
``"test"``); its numbers are accuracies in percent. The orderings and gaps read cells through a
function ``mean_of(name, arch, method, split)``, so the paper's Table 1 (`paper_mean`) and our
runs go through the same code.
"""
import itertools
import math

import numpy as np
import pandas as pd

from .histories import final, seed_summary
from .decisions import all_of, exceeds
from ..core.methods import get_method
from .paper import TABLE1
from .uncertainty import difference, mean_and_se, welch_df

SPLITS = ("train", "test")
PAPER_ARCHITECTURES = tuple(dict.fromkeys((depth, width) for depth, width, *_ in TABLE1))
# T1-gap's order of the datasets, easiest first
DIFFICULTY = ("mnist", "fashion-mnist", "svhn", "cifar10", "cifar100")


def cell_stats(histories, split: str) -> tuple[float, float, int]:
    """Mean and std (in %) of the final ``split`` accuracy over the runs (one per seed) that
    did not diverge, and how many diverged."""
    return seed_summary([100 * final(h, f"{split}_acc") for h in histories])


def cell_text(mean: float, std: float, diverged: int = 0) -> str:
    """``mean ± std``, with ``(k diverged)`` when some seeds diverged; ``diverged`` if all did."""
    if np.isnan(mean):
        return "diverged"
    return f"{mean:.1f} ± {std:.1f}" + (f" ({diverged} diverged)" if diverged else "")


def paper_mean(name: str, arch: tuple[int, int], method: str, split: str) -> float:
    """The paper's Table 1 mean for a cell."""
    return TABLE1[(*arch, method, split, name)][0]


def paper_text(name: str, arch: tuple[int, int], method: str, split: str) -> str:
    """The paper's Table 1 cell as it prints it, ``mean ± std``."""
    return cell_text(*TABLE1[(*arch, method, split, name)])


def arch_label(arch: tuple[int, int]) -> str:
    """An architecture ``(depth, width)`` as tables and figures name it: ``3×128``."""
    return f"{arch[0]}×{arch[1]}"


def as_table(text_of, archs, methods, names, splits=SPLITS) -> pd.DataFrame:
    """Table 1's layout: a column per split of ``splits`` and dataset of ``names``, a row per
    architecture (`arch_label`) and method, each entry ``text_of(name, arch, method, split)``.
    With one split, a column per dataset."""
    table = pd.DataFrame(
        {(split, name): {(arch_label((d, w)), get_method(m).label): text_of(name, (d, w), m, split)
                         for d, w in archs for m in methods}
         for split in splits for name in names})
    return table.droplevel(0, axis=1) if len(splits) == 1 else table


def orderings(mean_of, archs, names, chain) -> list[bool]:
    """The pairwise orderings of a claimed ``chain`` of tiers of methods (T1-order's is
    ``[[DD], [AP], [mixing, W^T, downstream], [backprop]]``), each True where it holds: every
    method of a tier below every method of the next, per dataset, architecture and split."""
    checks = []
    for name, arch, split in itertools.product(names, archs, SPLITS):
        for lower, upper in zip(chain, chain[1:]):
            checks += [mean_of(name, arch, low, split) < mean_of(name, arch, up, split)
                       for low in lower for up in upper]
    return checks


def bootstrap_orderings(histories_of, archs, names, chain, *, resamples: int = 1000,
                        seed: int = 0) -> np.ndarray:
    """T1-order's fraction of the claimed orderings that hold (`orderings`), on ``resamples``
    bootstrap resamples of the seeds: each cell's mean over its runs drawn with replacement.
    ``histories_of(name, arch, method)`` gives a cell's runs, one per seed; diverged runs stay
    out, as in `cell_stats`. The spread of the fractions estimates the seed-to-seed spread of
    the fraction (float rounding can move a chaotic run by as much as a change of seed); with
    few seeds a bootstrap understates that spread."""
    rng = np.random.default_rng(seed)
    methods = [m for tier in chain for m in tier]
    finals = {(name, arch, m, split): np.array([100 * final(h, f"{split}_acc")
                                                for h in histories_of(name, arch, m)])
              for name in names for arch in archs for m in methods for split in SPLITS}
    finals = {key: values[~np.isnan(values)] for key, values in finals.items()}
    fractions = np.empty(resamples)
    for i in range(resamples):
        means = {key: rng.choice(values, len(values)).mean() if len(values) else np.nan
                 for key, values in finals.items()}
        fractions[i] = np.mean(orderings(lambda *cell: means[cell], archs, names, chain))
    return fractions


def gaps(mean_of, archs, names, guessing, reference: str = "backprop") -> pd.DataFrame:
    """T1-gap's gaps: the ``reference`` method's accuracy minus the mean of the ``guessing``
    methods', averaged over ``archs``; a row per dataset of ``names``, a column per split."""
    return pd.DataFrame(
        {split: {name: np.mean([mean_of(name, a, reference, split)
                                - np.mean([mean_of(name, a, m, split) for m in guessing])
                                for a in archs])
                 for name in names}
         for split in SPLITS})


def by_difficulty(names) -> list[str]:
    """Those of ``names`` that T1-gap orders, easiest first."""
    return [name for name in DIFFICULTY if name in names]


def increasing(values) -> bool:
    """Whether the values that are not NaN strictly increase (and there are at least two): the
    paper's own gaps, without their noise (T1-gap on our runs decides with `grows`)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return len(values) >= 2 and bool(np.all(np.diff(values) > 0))


def seed_gaps(histories_of, archs, names, guessing, split: str, reference: str = "backprop") -> np.ndarray:
    """T1-gap's gap seed by seed, [dataset of ``names``, seed]: for seed k (runs paired by their
    index), the mean over ``archs`` of reference_k - mean over ``guessing`` methods of m_k, final
    ``split`` accuracies in %; a diverged run is left out of every mean it would enter."""
    def accs(name, arch, m):
        return np.array([100 * final(h, f"{split}_acc") for h in histories_of(name, arch, m)])

    return np.array([np.nanmean([accs(name, a, reference) - np.nanmean([accs(name, a, m) for m in guessing], 0)
                                 for a in archs], 0)
                     for name in names])


def gap_steps(per_seed) -> list[tuple[float, float]]:
    """The steps between consecutive datasets' gaps ([dataset, seed], `seed_gaps`), each with
    its standard error: step = mean(gap_j+1) - mean(gap_j), SE = sqrt(SE_j^2 + SE_j+1^2), each
    SE over seeds (`uncertainty.mean_and_se`). Unpaired: where one seed's runs on two datasets correlate
    (they may share an initialisation), it overstates the noise rather than understates it."""
    stats = [mean_and_se(row) for row in np.asarray(per_seed, dtype=float)]
    return [difference(later, earlier) for earlier, later in zip(stats, stats[1:])]


def grows(steps, z: float = 2.0) -> bool | None:
    """Three-valued: whether every step (`gap_steps`) is above 0 beyond ``z`` standard errors
    (None if none is below but some is within them); False with no step to decide."""
    return all_of(*(exceeds(step, 0, se, z) for step, se in steps)) if steps else False


def hardest_over_easiest(per_seed) -> tuple[float, float, float]:
    """T1-gap's statistic for one split: the last (hardest) dataset's gap minus the first's
    ([dataset, seed], `seed_gaps`), its standard error from each gap's spread over seeds
    (unpaired), and Welch's degrees of freedom (`uncertainty.welch_df`)."""
    rows = [np.asarray(row, dtype=float) for row in per_seed]
    first, last = (row[np.isfinite(row)] for row in (rows[0], rows[-1]))
    (a, se_a), (b, se_b) = mean_and_se(first), mean_and_se(last)
    return b - a, math.hypot(se_a, se_b), welch_df(se_b, len(last) - 1, se_a, len(first) - 1)
