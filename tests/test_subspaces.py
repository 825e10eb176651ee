import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradguess.core.data import Dataset
from gradguess.core.guesses import activation_mixing_guess
from gradguess.core.models import MLP
from gradguess.analysis.subspaces import (ClassDirections, bootstrap_ratio_interval, class_directions,
                                 first_direction, masked_span_cosines, mixing_against_bound,
                                 pc_similarity, pc_similarity_per_class, random_mixture,
                                 scores_along_training, subspace_scores)

from conftest import blobs, traced


def images(n=120, side=4, classes=3, seed=0):
    """Small "images" [n, 1, side, side]: a class template plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(classes, 1, side, side, generator=g)
    y = torch.arange(n) % classes
    x = templates[y] + 0.1 * torch.randn(n, 1, side, side, generator=g)
    return Dataset("images", x, y, x[:10], y[:10], classes, "synthetic")


def mlp(data, width=16, depth=3, seed=0):
    torch.manual_seed(seed)
    return MLP(data.in_features, width, depth, data.num_classes)


def test_first_direction_is_the_dominant_direction():
    direction = torch.tensor([3.0, 4.0, 0.0]) / 5
    rows = torch.randn(50, 1)[:, :, None] * direction + 1e-3 * torch.randn(50, 1, 3)
    found = first_direction(rows)
    assert found.norm() == pytest.approx(1.0, abs=1e-6)
    assert abs(float(found @ direction)) == pytest.approx(1.0, abs=1e-4)


def test_random_mixture_lies_in_the_span_with_unit_norm():
    rows = torch.randn(2, 6)
    mixture = random_mixture(rows, torch.Generator().manual_seed(0))
    assert mixture.norm() == pytest.approx(1.0, abs=1e-6)
    q, _ = torch.linalg.qr(rows.T)
    torch.testing.assert_close(q @ (q.T @ mixture), mixture)


def test_class_directions_unit_signed_and_seeded():
    data = images()
    model = mlp(data)
    a = class_directions(model, data, torch.Generator().manual_seed(1), per_class=20)
    b = class_directions(model, data, torch.Generator().manual_seed(1), per_class=20)
    c = class_directions(model, data, torch.Generator().manual_seed(2), per_class=20)
    assert len(a) == data.num_classes
    for d in a:
        assert isinstance(d, ClassDirections)
        for v in d:
            assert v.shape == (16,) and v.norm() == pytest.approx(1.0, abs=1e-5)
        assert float(d.gradient @ d.inputs) >= 0  # signed to agree with the inputs
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)
    assert not torch.equal(a[0].mixture, c[0].mixture)  # the mixture is what the seed draws
    assert torch.equal(a[0].gradient, c[0].gradient)  # the principal directions are not drawn


def test_pc_similarity_of_aligned_and_random_directions():
    d = 400
    basis = torch.eye(d)[:4]
    aligned = [ClassDirections(e, e, e) for e in basis]
    scores = pc_similarity(aligned, torch.Generator().manual_seed(0))
    assert scores["same class"] == pytest.approx(1.0)
    assert scores["other classes"] == pytest.approx(0.0)
    # |cos| of a random unit vector with a fixed one: about sqrt(2 / (pi d))
    assert scores["random direction"] == pytest.approx(math.sqrt(2 / (math.pi * d)), rel=0.1)


def test_pc_similarity_per_class_gives_each_class_its_own_row_and_their_mean():
    d = 400
    basis = torch.eye(d)[:3]
    tilted = F.normalize(basis[0] + basis[1], dim=0)  # class 0's gradient PC: 45 degrees off
    directions = [ClassDirections(tilted, basis[0], basis[0]),
                  ClassDirections(basis[1], basis[1], basis[1]),
                  ClassDirections(basis[2], basis[2], basis[2])]
    per_class = pc_similarity_per_class(directions, torch.Generator().manual_seed(0))
    assert per_class["same class"].tolist() == pytest.approx([math.sqrt(0.5), 1.0, 1.0])
    assert per_class["other classes"].tolist() == pytest.approx([math.sqrt(0.5) / 2, 0.0, 0.0])
    mean = pc_similarity(directions, torch.Generator().manual_seed(0))
    assert mean == pytest.approx(per_class.mean().to_dict())


def test_bootstrap_ratio_interval_covers_the_ratio_of_means_and_narrows_with_more_curves():
    rng = np.random.default_rng(0)
    few, many = (rng.normal(0.5, 0.2, n) for n in (10, 1000))
    low, high = bootstrap_ratio_interval(few, np.full(10, 0.1), np.random.default_rng(1))
    assert low < few.mean() / 0.1 < high
    wide = high - low
    low, high = bootstrap_ratio_interval(many, np.full(1000, 0.1), np.random.default_rng(1))
    assert low < many.mean() / 0.1 < high and high - low < wide / 5
    assert bootstrap_ratio_interval(np.ones(5), np.full(5, 0.25), np.random.default_rng(0)) == (4.0, 4.0)
    with pytest.raises(ValueError, match="bootstrap"):
        bootstrap_ratio_interval([1.0], [1.0], np.random.default_rng(0))


def test_subspace_scores_full_span_scores_one_and_random_about_sqrt_k_over_d():
    data = blobs(n=800, dim=8)
    width = 256
    model = mlp(data, width=width, depth=3)
    rows = subspace_scores(model, data, [16, width], torch.Generator().manual_seed(0),
                           reference=300, evaluation=64)
    assert {r["layer"] for r in rows} == {1, 2}
    for r in rows:
        if r["k"] == width:  # the whole space: every gradient lies in it
            for key in ("activations", "random", "preactivation_gradient"):
                assert r[key] == pytest.approx(1.0, abs=1e-4)
        else:
            assert r["random"] == pytest.approx(math.sqrt(16 / width), abs=0.05)
            assert 0 < r["activations"] <= 1 + 1e-6


def test_scores_along_training_rows_and_seeds():
    data = blobs(n=400, dim=8)

    def run(seed):
        return scores_along_training(mlp(data), data, [1, 4], torch.Generator().manual_seed(seed),
                                     epochs=1, reference=64, evaluation=32, seed=0)

    rows = run(0)
    assert len(rows) == 2 * 2 * 2  # epochs 0 and 1, two hidden layers, two k
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4
    assert rows == run(0)
    assert rows != run(1)  # the random subspaces differ
    assert [r["activations"] for r in rows] == [r["activations"] for r in run(1)]


def test_masked_span_cosines_is_one_inside_the_span(net):
    model, x, _ = net
    s = traced(model, x).preactivations[0]  # [6, 16]: six examples, a span smaller than the space
    mask = (s > 0).double()
    inside = mask * (torch.randn(6, 6, dtype=s.dtype) @ torch.relu(s))
    assert masked_span_cosines(inside, s) == pytest.approx([1.0] * 6)
    assert bool(((1 - mask).sum(1) > 0).all())  # every example has inactive units
    outside = inside + (1 - mask) * torch.randn(6, 16, dtype=s.dtype)  # off the mask: out of the span
    assert all(c < 1 - 1e-3 for c in masked_span_cosines(outside, s))
    assert len(masked_span_cosines(torch.cat([inside[:3], 0 * inside[3:]]), s)) == 3  # zero rows skipped


def test_mixing_never_beats_its_bound():
    data = blobs(n=400, dim=8)
    table = mixing_against_bound(mlp(data, depth=4), data, torch.Generator().manual_seed(0), batch=32)
    assert list(table.index) == ["layer 1", "layer 2", "layer 3"]
    assert (table["activation mixing"] <= table["bound: projection on the masked span"] + 1e-5).all()
    assert (table["bound: projection on the masked span"] <= 1 + 1e-5).all()


def test_mixing_guess_is_in_the_masked_span(net):
    """What makes `masked_span_cosines` a bound: the mixing guess of example b is a vector of
    span{mask(s_b) * ReLU(s_c)}, so its cosine with any g is at most g's projection cosine."""
    model, x, _ = net
    trace = traced(model, x)
    s = trace.preactivations[0]
    guess = activation_mixing_guess(model, trace, torch.Generator().manual_seed(0))[0]
    assert masked_span_cosines(guess, s) == pytest.approx([1.0] * len(s))
