"""R replicates stacked in one model behave exactly like R separate MLPs."""
import pytest
import torch

from gradguess.core import guesses
from gradguess.core.estimators import backprop_gradient, estimate_gradient
from gradguess.core.methods import METHODS, Method
from gradguess.core.metrics import cosine_similarity, effective_rank, replicate_cosines
from gradguess.core.models import MLP, StackedMLP, stack_mlps
from gradguess.engine.stack import accuracy
from gradguess.engine.training import train_replicates

from conftest import blobs, traced


@pytest.fixture
def replicas():
    mlps = []
    for seed in range(3):
        torch.manual_seed(seed)
        mlps.append(MLP(12, 16, 4, 5).double())
    x = torch.randn(6, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    return mlps, stack_mlps(mlps), x, y


def test_stack_and_unstack_round_trip(replicas):
    mlps, stacked, x, y = replicas
    logits = stacked(x)
    assert logits.shape == (3, 6, 5)
    for r, mlp in enumerate(mlps):
        torch.testing.assert_close(logits[r], mlp(x))
        for a, b in zip(stacked.unstack(r).parameters(), mlp.parameters()):
            torch.testing.assert_close(a, b)


def test_stacked_backprop_is_each_replicates_own_gradient(replicas):
    mlps, stacked, x, y = replicas
    loss, grads = backprop_gradient(stacked, x, y)
    for r, mlp in enumerate(mlps):
        single_loss, single = backprop_gradient(mlp, x, y)
        torch.testing.assert_close(loss[r], single_loss)
        for g, s in zip(grads, single):
            torch.testing.assert_close(g[r], s)


@pytest.mark.parametrize("method", ["w_transpose", "activation_perturbation", "self_sharpening",
                                    "singular_power", "activation_mixing", "downstream"])
def test_stacked_guessed_update_equals_separate_ones(replicas, monkeypatch, method):
    """With the same guesses, the stacked estimator writes every replicate's own update."""
    mlps, stacked, x, y = replicas
    spec = METHODS[method]
    options = {"targets": y} if spec.needs_targets else {}
    if method == "singular_power":
        options["p"] = 2.0
    stacked_guess = spec.guess(stacked, traced(stacked, x), torch.Generator().manual_seed(0),
                               **options)
    for r, mlp in enumerate(mlps):
        # the stacked guess's geometry matches the replicate's own: same range, same masks
        single_guess = spec.guess(mlp, traced(mlp, x), torch.Generator().manual_seed(0), **options)
        assert [t.shape for t in single_guess] == [t[r].shape for t in stacked_guess]
    fixed = lambda ys: Method("fixed", "fixed", "gray", "activations", lambda *a, **k: ys,
                              exact_last=spec.exact_last)
    monkeypatch.setitem(METHODS, "fixed", fixed(stacked_guess))
    estimate_gradient(stacked, x, y, "fixed")
    for r, mlp in enumerate(mlps):
        monkeypatch.setitem(METHODS, "fixed", fixed([t[r] for t in stacked_guess]))
        estimate_gradient(mlp, x, y, "fixed")
        for p_stacked, p_single in zip(stacked.parameters(), mlp.parameters()):
            torch.testing.assert_close(p_stacked.grad[r], p_single.grad)


def test_stacked_singular_power_uses_each_replicates_own_svd(replicas):
    mlps, stacked, x, y = replicas
    shared, own = guesses.powered_weights(stacked, 3.0), guesses.powered_weights(stacked, [0.5, 1, 3])
    for r, (mlp, p) in enumerate(zip(mlps, [0.5, 1, 3])):
        for w_stacked, w_single in zip(shared[1:], guesses.powered_weights(mlp, 3.0)[1:]):
            torch.testing.assert_close(w_stacked[r], w_single)
        for w_stacked, w_single in zip(own[1:], guesses.powered_weights(mlp, p)[1:]):
            torch.testing.assert_close(w_stacked[r], w_single)
    torch.testing.assert_close(own[2][1], stacked.layers[2].weight[1].detach())  # p = 1 is W
    with pytest.raises(ValueError, match="p > 0"):
        guesses.powered_weights(stacked, [1.0, -1.0, 2.0])


def test_replicate_cosines_and_ranks_and_accuracy(replicas):
    mlps, stacked, x, y = replicas
    _, grads = backprop_gradient(stacked, x, y)
    noisy = [g + 0.1 * torch.randn_like(g) for g in grads]
    cos = replicate_cosines(noisy, grads)
    ranks = effective_rank(stacked.layers[1].weight)
    acc = accuracy(stacked, x, y)
    for r, mlp in enumerate(mlps):
        assert cos[r] == pytest.approx(cosine_similarity([g[r] for g in noisy],
                                                         [g[r] for g in grads]))
        assert ranks[r] == pytest.approx(effective_rank(mlp.layers[1].weight))
        assert acc[r] == pytest.approx(accuracy(mlp, x, y))


def test_train_replicates_learns_and_records(tmp_path):
    data = blobs()
    torch.manual_seed(0)
    model = StackedMLP(data.in_features, 16, 3, data.num_classes, replicates=2)
    history = train_replicates(model, data, "w_transpose", steps=60, batch_size=20, lr=1e-2,
                               record_every=20, progress=False)
    assert history["step"] == [0, 20, 40, 60]
    assert len(history["cosine"][0]) == 2 and len(history["effective_rank"][0]) == 3
    assert all(acc > 0.8 for acc in history["train_acc"]) and history["diverged"] == [False] * 2
    assert all(0 < c < 1 for c in history["cosine"][-1])


def test_train_replicates_is_seeded():
    data = blobs()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = StackedMLP(data.in_features, 8, 3, data.num_classes, replicates=2)
        runs.append(train_replicates(model, data, "singular_power", steps=10, batch_size=20,
                                     record_every=5, method_options={"p": 2.0}, progress=False))
    assert runs[0]["cosine"] == runs[1]["cosine"] and runs[0]["train_acc"] == runs[1]["train_acc"]


def test_bad_replicate_requests():
    data = blobs()
    with pytest.raises(ValueError, match="replicates"):
        StackedMLP(8, 8, 3, 3, replicates=0)
    model = StackedMLP(data.in_features, 8, 3, data.num_classes, replicates=2)
    with pytest.raises(ValueError, match="StableAdamW"):
        train_replicates(model, data, "w_transpose", steps=5, optimizer="stable_adamw")
    with pytest.raises(ValueError, match="directional"):
        train_replicates(model, data, "directional", steps=5)
    with pytest.raises(ValueError, match="integers"):
        train_replicates(model, data, "w_transpose", steps=0)
    with pytest.raises(ValueError, match="one shape"):
        stack_mlps([MLP(8, 8, 3, 3), MLP(8, 16, 3, 3)])


def test_stacked_mixing_mixes_within_each_replicate_only(replicas):
    """Replicate 0's mixing guess does not change when another replicate's weights do."""
    mlps, stacked, x, y = replicas
    before = guesses.activation_mixing_guess(stacked, traced(stacked, x), torch.Generator().manual_seed(1))
    with torch.no_grad():
        stacked.layers[0].weight[1].mul_(3.0)
    after = guesses.activation_mixing_guess(stacked, traced(stacked, x), torch.Generator().manual_seed(1))
    for b, a in zip(before[:-1], after[:-1]):
        torch.testing.assert_close(a[0], b[0])
        assert not torch.allclose(a[1], b[1])
