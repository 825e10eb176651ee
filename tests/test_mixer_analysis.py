"""Scoring a LocalMixer's guesses layer by layer (`gradguess.analysis.localmixer.local_guess_cosines`): the
names of the layers, the three ways of scaling a guess, and the model left as it was."""
import pytest
import torch

from gradguess.analysis.localmixer import JVP_WAYS, layer_names, local_guess_cosines
from gradguess.core.probes import probe

from conftest import tiny_mixer


def test_layer_names():
    model, _, _ = tiny_mixer(batch=6)
    assert layer_names(model) == ["embed 1", "token 1", "channel 1", "head 1",
                                  "token 2", "channel 2", "head 2"]


def test_ways():
    assert [(w["split_losses"], w["mode"]) for w in JVP_WAYS.values()] == [
        (True, "global"), (False, "global"), (True, "per_layer")]


@pytest.mark.parametrize("way", list(JVP_WAYS))
def test_cosines_are_probe_under_that_way(way):
    model, x, y = tiny_mixer(batch=6)
    options = JVP_WAYS[way]
    scores = local_guess_cosines(model, x, y, "w_transpose", **options, repeats=3, seed=5)
    assert list(scores) == layer_names(model)
    assert all(-1 <= c <= 1 for c in scores.values())
    assert model.split_losses is True  # restored
    model.split_losses = options["split_losses"]
    expected = probe(model, x, y, "w_transpose", torch.Generator().manual_seed(5),
                     mode=options["mode"], repeats=3)["layer_cosines"]
    assert list(scores.values()) == pytest.approx(expected, abs=1e-12)


def test_backprop_is_exact_and_ways_differ():
    model, x, y = tiny_mixer(batch=6)
    exact = local_guess_cosines(model, x, y, "backprop", repeats=1)
    assert all(c == pytest.approx(1.0) for c in exact.values())
    sliced = local_guess_cosines(model, x, y, "activation_perturbation", repeats=4, seed=1)
    per_block = local_guess_cosines(model, x, y, "activation_perturbation", split_losses=False,
                                    repeats=4, seed=1)
    assert sliced["channel 1"] != pytest.approx(per_block["channel 1"])


def test_split_losses_restored_on_error():
    model, x, y = tiny_mixer(batch=6)
    with pytest.raises(ValueError):
        local_guess_cosines(model, x, y, "no_such_method", split_losses=False)
    assert model.split_losses is True
