"""The stacked run engine: a grid side by side gives, run for run, the histories of the same
runs one at a time, and reads nothing back to the host within an epoch."""
import dataclasses

import numpy as np
import pytest
import torch

from gradguess.engine.grid import Run, _order, stackable_datasets, train_grid, train_stack
from gradguess.core.optimizers import OPTIMIZERS
from gradguess.engine.training import reference_mlp, train_mlp

from conftest import HostReads, blobs

STACKED_METHODS = ["activation_perturbation", "activation_mixing", "w_transpose", "downstream",
                   "self_sharpening", "directional", "backprop"]
ARCH = {"depth": 3, "width": 16}


def as_float64(data):
    return dataclasses.replace(data, train_x=data.train_x.double(), test_x=data.test_x.double())


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield as_float64(blobs())
    torch.set_default_dtype(previous)


def two_datasets():
    """Two tasks of one shape (8 features, 3 classes, 200 training examples) with different
    contents and different test-set sizes."""
    a, b = blobs(seed=0), blobs(seed=1)
    b = dataclasses.replace(b, name="other blobs", test_x=b.test_x[:130], test_y=b.test_y[:130])
    return {"a": a, "b": b}


def one_at_a_time(data, run, epochs, batch_size):
    return reference_mlp(data, **ARCH, method=run.method, seed=run.seed,
                         optimizer=run.optimizer, lr=run.lr, weight_decay=run.weight_decay,
                         epochs=epochs, batch_size=batch_size, method_options=run.options)


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


def test_a_grid_of_every_optimizer_and_method_runs_as_one_stack(float64):
    lrs = {"sgd": 0.05, "sgd_momentum": 0.02}
    runs = [Run(method, seed=seed, lr=lrs.get(optimizer, 1e-2), optimizer=optimizer,
                weight_decay=0.01 * seed)
            for seed, (method, optimizer) in enumerate(
                (m, o) for m in STACKED_METHODS for o in OPTIMIZERS)]
    runs = runs[::2] + runs[1::2]  # optimizers and methods interleaved in the grid's order
    stacked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    for run, history in zip(runs, stacked):
        assert history["replicates"] == len(runs)
        assert_same_history(history, one_at_a_time(float64, run, 2, 20))
    chunked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, max_replicates=5,
                         progress=False)
    assert sorted(h["replicates"] for h in chunked) == [3] * 3 + [5] * 25
    for history, whole in zip(chunked, stacked):
        assert_same_history(history, whole)


def test_the_stack_order_keeps_groups_and_optimizers_in_blocks():
    """Table 1's grid (self-sharpening on StableAdamW, the rest on AdamW, two datasets): each
    method group is one block, and each optimizer too, so the stack steps two segments."""
    runs = [Run(method, seed, optimizer="stable_adamw" if method == "self_sharpening" else "adamw",
                dataset=dataset)
            for dataset in ("fashion_mnist", "mnist") for method in STACKED_METHODS
            for seed in range(3)]
    stack = [runs[r] for r in _order(runs)]
    assert sorted(_order(runs)) == list(range(len(runs)))

    def blocks(values):
        return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]

    methods = blocks([run.method for run in stack])
    assert sorted(methods) == sorted(STACKED_METHODS)
    assert methods[-2:] == ["directional", "backprop"]  # activation space, weights, exact
    assert blocks([run.optimizer for run in stack]) == ["stable_adamw", "adamw"]


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
        single = reference_mlp(float64, **ARCH, method=run.method, seed=run.seed, lr=run.lr, epochs=2,
                           batch_size=20, probe_examples=30, probe_method=run.probe_method,
                           probe_repeats=2)
        assert_same_history(history, single)
        assert len(history["cosine"]) == 3
        for key in ("cosine", "layer_cosines", "effective_rank"):
            np.testing.assert_allclose(history[key], single[key], rtol=1e-9, err_msg=key)


def test_a_grid_over_two_datasets_equals_its_runs_one_at_a_time_on_their_own(float64):
    data = {name: as_float64(d) for name, d in two_datasets().items()}
    runs = [Run(method, seed=seed, lr=1e-2, optimizer=optimizer, dataset=name,
                probe_method="w_transpose" if method == "backprop" else None)
            for name in ("b", "a")
            for method, optimizer in (("self_sharpening", "stable_adamw"), ("downstream", "adamw"),
                                      ("backprop", "sgd_momentum"), ("directional", "adamw"))
            for seed in (0, 1)]
    stacked = train_grid(data, runs, **ARCH, epochs=2, batch_size=20, probe_examples=30,
                         probe_repeats=2, progress=False)
    for run, history in zip(runs, stacked):
        assert history["replicates"] == len(runs)
        single = reference_mlp(data[run.dataset], **ARCH, method=run.method, seed=run.seed,
                           optimizer=run.optimizer, lr=run.lr, epochs=2, batch_size=20,
                           probe_examples=30, probe_method=run.probe_method, probe_repeats=2)
        assert_same_history(history, single)
        assert len(history["cosine"]) == 3
        for key in ("cosine", "layer_cosines", "effective_rank"):
            np.testing.assert_allclose(history[key], single[key], rtol=1e-9, err_msg=key)
    # the same runs on the wrong datasets differ: each replicate really saw its own
    assert stacked[0]["test_acc"] != train_grid(data, [dataclasses.replace(runs[0], dataset="a")],
                                                **ARCH, epochs=2, batch_size=20)[0]["test_acc"]


def test_a_diverging_replicate_ends_its_own_history_only(float64):
    runs = [Run("backprop", 0, 1e12, "sgd"), Run("w_transpose", 0, 0.05, "sgd"),
            Run("backprop", 1, 0.05, "sgd")]
    stacked = train_grid(float64, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    assert stacked[0]["diverged"] and not stacked[1]["diverged"]
    for run, history in zip(runs, stacked):
        assert_same_history(history, one_at_a_time(float64, run, 2, 20))


def test_no_host_read_within_an_epoch():
    data = blobs()
    runs = [Run(method, seed=1) for method in STACKED_METHODS]
    with HostReads() as reads:
        train_stack(data, runs, **ARCH, epochs=2, batch_size=20, progress=False)
    assert reads.count <= 2 + 3  # one per epoch of 10 steps; the optimizer's set-up checks
    # two datasets and every optimizer in one stack: still one read per epoch
    runs = [Run(method, seed=1, optimizer=optimizer, dataset=name)
            for method in STACKED_METHODS for optimizer in OPTIMIZERS for name in ("a", "b")]
    with HostReads() as reads:
        train_stack(two_datasets(), runs, **ARCH, epochs=2, batch_size=20, progress=False)
    assert reads.count <= 2 + 3
    with HostReads() as single:  # the counter sees the reference loop's reads
        reference_mlp(data, **ARCH, method="w_transpose", epochs=2, batch_size=20)
    assert single.count >= 20


def test_bad_grids_are_refused():
    data = blobs()
    with pytest.raises(ValueError, match="unknown method"):
        train_stack(data, [Run("gradient_oracle")], **ARCH, epochs=1)
    for method in ["w_transpose_debiased", "singular_power", "head_only"]:
        with pytest.raises(ValueError, match=f"not '{method}'"):
            train_stack(data, [Run(method)], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        train_stack(data, [Run("backprop")], **ARCH, epochs=-1)
    with pytest.raises(ValueError, match="at least one run"):
        train_stack(data, [], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="max_replicates"):
        train_grid(data, [Run("backprop")], **ARCH, epochs=1, max_replicates=0)


def test_bad_datasets_are_refused():
    data = blobs()
    pair = two_datasets()
    runs = [Run("backprop", dataset="a"), Run("w_transpose", dataset="b")]
    with pytest.raises(ValueError, match="runs name datasets .'a'. but data is one Dataset"):
        train_grid(data, [Run("backprop"), Run("backprop", dataset="a")], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="unknown dataset 'c'; the datasets given are 'a', 'b'"):
        train_grid(pair, runs + [Run("backprop", dataset="c")], **ARCH, epochs=1)
    with pytest.raises(ValueError, match="every run names its own"):
        train_grid(pair, runs + [Run("backprop")], **ARCH, epochs=1)
    b = pair["b"]
    for other, what in [(b.subset(train_size=150), "training examples"),
                        (blobs(dim=6, seed=1), "input features"),
                        (blobs(classes=4, seed=1), "classes"),
                        (as_float64(b), "dtype")]:
        with pytest.raises(ValueError, match=f"datasets of one stack must share their {what}"):
            train_grid({"a": pair["a"], "b": other}, runs, **ARCH, epochs=1)
    # a dataset no run names is not checked
    histories = train_grid({**pair, "unused": blobs(dim=6)}, runs, **ARCH, epochs=1)
    assert [h["replicates"] for h in histories] == [2, 2]


def test_stackable_datasets_groups_names_by_what_a_stack_shares():
    a, b = blobs(seed=0), blobs(seed=1)
    wider, fewer = blobs(dim=9), blobs(n=300)
    groups = stackable_datasets({"a": a, "wide": wider, "b": b, "few": fewer})
    assert groups == [["a", "b"], ["wide"], ["few"]]


def test_a_learning_rate_is_chosen_on_the_runs_own_length_and_data():
    from gradguess.engine.grid import rate_then_seeds
    calls = []

    def fake_grid(data, runs, **grid_args):
        """A run's final accuracy depends on its data, epochs, method and rate: the best rate
        differs between datasets and lengths, so a rate chosen elsewhere would be caught."""
        calls.append((data, tuple(runs), grid_args))
        best = {("short", 5): 1e-2, ("long", 5): 1e-3}[data, grid_args["epochs"]]
        return [{"train_acc": [1.0 - abs(run.lr - best) - 0.01 * run.seed], "diverged": False} for run in runs]

    cells = [Run("w_transpose", optimizer="adamw"), Run("backprop", optimizer="sgd")]
    for data, best in [("short", 1e-2), ("long", 1e-3)]:
        calls.clear()
        result = rate_then_seeds(fake_grid, data, cells, (1e-2, 1e-3, 1e-4), seeds=3, seed=7, depth=3, width=8, epochs=5)
        assert [lr for lr, _, _ in result] == [best, best]
        # the sweep and the repeats ran on the same data, architecture and epochs
        assert {(d, tuple(sorted(a.items()))) for d, _, a in calls} == {(data, (("depth", 3), ("epochs", 5), ("width", 8)))}
        sweep_runs, repeat_runs = calls[0][1], calls[1][1]
        assert {r.seed for r in sweep_runs} == {7} and len(sweep_runs) == 6
        assert [(r.method, r.seed, r.lr, r.optimizer) for r in repeat_runs] == [
            ("w_transpose", 8, best, "adamw"), ("w_transpose", 9, best, "adamw"),
            ("backprop", 8, best, "sgd"), ("backprop", 9, best, "sgd")]
        # seed 7's history is the sweep's own run at the chosen rate
        lr, histories, sweep = result[0]
        assert len(histories) == 3 and histories[0] is sweep[best]


def test_a_diverged_rate_is_never_chosen():
    from gradguess.engine.grid import rate_then_seeds

    def fake_grid(data, runs, **grid_args):
        return [{"train_acc": [0.9], "diverged": run.lr == 1e-2} for run in runs]

    result = rate_then_seeds(fake_grid, None, [Run("directional")], (1e-2, 1e-3), seeds=1)
    assert result[0][0] == 1e-3
    assert rate_then_seeds(lambda d, runs, **a: [{"train_acc": [], "diverged": True} for _ in runs], None,
                           [Run("directional")], (1e-2,), seeds=2)[0][0] is None


def test_a_single_run_is_a_stack_of_one_where_the_stack_runs_it(float64):
    run = Run("downstream", 1, 1e-2, "sgd_momentum", options={"k": 2})
    single = train_mlp(float64, **ARCH, method=run.method, seed=1, lr=1e-2, optimizer=run.optimizer,
                       epochs=2, batch_size=20, method_options=run.options)
    assert single["estimator"] == "stacked"
    assert_same_history(single, one_at_a_time(float64, run, 2, 20))
    debiased = train_mlp(float64, **ARCH, method="w_transpose_debiased", epochs=1, batch_size=20)
    assert debiased["estimator"] == "reference"  # only the reference loop runs it


def test_best_rate_and_other_seeds_are_the_protocols_two_halves():
    from gradguess.engine.grid import best_rate, other_seeds

    sweep = {1e-2: {"train_acc": [0.5], "diverged": False},
             1e-3: {"train_acc": [0.9], "diverged": True},  # diverged: never chosen
             1e-4: {"train_acc": [0.7], "diverged": False}}
    assert best_rate(sweep) == 1e-4
    assert best_rate({1e-2: {"train_acc": [0.9], "diverged": True}}) is None
    calls = []

    def fake_grid(data, runs, **grid_args):
        calls.append((runs, grid_args))
        return [{"seed": run.seed, "lr": run.lr} for run in runs]

    runs = [Run("w_transpose", 3, 1e-3), Run("backprop", 3, 1e-2, "sgd")]
    repeated = other_seeds(fake_grid, None, runs, 3, seed=3, epochs=2)
    assert repeated == [[{"seed": 4, "lr": 1e-3}, {"seed": 5, "lr": 1e-3}],
                        [{"seed": 4, "lr": 1e-2}, {"seed": 5, "lr": 1e-2}]]
    assert len(calls) == 1 and calls[0][1] == {"epochs": 2}  # one grid, side by side
    assert other_seeds(fake_grid, None, runs, 1) == [[], []]
