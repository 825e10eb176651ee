"""The stacked engine's checkpoints: an interrupted stack that resumes gives, number for
number, the histories of an uninterrupted one, and a grid's chunks are stored one by one."""
import pytest

from gradguess.engine import checkpoints, files
from gradguess.engine.grid import Run, train_grid, train_stack

from conftest import blobs

RUNS = [Run("w_transpose", 0, 1e-2), Run("backprop", 1, 1e-2, "sgd_momentum"),
        Run("directional", 2, 1e-2, "stable_adamw"), Run("self_sharpening", 3, 1e-2)]
SETTINGS = {"depth": 2, "width": 8, "epochs": 3, "batch_size": 30, "probe_examples": 20}


def direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def without_seconds(histories):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in histories]


class Interrupted(Exception):
    pass


def test_a_resumed_stack_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    data = blobs()
    whole = train_stack(data, RUNS, **SETTINGS)
    save = checkpoints.save

    def save_once_then_stop(state):
        save(state)
        raise Interrupted  # after the first epoch's checkpoint

    with checkpoints.saving_to(tmp_path / "c.pt", store_call=direct):
        monkeypatch.setattr(checkpoints, "save", save_once_then_stop)
        with pytest.raises(Interrupted):
            train_stack(data, RUNS, **SETTINGS)
        assert files.load_checked(tmp_path / "c.pt")["step"] == 200 // 30
        monkeypatch.setattr(checkpoints, "save", save)
        resumed = train_stack(data, RUNS, **SETTINGS)
    assert without_seconds(resumed) == without_seconds(whole)


def test_a_checkpoint_of_another_call_is_ignored(tmp_path):
    data = blobs()
    whole = train_stack(data, RUNS, **SETTINGS)
    with checkpoints.saving_to(tmp_path / "c.pt", store_call=direct):
        train_stack(data, RUNS[:2], **SETTINGS)  # leaves its last state there
        again = train_stack(data, RUNS, **SETTINGS)
    assert without_seconds(again) == without_seconds(whole)


def test_a_grid_stores_its_chunks_one_by_one(tmp_path):
    data, calls = blobs(), []

    def store_call(fn, *args, **kwargs):
        calls.append([run.seed for run in args[1]])
        return fn(*args, **kwargs)

    settings = {k: v for k, v in SETTINGS.items() if k != "probe_examples"}
    whole = train_grid(data, RUNS, **settings)
    with checkpoints.saving_to(tmp_path / "c.pt", store_call=store_call):
        chunked = train_grid(data, RUNS, **settings, max_replicates=2)
    assert calls == [[3, 0], [2, 1]]  # stack order: activation space by group, weights, backprop
    strip = lambda hs: [{k: v for k, v in h.items() if k != "replicates"}  # noqa: E731
                        for h in without_seconds(hs)]
    assert strip(chunked) == strip(whole)


def test_a_prompt_stack_resumes_within_an_epoch(tmp_path, monkeypatch):
    """Observations every 2 steps of 4-step epochs: the checkpoint after step 2 keeps the
    epoch's batch order."""
    from gradguess.engine.prompt_stack import tune_prompt_stack
    from test_prompt_stack import backbone_and_data

    backbone, data = backbone_and_data()
    runs, options = [("w_transpose", 0), ("backprop", 1), ("directional", 2)], {
        "prompts": 2, "batch_size": 8, "cosine_repeats": 2, "steps": 7, "eval_every": 2}
    whole = tune_prompt_stack(backbone, data, runs, **options)
    save = checkpoints.save

    def save_once_then_stop(state):
        save(state)
        raise Interrupted

    with checkpoints.saving_to(tmp_path / "c.pt", store_call=direct):
        monkeypatch.setattr(checkpoints, "save", save_once_then_stop)
        with pytest.raises(Interrupted):
            tune_prompt_stack(backbone, data, runs, **options)
        assert files.load_checked(tmp_path / "c.pt")["batches"] is not None
        monkeypatch.setattr(checkpoints, "save", save)
        resumed = tune_prompt_stack(backbone, data, runs, **options)
    assert without_seconds(resumed) == without_seconds(whole)
