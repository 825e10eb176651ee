"""Each guess has the structure its method claims: shapes, subspaces, covariances."""
import math

import pytest
import torch

from gradguess.core import guesses
from gradguess.core.estimators import backprop_gradient
from gradguess.core.methods import METHODS
from gradguess.core.metrics import cosine_similarity, flatten

from conftest import traced

ACTIVATION_METHODS = [m for m, spec in METHODS.items() if spec.space == "activations"]


def call(method, model, trace, seed=0, **options):
    if METHODS[method].needs_targets:
        options.setdefault("targets", torch.zeros(trace.preactivations[0].shape[0], dtype=torch.long))
    out = METHODS[method].guess(model, trace, torch.Generator().manual_seed(seed), **options)
    return out[0] if isinstance(out, tuple) else out  # the tangents, for guesses that step along z


@pytest.mark.parametrize("method", ACTIVATION_METHODS)
def test_one_guess_per_layer_shaped_like_its_preactivation(net, method):
    model, x, _ = net
    trace = traced(model, x)
    ys = call(method, model, trace)
    assert [y.shape for y in ys] == [s.shape for s in trace.preactivations]
    assert all(torch.isfinite(y).all() for y in ys)


def residual_outside(vectors, basis):
    """Norm of each row of ``vectors`` outside the column span of ``basis``, relative."""
    q, _ = torch.linalg.qr(basis)
    rest = vectors - (vectors @ q) @ q.T
    return rest.norm(dim=-1) / vectors.norm(dim=-1)


@pytest.mark.parametrize("method", ["w_transpose", "singular_power"])
def test_w_transpose_guesses_lie_in_the_range_of_masked_w_transpose(net, method):
    """y_i[b] is in range(D_b W_{i+1}^T). The last hidden layer feeds a 5 x 16 matrix, so its
    range is 5 of 16 dimensions: a random vector would leave most of its norm outside."""
    model, x, _ = net
    trace = traced(model, x)
    ys = call(method, model, trace, **({"p": 3.0} if method == "singular_power" else {}))
    i = len(model.layers) - 2
    w = model.layers[i + 1].weight
    for b in range(x.shape[0]):
        basis = guesses.relu_mask(trace.preactivations[i][b])[:, None] * w.T
        assert residual_outside(ys[i][b:b + 1], basis) < 1e-10
        assert residual_outside(torch.randn(1, 16, dtype=basis.dtype), basis) > 0.3
    assert torch.all(ys[i][guesses.relu_mask(trace.preactivations[i]) == 0] == 0)


def test_downstream_one_layer_is_w_transpose_with_the_next_mask(net):
    model, x, _ = net
    trace = traced(model, x)
    pre = trace.preactivations
    ys = call("downstream", model, trace, seed=4, k=1)
    g = torch.Generator().manual_seed(4)
    for i in range(len(pre) - 1):
        eps = torch.randn(pre[i + 1].shape, generator=g, dtype=pre[i + 1].dtype)
        next_mask = guesses.relu_mask(pre[i + 1]) if i + 1 < len(pre) - 1 else 1.0
        expected = guesses.relu_mask(pre[i]) * ((eps * next_mask) @ model.layers[i + 1].weight)
        torch.testing.assert_close(ys[i], expected)


def test_singular_power_one_is_w_transpose(net):
    model, x, _ = net
    trace = traced(model, x)
    for a, b in zip(call("singular_power", model, trace, seed=2, p=1.0),
                    call("w_transpose", model, trace, seed=2)):
        torch.testing.assert_close(a, b)


def test_downstream_mean_guess_is_covariance_times_gradient(net):
    """E[(g.y) y] = Cov(y) g (A.1) by Monte Carlo, for 2-layer downstream at the first layer:
    y = A eps with A = D_0 W_1^T D_1 W_2^T D_2, so Cov(y) = A A^T."""
    model, x, y = net
    one = traced(model, x[:1])
    ys = call("downstream", model, traced(model, x[:1].repeat(50000, 1)), k=2)[0]
    deltas = [torch.zeros_like(s, requires_grad=True) for s in one.preactivations]
    loss = torch.nn.functional.cross_entropy(model(x[:1], deltas), y[:1])
    g = torch.autograd.grad(loss, deltas[0])[0][0]
    d = [torch.diag(guesses.relu_mask(s[0])) for s in one.preactivations]
    a = d[0] @ model.layers[1].weight.T @ d[1] @ model.layers[2].weight.T @ d[2]
    predicted = a @ a.T @ g
    mean_guess = ((ys @ g)[:, None] * ys).mean(0)
    assert (mean_guess - predicted).norm() < 0.05 * predicted.norm()
    assert cosine_similarity(predicted, g) < 0.95  # biased: not along g


def test_activation_perturbation_has_identity_covariance(net):
    model, x, _ = net
    ys = call("activation_perturbation", model, traced(model, x[:1].repeat(40000, 1)))[1]
    cov = ys.T @ ys / len(ys)
    assert (cov - torch.eye(cov.shape[0], dtype=cov.dtype)).abs().max() < 0.05


def test_activation_mixing_is_a_masked_mixture_of_the_batch(net):
    model, x, _ = net
    trace = traced(model, x)
    ys = call("activation_mixing", model, trace)
    for i, (s, guess) in enumerate(zip(trace.preactivations[:-1], ys)):
        acts = torch.relu(s)  # x_{i+1}, the batch's post-activations
        for b in range(len(x)):
            mask = guesses.relu_mask(s[b])
            assert torch.all(guess[b][mask == 0] == 0)
            assert residual_outside(guess[b:b + 1], (mask[:, None] * acts.T)) < 1e-10
        torch.testing.assert_close(guess.norm(dim=1), torch.full((len(x),), math.sqrt(s.shape[1]),
                                                                  dtype=s.dtype))


def test_activation_mixing_overall_normalisation_scales_each_layer_once(net):
    """The literal reading of A.4 ("we normalize the overall guess"): the same mixture as the
    per-example default, times one scale per layer, so that the layer's guess has the norm
    sqrt(B d_i) of an N(0, I) guess of its shape; examples keep their relative sizes."""
    model, x, _ = net
    trace = traced(model, x)
    per_example = call("activation_mixing", model, trace, seed=3)
    overall = call("activation_mixing", model, trace, seed=3, normalise="overall")
    spelled_out = call("activation_mixing", model, trace, seed=3, normalise="per_example")
    assert all(torch.equal(a, b) for a, b in zip(per_example, spelled_out))  # the default
    generator = torch.Generator().manual_seed(3)  # the draws, in the order the guess takes them
    for s, a, b in zip(trace.preactivations[:-1], per_example, overall):
        alpha = torch.randn((len(s), len(s)), generator=generator, dtype=s.dtype)
        mixture = (alpha @ torch.relu(s)) * guesses.relu_mask(s)
        torch.testing.assert_close(b, mixture * math.sqrt(s.numel()) / mixture.norm())
        torch.testing.assert_close(a, mixture * math.sqrt(s.shape[1]) / mixture.norm(dim=1, keepdim=True))
        assert b.norm(dim=1).std() > 0.01 * b.norm(dim=1).mean()  # not rescaled per example
    with pytest.raises(ValueError, match="unknown normalise"):
        call("activation_mixing", model, trace, normalise="per_layer")


def test_self_sharpening_last_layer_is_the_error_vector(net):
    model, x, y = net
    trace = traced(model, x)
    ys = call("self_sharpening", model, trace, targets=y)
    expected = torch.softmax(trace.preactivations[-1], -1) - torch.nn.functional.one_hot(y, 5)
    torch.testing.assert_close(ys[-1], expected)
    # uniform U[0, 1) guesses pulled back through ReLU masks and W^T, not normal ones
    with pytest.raises(ValueError, match="high > low"):
        call("self_sharpening", model, trace, targets=y, low=1.0, high=1.0)


def test_directional_guess_has_unit_scale(net):
    model, *_ = net
    params = [p.detach() for p in model.parameters()]
    norms = [flatten(guesses.directional_guess(params, torch.Generator().manual_seed(s))).norm()
             for s in range(200)]
    assert abs(sum(norms) / len(norms) - 1.0) < 0.05


@pytest.mark.parametrize("cosine", [0.02, 0.5, -0.3])
def test_matched_cosine_guess_has_the_requested_cosine(net, cosine):
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    params = [p.detach() for p in model.parameters()]
    guess = guesses.matched_cosine_guess(params, torch.Generator().manual_seed(0), true, cosine)
    assert [g.shape for g in guess] == [p.shape for p in params]
    assert abs(abs(cosine_similarity(guess, true)) - abs(cosine)) < 1e-9
    with pytest.raises(ValueError, match="cosine"):
        guesses.matched_cosine_guess(params, None, true, 1.5)


def debiased_by_pinv(model, trace, seed):
    """The de-biased W^T guess as first written: z = (A^+)^T eps by an SVD, A = D W^T."""
    generator, pre = torch.Generator().manual_seed(seed), trace.preactivations
    tangents, updates = [], []
    for i in range(len(pre) - 1):
        eps = torch.randn(pre[i + 1].shape, generator=generator, dtype=pre[i].dtype)
        a = guesses.relu_mask(pre[i]).unsqueeze(-1) * model.layers[i + 1].weight.T
        tangents.append((a @ eps.unsqueeze(-1)).squeeze(-1))
        updates.append((torch.linalg.pinv(a).transpose(-1, -2) @ eps.unsqueeze(-1)).squeeze(-1))
    last = torch.randn(pre[-1].shape, generator=generator, dtype=pre[-1].dtype)
    return tangents + [last], updates + [last]


@pytest.mark.parametrize("rank_deficient_w", [False, True])
def test_debiased_w_transpose_by_cholesky_equals_pinv(net, rank_deficient_w):
    """The Cholesky solves give pinv's update directions: where A = D W^T has full column rank
    (the last hidden layer: more active units than its 5 outputs), where it has too few
    active units (the 16 -> 16 layers), and, with two equal rows in every W, where A is
    rank deficient beyond that and pinv takes over."""
    model, x, _ = net
    x = torch.cat([x, 0.3 * x])  # 12 examples
    if rank_deficient_w:
        with torch.no_grad():
            for layer in model.layers[1:]:
                layer.weight[1] = layer.weight[0]
    trace = traced(model, x)
    active = [guesses.relu_mask(s).sum(-1) for s in trace.preactivations[:-1]]
    assert (active[2] >= 5).all()  # layer 2's A is [16, 5]: full column rank
    assert (active[0] < 16).all() and (active[1] < 16).all()  # too few active units for 16
    with torch.no_grad():
        ys, zs = guesses.debiased_w_transpose_guess(model, trace, torch.Generator().manual_seed(3))
    want_ys, want_zs = debiased_by_pinv(model, trace, seed=3)
    for got, want in zip(ys + zs, want_ys + want_zs):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8)
