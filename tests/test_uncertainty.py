import math

import numpy as np
import pytest

from gradguess.analysis.uncertainty import (accuracy_difference, below, binomial_se, decided, difference, mean_and_se,
                                   paired_difference, ratio_at_least, ratio_factor)


def test_mean_and_se_is_the_sample_standard_error_of_the_finite_values():
    mean, se = mean_and_se([1.0, 3.0, float("nan"), 5.0])
    assert mean == 3.0 and math.isclose(se, 2 / math.sqrt(3))  # s = 2 (ddof 1), n = 3
    mean, se = mean_and_se([4.0, float("nan")])
    assert mean == 4.0 and math.isnan(se)  # one value measures no spread


def test_a_nan_standard_error_leaves_a_comparison_undecided():
    assert below((1.0, float("nan")), (5.0, 0.1)) is None


def test_binomial_se_matches_the_spread_of_simulated_accuracies():
    accuracies = np.random.default_rng(0).binomial(8000, 0.7, size=4000) / 8000
    assert binomial_se(0.7, 8000) == pytest.approx(accuracies.std(), rel=0.05)
    assert binomial_se(1.0, 8000) == 0 and binomial_se(0.0, 100) == 0
    assert math.isclose(binomial_se(0.5, 100), 0.05)


def test_accuracy_difference_in_points_with_both_errors():
    gap, se = accuracy_difference(0.8, 0.6, 1000)
    assert gap == pytest.approx(20.0)
    assert se == pytest.approx(100 * math.sqrt(0.8 * 0.2 / 1000 + 0.6 * 0.4 / 1000))
    gap, se = accuracy_difference(0.8, 0.6, 1000, weight=0.5)  # 0.8 - half of 0.6
    assert gap == pytest.approx(50.0)
    assert se == pytest.approx(100 * math.sqrt(0.8 * 0.2 / 1000 + 0.25 * 0.6 * 0.4 / 1000))
    assert difference((3.0, 0.3), (1.0, 0.4)) == pytest.approx((2.0, 0.5))


def test_below_decides_only_beyond_two_standard_errors_of_the_difference():
    assert below((1.0, 0.1), (2.0, 0.1)) is True
    assert below((2.0, 0.1), (1.0, 0.1)) is False
    assert below((1.0, 0.3), (1.5, 0.3)) is None  # 0.5 < 2 * 0.42


def test_ratio_at_least_on_a_log_scale():
    # log(100) - log(50) = 0.69 against SE hypot(0.1, 0.1) = 0.14: decided
    assert ratio_at_least((100.0, 10.0), (1.0, 0.1), 50) is True
    assert ratio_at_least((100.0, 10.0), (1.0, 0.1), 500) is False
    assert ratio_at_least((100.0, 50.0), (1.0, 0.5), 50) is None  # SE 0.71: within two of log 2
    assert ratio_factor((100.0, 10.0), (1.0, 0.1)) == pytest.approx(math.exp(2 * math.hypot(0.1, 0.1)))


def test_decided_names_the_three_values():
    assert [decided(c) for c in (True, False, None)] == ["holds", "fails", "undecided"]


def test_paired_difference_adds_the_seed_spread_to_the_binomial_error():
    gap, se = paired_difference([0.80, 0.82], [0.60, 0.61], 1000)
    assert gap == pytest.approx(20.5)
    seed_se = np.std([20.0, 21.0], ddof=1) / math.sqrt(2)
    binomial = accuracy_difference(0.81, 0.605, 1000)[1] / math.sqrt(2)
    assert se == pytest.approx(math.hypot(seed_se, binomial))
    # seeds that agree exactly still leave the binomial error; one seed leaves it undecided
    assert paired_difference([0.8, 0.8], [0.6, 0.6], 1000)[1] > 0
    assert math.isnan(paired_difference([0.8], [0.6], 1000)[1])


def test_welch_df_lies_between_the_smaller_and_the_sum():
    from gradguess.analysis.uncertainty import welch_df
    assert welch_df(1.0, 3, 1.0, 3) == pytest.approx(6.0)  # equal errors: the sum
    assert 3 <= welch_df(1.0, 3, 0.1, 9) <= 12
    assert welch_df(1.0, 3, 0.0, 9) == pytest.approx(3.0)  # one exact mean: the other's df


def test_ratio_at_most_on_a_log_scale():
    from gradguess.analysis.uncertainty import ratio_at_most
    assert ratio_at_most((100.0, 1.0), (1.0, 0.01), 200) is True
    assert ratio_at_most((400.0, 1.0), (1.0, 0.01), 200) is False
    assert ratio_at_most((221.0, 20.0), (1.0, 0.1), 200) is None  # within its noise
