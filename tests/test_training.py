import pytest
import torch

from gradguess.core.models import MLP
from gradguess.book.scales import SCALES, get_scale, resolve_device
from gradguess.core.probes import probe
from gradguess.analysis.along_backprop import guess_quality_along_backprop
from gradguess.core.optimizers import OPTIMIZERS, make_optimizer
from gradguess.engine.reference import train
from gradguess.engine.training import train_mlp

from conftest import blobs


def fresh(seed=0):
    torch.manual_seed(seed)
    return MLP(8, 32, 3, 3)


def test_backprop_learns_blobs():
    history = train(fresh(), blobs(), "backprop", epochs=5, batch_size=20, lr=1e-2, progress=False)
    assert history["test_acc"][-1] > 0.9 and not history["diverged"]
    assert len(history["train_acc"]) == 5 and history["steps"] == 5 * 10


@pytest.mark.parametrize("method", ["w_transpose", "activation_perturbation", "directional"])
def test_guessed_gradients_learn_blobs(method):
    """Not a race: every guessing method must do better than chance (1/3) on an easy task."""
    history = train(fresh(), blobs(), method, epochs=10, batch_size=20, lr=1e-2, progress=False)
    assert history["train_acc"][-1] > 0.6


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_steps(optimizer):
    history = train(fresh(), blobs(), "w_transpose", epochs=1, batch_size=50, lr=1e-3,
                    optimizer=optimizer, progress=False)
    assert history["steps"] == 4 and not history["diverged"]


def test_same_seed_same_run_and_different_seed_different_run():
    runs = []
    for seed in (0, 0, 1):
        model = fresh(seed)
        history = train(model, blobs(), "w_transpose", epochs=2, batch_size=20, seed=seed,
                        progress=False)
        runs.append((history, torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"]
    assert torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_divergence_is_recorded_not_raised():
    data = blobs()
    poisoned = data.__class__(**{**data.__dict__, "train_x": data.train_x * float("inf")})
    history = train(fresh(), poisoned, "w_transpose", epochs=3, batch_size=20, progress=False)
    assert history["diverged"] and history["diverged_at_step"] == 1
    assert history["train_acc"] == []


def test_guess_quality_along_backprop_scores_each_step():
    scores = guess_quality_along_backprop(fresh(), blobs(), ["backprop", "w_transpose"], steps=3,
                                          batch_size=20, step_sizes=(1e-3, 1e-2), progress=False)
    assert scores["backprop"]["cosine"] == pytest.approx([1.0] * 3)
    assert scores["backprop"]["effectiveness"] == pytest.approx([1.0] * 3)
    assert len(scores["w_transpose"]["layer_cosines"]) == 3
    assert len(scores["w_transpose"]["layer_cosines"][0]) == 3


def test_bad_training_inputs():
    model, data = fresh(), blobs()
    with pytest.raises(ValueError, match="unknown optimizer 'adam'.*stable_adamw"):
        make_optimizer("adam", model.parameters(), 1e-3)
    with pytest.raises(ValueError, match="learning rate"):
        make_optimizer("sgd", model.parameters(), 0.0)
    with pytest.raises(ValueError, match="batch_size"):
        train(model, data, "w_transpose", epochs=1, batch_size=10_000, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train(model, data, "w_transpose", epochs=-1, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        train(model, data, "wt", epochs=1, progress=False)
    with pytest.raises(ValueError, match="depth >= 1"):
        MLP(8, 32, 0, 3)


def test_scales(monkeypatch):
    monkeypatch.delenv("GRADGUESS_SCALE", raising=False)
    assert get_scale("paper") is SCALES["paper"]
    monkeypatch.setenv("GRADGUESS_SCALE", "small")
    assert get_scale("paper") is SCALES["small"]  # the CI override wins
    monkeypatch.setenv("GRADGUESS_SCALE", "huge")
    with pytest.raises(ValueError, match="unknown scale 'huge'.*small.*paper"):
        get_scale("paper")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_device_override(monkeypatch):
    monkeypatch.setenv("GRADGUESS_DEVICE", "cpu")
    assert resolve_device("cuda") == torch.device("cpu")


def test_train_mlp_is_seeded():
    data = blobs()
    a = train_mlp(data, depth=2, width=16, method="w_transpose", seed=3, epochs=2, batch_size=20)
    b = train_mlp(data, depth=2, width=16, method="w_transpose", seed=3, epochs=2, batch_size=20)
    c = train_mlp(data, depth=2, width=16, method="w_transpose", seed=4, epochs=2, batch_size=20)
    assert a["train_loss"] == b["train_loss"] != c["train_loss"]


def test_on_epoch_records_probe_scores_before_and_after_each_epoch():
    data = blobs()
    torch.manual_seed(0)
    model = MLP(data.in_features, 16, 3, data.num_classes)
    x, y = data.train_x[:32], data.train_y[:32]
    rng = torch.Generator().manual_seed(5)
    history = train(model, data, "self_sharpening", epochs=3, batch_size=20, progress=False,
                    optimizer="stable_adamw", lr=1e-2,
                    on_epoch=lambda m: probe(m, x, y, "self_sharpening", rng))
    assert len(history["cosine"]) == len(history["effective_rank"]) == 4  # init + 3 epochs
    assert all(len(r) == 3 and 1 <= min(r) for r in history["effective_rank"])
    # self-sharpening's last layer is the exact gradient: cosine 1 there
    assert history["layer_cosines"][-1][-1] == pytest.approx(1.0)
    assert all(p.grad is None for p in model.parameters())  # probing leaves no gradient behind


def test_augmented_training_is_seeded_and_differs_from_plain():
    from gradguess.core.data import Dataset
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 1, 8, 8, generator=g)
    y = (x[:, 0, 2:6, 2:6].mean((1, 2)) > 0).long()
    data = Dataset("fashion-mnist", x[:60], y[:60], x[60:], y[60:], 2, "synthetic")
    runs = []
    for augment in [True, True, False]:
        torch.manual_seed(0)
        runs.append(train(MLP(64, 16, 2, 2), data, "backprop", epochs=2, batch_size=20, lr=1e-2,
                          progress=False, augment=augment))
    assert runs[0]["train_loss"] == runs[1]["train_loss"]
    assert runs[0]["train_loss"] != runs[2]["train_loss"]
