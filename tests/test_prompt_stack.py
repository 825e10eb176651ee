"""Stacked prompt tuning (`training.tune_prompt_stack`): every run of a stack has, in float64,
the history `tune_prompts` gives it alone, divergence included; the step loop reads nothing
back to the host; bad input fails clearly."""
import math

import pytest
import torch

from gradguess.core.data import Dataset
from gradguess.core.optimizers import OPTIMIZERS
from gradguess.core.prompts import (PromptedViT, estimate_stacked_prompt_gradients,
                              prompt_stack_order, small_vit)
from gradguess.engine.prompt_stack import tune_prompt_stack
from gradguess.engine.training import reference_prompts, tune_prompts
from conftest import HostReads

METHODS = ["backprop", "head_only", "directional", "activation_perturbation", "w_transpose"]
OPTIONS = {"prompts": 2, "batch_size": 8, "cosine_repeats": 2}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def backbone_and_data(n=36, nan_at=None):
    """A tiny random ViT (14x14 images, 4 patches, 1 layer) and a random 3-class task;
    ``nan_at``: a training image of NaNs there (a batch holding it has a NaN loss)."""
    torch.manual_seed(0)
    backbone = small_vit(image_size=14, patch=7, layers=1, heads=2, hidden=8, mlp=16)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n + 16, 3, 14, 14, generator=g)
    y = torch.randint(0, 3, (n + 16,), generator=g)
    if nan_at is not None:
        x[nan_at] = math.nan
    return backbone, Dataset("toy", x[:n], y[:n], x[n:], y[n:], 3, "random")


def assert_same(stacked: dict, single: dict):
    assert stacked.keys() == single.keys()
    assert stacked["diverged"] == single["diverged"] and stacked["step"] == single["step"]
    for key in ("test_acc", "cosine", "train_loss"):
        assert len(stacked[key]) == len(single[key]), key
        torch.testing.assert_close(torch.tensor(stacked[key]), torch.tensor(single[key]),
                                   rtol=1e-9, atol=1e-12, msg=key)


def test_a_stack_of_every_method_and_two_seeds_equals_its_single_runs(float64):
    backbone, data = backbone_and_data()
    runs = [(method, seed) for seed in (3, 4) for method in METHODS]
    options = dict(steps=5, eval_every=2, **OPTIONS)
    stacked = tune_prompt_stack(backbone, data, runs, **options)
    assert len(stacked) == len(runs)
    for (method, seed), history in zip(runs, stacked):
        assert_same(history, reference_prompts(backbone, data, method, seed=seed, **options))
        assert history["step"] == [0, 2, 4] and len(history["train_loss"]) == 5
    assert stacked[0]["train_loss"] != stacked[5]["train_loss"]  # seeds differ
    assert stacked[2]["cosine"] != stacked[3]["cosine"]  # methods differ


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_moves_each_run_as_its_own(float64, optimizer):
    backbone, data = backbone_and_data()
    runs = [("w_transpose", 7), ("head_only", 7), ("backprop", 8)]
    options = dict(steps=3, eval_every=3, optimizer=optimizer, lr=0.1, **OPTIONS)
    stacked = tune_prompt_stack(backbone, data, runs, **options)
    for (method, seed), history in zip(runs, stacked):
        assert_same(history, reference_prompts(backbone, data, method, seed=seed, **options))


def test_a_stack_of_one_run(float64):
    backbone, data = backbone_and_data()
    options = dict(steps=2, eval_every=1, **OPTIONS)
    for method in ("directional", "backprop"):
        [stacked] = tune_prompt_stack(backbone, data, [(method, 5)], **options)
        assert_same(stacked, reference_prompts(backbone, data, method, seed=5, **options))


def test_a_diverging_run_stops_where_its_single_run_stops(float64):
    """A NaN training image ends each run at its first batch holding it: at a different step
    for each seed (some not within the run), the others going on."""
    backbone, data = backbone_and_data(nan_at=30)
    runs = [(method, seed) for seed in range(4) for method in ("w_transpose", "backprop")]
    options = dict(steps=3, eval_every=2, **OPTIONS)
    stacked = tune_prompt_stack(backbone, data, runs, **options)
    for (method, seed), history in zip(runs, stacked):
        assert_same(history, reference_prompts(backbone, data, method, seed=seed, **options))
    diverged = [history["diverged"] for history in stacked]
    assert any(diverged) and not all(diverged)
    assert len({len(h["train_loss"]) for h in stacked}) > 2  # stopped at different steps
    # every run diverges: the stack stops early and still matches
    everyone = tune_prompt_stack(backbone, data, runs[:2], steps=12, eval_every=5, **OPTIONS)
    for (method, seed), history in zip(runs[:2], everyone):
        assert history["diverged"]
        assert_same(history, reference_prompts(backbone, data, method, seed=seed, steps=12,
                                          eval_every=5, **OPTIONS))


def test_no_host_read_between_observations():
    """With observations at step 0 and the last step only, the host reads as often in 2 steps
    as in 8: the steps read nothing (the reference loop reads every step's loss)."""
    backbone, data = backbone_and_data()
    runs = [(method, 0) for method in METHODS]
    counts = []
    for steps in (2, 8):
        with HostReads() as reads:
            tune_prompt_stack(backbone, data, runs, steps=steps, eval_every=steps, **OPTIONS)
        counts.append(reads.count)
    assert counts[0] == counts[1]
    single = []
    for steps in (2, 8):
        with HostReads() as reads:
            reference_prompts(backbone, data, "w_transpose", steps=steps, eval_every=steps,
                              **OPTIONS)
        single.append(reads.count)
    assert single[1] - single[0] >= 6


def test_bad_input_fails_clearly():
    backbone, data = backbone_and_data()
    options = dict(prompts=2, steps=2, eval_every=1, batch_size=8)
    with pytest.raises(ValueError, match="at least one"):
        tune_prompt_stack(backbone, data, [], **options)
    with pytest.raises(ValueError, match="unknown prompt method 'guesswork'"):
        tune_prompt_stack(backbone, data, [("guesswork", 0)], **options)
    with pytest.raises(ValueError, match="unknown prompt method 'activation_mixing'"):
        tune_prompt_stack(backbone, data, [("activation_mixing", 0)], **options)
    for bad in (["backprop"], ("backprop", 0, 1), ("backprop", 1.5), (0, "backprop")):
        with pytest.raises(ValueError, match=r"\(method, seed\) pair"):
            tune_prompt_stack(backbone, data, [bad], **options)
    with pytest.raises(ValueError, match="steps and eval_every"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], **{**options, "steps": 0})
    with pytest.raises(ValueError, match="steps and eval_every"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], **{**options, "eval_every": 0})
    with pytest.raises(ValueError, match="batch_size"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], **{**options, "batch_size": 37})
    with pytest.raises(ValueError, match="cosine_repeats"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], cosine_repeats=0, **options)
    with pytest.raises(ValueError, match="unknown optimizer"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], optimizer="lion", **options)
    with pytest.raises(ValueError, match="learning rate"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], lr=0.0, **options)
    with pytest.raises(ValueError, match="num_prompts"):
        tune_prompt_stack(backbone, data, [("backprop", 0)], **{**options, "prompts": 0})
    # the stacked estimator: its replicates in stack order, one entry each
    model = PromptedViT(backbone, 2, 3)
    stacked = [torch.zeros(2, 2, 8), torch.zeros(2, 3, 8), torch.zeros(2, 3)]
    x, y = data.train_x[:4].view(2, 2, 3, 14, 14), data.train_y[:4].view(2, 2)
    assert prompt_stack_order(["head_only", "backprop", "w_transpose"]) == [2, 1, 0]
    with pytest.raises(ValueError, match="prompt_stack_order"):
        estimate_stacked_prompt_gradients(model, *stacked, x, y, ["backprop", "w_transpose"],
                                          [None, None])
    with pytest.raises(ValueError, match="one entry per replicate"):
        estimate_stacked_prompt_gradients(model, *stacked, x, y, ["backprop"], [None])
    with pytest.raises(ValueError, match="unknown prompt method"):
        estimate_stacked_prompt_gradients(model, *stacked, x, y, ["backprop", "downstream"],
                                          [None, None])


def test_a_single_run_is_a_stack_of_one(float64):
    backbone, data = backbone_and_data()
    assert_same(tune_prompts(backbone, data, "directional", seed=2, steps=4, eval_every=2, **OPTIONS),
                reference_prompts(backbone, data, "directional", seed=2, steps=4, eval_every=2,
                                  **OPTIONS))
