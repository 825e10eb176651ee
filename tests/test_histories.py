"""Numbers read off training histories: diverged runs are never numbers."""
import math

from gradguess.analysis.histories import best_run, collapses, final, half_way, last_mean, seed_summary

RUN = {"train_acc": [0.2, 0.5, 0.3, 0.6, 0.7, 0.8], "diverged": False}
DIVERGED = {"train_acc": [0.9], "diverged": True}


def test_final_and_last_mean():
    assert final(RUN) == 0.8 and math.isnan(final(DIVERGED))
    assert math.isnan(final({"train_acc": [], "diverged": False}))
    assert abs(last_mean(RUN, last=2) - 0.75) < 1e-12 and math.isnan(last_mean(DIVERGED))


def test_best_run_never_picks_a_diverged_run():
    worse = {"train_acc": [0.1], "diverged": False}
    assert best_run([DIVERGED, worse, RUN]) is RUN
    assert best_run([DIVERGED, worse]) is worse


def test_seed_summary_counts_diverged_seeds():
    mean, std, diverged = seed_summary([1.0, 3.0, float("nan")])
    assert (mean, std, diverged) == (2.0, 1.0, 1)
    assert seed_summary([float("nan")])[2] == 1 and math.isnan(seed_summary([float("nan")])[0])


def test_collapses_and_half_way():
    assert collapses(RUN) == 1  # 0.3 after 0.5
    assert half_way([0, 10, 20, 30], [0.0, 0.2, 0.6, 1.0]) == 20
    assert half_way([0, 10, 20], [1.0, 0.4, 0.0]) == 10  # a falling curve
