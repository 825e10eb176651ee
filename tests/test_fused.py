"""The fused estimator gives the reference estimator's update, in both of its modes."""
import pytest
import torch

from gradguess.core.estimators import estimate_gradient
from gradguess.core.fused import FUSED_METHODS, FUSED_MODES, fused_gradient
from gradguess.core.models import MLP, stack_mlps
from gradguess.engine.reference import train

from conftest import blobs


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", FUSED_MODES)
@pytest.mark.parametrize("method", list(FUSED_METHODS))
def test_fused_update_equals_the_reference(net, method, mode):
    model, x, y = net
    reference_rng, fused_rng = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    reference_loss = estimate_gradient(model, x, y, method, "global", reference_rng)
    expected = grads(model)
    loss = fused_gradient(model, x, y, method, fused_rng, mode=mode)
    torch.testing.assert_close(loss, reference_loss)
    for g, e in zip(grads(model), expected):
        torch.testing.assert_close(g, e)
    # the same guesses were drawn: both generators end in the same state
    assert torch.equal(fused_rng.get_state(), reference_rng.get_state())


@pytest.mark.parametrize("mode", FUSED_MODES)
def test_fused_update_of_stacked_replicates(mode):
    torch.manual_seed(0)
    mlps = [MLP(12, 16, 4, 5).double() for _ in range(3)]
    stacked = stack_mlps(mlps)
    x, y = torch.randn(6, 12, dtype=torch.float64), torch.randint(0, 5, (6,))
    estimate_gradient(stacked, x, y, "w_transpose", "global", torch.Generator().manual_seed(1))
    expected = grads(stacked)
    fused_gradient(stacked, x, y, "w_transpose", torch.Generator().manual_seed(1), mode=mode)
    for g, e in zip(grads(stacked), expected):
        torch.testing.assert_close(g, e)


def test_fused_training_follows_the_reference_run():
    data = blobs()
    runs = {}
    for estimator in ["reference", "fused", "fused-lean"]:
        torch.manual_seed(0)
        model = MLP(data.in_features, 16, 3, data.num_classes).double()
        data64 = type(data)(data.name, data.train_x.double(), data.train_y, data.test_x.double(),
                            data.test_y, data.num_classes, data.source)
        runs[estimator] = train(model, data64, "w_transpose", epochs=3, batch_size=20, lr=1e-2,
                                progress=False, estimator=estimator)
    assert runs["fused"]["train_acc"] == runs["reference"]["train_acc"]
    assert runs["fused-lean"]["train_loss"] == pytest.approx(runs["reference"]["train_loss"], rel=1e-9)


def test_fused_refuses_what_it_cannot_do(net):
    model, x, y = net
    g = torch.Generator()
    with pytest.raises(ValueError, match="fused estimator runs"):
        fused_gradient(model, x, y, "directional", g)
    with pytest.raises(ValueError, match="k = 1"):
        fused_gradient(model, x, y, "downstream", g, k=2)
    with pytest.raises(ValueError, match="unknown fused mode"):
        fused_gradient(model, x, y, "w_transpose", g, mode="fast")
    with pytest.raises(ValueError, match="torch.Generator"):
        fused_gradient(model, x, y, "w_transpose", None, mode="regenerate")
    with pytest.raises(TypeError, match="MLP"):
        fused_gradient(torch.nn.Linear(12, 5), x, y, "w_transpose", g)


def test_auto_estimator_is_fused_where_it_applies(net):
    from gradguess.core.models import MLP as Plain
    from gradguess.core.estimators import resolve_estimator
    model = Plain(4, 8, 3, 2)
    assert resolve_estimator("auto", model, "w_transpose", "global", {}) == "fused"
    assert resolve_estimator("auto", model, "downstream", "global", {"k": 2}) == "reference"
    assert resolve_estimator("auto", model, "w_transpose", "per_layer", {}) == "reference"
    assert resolve_estimator("auto", model, "directional", "global", {}) == "reference"
    assert resolve_estimator("fused-lean", model, "w_transpose", "global", {}) == "fused-lean"
    with pytest.raises(ValueError, match="unknown estimator"):
        resolve_estimator("fast", model, "w_transpose", "global", {})
    history = train(model, blobs(dim=4, classes=2), "w_transpose", epochs=1, batch_size=20, progress=False)
    assert history["estimator"] == "fused"
