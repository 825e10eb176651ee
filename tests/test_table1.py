import pytest
"""Table 1's statistics, checked on the paper's own Table 1 and on cases countable by hand."""
import math

import numpy as np

from gradguess.book import plotting
from gradguess.analysis.paper import PAPER_DATASETS, TABLE1
from gradguess.analysis.table1 import (PAPER_ARCHITECTURES, as_table, bootstrap_orderings,
                              by_difficulty, cell_stats, cell_text, gap_steps, gaps, grows, increasing,
                              orderings, paper_mean, paper_text, seed_gaps)

PROPOSED = ["activation_mixing", "w_transpose", "downstream"]
GUESSING = ["directional", "activation_perturbation", *PROPOSED]
CLAIMED = [["directional"], ["activation_perturbation"], PROPOSED, ["backprop"]]  # T1-order


def test_cell_stats_and_text_count_diverged_seeds():
    runs = [{"train_acc": [0.5, 0.8], "test_acc": [0.7], "diverged": False},
            {"train_acc": [0.6, 0.9], "test_acc": [0.8], "diverged": False},
            {"train_acc": [0.99], "test_acc": [0.99], "diverged": True}]
    mean, std, diverged = cell_stats(runs, "train")
    assert (round(mean, 9), round(std, 9), diverged) == (85.0, 5.0, 1)
    assert cell_text(mean, std, diverged) == "85.0 ± 5.0 (1 diverged)"
    assert cell_text(*cell_stats(runs[:2], "test")) == "75.0 ± 5.0"
    assert cell_text(*cell_stats(runs[2:], "test")) == "diverged"


def test_paper_table_layout():
    assert PAPER_ARCHITECTURES == ((3, 128), (6, 128), (3, 1024), (6, 1024))
    methods = [*GUESSING, "backprop"]
    table = as_table(paper_text, PAPER_ARCHITECTURES, methods, PAPER_DATASETS)
    assert table.shape == (4 * 6, 2 * 4)
    assert table["train", "cifar10"]["6×1024", plotting.label("activation_perturbation")] == "26.9 ± 1.6"
    test = as_table(paper_text, PAPER_ARCHITECTURES, methods, PAPER_DATASETS, splits=["test"])
    assert list(test.columns) == list(PAPER_DATASETS) and test.equals(table["test"])
    assert paper_mean("mnist", (3, 128), "backprop", "test") == TABLE1[3, 128, "backprop", "test", "mnist"][0]


def test_orderings_on_one_paper_cell_by_hand():
    # MNIST, 3x128, train: DD 92.3, AP 98.7, mixing 96.9, W^T 100.0, downstream 99.9, backprop 100.0
    checks = orderings(paper_mean, [(3, 128)], ["mnist"], CLAIMED)[:7]
    assert checks == [True,                 # DD < AP
                      False, True, True,    # AP < mixing, W^T, downstream
                      True, False, True]    # mixing, W^T (a tie), downstream < backprop


def test_orderings_count_one_check_per_pair_of_neighbouring_tiers():
    chain = [["a"], ["b", "c"], ["d"]]  # a < b, a < c, b < d, c < d
    means = {"a": 1, "b": 3, "c": 2, "d": 2.5}
    assert orderings(lambda n, arch, m, s: means[m], [(3, 64)], ["x"], chain) == [True, True, False, True] * 2
    assert orderings(lambda n, arch, m, s: means[m], [(3, 64)], ["x"], [["a"]]) == []


def test_orderings_count_seven_per_cell_and_follow_the_means():
    rank = {m: k for k, m in enumerate([*GUESSING, "backprop"])}  # DD < AP < ... < backprop
    up = orderings(lambda n, a, m, s: rank[m], [(3, 64), (6, 64)], ["a", "b", "c"], CLAIMED)
    assert len(up) == 3 * 2 * 2 * 7 and all(up)
    down = orderings(lambda n, a, m, s: -rank[m], [(3, 64)], ["a"], CLAIMED)
    assert not any(down)


def test_paper_table1_orderings():
    checks = orderings(paper_mean, PAPER_ARCHITECTURES, PAPER_DATASETS, CLAIMED)
    assert (len(checks), sum(checks)) == (224, 211)
    assert f"{sum(checks) / len(checks):.2f}" == "0.94"  # what the chapter quotes
    # DD < AP alone: it fails in 6 of the 32 cells, every one at width 1024
    dd_ap = orderings(paper_mean, PAPER_ARCHITECTURES, PAPER_DATASETS, CLAIMED[:2])
    assert (len(dd_ap), sum(dd_ap)) == (32, 26)
    assert all(orderings(paper_mean, [(3, 128), (6, 128)], PAPER_DATASETS, CLAIMED[:2]))


def test_gaps_by_hand():
    means = {("x", (3, 64)): {"backprop": 90, "g1": 60, "g2": 70, "g3": 80},  # gap 20
             ("x", (6, 64)): {"backprop": 80, "g1": 70, "g2": 70, "g3": 70}}  # gap 10
    table = gaps(lambda n, a, m, s: means[n, a][m], [(3, 64), (6, 64)], ["x"], ["g1", "g2", "g3"])
    assert list(table.columns) == ["train", "test"] and list(table.index) == ["x"]
    assert table["train"]["x"] == 15 and table["test"]["x"] == 15
    # MNIST, 3x128, test: 97.8 - mean(92.2, 96.9, 95.7, 97.5, 97.5) = 97.8 - 95.96
    one = gaps(paper_mean, [(3, 128)], ["mnist"], GUESSING)
    assert math.isclose(one["test"]["mnist"], 1.84, abs_tol=1e-9)


def test_paper_gap_grows_for_train_not_for_test():
    names = by_difficulty(PAPER_DATASETS)
    assert names == ["mnist", "svhn", "cifar10", "cifar100"]
    table = gaps(paper_mean, PAPER_ARCHITECTURES, names, GUESSING)
    assert [f"{g:.1f}" for g in table["train"]] == ["3.0", "33.2", "53.0", "84.3"]
    assert increasing(table["train"])
    assert not increasing(table["test"])  # SVHN's test gap (18.5) exceeds CIFAR-10's (8.9)


def test_increasing():
    assert increasing([1, float("nan"), 2, 3])
    assert not increasing([1, 1]) and not increasing([2, 1]) and not increasing([1])
    assert not increasing([float("nan"), 1])


def test_bootstrap_orderings_spread_comes_from_the_seeds():
    chain = [["a"], ["b"]]
    run = lambda acc: {"train_acc": [acc], "test_acc": [acc], "diverged": False}
    # a < b beyond any resample: every resample agrees
    clear = {"a": [run(0.1), run(0.2)], "b": [run(0.8), run(0.9)]}
    fractions = bootstrap_orderings(lambda n, arch, m: clear[m], [(3, 64)], ["x"], chain, resamples=50)
    assert fractions.shape == (50,) and (fractions == 1).all()
    # overlapping seeds: some resamples put a above b, and resampling is seeded
    close = {"a": [run(0.4), run(0.6)], "b": [run(0.5), run(0.55)]}
    fractions = bootstrap_orderings(lambda n, arch, m: close[m], [(3, 64)], ["x"], chain, resamples=200)
    assert 0 < fractions.mean() < 1
    again = bootstrap_orderings(lambda n, arch, m: close[m], [(3, 64)], ["x"], chain, resamples=200)
    assert (fractions == again).all()
    # a diverged seed stays out
    diverged = {"a": [run(0.1), {**run(0.99), "diverged": True}], "b": [run(0.5)]}
    fractions = bootstrap_orderings(lambda n, arch, m: diverged[m], [(3, 64)], ["x"], chain, resamples=20)
    assert (fractions == 1).all()


def test_seed_gaps_pair_seeds_by_index():
    run = lambda acc: {"train_acc": [acc], "test_acc": [acc], "diverged": False}
    # seed 0: backprop 0.9, guessing 0.5 and 0.7 -> gap 30; seed 1: 0.8 vs 0.6, 0.6 -> gap 20
    cells = {"backprop": [run(0.9), run(0.8)], "g1": [run(0.5), run(0.6)], "g2": [run(0.7), run(0.6)]}
    per_seed = seed_gaps(lambda n, a, m: cells[m], [(3, 64)], ["x"], ["g1", "g2"], "train")
    assert per_seed.shape == (1, 2) and np.allclose(per_seed, [[30, 20]])
    # a diverged guessing run leaves its seed's mean to the others
    cells["g2"][1] = {**run(0.99), "diverged": True}
    assert np.allclose(seed_gaps(lambda n, a, m: cells[m], [(3, 64)], ["x"], ["g1", "g2"], "train"), [[30, 20]])


def test_gap_steps_and_grows_decide_against_the_seed_noise():
    clear = [[10, 12, 11], [30, 31, 29]]  # a step of 19, SE about 1.2
    steps = gap_steps(clear)
    assert len(steps) == 1 and math.isclose(steps[0][0], 19)
    assert math.isclose(steps[0][1], math.hypot(*(np.std(r, ddof=1) / math.sqrt(3) for r in clear)))
    assert grows(steps) is True
    assert grows(gap_steps(clear[::-1])) is False  # a reversed step
    assert grows(gap_steps([[10, 20, 30], [12, 22, 32]])) is None  # +2 within its noise
    assert grows(gap_steps([[10, 12, 11], [30, 31, 29], [5, 7, 6]])) is False  # any reversed step fails it
    assert grows([]) is False  # one dataset decides nothing


def test_hardest_over_easiest_compares_the_end_datasets_with_welch_df():
    from gradguess.analysis.table1 import hardest_over_easiest
    per_seed = [[2.0, 4.0, 3.0], [50.0, 60.0, 55.0], [10.0, 12.0, 11.0]]  # MNIST, SVHN, CIFAR-100
    diff, se, df = hardest_over_easiest(per_seed)
    assert diff == pytest.approx(8.0)  # 11 - 3: the middle dataset plays no part
    assert se == pytest.approx(np.hypot(np.std([2, 4, 3], ddof=1), np.std([10, 12, 11], ddof=1)) / np.sqrt(3))
    assert df == pytest.approx(4.0)  # equal spreads, 3 seeds each
