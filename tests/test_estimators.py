"""The estimators measure g.y by a real JVP and turn it into the right update."""
import pytest
import torch
import torch.nn.functional as F

from gradguess.core import guesses
from gradguess.core.estimators import (backprop_gradient, estimate_gradient, guessed_gradient,
                                  per_example_gradients, preactivation_jvp, weight_jvp)
from gradguess.core.methods import METHODS
from gradguess.core.metrics import cosine_similarity
from gradguess.core.models import MLP, linear_site, write_linear_grad

from conftest import tiny_mixer, traced

ACTIVATION_METHODS = [m for m, spec in METHODS.items() if spec.space == "activations"]
ESTIMATED = [m for m, spec in METHODS.items() if spec.space != "none"]  # all but a baseline
OPTIONS = {"downstream": {"k": 2}, "singular_power": {"p": 2.0}}


def preactivation_grads(model, x, y):
    """d loss_b / d s_i[b] for every layer and example, by autograd (the reference)."""
    return per_example_gradients(model, x, y)[1]


def guess_for(method, model, x, y, seed=0):
    spec = METHODS[method]
    options = dict(OPTIONS.get(method, {}))
    if spec.needs_targets:
        options["targets"] = y
    out = spec.guess(model, traced(model, x), torch.Generator().manual_seed(seed), **options)
    return out[0] if isinstance(out, tuple) else out  # the tangents, for guesses that step along z


@pytest.mark.parametrize("method", ACTIVATION_METHODS)
def test_preactivation_jvp_equals_autograd_dot(net, method):
    model, x, y = net
    ys = guess_for(method, model, x, y)
    grads = preactivation_grads(model, x, y)
    expected = sum((g * t).sum(-1) for g, t in zip(grads, ys))
    torch.testing.assert_close(preactivation_jvp(model, x, y, ys), expected)
    for i in range(len(ys)):  # one layer at a time, as the per-layer mode does
        only_i = [t if j == i else None for j, t in enumerate(ys)]
        torch.testing.assert_close(preactivation_jvp(model, x, y, only_i),
                                   (grads[i] * ys[i]).sum(-1))


@pytest.mark.parametrize("method", ["directional", "matched_cosine"])
def test_weight_jvp_equals_autograd_dot(net, method):
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    params = [p.detach() for p in model.parameters()]
    extra = {"true_grads": true} if method == "matched_cosine" else {}
    direction = METHODS[method].guess(params, torch.Generator().manual_seed(0), **extra)
    names = [n for n, _ in model.named_parameters()]
    derivative = weight_jvp(model, x, y, dict(zip(names, direction)))
    expected = sum((g * v).sum() for g, v in zip(true, direction))
    torch.testing.assert_close(derivative, expected)


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_update_is_jvp_scaled_guess_times_input(net, mode):
    """.grad of layer i = (1/B) sum_b (jvp_b) y_i[b] x_i[b]^T, jvp from autograd here."""
    model, x, y = net
    estimate_gradient(model, x, y, "w_transpose", mode, torch.Generator().manual_seed(3))
    ys = guess_for("w_transpose", model, x, y, seed=3)
    grads = preactivation_grads(model, x, y)
    trace = traced(model, x)
    total = sum((g * t).sum(-1) for g, t in zip(grads, ys))
    for i, layer in enumerate(model.layers):
        scale = total if mode == "global" else (grads[i] * ys[i]).sum(-1)
        grad_s = scale[:, None] * ys[i] / len(x)
        torch.testing.assert_close(layer.weight.grad, grad_s.T @ trace.inputs[i])
        torch.testing.assert_close(layer.bias.grad, grad_s.sum(0))


def test_backprop_method_matches_autograd(net):
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    for got, want in zip(guessed_gradient(model, x, y, "backprop"), true):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_self_sharpening_last_layer_gets_exact_gradient(net, mode):
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    guess = guessed_gradient(model, x, y, "self_sharpening", mode, torch.Generator().manual_seed(0))
    torch.testing.assert_close(guess[-2], true[-2])  # last weight
    torch.testing.assert_close(guess[-1], true[-1])  # last bias


def test_per_layer_jvps_sum_to_global(net):
    model, x, y = net
    ys = guess_for("activation_perturbation", model, x, y)
    per_layer = sum(preactivation_jvp(model, x, y, [t if j == i else None for j, t in enumerate(ys)])
                    for i in range(len(ys)))
    torch.testing.assert_close(per_layer, preactivation_jvp(model, x, y, ys))


@pytest.mark.parametrize("method", ["directional", "activation_perturbation", "w_transpose"])
def test_modes_agree_for_a_single_layer(method):
    """With one layer there is nothing else to perturb: both modes give the same update."""
    torch.manual_seed(0)
    model = MLP(7, 5, 1, 4).double()
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.randint(0, 4, (5,))
    a = guessed_gradient(model, x, y, method, "global", torch.Generator().manual_seed(1))
    b = guessed_gradient(model, x, y, method, "per_layer", torch.Generator().manual_seed(1))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


def test_directional_descent_averages_to_the_true_gradient():
    """E[(g.v) v] = g / N: the mean of many directional-descent guesses points along g."""
    torch.manual_seed(0)
    model = MLP(6, 5, 3, 3).double()  # 83 parameters
    x, y = torch.randn(2, 6, dtype=torch.float64), torch.tensor([0, 2])
    _, true = backprop_gradient(model, x, y)
    generator = torch.Generator().manual_seed(0)
    total = [torch.zeros_like(t) for t in true]
    for _ in range(2000):
        for acc, g in zip(total, guessed_gradient(model, x, y, "directional", "global", generator)):
            acc += g
    assert cosine_similarity(total, true) > 0.9
    single = guessed_gradient(model, x, y, "directional", "global", generator)
    assert cosine_similarity(single, true) < 0.5  # one guess alone is far off


def replicated(model, x, y, copies):
    """A batch of ``copies`` copies of one example: the batch-mean update is then the average
    of ``copies`` independent single-example guesses, and the true gradient is that example's."""
    return x[:1].repeat(copies, 1), y[:1].repeat(copies)


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_activation_perturbation_averages_to_the_true_gradient(net, mode):
    model, x, y = net
    _, true = backprop_gradient(model, x[:1], y[:1])
    xs, ys = replicated(model, x, y, 20000)
    average = guessed_gradient(model, xs, ys, "activation_perturbation", mode,
                               torch.Generator().manual_seed(0))
    assert cosine_similarity(average, true) > 0.9
    single = guessed_gradient(model, x[:1], y[:1], "activation_perturbation", mode,
                              torch.Generator().manual_seed(0))
    assert cosine_similarity(single, true) < 0.9


def test_w_transpose_average_converges_to_its_covariance_not_the_gradient(net):
    """The mean W^T guess is Cov(y) g = D W^T W D g (A.1): biased, unlike activation perturbation."""
    model, x, y = net
    xs, ys = replicated(model, x, y, 40000)
    average = guessed_gradient(model, xs, ys, "w_transpose", "per_layer",
                               torch.Generator().manual_seed(0))
    grads = preactivation_grads(model, x[:1], y[:1])
    trace = traced(model, x[:1])
    i = 1  # a hidden layer: its bias gradient is dL/ds_i itself
    d = guesses.relu_mask(trace.preactivations[i][0])
    w = model.layers[i + 1].weight
    predicted = d * (w.T @ (w @ (d * grads[i][0])))
    assert (average[2 * i + 1] - predicted).norm() < 0.1 * predicted.norm()
    assert cosine_similarity(predicted, grads[i][0]) < 0.95  # Cov(y) g is not along g


def test_same_seed_same_update(net):
    model, x, y = net
    for method in ESTIMATED:
        a = guessed_gradient(model, x, y, method, "global", torch.Generator().manual_seed(5))
        b = guessed_gradient(model, x, y, method, "global", torch.Generator().manual_seed(5))
        for u, v in zip(a, b):
            assert torch.equal(u, v), method


def test_directional_update_uses_jvp_of_the_loss(net):
    """Directional descent's .grad is exactly (g.v) v."""
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    guess = guessed_gradient(model, x, y, "directional", "global", torch.Generator().manual_seed(2))
    v = guesses.directional_guess([p.detach() for p in model.parameters()],
                                  torch.Generator().manual_seed(2))
    gv = sum((g * d).sum() for g, d in zip(true, v))
    for got, d in zip(guess, v):
        torch.testing.assert_close(got, gv * d)


def test_bad_method_mode_and_options(net):
    model, x, y = net
    with pytest.raises(ValueError, match="unknown method 'w_t'.*w_transpose"):
        estimate_gradient(model, x, y, "w_t")
    with pytest.raises(ValueError, match="unknown mode 'layerwise'.*per_layer"):
        estimate_gradient(model, x, y, "w_transpose", "layerwise")
    with pytest.raises(ValueError, match="k >= 1"):
        estimate_gradient(model, x, y, "downstream", k=0)
    with pytest.raises(TypeError):
        estimate_gradient(model, x, y, "backprop", k=1)
    with pytest.raises(ValueError, match="p > 0"):
        estimate_gradient(model, x, y, "singular_power", p=0)


def test_guessing_methods_never_call_reverse_mode(net, monkeypatch):
    """Every guessing method but matched cosine (which reads g on purpose) runs without
    torch.autograd.grad or .backward: the directional derivative is a forward-mode JVP."""
    model, x, y = net

    def forbidden(*args, **kwargs):
        raise AssertionError("reverse-mode autograd called")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    for method in ESTIMATED:
        if method in ("backprop", "matched_cosine"):
            continue
        for mode in ("global", "per_layer"):
            estimate_gradient(model, x, y, method, mode, torch.Generator().manual_seed(0),
                              **OPTIONS.get(method, {}))
    with pytest.raises(AssertionError, match="reverse-mode"):  # the patch is live
        estimate_gradient(model, x, y, "backprop")


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_self_sharpening_on_one_layer_is_backprop(mode):
    """A one-layer net has only the last layer, whose gradient self-sharpening knows exactly."""
    torch.manual_seed(0)
    model = MLP(7, 5, 1, 4).double()
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.randint(0, 4, (5,))
    _, true = backprop_gradient(model, x, y)
    for got, want in zip(guessed_gradient(model, x, y, "self_sharpening", mode), true):
        torch.testing.assert_close(got, want)


class TokenNet(torch.nn.Module):
    """Follows the models' protocol with token dimensions: [B, T, d] pre-activations, mean
    over tokens before the readout. Stands in for the LocalMixer and ViT of later chapters."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)])

    def forward(self, x, perturbations=None, trace=None):
        h = x
        for i, layer in enumerate(self.layers):
            s = linear_site(i, layer, h, perturbations, trace)
            h = torch.relu(s).mean(1) if i == 0 else s
        return h


@pytest.mark.parametrize("mode", ["global", "per_layer"])
def test_estimators_handle_token_dimensions(mode):
    torch.manual_seed(0)
    model = TokenNet().double()
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([0, 2, 1])
    estimate_gradient(model, x, y, "activation_perturbation", mode, torch.Generator().manual_seed(0))
    ys = guess_for("activation_perturbation", model, x, y)
    grads = preactivation_grads(model, x, y)
    trace = traced(model, x)
    per_layer = [(g * t).flatten(1).sum(1) for g, t in zip(grads, ys)]
    for i, layer in enumerate(model.layers):
        scale = sum(per_layer) if mode == "global" else per_layer[i]
        grad_s = scale.view(-1, *[1] * (ys[i].dim() - 1)) * ys[i] / len(x)
        expected = torch.einsum("b...o,b...i->oi", grad_s, trace.inputs[i])
        torch.testing.assert_close(layer.weight.grad, expected)


def test_per_example_input_gradients_match_autograd_one_by_one(net):
    model, x, y = net
    input_grads, _ = per_example_gradients(model, x, y)
    for b in range(len(x)):
        xb = x[b:b + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xb), y[b:b + 1]), xb)
        torch.testing.assert_close(input_grads[b], g[0])


def test_debiased_w_transpose_averages_to_the_true_gradient(net):
    """Undoing Cov(y) = A A^T makes W^T unbiased on hidden layers, where g lies in range(A)."""
    model, x, y = net
    xs, ys = replicated(model, x, y, 40000)
    average = guessed_gradient(model, xs, ys, "w_transpose_debiased", "per_layer",
                               torch.Generator().manual_seed(0))
    grads = preactivation_grads(model, x[:1], y[:1])
    for i in range(len(model.layers) - 1):  # hidden layers: the bias gradient is dL/ds_i
        assert cosine_similarity(average[2 * i + 1], grads[i][0]) > 0.95, i


def test_updates_carry_no_autograd_graph(net):
    model, x, y = net
    for method in ESTIMATED:
        estimate_gradient(model, x, y, method, "global", torch.Generator().manual_seed(0),
                          **OPTIONS.get(method, {}))
        assert not any(p.grad.requires_grad for p in model.parameters()), method


def per_layer_loop(model, x, y, method, seed, **options):
    """The per-layer mode as a Python loop of one JVP per layer (what the batched JVP
    replaced): the .grad it would write, in ``model.parameters()`` order."""
    spec = METHODS[method]
    trace = traced(model, x)
    if spec.needs_targets:
        options["targets"] = y
    with torch.no_grad():
        ys = spec.guess(model, trace, torch.Generator().manual_seed(seed), **options)
    ys, zs = ys if isinstance(ys, tuple) else (ys, ys)
    exact = (model.exact_preactivation_grads(trace, y)
             if hasattr(model, "exact_preactivation_grads") else {})
    if spec.exact_last:
        exact[len(ys) - 1] = zs[-1]
    local = getattr(model, "local", False)
    slices = lambda model, x, targets, deltas: model.local_losses(x, targets, deltas)[1]
    for i, layer in enumerate(model.layers):
        if i in exact:
            grad_s = exact[i]
        else:
            only_i = [t if j == i else None for j, t in enumerate(ys)]
            if local:
                scale = model.local_scale(i, preactivation_jvp(model, x, y, only_i, losses=slices))
            else:
                d = preactivation_jvp(model, x, y, only_i)
                scale = d.view(-1, *[1] * (zs[i].dim() - 1))
            grad_s = scale * zs[i]
        write_linear_grad(layer, trace.inputs[i], grad_s / len(x))
    return [p.grad.clone() for p in model.parameters()]


# w_transpose_debiased reads an MLP's 2-d weights: it guesses for MLPs only
MIXER_METHODS = [m for m in ACTIVATION_METHODS if m != "w_transpose_debiased"]


@pytest.mark.parametrize("model_name, method", [("mlp", m) for m in ACTIVATION_METHODS]
                         + [("local mixer", m) for m in MIXER_METHODS])
def test_batched_per_layer_mode_equals_a_loop_of_jvps(net, model_name, method):
    """The per-layer mode's one batched JVP gives each layer's derivative alone, as a loop of
    one JVP per layer does (a LocalMixer: one derivative per local loss, per layer)."""
    model, x, y = net if model_name == "mlp" else tiny_mixer(local=True)
    options = OPTIONS.get(method, {})
    got = guessed_gradient(model, x, y, method, "per_layer", torch.Generator().manual_seed(4),
                           **options)
    want = per_layer_loop(model, x, y, method, seed=4, **options)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["directional", "matched_cosine"])
def test_batched_per_layer_weight_jvps_equal_a_loop(net, method):
    """Directional descent per layer: one batched JVP over the layers' directions, drawn in the
    same order, gives what one JVP per layer gives."""
    model, x, y = net
    got = guessed_gradient(model, x, y, method, "per_layer", torch.Generator().manual_seed(6))
    generator, want = torch.Generator().manual_seed(6), []
    _, true = backprop_gradient(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    for k, layer in enumerate(model.layers):  # weight and bias of layer k: params 2k, 2k + 1
        params = [p.detach() for p in layer.parameters()]
        extra = {"true_grads": true[2 * k:2 * k + 2]} if method == "matched_cosine" else {}
        direction = METHODS[method].guess(params, generator, **extra)
        d = weight_jvp(model, x, y, dict(zip(names[2 * k:2 * k + 2], direction)))
        want += [d * v for v in direction]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
