"""A prompt-tuning method's final accuracy over seeds (`gradguess.analysis.prompts.final_accuracy`)."""
import math

import pytest

from gradguess.analysis.prompts import final_accuracy


def run(*accuracies, diverged=False):
    return {"test_acc": list(accuracies), "diverged": diverged}


def test_one_seed():
    p, error = final_accuracy([run(0.1, 0.5, 0.8)], test_size=1000)
    assert p == 0.8
    assert error == pytest.approx(math.sqrt(0.8 * 0.2 / 1000))


def test_seeds_pool_their_test_images():
    p, error = final_accuracy([run(0.5, 0.7), run(0.6, 0.9)], test_size=500)
    assert p == pytest.approx(0.8)
    assert error == pytest.approx(math.sqrt(0.8 * 0.2 / 1000))


def test_diverged_runs_are_left_out():
    p, error = final_accuracy([run(0.6, 0.7), run(0.6, 0.1, diverged=True)], test_size=100)
    assert p == pytest.approx(0.7)
    assert error == pytest.approx(math.sqrt(0.7 * 0.3 / 100))
    assert all(math.isnan(v) for v in final_accuracy([run(0.5, diverged=True)], test_size=100))
    assert all(math.isnan(v) for v in final_accuracy([], test_size=100))
