"""The stacked run engine: a grid side by side gives, run for run, the histories of the same
runs one at a time, and reads nothing back to the host within an epoch."""
import dataclasses

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradguess.grid import Run, train_grid, train_stack
from gradguess.optimizers import OPTIMIZERS
from gradguess.training import train_mlp

from conftest import blobs

STACKED_METHODS = ["activation_perturbation", "activation_mixing", "w_transpose", "downstream",
                   "self_sharpening", "directional", "backprop"]
ARCH = {"depth": 3, "width": 16}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    data = blobs()
    yield dataclasses.replace(data, train_x=data.train_x.double(), test_x=data.test_x.double())
    torch.set_default_dtype(previous)


def one_at_a_time(data, run, epochs, batch_size):
    return train_mlp(data, **ARCH, method=run.method, seed=run.seed, optimizer=run.optimizer,
                     lr=run.lr, weight_decay=run.weight_decay, epochs=epochs,
                     batch_size=batch_size, method_options=run.options)


def assert_same_history(stacked, single):
    for key in ("diverged", "diverged_at_step", "steps", "train_acc", "test_acc"):
        assert stacked[key] == single[key], key
    assert stacked["train_loss"] == pytest.approx(single["train_loss"], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_stacked_grid_equals_its_runs_one_at_a_time(float64, optimizer):
    lrs = {"sgd": 0.05, "sgd_momentum": 0.02}
    runs = [Run(method, seed=seed, lr=lrs.get(optimizer, 1e-2) * (1 + seed), optimizer=optimizer,
                weight_decay=0.01 * seed)
            for method in STACKED_METHODS for seed in (0, 1)]
    runs = runs[::-1]  # out of the stack's grouped order: histories come back in the grid's
    stacked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    for run, history in zip(runs, stacked):
        assert history["replicates"] == len(runs)
        assert_same_history(history, one_at_a_time(float64, run, 2, 20))


def test_a_grid_of_several_optimizers_runs_one_stack_each(float64):
    runs = [Run("w_transpose", 0, 1e-2, "adamw"), Run("backprop", 0, 0.1, "sgd"),
            Run("w_transpose", 1, 1e-2, "adamw")]
    stacked = train_grid(float64, runs, **ARCH, epochs=1, batch_size=20, progress=False)
    assert [h["replicates"] for h in stacked] == [2, 1, 2]
    for run, history in zip(runs, stacked):
        assert_same_history(history, one_at_a_time(float64, run, 1, 20))


def test_methods_with_options_in_one_stack(float64):
    """Options split a method into groups: downstream at k = 1 and 2, matched-cosine directional
    descent (which reads each replicate's own true gradient) at two cosines."""
    runs = [Run("downstream", 0, 1e-2, options={"k": 2}), Run("downstream", 1, 1e-2),
            Run("matched_cosine", 0, 1e-2, options={"cosine": 0.3}),
            Run("matched_cosine", 1, 1e-2, options={"cosine": 0.05}),
            Run("downstream", 2, 1e-2, options={"k": 2})]
    stacked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    for run, history in zip(runs, stacked):
        assert_same_history(history, one_at_a_time(float64, run, 2, 20))


def test_probes_score_each_replicate_as_its_own_run(float64):
    runs = [Run("self_sharpening", 0, 1e-2, "adamw"), Run("backprop", 1, 1e-2, probe_method="w_transpose")]
    stacked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, probe_examples=30,
                         probe_repeats=2, progress=False)
    for run, history in zip(runs, stacked):
        single = train_mlp(float64, **ARCH, method=run.method, seed=run.seed, lr=run.lr, epochs=2,
                           batch_size=20, probe_examples=30, probe_method=run.probe_method,
                           probe_repeats=2)
        assert_same_history(history, single)
        assert len(history["cosine"]) == 3
        for key in ("cosine", "layer_cosines", "effective_rank"):
            np.testing.assert_allclose(history[key], single[key], rtol=1e-9, err_msg=key)


def test_a_diverging_replicate_ends_its_own_history_only(float64):
    runs = [Run("backprop", 0, 1e12, "sgd"), Run("w_transpose", 0, 0.05, "sgd"),
            Run("backprop", 1, 0.05, "sgd")]
    stacked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    assert stacked[0]["diverged"] and not stacked[1]["diverged"]
    for run, history in zip(runs, stacked):
        assert_same_history(history, one_at_a_time(float64, run, 2, 20))


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (`float(t)`, `bool(t)`, `t.item()`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_no_host_read_within_an_epoch():
    data = blobs()
    runs = [Run(method, seed=1) for method in STACKED_METHODS]
    with HostReads() as reads:
        train_stack(data, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    assert reads.count <= 2 + 3  # one per epoch of 10 steps; the optimizer's 3 set-up checks
    with HostReads() as single:  # the counter sees the one-at-a-time loop's reads
        train_mlp(data, **ARCH, method="w_transpose", epochs=2, batch_size=20)
    assert single.count >= 20


def test_bad_grids_are_refused():
    data = blobs()
    with pytest.raises(ValueError, match="unknown method"):
        train_stack(data, [Run("gradient_oracle")], **ARCH, epochs=1)
    for method in ["w_transpose_debiased", "singular_power", "head_only"]:
        with pytest.raises(ValueError, match=f"not '{method}'"):
            train_stack(data, [Run(method)], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="one optimizer"):
        train_stack(data, [Run("backprop"), Run("backprop", optimizer="sgd")], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train_stack(data, [Run("backprop")], **ARCH, epochs=-1)
    with pytest.raises(ValueError, match="at least one run"):
        train_stack(data, [], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="max_replicates"):
        train_grid(data, [Run("backprop")], **ARCH, epochs=1, max_replicates=0)
