
import pytest
import torch

from gradguess.core.estimators import backprop_gradient
from gradguess.core.metrics import (as_directional_step, best_loss_reduction, cosine_similarity,
                               effective_rank, layer_cosines, mean_projection_cosine, offset_share,
                               one_step_effectiveness, principal_basis, projection_cosine,
                               random_basis, rank_correlation, span_basis)


def test_cosine_similarity_of_lists():
    a = [torch.tensor([1.0, 0.0]), torch.tensor([[0.0]])]
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, [torch.tensor([0.0, 1.0]), torch.tensor([[0.0]])]) == 0.0
    assert cosine_similarity(a, [-t for t in a]) == pytest.approx(-1.0)


def test_layer_cosines_split_by_layer(net):
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    flipped = [-g if k < 2 else g for k, g in enumerate(true)]  # first layer's weight and bias
    cos = layer_cosines(model, flipped, true)
    assert cos[0] == pytest.approx(-1.0) and all(c == pytest.approx(1.0) for c in cos[1:])


def test_effective_rank():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.outer(torch.randn(5), torch.randn(6))) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0)
    assert 1.0 < effective_rank(torch.diag(torch.tensor([10.0, 1.0, 1.0]))) < 3.0


def test_projection_cosine():
    basis = random_basis(10, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(basis.T @ basis, torch.eye(3))
    inside = basis @ torch.tensor([1.0, -2.0, 0.5])
    assert projection_cosine(inside, basis) == pytest.approx(1.0, abs=1e-6)
    outside = torch.randn(10)
    outside -= basis @ (basis.T @ outside)
    assert projection_cosine(outside, basis) == pytest.approx(0.0, abs=1e-6)


def test_principal_basis_finds_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(8, generator=g), dim=0)
    samples = 10 * torch.randn(500, 1, generator=g) * direction + 0.1 * torch.randn(500, 8, generator=g)
    basis = principal_basis(samples, 1)
    assert abs(float(basis[:, 0] @ direction)) > 0.99


def test_one_step_effectiveness_of_backprop_is_one_and_of_its_negative_is_not(net):
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    assert one_step_effectiveness(model, x, y, true, true) == pytest.approx(1.0)
    negative = [-g for g in true]
    assert one_step_effectiveness(model, x, y, negative, true, unit_guess=False) < 0
    # in directional form the JVP's sign turns any guess into a descent step
    assert one_step_effectiveness(model, x, y, negative, true) == pytest.approx(1.0)
    drop, lr = best_loss_reduction(model, x, y, true)
    assert drop > 0 and 1e-5 <= lr <= 1e-1


def test_directional_step_has_the_scale_of_a_unit_guess(net):
    """(g.u) u with |u| = 1: its norm is |g| cos, whatever the guess's own norm."""
    model, x, y = net
    _, true = backprop_gradient(model, x, y)
    guess = [1000 * (t + 0.5 * torch.randn_like(t)) for t in true]
    step = as_directional_step(guess, true)
    cos = cosine_similarity(guess, true)
    assert cosine_similarity(step, guess) == pytest.approx(1.0)
    g_norm = float(torch.cat([t.flatten() for t in true]).norm())
    assert float(torch.cat([s.flatten() for s in step]).norm()) == pytest.approx(g_norm * cos)
    assert as_directional_step(true, true)[0].allclose(true[0])


def test_uncentred_basis_keeps_the_mean_direction():
    g = torch.Generator().manual_seed(1)
    mean = torch.nn.functional.normalize(torch.ones(6), dim=0)
    samples = 5 * mean + 0.1 * torch.randn(200, 6, generator=g)
    assert abs(float(principal_basis(samples, 1, center=False)[:, 0] @ mean)) > 0.99
    assert abs(float(principal_basis(samples, 1)[:, 0] @ mean)) < 0.9


def test_mean_projection_cosine_and_span_basis():
    basis = random_basis(10, 3, torch.Generator().manual_seed(0))
    inside = torch.randn(5, 3) @ basis.T
    rows = torch.cat([inside, torch.zeros(1, 10)])  # a zero row is skipped
    assert mean_projection_cosine(rows, basis) == pytest.approx(1.0, abs=1e-6)
    assert mean_projection_cosine(inside, basis) == pytest.approx(
        sum(projection_cosine(r, basis) for r in inside) / 5, abs=1e-6)
    columns = torch.cat([basis[:, :2], basis[:, :1] + basis[:, 1:2], torch.zeros(10, 1)], dim=1)
    span = span_basis(columns)
    assert span.shape == (10, 2)  # rank 2, not 4
    torch.testing.assert_close(span.T @ span, torch.eye(2), atol=1e-5, rtol=0)


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [9, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3, 4], [1, 100, 2, 3]) == pytest.approx(0.4)  # ranks, not values
    assert rank_correlation([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties


def test_offset_share_grows_with_the_inputs_common_part():
    g = torch.Generator().manual_seed(0)
    centred_x = torch.randn(128, 50, generator=g)
    shifted_x = centred_x + 3.0  # every pixel on: a common part in every input
    centred_share = offset_share(centred_x - centred_x.mean(0), torch.Generator().manual_seed(1))
    shifted_share = offset_share(shifted_x, torch.Generator().manual_seed(1))
    assert centred_share < 0.2 < 2 < shifted_share
