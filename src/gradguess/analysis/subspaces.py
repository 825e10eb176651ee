"""Gradients and the subspaces of the features (paper §2.2, A.2, Figs. 6 and 7).

With s_{k+1} = W_{k+1} x_{k+1} trained by SGD, W_{k+1}[t] = W_{k+1}[0] - eta sum_{i<t}
dL/ds_{k+1}[i] x_{k+1}[i]^T, so dL/dx_{k+1}[t] is, but for the initial-weight term, a linear
combination of past activations x_{k+1}[i]: it lies in their span. These functions measure
how nearly it does: per-class principal directions of input gradients and of inputs (Fig. 6,
left), projection cosines of gradients onto the activations' top-k principal subspace beside a
random one (Fig. 6, right; Fig. 7), and activation mixing against the best vector of the span.

Every function takes its model, data, sizes and random generator explicitly; draws come from
``generator`` in a fixed order, so one seeded generator gives one result.
"""
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import guesses
from ..core.estimators import per_example_gradients
from ..core.metrics import mean_projection_cosine, principal_basis, random_basis, span_basis
from ..core.models import Trace
from ..engine.reference import train


class ClassDirections(NamedTuple):
    """One class's unit directions in input space (Fig. 6, left)."""
    gradient: Tensor  # first PC of the per-example input gradients, signed to agree with `inputs`
    inputs: Tensor  # first PC of the inputs
    mixture: Tensor  # a random mixture of the inputs


def first_direction(rows: Tensor, center: bool = False) -> Tensor:
    """The first principal direction of ``rows`` [n, ...] (uncentred by default: the top right
    singular vector), a unit vector of the flattened row size."""
    return principal_basis(rows, 1, center=center)[:, 0]


def random_mixture(rows: Tensor, generator) -> Tensor:
    """sum_b alpha_b x_b / |sum_b alpha_b x_b|, alpha_b ~ N(0, 1): a random unit vector of the
    span of ``rows`` [n, ...], weighted by their second moment."""
    alpha = torch.randn(len(rows), generator=generator, device=rows.device)
    return F.normalize((alpha[:, None] * rows.flatten(1)).sum(0), dim=0)


def class_directions(model, data, generator, per_class: int,
                     center: bool = False) -> list[ClassDirections]:
    """Per class c (the first ``per_class`` training images x_b of c): the first PC of the
    input gradients d loss_b / d x_b, the first PC of the x_b, and `random_mixture` of the x_b
    (§2.2, Fig. 6 left). Principal directions have no sign; the gradient's is chosen so that
    it agrees with the inputs' (g . i >= 0)."""
    out = []
    for c in range(data.num_classes):
        x = data.train_x[data.train_y == c][:per_class]
        y = torch.full((len(x),), c, device=x.device)
        grads, _ = per_example_gradients(model, x, y)
        inputs = first_direction(x, center)
        grad = first_direction(grads, center)
        grad = grad * torch.sign(grad @ inputs)
        out.append(ClassDirections(grad, inputs, random_mixture(x, generator)))
    return out


def pc_similarity_per_class(directions: list[ClassDirections], generator,
                            random_directions: int = 1000) -> pd.DataFrame:
    """One row per class c: |cos| between c's gradient PC and its own input PC ("same class"),
    the mean over the other classes' input PCs ("other classes"), and the mean over
    ``random_directions`` uniform random unit vectors ("random direction", about
    sqrt(2 / (pi d)) in d dimensions; the same vectors for every class)."""
    first = directions[0].gradient
    randoms = F.normalize(torch.randn(random_directions, first.numel(), generator=generator,
                                      device=first.device), dim=1)
    rows = [{"same class": abs(float(d.gradient @ d.inputs)),
             "other classes": np.mean([abs(float(d.gradient @ other.inputs))
                                       for c2, other in enumerate(directions) if c2 != c]),
             "random direction": float((randoms @ d.gradient).abs().mean())}
            for c, d in enumerate(directions)]
    return pd.DataFrame(rows)


def pc_similarity(directions: list[ClassDirections], generator,
                  random_directions: int = 1000) -> dict[str, float]:
    """`pc_similarity_per_class`, averaged over the classes."""
    return pc_similarity_per_class(directions, generator, random_directions).mean().to_dict()


def bootstrap_ratio_interval(numerator, denominator, generator: np.random.Generator, *,
                             level: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """The ``level`` percentile bootstrap interval of mean(numerator) / mean(denominator),
    the pairs (numerator[j], denominator[j]) resampled with replacement: for Fig. 6 right, the
    curves' projection cosines onto the activations' top-k subspace against a random one."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    if numerator.shape != denominator.shape or numerator.ndim != 1 or len(numerator) < 2:
        raise ValueError("a bootstrap needs two equally long 1-d samples of at least 2 values")
    picks = generator.integers(0, len(numerator), size=(resamples, len(numerator)))
    ratios = numerator[picks].mean(1) / denominator[picks].mean(1)
    tail = (1 - level) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low), float(high)


def subspace_scores(model, data, k_values, generator, *, reference: int,
                    evaluation: int) -> list[dict]:
    """Per hidden layer i and k (Fig. 6 right, Fig. 7): the mean projection cosine |P_k g| / |g|
    of the per-example gradients g = d loss_b / d x_{i+1} of ``evaluation`` training images
    (after the first ``reference``) onto the top-k uncentred principal directions of the
    activations x_{i+1} = ReLU(s_i) of the first ``reference`` images ("activations"), onto a
    random k-dimensional subspace ("random", about sqrt(k / d)), and the same top-k projection
    for d loss_b / d s_i ("preactivation_gradient")."""
    trace = Trace()
    with torch.no_grad():
        model(data.train_x[:reference], trace=trace)
    held_out = slice(reference, reference + evaluation)
    _, grad_s = per_example_gradients(model, data.train_x[held_out], data.train_y[held_out])
    rows = []
    for i in range(len(model.layers) - 1):
        activations = torch.relu(trace.preactivations[i])
        grad_x = grad_s[i + 1] @ model.layers[i + 1].weight.detach()  # dL/dx_{i+1}
        top = principal_basis(activations, max(k_values), center=False)
        for k in k_values:
            basis = top[:, :k]
            rand = random_basis(top.shape[0], k, generator, device=top.device)
            rows.append(dict(layer=i + 1, k=k, activations=mean_projection_cosine(grad_x, basis),
                             random=mean_projection_cosine(grad_x, rand),
                             preactivation_gradient=mean_projection_cosine(grad_s[i], basis)))
    return rows


def scores_along_training(model, data, k_values, generator, *, epochs: int, reference: int,
                          evaluation: int, lr: float = 1e-3, seed: int = 0) -> list[dict]:
    """`subspace_scores` at initialisation and after each of ``epochs`` epochs of backprop
    (AdamW at ``lr``, batch 128; epoch e's batch order seeded ``seed + e``), each row with
    its ``epoch``. Trains ``model`` in place."""
    rows = []
    for epoch in range(epochs + 1):
        if epoch:
            train(model, data, "backprop", epochs=1, lr=lr, seed=seed + epoch, progress=False)
        rows += [dict(epoch=epoch, **row) for row in subspace_scores(
            model, data, k_values, generator, reference=reference, evaluation=evaluation)]
    return rows


def masked_span_cosines(grad_s: Tensor, s: Tensor) -> list[float]:
    """For each example b with a non-zero gradient g_b = d loss_b / d s_i[b]: the projection
    cosine of g_b onto span{mask(s_b) * ReLU(s_c) : c in the batch}, the largest |cos| any
    activation-mixing guess of that example can reach (§2.2)."""
    live = grad_s.norm(dim=1) > 0
    acts = torch.relu(s).T
    return [mean_projection_cosine(grad_s[b:b + 1], span_basis(guesses.relu_mask(s[b])[:, None] * acts))
            for b in range(len(s)) if live[b]]


def mixing_against_bound(model, data, generator, batch: int = 128) -> pd.DataFrame:
    """Per hidden layer, on the first ``batch`` training images: mean |cos| per example of an
    activation-mixing guess and of an activation-perturbation guess with d loss_b / d s_i, and
    the mean of `masked_span_cosines`, the bound on mixing (§2.2, A.4)."""
    x, y = data.train_x[:batch], data.train_y[:batch]
    trace = Trace()
    with torch.no_grad():
        model(x, trace=trace)
    _, grad_s = per_example_gradients(model, x, y)
    mixing = guesses.activation_mixing_guess(model, trace, generator)
    perturbation = guesses.activation_perturbation_guess(model, trace, generator)
    rows = {}
    for i in range(len(model.layers) - 1):
        g = grad_s[i]
        live = g.norm(dim=1) > 0

        def cosine(guess):
            return float(F.cosine_similarity(guess[live], g[live], dim=1).abs().mean())

        rows[f"layer {i + 1}"] = {
            "activation mixing": cosine(mixing[i]),
            "activation perturbation": cosine(perturbation[i]),
            "bound: projection on the masked span": float(np.mean(
                masked_span_cosines(g, trace.preactivations[i])))}
    return pd.DataFrame(rows).T
