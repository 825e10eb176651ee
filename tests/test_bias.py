"""The bias of a guess (A.1, Fig. 3): Monte Carlo against the formulas, on a tiny float64 MLP."""
import math

import numpy as np
import pytest
import torch

from gradguess.analysis import bias
from gradguess.analysis.bias import (COSINE, NOISE, RELATIVE, averaged_cosines,
                            covariance_step, expectation_check,
                            guess_samples, mean_guess_cosine, mean_step,
                            signal_to_noise, signal_to_noise_exponent, signal_to_noise_growth,
                            step_standard_error, toy_bias, w_transpose_expected_step)
from gradguess.core.estimators import (backprop_gradient, guessed_gradient, per_example_gradients,
                                  preactivation_jvp)
from gradguess.core.methods import METHODS
from gradguess.core.metrics import cosine_similarity

from conftest import traced


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def first_layer_gradient(model, x, y):
    """dL/ds_1 of the first example."""
    return per_example_gradients(model, x[:1], y[:1])[1][0][0]


@pytest.mark.parametrize("method", ["activation_perturbation", "activation_mixing", "w_transpose",
                                    "downstream", "w_transpose_debiased"])
def test_guess_samples_are_n_guesses_of_the_layer(net, method):
    model, x, _ = net
    mixes = method == "activation_mixing"
    ys = guess_samples(model, x, method, 300, rng(), within_batch=mixes)  # > one chunk of 256
    assert ys.shape == (300, model.layers[0].out_features) and torch.isfinite(ys).all()
    assert guess_samples(model, x, method, 5, rng(), layer=2).shape == (5, model.layers[2].out_features)


def test_within_batch_guesses_are_the_first_example_guess_in_the_batch(net):
    model, x, _ = net
    trace = traced(model, x)
    expected = METHODS["activation_mixing"].guess(model, trace, rng(7))[1][0]
    assert torch.equal(guess_samples(model, x, "activation_mixing", 1, rng(7), layer=1, within_batch=True)[0],
                       expected)


def test_activation_perturbation_averages_to_the_gradient(net):
    """Cov(y) = I: the mean step (g.y) y is g itself, within the Monte Carlo error."""
    model, x, y = net
    g = first_layer_gradient(model, x, y)
    ys = guess_samples(model, x, "activation_perturbation", 20000, rng())
    assert float((mean_step(ys, g) - g).norm()) <= 4 * step_standard_error(ys, g)
    check = expectation_check(ys, g, expected=g)
    assert check[RELATIVE] <= 4 * check[NOISE] and check[COSINE] == pytest.approx(1.0)


def test_w_transpose_mean_step_is_its_covariance_step(net):
    """A.1: E[(g.y) y] = D W^T W D g, by Monte Carlo against the analytic step; biased: cos < 1."""
    model, x, y = net
    g = first_layer_gradient(model, x, y)
    analytic = w_transpose_expected_step(model, x, g)
    w = model.layers[1].weight
    mask = (model.layers[0](x[:1])[0] > 0).double()
    assert torch.allclose(analytic, torch.diag(mask) @ w.T @ w @ torch.diag(mask) @ g)
    ys = guess_samples(model, x, "w_transpose", 20000, rng())
    assert float((mean_step(ys, g) - analytic).norm()) <= 4 * step_standard_error(ys, g)
    assert cosine_similarity(analytic, g) < 0.99
    # the covariance estimated from the samples gives the same step
    assert torch.allclose(covariance_step(ys, g), analytic, rtol=0, atol=0.1 * float(analytic.norm()))


def test_expectation_check_between_independent_samples(net):
    model, x, y = net
    g = first_layer_gradient(model, x, y)
    ys = guess_samples(model, x, "downstream", 10000, rng(1), k=2)
    others = guess_samples(model, x, "downstream", 10000, rng(2), k=2)
    check = expectation_check(ys, g, others=others)
    assert set(check) == {RELATIVE, NOISE, COSINE}
    assert check[RELATIVE] <= 4 * check[NOISE] and 0 < check[NOISE] < 0.1 and check[COSINE] < 0.99


def test_noise_is_the_size_of_the_difference_of_two_independent_estimates(net):
    """Both sides estimate the same mean from independent samples, so E|difference|^2 is the sum
    of both estimates' variances: the squared ratio difference / noise averages to 1 (it would
    average to 2 if the noise counted one side only)."""
    model, x, y = net
    g = first_layer_gradient(model, x, y)
    ratios = []
    for seed in range(40):
        ys = guess_samples(model, x, "w_transpose", 2000, rng(2 * seed))
        others = guess_samples(model, x, "w_transpose", 2000, rng(2 * seed + 1))
        check = expectation_check(ys, g, others=others)
        ratios.append((check[RELATIVE] / check[NOISE]) ** 2)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.4)
    # against a known expected step only the guesses' own noise counts
    ys = guess_samples(model, x, "w_transpose", 2000, rng(99))
    analytic = w_transpose_expected_step(model, x, g)
    assert expectation_check(ys, g, expected=analytic)[NOISE] == pytest.approx(
        step_standard_error(ys, g) / float(analytic.norm()))


def test_toy_bias_is_four_to_the_k_minus_one_times_g():
    g = torch.randn(16, generator=rng(), dtype=torch.float64)
    for k, row in toy_bias(g, 20000, rng(1)).items():
        assert row["(4^k - 1)|g|"] == pytest.approx((4 ** k - 1) * float(g.norm()))
        assert row["measured |E[g_hat] - g|"] == pytest.approx(row["(4^k - 1)|g|"], rel=0.1)


def test_averaged_cosines_of_one_guess_is_that_guess_cosine(net):
    """K = 1: the running formula gives the cosine of the one guessed weight gradient."""
    model, x, y = net
    curve = averaged_cosines(model, x, y, "w_transpose", 1, rng(3))
    guess = guessed_gradient(model, x[:1], y[:1], "w_transpose", generator=rng(3))
    assert curve.shape == (1,)
    assert curve[0] == pytest.approx(cosine_similarity(guess, backprop_gradient(model, x[:1], y[:1])[1]))


def test_unbiased_average_rises_towards_one(net):
    """Activation perturbation is unbiased: its average's cosine grows with K towards 1 and
    its signal-to-noise grows about tenfold over a decade of K."""
    model, x, y = net
    curve = averaged_cosines(model, x, y, "activation_perturbation", 5000, rng())
    assert curve.shape == (5000,)
    assert curve[9] < curve[199] < curve[-1] and curve[-1] > 0.95
    assert 5 <= signal_to_noise_growth(curve) <= 20


def test_directional_and_mixing_curves(net):
    model, x, y = net
    for method in ["directional", "activation_mixing"]:
        curve = averaged_cosines(model, x, y, method, 12, rng(), within_batch=method == "activation_mixing")
        assert curve.shape == (12,) and np.all(np.abs(curve) <= 1 + 1e-9)


def test_same_seed_same_results(net):
    model, x, y = net
    assert torch.equal(guess_samples(model, x, "activation_mixing", 10, rng(5), within_batch=True),
                       guess_samples(model, x, "activation_mixing", 10, rng(5), within_batch=True))
    assert np.array_equal(averaged_cosines(model, x, y, "downstream", 50, rng(5)),
                          averaged_cosines(model, x, y, "downstream", 50, rng(5)))
    g = torch.ones(4, dtype=torch.float64)
    assert toy_bias(g, 100, rng(5)) == toy_bias(g, 100, rng(5))


def test_signal_to_noise():
    assert signal_to_noise(1 / math.sqrt(2)) == pytest.approx(1.0)
    k = np.arange(1, 101)
    curve = np.sqrt(k / (k + 1000))  # cos^2/(1-cos^2) = K/1000
    assert signal_to_noise_growth(curve) == pytest.approx(10.0)
    assert signal_to_noise_exponent(curve) == pytest.approx(1.0)
    # a biased average: 1/SNR = 1/SNR_inf + 1/(c K), saturating; its exponent falls towards 0
    saturating = [1 / (1 / 0.05 + 1000 / k) for k in (k, 100 * k)]
    exponents = [signal_to_noise_exponent(np.sqrt(s / (1 + s))) for s in saturating]
    assert 0 < exponents[1] < 0.05 < exponents[0] < 1


def test_mean_guess_cosine_of_backprop_is_one(net):
    model, x, y = net
    assert mean_guess_cosine(model, x, y, "backprop", rng(), batch_size=3) == pytest.approx(1.0)


def test_bad_input_fails_clearly(net):
    model, x, y = net
    g = first_layer_gradient(model, x, y)
    with pytest.raises(ValueError, match="unknown method"):
        guess_samples(model, x, "no_such_method", 10, rng())
    with pytest.raises(ValueError, match="does not guess activations"):
        guess_samples(model, x, "directional", 10, rng())
    with pytest.raises(ValueError, match="positive integer"):
        averaged_cosines(model, x, y, "w_transpose", 0, rng())
    ys = guess_samples(model, x, "w_transpose", 10, rng())
    with pytest.raises(ValueError, match="either others"):
        expectation_check(ys, g)
    with pytest.raises(ValueError, match="like g"):
        expectation_check(ys[:, :3], g, expected=g)
    with pytest.raises(ValueError, match="no decade"):
        signal_to_noise_growth([0.1, 0.2])


@pytest.mark.parametrize("method", ["directional", "activation_mixing"])
def test_batched_averages_equal_a_loop_of_guesses(net, monkeypatch, method):
    """averaged_cosines takes its JVPs in batches (directional descent: vmapped chunks, here of
    7 directions; mixing: one JVP over copies of the example); a loop of one guess and one JVP
    at a time, summing the weight steps themselves, gives the same curve."""
    model, x, y = net
    n, generator, total, want = 40, rng(8), None, []
    monkeypatch.setattr(bias, "_CHUNK_NUMBERS", 7 * sum(p.numel() for p in model.parameters()))
    _, true = backprop_gradient(model, x[:1], y[:1])
    inputs = traced(model, x[:1]).inputs
    for _ in range(n):
        if method == "directional":
            step = guessed_gradient(model, x[:1], y[:1], method, generator=generator)
        else:  # the first example's guess drawn within the batch, its JVP over the batch
            guess = METHODS[method].guess(model, traced(model, x), generator)
            derivative = preactivation_jvp(model, x, y, guess)[0]
            step = [s for t, xi in zip(guess, inputs)
                    for s in (torch.outer(derivative * t[0], xi[0]), derivative * t[0])]
        total = step if total is None else [a + b for a, b in zip(total, step)]
        want.append(cosine_similarity(total, true))
    got = averaged_cosines(model, x, y, method, n, rng(8),
                           within_batch=method == "activation_mixing")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
