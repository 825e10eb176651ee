"""Summaries of the self-sharpening runs: per-epoch series of probes over seeds, window means;
Fig. 4's correlations over p, replicate by replicate, and the verdict their range gives.

The runs are `gradguess.engine.training.train_mlp` histories probed before the first epoch and after
each one (`gradguess.core.probes.probe`): ``layer_cosines`` and ``effective_rank`` hold one list
per probe, one value per layer.
"""
import numpy as np

from .decisions import banded
from ..core.metrics import rank_correlation

def hidden_cosine(history: dict) -> list[float]:
    """Per probe, the mean cosine of the guess over the layers before the last (the last
    layer's guess may be exact: self-sharpening's is, cosine 1 by construction)."""
    return [float(np.mean(c[:-1])) for c in history["layer_cosines"]]


def hidden_rank(history: dict) -> list[float]:
    """Per probe, the mean effective rank of the hidden weight matrices (neither the first
    layer's, which reads the input, nor the last's, which writes the classes)."""
    return [float(np.mean(r[1:-1])) for r in history["effective_rank"]]


# Series read off a probed history that are not stored under their own key.
DERIVED = {"hidden_cosine": hidden_cosine, "hidden_rank": hidden_rank}


def series(histories: list[dict], key: str) -> np.ndarray:
    """[seeds, records] of ``key`` for one method's runs: ``hidden_cosine`` or ``hidden_rank``
    ([seeds, epochs + 1], column 0 the initialisation) or any per-epoch key of the history
    (e.g. ``train_acc``: [seeds, epochs]). A run that diverged stops early: every run is cut
    to the shortest."""
    rows = [DERIVED[key](h) if key in DERIVED else list(h[key]) for h in histories]
    width = min(len(r) for r in rows)
    return np.array([r[:width] for r in rows], dtype=float)


def window_means(values: np.ndarray, window: int = 5) -> tuple[float, float]:
    """Means of a [seeds, epochs + 1] probe series over epochs 1..``window`` and over the last
    ``window`` records, all seeds together (one epoch's probe is noisy)."""
    values = np.asarray(values, dtype=float)
    return float(values[:, 1:1 + window].mean()), float(values[:, -window:].mean())


def correlations_by_replicate(powers, values) -> np.ndarray:
    """Spearman's correlation over ``powers`` of ``values`` [p, replicate], one per replicate."""
    values = np.asarray(values, dtype=float)
    return np.array([rank_correlation(powers, values[:, r]) for r in range(values.shape[1])])


def range_holds(correlations, threshold: float, *, at_most: bool = False) -> bool | None:
    """Three-valued, over the range [min, max] of the replicates' ``correlations`` (NaN left
    out): whether they are >= ``threshold`` (or <= it, ``at_most``): True if the whole range
    is, False if none is, None (undecided) if the range straddles the threshold."""
    low, high = np.nanmin(correlations), np.nanmax(correlations)
    if at_most:  # x <= t is -x >= -t
        low, high, threshold = -high, -low, -threshold
    return banded(low, high, reproduced_at=threshold)["reproduced"]
