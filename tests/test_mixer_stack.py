"""LocalMixer runs side by side (`gradguess.engine.mixer_grid`): each replicate is the run
`train_mixer` makes alone, number for number, with one read back to the host per epoch."""
import numpy as np
import pytest
import torch

from gradguess.core.data import Dataset, random_crop_flip, random_crop_flip_each
from gradguess.core.mixer import LocalMixer
from gradguess.engine import checkpoints
from gradguess.engine.mixer_grid import MixerRun, StackedLocalMixer, train_mixer_stack
from gradguess.engine.training import reference_mixer, train_mixer
from conftest import HostReads

ARCH = dict(image_size=8, patch=4, channels=8, blocks=2, groups=2)
# the LocalMixer chapter's grid: (method, local) x augmentation
CHAPTER = [("backprop", False), ("backprop", True), ("activation_perturbation", True),
           ("activation_mixing", True), ("w_transpose", True)]


@pytest.fixture
def float64():
    """Tiny 8x8 three-channel images of 3 classes (48 to train, 20 to test), in float64; a
    flippable dataset's name, so that augmentation mirrors too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (68,), generator=g)
    x = torch.randn(68, 3, 8, 8, generator=g) + y.view(-1, 1, 1, 1)
    yield Dataset("cifar10", x[:48], y[:48], x[48:], y[48:], 3, "synthetic")
    torch.set_default_dtype(previous)


def alone(data, run, **settings):
    return reference_mixer(data, method=run.method, local=run.local, augment=run.augment,
                           seed=run.seed, **settings)


def assert_same_history(stacked, single):
    assert set(stacked) == set(single)
    for key in ("diverged", "diverged_at_step", "steps", "estimator"):
        assert stacked[key] == single[key], key
    for key in ("train_loss", "train_acc", "test_acc"):
        assert len(stacked[key]) == len(single[key]), key
        np.testing.assert_allclose(stacked[key], single[key], rtol=1e-9, err_msg=key)


def test_the_chapters_grid_stacked_equals_its_runs_one_at_a_time(float64):
    runs = [MixerRun(method, local, augment, seed) for (method, local) in CHAPTER
            for augment in (False, True) for seed in (0, 1)][::3]  # out of the stack's order
    runs += [MixerRun(method, local, augment, 0) for (method, local) in CHAPTER for augment in (False, True)]
    settings = dict(epochs=2, batch_size=12, lr=1e-2, optimizer="adamw", **ARCH)
    stacked = train_mixer_stack(float64, runs, **settings)
    assert len(stacked) == len(runs)
    for run, history in zip(runs, stacked):
        assert_same_history(history, alone(float64, run, **settings))
    assert len({tuple(h["train_loss"]) for h in stacked}) > len(runs) // 2  # runs do differ


@pytest.mark.parametrize("split_losses", [True, False])
def test_every_stackable_method_local_or_not_in_one_stack(float64, split_losses):
    """Methods beyond the chapter's, and local and end-to-end replicates of one method."""
    runs = [MixerRun("w_transpose", False, True, 1), MixerRun("downstream", True, False, 2),
            MixerRun("self_sharpening", False, False, 0), MixerRun("self_sharpening", True, True, 3),
            MixerRun("w_transpose", True, False, 4), MixerRun("activation_mixing", False, False, 5),
            MixerRun("backprop", True, True, 6), MixerRun("activation_perturbation", False, False, 7)]
    settings = dict(epochs=1, batch_size=12, lr=1e-2, optimizer="sgd_momentum", **ARCH,
                    split_losses=split_losses)
    for run, history in zip(runs, train_mixer_stack(float64, runs, **settings)):
        assert_same_history(history, alone(float64, run, **settings))


def test_a_diverging_replicate_ends_its_own_history_only(float64):
    runs = [MixerRun(method, local, augment) for (method, local) in CHAPTER for augment in (False, True)]
    settings = dict(epochs=2, batch_size=12, lr=1e3, optimizer="sgd", **ARCH)
    stacked = train_mixer_stack(float64, runs, **settings)
    assert 0 < sum(h["diverged"] for h in stacked) < len(runs)
    for run, history in zip(runs, stacked):
        assert_same_history(history, alone(float64, run, **settings))


def test_no_host_read_within_an_epoch(float64):
    runs = [MixerRun(method, local, augment) for (method, local) in CHAPTER for augment in (False, True)]
    with HostReads() as reads:
        train_mixer_stack(float64, runs, epochs=2, batch_size=12, **ARCH)
    assert reads.count <= 2 + 3  # one per epoch of 4 steps; the optimizer's 3 set-up checks
    with HostReads() as single:  # the counter sees the one-at-a-time loop's reads
        alone(float64, runs[-1], epochs=2, batch_size=12, **ARCH)
    assert single.count >= 8


def test_a_stack_computes_each_mixers_logits():
    torch.manual_seed(0)
    mixers = [LocalMixer(3, 4, local=local, **ARCH) for local in (True, False, True)]
    for m in mixers:
        for head in m.layers[3::3]:
            torch.nn.init.normal_(head.weight)
    stack = StackedLocalMixer(mixers)
    x = torch.randn(5, 3, 8, 8)
    logits = stack(x)
    assert logits.shape == (3, 5, 4)
    for m, out in zip(mixers, logits):
        torch.testing.assert_close(out, m(x))
    per_replicate = torch.randn(3, 5, 3, 8, 8)  # one batch per replicate
    for m, out, xr in zip(mixers, stack(per_replicate), per_replicate):
        torch.testing.assert_close(out, m(xr))
    with pytest.raises(ValueError, match="one architecture"):
        StackedLocalMixer([mixers[0], LocalMixer(3, 4, **{**ARCH, "groups": 4})])


def test_crops_and_mirrors_of_several_batches_are_each_batchs_own():
    x = torch.randn(3, 5, 2, 8, 8)
    generators = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
    for flip in (True, False):
        out = random_crop_flip_each(x, generators, padding=3, flip=flip)
        for r, g in enumerate(generators):
            alone_rng = torch.Generator().manual_seed(r)
            for _ in range(flip is False):  # the first round's draws, replayed
                random_crop_flip(x[r], alone_rng, padding=3, flip=True)
            assert torch.equal(out[r], random_crop_flip(x[r], alone_rng, padding=3, flip=flip))
            assert torch.equal(g.get_state(), alone_rng.get_state())
    with pytest.raises(ValueError, match="one generator per batch"):
        random_crop_flip_each(x, generators[:2])


def test_bad_input_is_refused(float64):
    ok = dict(epochs=1, batch_size=12, **ARCH)
    with pytest.raises(ValueError, match="unknown method"):
        train_mixer_stack(float64, [MixerRun("gradient_oracle", True)], **ok)
    for method in ("directional", "w_transpose_debiased", "head_only"):
        with pytest.raises(ValueError, match=f"not '{method}'"):
            train_mixer_stack(float64, [MixerRun(method, True)], **ok)
    with pytest.raises(ValueError, match="at least one run"):
        train_mixer_stack(float64, [], **ok)
    with pytest.raises(TypeError, match="list of MixerRun"):
        train_mixer_stack(float64, MixerRun("backprop", True), **ok)
    with pytest.raises(TypeError, match="True or False"):
        train_mixer_stack(float64, [MixerRun("backprop", "yes")], **ok)
    with pytest.raises(TypeError, match="seed"):
        train_mixer_stack(float64, [("backprop", True, False, 0.5)], **ok)
    with pytest.raises(TypeError, match="per run"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **ok, local=True)
    with pytest.raises(ValueError, match="epochs"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **{**ok, "epochs": -1})
    with pytest.raises(ValueError, match="batch_size"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **{**ok, "batch_size": 49})
    with pytest.raises(ValueError, match="unknown optimizer"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **ok, optimizer="lion")
    with pytest.raises(ValueError, match="learning rate"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **ok, lr=0.0)
    with pytest.raises(ValueError, match="pad them"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **{**ok, "image_size": 16})
    with pytest.raises(ValueError, match="divisible"):
        train_mixer_stack(float64, [MixerRun("backprop", True)], **{**ok, "groups": 3})


def test_a_single_run_is_a_stack_of_one(float64):
    run, settings = MixerRun("w_transpose", True, True, 3), dict(epochs=1, batch_size=12, **ARCH)
    single = train_mixer(float64, method=run.method, local=run.local, augment=run.augment,
                         seed=run.seed, **settings)
    assert_same_history(single, alone(float64, run, **settings))


def test_chunks_of_a_stack_are_the_stack(float64, tmp_path):
    """``max_replicates`` trains the stack's order in chunks, each stored on its own: the same
    histories as one stack, and with chunks of one, `train_mixer`'s run by run."""
    runs = [MixerRun(method, local, augment, seed) for (method, local) in CHAPTER
            for augment, seed in ((False, 0), (True, 1))][::-1]
    settings = dict(epochs=1, batch_size=12, lr=1e-2, optimizer="adamw", **ARCH)
    whole = train_mixer_stack(float64, runs, **settings)
    chunks = []

    def store_call(fn, *args, **kwargs):
        chunks.append([(run.method, run.local) for run in args[1]])
        return fn(*args, **kwargs)

    for size in (3, len(runs)):
        with checkpoints.saving_to(tmp_path / f"{size}.pt", store_call=store_call):
            chunked = train_mixer_stack(float64, runs, max_replicates=size, **settings)
        for history, one in zip(chunked, whole):
            assert_same_history(history, one)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]  # the stack's order: guesses by method
    assert [run for c in chunks for run in c][-4:] == [("backprop", True)] * 2 + [("backprop", False)] * 2
    for run, history in zip(runs, train_mixer_stack(float64, runs, max_replicates=1, **settings)):
        single = train_mixer(float64, method=run.method, local=run.local, augment=run.augment,
                             seed=run.seed, **settings)
        assert {k: v for k, v in history.items() if k != "seconds"} == \
            {k: v for k, v in single.items() if k != "seconds"}
    with pytest.raises(ValueError, match="max_replicates"):
        train_mixer_stack(float64, runs, max_replicates=0, **settings)
