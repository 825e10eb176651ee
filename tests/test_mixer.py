"""LocalMixer: shapes, local losses that stay local, transposes that are transposes, and the
estimators' guarantees carried over to it."""
import pytest
import torch
import torch.nn.functional as F

from gradguess.core import guesses
from gradguess.core.estimators import (_local_slices, backprop_gradient, guessed_gradient,
                                  per_example_gradients, preactivation_jvp)
from gradguess.core.metrics import cosine_similarity
from gradguess.core.mixer import LocalMixer
from gradguess.core.models import Trace

from conftest import tiny_mixer


def test_shapes_and_trace():
    model, x, y = tiny_mixer()
    assert model(x).shape == (5, 3)
    trace = Trace()
    model(x, trace=trace)
    shapes = [tuple(s.shape) for s in trace.preactivations]
    assert shapes == [(5, 16, 8), (5, 8, 16), (5, 16, 2, 4), (5, 3), (5, 8, 16), (5, 16, 2, 4), (5, 3)]
    fresh = LocalMixer(1, 10)
    assert all(not h.weight.detach().any() for h in fresh.layers[3::3])  # zero readouts
    with pytest.raises(ValueError, match="pad them"):
        fresh(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="divisible"):
        LocalMixer(1, 10, channels=30, groups=4)


def test_local_losses_train_only_their_own_block():
    model, x, y = tiny_mixer(local=True)
    _, grads = backprop_gradient(model, x, y)
    plain = LocalMixer(2, 3, image_size=8, patch=2, channels=8, blocks=2, groups=2, local=False).double()
    plain.load_state_dict(model.state_dict())  # nothing detached: the first head's loss, plainly
    first_block = [p for layer in plain.layers[:4] for p in layer.parameters()]
    own = torch.autograd.grad(F.cross_entropy(plain.head_logits(x)[0], y), first_block)
    for g, o in zip(grads, own):  # parameters() lists the first block's first
        torch.testing.assert_close(g, o)
    # end to end: only the readout's loss, through every block
    e2e, x2, y2 = tiny_mixer(local=False)
    _, grads = backprop_gradient(e2e, x2, y2)
    readout = torch.autograd.grad(F.cross_entropy(e2e(x2), y2), list(e2e.parameters()), allow_unused=True)
    for g, r in zip(grads, readout):
        torch.testing.assert_close(g, torch.zeros_like(g) if r is None else r)
    assert not grads[6].any()  # the first block's head is not part of the end-to-end loss


def linear_part(model, j, u):
    """Layer j's linear map (no bias), from the layout pull_back returns to the layout of s_j."""
    layer, b, t = model.layers[j], u.shape[0], model.tokens
    kind = model._kind(j)
    if kind == "token":    # u [B, T, D] -> [B, D, T]
        return u.transpose(1, 2) @ layer.weight.T
    if kind == "channel":  # u [B, D, T] -> [B, T, G, D/G]
        grouped = u.transpose(1, 2).reshape(b, t, model.groups, -1)
        return torch.einsum("...gi,goi->...go", grouped, layer.weight)
    return u.reshape(b, t, -1).mean(1) @ layer.weight.T  # head: u [B, T, G, D/G] -> [B, C]


@pytest.mark.parametrize("j", [1, 2, 3, 5, 6])  # layer 4 (block 2's token layer) has no
def test_pull_back_is_the_transpose_of_the_next_linear_map(j):  # predecessor: a detach
    """<pull_back(v), u> = <v, L_j u>: the adjoint, in the layouts the guesses use."""
    model, x, y = tiny_mixer()
    assert model.successor(j - 1) == j
    trace = Trace()
    model(x, trace=trace)
    v = torch.randn_like(trace.preactivations[j])
    back = model.pull_back(j, v)
    assert back.shape == trace.preactivations[j - 1].shape
    u = torch.randn_like(back)
    torch.testing.assert_close((back * u).sum(), (v * linear_part(model, j, u)).sum())


def test_w_transpose_guesses_follow_the_architecture():
    model, x, y = tiny_mixer()
    trace = Trace()
    model(x, trace=trace)
    ys = guesses.w_transpose_guess(model, trace, torch.Generator().manual_seed(0))
    assert [t.shape for t in ys] == [s.shape for s in trace.preactivations]
    # a channel layer's guess comes from the head: the same vector at every token (where active)
    channel, pre = ys[2], trace.preactivations[2]  # [B, T, G, D/G]
    active = pre > 0
    high = torch.where(active, channel, -torch.inf).amax(1)
    low = torch.where(active, channel, torch.inf).amin(1)
    anywhere = active.any(1)
    torch.testing.assert_close(high[anywhere], low[anywhere])
    assert not channel[~active].any() and channel[active].abs().min() > 0


def test_local_losses_split_the_block_losses():
    """Values: the heads' losses, slices zero; gradient: the local gradient; the slices'
    derivatives add up to the block losses' derivative."""
    model, x, y = tiny_mixer()
    heads, slices = model.local_losses(x, y)
    blocks = sum(F.cross_entropy(z, y, reduction="none") for z in model.head_logits(x))
    torch.testing.assert_close(heads, blocks)
    assert slices.shape == (5, 2 * 16 * 2) and not slices.any()
    trace = Trace()
    model(x, trace=trace)
    tangents = [torch.randn_like(s) if i % 3 else None for i, s in enumerate(trace.preactivations)]
    split = preactivation_jvp(model, x, y, tangents, losses=_local_slices)
    whole = preactivation_jvp(model, x, y, tangents)
    torch.testing.assert_close(split.sum(-1), whole)


def test_local_scale_collects_every_loss_a_unit_reaches():
    """With a one-hot tangent at unit e of s_i, local_scale(i, .) at e is the sum of the
    derivatives of the local losses e reaches; it must equal dloss/ds_e, so a slice left out
    (or a loss a unit cannot reach counted) fails. This is what keeps the guesses unbiased."""
    model, x, y = tiny_mixer()
    trace = Trace()
    model(x, trace=trace)
    _, true = per_example_gradients(model, x, y)
    gen = torch.Generator().manual_seed(0)
    for i, s in enumerate(trace.preactivations):
        if model._kind(i) == "head":
            continue
        for _ in range(6):
            e = torch.randint(0, s[0].numel(), (1,), generator=gen).item()
            onehot = torch.zeros_like(s).flatten(1)
            onehot[:, e] = 1
            tangents = [onehot.view_as(s) if j == i else None for j in range(len(trace.preactivations))]
            d = preactivation_jvp(model, x, y, tangents, losses=_local_slices)
            scaled = (model.local_scale(i, d) * onehot.view_as(s)).flatten(1)[:, e]
            torch.testing.assert_close(scaled, true[i].flatten(1)[:, e])


def test_one_loss_per_block_scales_by_the_block_total():
    model, x, y = tiny_mixer()
    trace = Trace()
    model(x, trace=trace)
    d = torch.randn(5, 2 * 16 * 2, dtype=torch.float64)
    model.split_losses = False
    block_two = d.view(5, 2, -1)[:, 1].sum(-1)
    for i in (4, 5):
        scale = model.local_scale(i, d)
        assert scale.dim() == trace.preactivations[i].dim()
        torch.testing.assert_close(scale.flatten(), block_two)


def test_heads_take_their_exact_local_gradient():
    model, x, y = tiny_mixer()
    _, true = backprop_gradient(model, x, y)
    guess = guessed_gradient(model, x, y, "activation_perturbation", "global", torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    for name, g, t in zip(names, guess, true):
        if name.startswith(("layers.3.", "layers.6.")):
            torch.testing.assert_close(g, t)


def test_activation_perturbation_averages_to_the_local_gradient():
    """Per-slice scaling keeps activation perturbation unbiased for the sum of local losses."""
    model, x, y = tiny_mixer()
    _, true = backprop_gradient(model, x[:1], y[:1])
    xs, ys = x[:1].repeat(6000, 1, 1, 1), y[:1].repeat(6000)
    average = guessed_gradient(model, xs, ys, "activation_perturbation", "global",
                               torch.Generator().manual_seed(0))
    assert cosine_similarity(average, true) > 0.9
    for name in ["w_transpose", "activation_mixing"]:  # the others run and are finite
        g = guessed_gradient(model, x, y, name, "global", torch.Generator().manual_seed(0))
        assert all(torch.isfinite(t).all() for t in g) and any(t.abs().sum() > 0 for t in g)
