"""How good a guess is: cosine similarity, one-step effectiveness, effective rank, subspaces."""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# The paper's step-size search for one-step effectiveness: 1e-5 .. 1e-1 (§3, Fig. 1).
STEP_SIZES = tuple(10.0 ** e for e in range(-5, 0))


def flatten(tensors) -> Tensor:
    if isinstance(tensors, Tensor):
        return tensors.reshape(-1)
    return torch.cat([t.reshape(-1) for t in tensors])


def cosine_similarity(a, b) -> float:
    """cos(a, b) = a.b / (|a| |b|) of two gradients, each a tensor or a list of tensors."""
    a, b = flatten(a).detach().double(), flatten(b).detach().double()
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def replicate_cosines(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """cos(a[r], b[r]) for every replicate r of two stacked gradients (tensors [R, ...])."""
    a = torch.cat([t.detach().double().flatten(1) for t in a], 1)
    b = torch.cat([t.detach().double().flatten(1) for t in b], 1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def layer_cosines(model, guess: list[Tensor], true: list[Tensor]) -> list[float]:
    """Cosine similarity per layer of ``model.layers`` (weight and bias together).

    ``guess`` and ``true`` list gradients in ``model.parameters()`` order.
    """
    index = {id(p): k for k, p in enumerate(model.parameters())}
    cosines = []
    for layer in model.layers:
        ks = [index[id(p)] for p in layer.parameters()]
        cosines.append(cosine_similarity([guess[k] for k in ks], [true[k] for k in ks]))
    return cosines


def best_loss_reduction(model, x: Tensor, targets: Tensor, gradient: list[Tensor],
                        step_sizes=STEP_SIZES) -> tuple[float, float]:
    """Largest drop of the batch loss over plain SGD steps w - lr * gradient, and its lr.

    Losses are computed in float64: directional descent's drops (about |g|^2 / N) vanish
    below float32's resolution of a loss near 2. The drop may be negative when every step
    size raises the loss.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach().double() for n, p in model.named_parameters()}
    x = x.double()

    def loss(weights):
        return F.cross_entropy(torch.func.functional_call(model, weights, (x,)), targets)

    with torch.no_grad():
        before = loss(params)
        best = (-math.inf, float("nan"))
        for lr in step_sizes:
            stepped = {**params, **{n: params[n] - lr * g.double() for n, g in zip(names, gradient)}}
            drop = float(before - loss(stepped))
            if drop > best[0]:
                best = (drop, lr)
    return best


def as_directional_step(guess: list[Tensor], true: list[Tensor]) -> list[Tensor]:
    """The guess's direction u = guess / |guess| as a directional-descent step (g.u) u.

    Directional descent's step has norm |g| cos(theta) because its guess has unit norm;
    written this way every method's step has that scale, so comparing steps compares
    directions, not the arbitrary norms of the guesses. (g.u is what a JVP along u gives.)
    """
    norm = flatten(guess).norm()
    if norm == 0:
        return [torch.zeros_like(g) for g in guess]
    u = [g / norm for g in guess]
    gu = sum((t * v).sum() for t, v in zip(true, u))
    return [gu * v for v in u]


def one_step_effectiveness(model, x, targets, guess: list[Tensor], true: list[Tensor],
                           step_sizes=STEP_SIZES, unit_guess: bool = True) -> float:
    """Best loss reduction of one step along the guess, relative to backprop's best (Fig. 1).

    With ``unit_guess`` the guess is first put in directional-descent form
    (`as_directional_step`), so that the step-size grid means the same for every method;
    without it, the update is taken at the scale the estimator wrote into ``.grad``.
    """
    step = as_directional_step(guess, true) if unit_guess else guess
    guessed, _ = best_loss_reduction(model, x, targets, step, step_sizes)
    exact, _ = best_loss_reduction(model, x, targets, true, step_sizes)
    return guessed / exact if exact > 0 else float("nan")


def effective_rank(matrix: Tensor) -> float | Tensor:
    """Effective rank of Roy & Vetterli (2007): exp of the entropy of sigma_k / sum(sigma).

    Equals r for a matrix with r equal non-zero singular values; 1 for rank one. A stack of
    matrices ``[R, m, n]`` gives a tensor of R ranks.
    """
    sv = torch.linalg.svdvals(matrix.detach().double())
    p = sv / sv.sum(-1, keepdim=True)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
    ranks = torch.exp(entropy)
    return float(ranks) if ranks.dim() == 0 else ranks


def principal_basis(samples: Tensor, k: int, center: bool = True) -> Tensor:
    """Top-k principal directions of ``samples`` [n, d], as orthonormal columns [d, k].

    ``center=False`` takes the top right singular vectors of the raw samples (the principal
    directions of their second moment), which keeps the mean direction in the span.
    """
    flat = samples.flatten(1)
    if center:
        flat = flat - flat.mean(0)
    _, _, vh = torch.linalg.svd(flat, full_matrices=False)
    return vh[:k].T


def random_basis(d: int, k: int, generator=None, device=None, dtype=torch.float32) -> Tensor:
    """An orthonormal basis [d, k] of a uniformly random k-dimensional subspace."""
    q, _ = torch.linalg.qr(torch.randn((d, k), generator=generator, device=device, dtype=dtype))
    return q


def projection_cosine(gradient: Tensor, basis: Tensor) -> float:
    """Cosine between a gradient and its projection onto span(basis), basis orthonormal [d, k].

    cos(g, B B^T g) = |B^T g| / |g|.
    """
    g = gradient.reshape(-1).to(basis.dtype)
    norm = g.norm()
    return float((basis.T @ g).norm() / norm) if norm > 0 else float("nan")


def mean_projection_cosine(gradients: Tensor, basis: Tensor) -> float:
    """`projection_cosine` of each row of ``gradients`` [n, d], averaged over the non-zero rows."""
    g = gradients.flatten(1).to(basis.dtype)
    norms = g.norm(dim=1)
    keep = norms > 0
    return float(((g[keep] @ basis).norm(dim=1) / norms[keep]).mean())


def span_basis(vectors: Tensor, rtol: float = 1e-6) -> Tensor:
    """An orthonormal basis [d, r] of the span of the columns of ``vectors`` [d, n] (rank r)."""
    u, sv, _ = torch.linalg.svd(vectors, full_matrices=False)
    return u[:, sv > rtol * sv.max()] if sv.numel() and sv.max() > 0 else u[:, :0]


def _ranks(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    ranks = np.empty(len(values))
    ranks[values.argsort(kind="stable")] = np.arange(len(values))
    for v in np.unique(values):  # ties share their mean rank
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def offset_share(x: Tensor, generator, units: int = 64, guesses: int = 20) -> float:
    """How much a guessed first-layer update moves every unit's offset rather than its response
    to the input, on a batch ``x`` [B, D]. A guessed update to the first layer has the form
    dW = C^T x (any guess scaled by its JVP, summed over the batch: C [B, units] here Gaussian);
    its effect on the batch's pre-activations is ds = x dW^T [B, units]. Returned: the mean over
    units and ``guesses`` of |mean over examples of ds| / (std over examples of ds). Inputs
    that are not centred per pixel share a large common part, so ds does too: a mostly uniform
    shift of each unit, the same for every input, which moves units towards dead or saturated
    without teaching them anything."""
    x = x.flatten(1)
    ratios = []
    for _ in range(guesses):
        c = torch.randn(len(x), units, generator=generator, device=x.device, dtype=x.dtype)
        ds = x @ (c.T @ x).T
        ratios.append((ds.mean(0).abs() / ds.std(0)).mean())
    return float(torch.stack(ratios).mean())
