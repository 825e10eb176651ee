"""The self-sharpening chapter's summaries: which layers a probe series averages, how runs of
different lengths line up, which epochs a window mean covers."""
import numpy as np

from conftest import blobs
from gradguess.analysis.sharpening import (correlations_by_replicate, hidden_cosine, hidden_rank, range_holds,
                                  series, window_means)
from gradguess.engine.training import train_mlp

# two probes (initialisation, one epoch) of a 4-layer net
RUN = {"layer_cosines": [[0.1, 0.3, 0.5, 1.0], [0.2, 0.4, 0.6, 1.0]],
       "effective_rank": [[8.0, 4.0, 6.0, 3.0], [8.0, 2.0, 4.0, 3.0]],
       "train_acc": [0.5], "diverged": False}


def test_hidden_series_leave_out_the_layers_they_should():
    # the last layer's cosine (exact for self-sharpening) never lifts the hidden mean
    assert np.allclose(hidden_cosine(RUN), [0.3, 0.4])
    # the first and last weight matrices are not hidden ones
    assert np.allclose(hidden_rank(RUN), [5.0, 3.0])


def test_series_cuts_every_run_to_the_shortest():
    diverged = {"layer_cosines": RUN["layer_cosines"][:1], "effective_rank": RUN["effective_rank"][:1],
                "train_acc": [], "diverged": True}
    values = series([RUN, diverged], "hidden_cosine")
    assert values.shape == (2, 1) and np.allclose(values[:, 0], [0.3, 0.3])
    assert series([RUN, RUN], "train_acc").shape == (2, 1)


def test_window_means_skip_the_initialisation():
    values = np.array([[100.0, 1, 2, 3, 4], [100.0, 3, 4, 5, 6]])  # column 0: the initial probe
    early, late = window_means(values, window=2)
    assert early == np.mean([1, 2, 3, 4]) and late == np.mean([3, 4, 5, 6])


def test_series_of_a_probed_run_has_a_probe_before_the_first_epoch():
    runs = [train_mlp(blobs(n=96), depth=3, width=8, method="w_transpose", seed=s, epochs=2,
                      batch_size=16, probe_examples=16, probe_repeats=2) for s in range(2)]
    assert series(runs, "hidden_rank").shape == (2, 3)  # initialisation + 2 epochs
    assert series(runs, "train_acc").shape == (2, 2)
    cosines = series(runs, "hidden_cosine")
    assert np.all(np.abs(cosines) <= 1) and np.all(np.isfinite(cosines))
    # a 3-layer MLP has one hidden weight matrix (8 x 8): its effective rank is in [1, 8]
    ranks = series(runs, "hidden_rank")
    assert np.all((ranks >= 1) & (ranks <= 8))
    assert np.allclose(ranks[0], [r[1] for r in runs[0]["effective_rank"]])


def test_correlations_by_replicate_read_each_replicate_alone():
    powers = [0.5, 1, 2]
    values = np.array([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]])  # [p, replicate]: falling, rising
    assert np.allclose(correlations_by_replicate(powers, values), [-1, 1])


def test_range_holds_needs_the_whole_range_past_the_threshold():
    assert range_holds([0.9, 1.0], 0.8) is True
    assert range_holds([0.5, 0.9], 0.8) is None  # straddles
    assert range_holds([0.5, 0.7], 0.8) is False
    assert range_holds([-1.0, -0.9], -0.8, at_most=True) is True
    assert range_holds([-1.0, -0.5], -0.8, at_most=True) is None
    assert range_holds([-0.7, 0.2], -0.8, at_most=True) is False
    assert range_holds([0.9, float("nan")], 0.8) is True  # a replicate without a correlation is left out
