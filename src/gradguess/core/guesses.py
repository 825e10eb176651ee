"""Gradient guesses: one short function per method of the paper.

Two kinds of guess:

- *activation-space* guesses return, per layer i and per example b, a guess y_i[b] for
  dL/ds_i[b], the gradient with respect to the pre-activation s_i = W_i x_i (paper §2.1,
  A.4). Signature ``guess(model, trace, generator, **options) -> list[Tensor]``, the i-th
  tensor shaped like ``trace.preactivations[i]``. Unless a method says otherwise the last
  layer gets a random normal guess. Most are written per layer,
  ``guess_at(model, pre, i, generator, **options) -> Tensor``, reading only s_0 .. s_{i+1},
  so that a single forward pass can draw them (`gradguess.core.fused`).
- *weight-space* guesses return a direction over the weights themselves
  (``guess(params, generator, **options) -> list[Tensor]``, shaped like ``params``).

A guess never sees the label or the loss, except the two methods that use them on purpose
(self-sharpening's last layer and matched-cosine directional descent), which say so.
Models follow the protocol of `gradguess.core.models` (``model.layers``, a `Trace`).
"""
import math

import torch
from torch import Tensor

from .draws import Taped
from .losses import error_vector
from .models import activation, inactive, pull_back, successor


def relu_mask(s: Tensor) -> Tensor:
    """d ReLU(s) / ds as a 0/1 tensor: the units a gradient can flow through."""
    return (s > 0).to(s.dtype)


class ReplicateGenerators(tuple):
    """One generator per stacked replicate (`gradguess.engine.grid`): a draw for a ``[R, ...]``
    tensor takes replicate r's slice from generator r, so that replicate r sees exactly the
    guesses a run of its own, drawing from that generator, would see."""


def _random(sample, shape, generator, like: Tensor) -> Tensor:
    """``sample`` (torch.randn or torch.rand) of ``shape``, per replicate for `ReplicateGenerators`;
    through the `draws.Tape` of a compiled step for its `draws.Taped` stand-ins."""
    if isinstance(generator, Taped):
        return generator.tape.take(sample, shape, like, (generator.index,), stacked=False)
    if isinstance(generator, ReplicateGenerators) and isinstance(generator[0], Taped):
        return generator[0].tape.take(sample, shape[1:], like, tuple(g.index for g in generator),
                                      stacked=True)
    if isinstance(generator, ReplicateGenerators):
        return torch.stack([sample(shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in generator])
    return sample(shape, generator=generator, device=like.device, dtype=like.dtype)


def _normal_like(t: Tensor, generator) -> Tensor:
    return _random(torch.randn, t.shape, generator, t)


def _pulled_back_noise(model, pre, i: int, noise, k: int, through_nonlinearity: bool,
                       weights=None) -> Tensor:
    """Layer i's guess (i not a last layer): noise placed k layers downstream, pulled back.

    The noise sits at s_{i+k}, or, with ``through_nonlinearity``, after the activation of
    s_{i+k} (so its mask applies); never beyond a loss's logits. Each step back multiplies by
    W_j^T and then by the activation mask of s_{j-1}: the chain rule for dL/ds, with the noise
    standing in for the unknown gradient. ``weights`` may replace W_j by another matrix (used
    by the singular-value experiment). Reads s_i .. s_{i+k} only. "Downstream" follows
    `models.successor`: layer i + 1 in an MLP.
    """
    chain = [i]
    while len(chain) <= k and successor(model, chain[-1]) is not None:
        chain.append(successor(model, chain[-1]))
    j = chain[-1]
    v = noise(pre[j])
    if through_nonlinearity and successor(model, j) is not None:
        v.masked_fill_(inactive(model, j, pre[j]), 0)  # times the mask of s_{i+k}
    for before, j in zip(reversed(chain[:-1]), reversed(chain[1:])):
        w = None if weights is None else weights[j]
        v = pull_back(model, j, v, w).masked_fill_(inactive(model, before, pre[before]), 0)
    return v


def _every_layer(guess_at, model, trace, generator, **options) -> list[Tensor]:
    """A per-layer guess, drawn layer after layer (the order the fused estimator uses too)."""
    return [guess_at(model, trace.preactivations, i, generator, **options)
            for i in range(len(model.layers))]


MIXING_NORMALISATIONS = ("per_example", "overall")  # `activation_mixing_at`'s scales


# --- activation-space guesses ------------------------------------------------------------
# Each method is a per-layer function ``*_at(model, pre, i, generator, **options)``, giving
# y_i from the pre-activations s_0 .. s_{i+1} (so a single forward pass can draw it), and the
# list form ``*_guess(model, trace, generator, **options)`` over all layers.

def activation_perturbation_at(model, pre, i, generator) -> Tensor:
    """Activation perturbation (Ren et al. 2022; paper A.4): y_i ~ N(0, I) for every layer.

    Unbiased: Cov(y) = I, so E[(g.y) y] = g.
    """
    return _normal_like(pre[i], generator)


def activation_mixing_at(model, pre, i, generator, normalise: str = "per_example") -> Tensor:
    """Activation mixing (paper §2.2, A.4).

    y_i[b] = c * mask(s_i[b]) * sum_c alpha[b, c] x_{i+1}[c],  alpha ~ N(0, 1),

    a random combination of the batch's post-activations x_{i+1} = ReLU(s_i), times the
    example's ReLU mask. A.4 says only "we normalize the overall guess"; ``normalise`` picks
    the scale c, so that every layer weighs alike in a global JVP:

    - ``"per_example"`` (default): each example's guess to the norm sqrt(d_i) of an N(0, I)
      guess of one example;
    - ``"overall"``, the literal reading: one scale for the layer's whole guess, its norm over
      the batch sqrt(B d_i), that of an N(0, I) guess of the same shape (per replicate when
      stacked). Examples keep their relative sizes.

    The last layer (no activations to mix) gets a random normal guess.
    """
    if normalise not in MIXING_NORMALISATIONS:
        raise ValueError(f"unknown normalise {normalise!r}; known: {', '.join(MIXING_NORMALISATIONS)}")
    s = pre[i]
    if successor(model, i) is None:
        return _normal_like(s, generator)
    acts, mask = activation(model, i, s), ~inactive(model, i, s)
    lead = 1 if getattr(model, "replicates", None) is not None else 0  # stacked: [R, B, ...]
    batch = s.shape[lead]
    if lead and not isinstance(generator, ReplicateGenerators):  # one generator, replicate by replicate
        alpha = torch.stack([torch.randn((batch, batch), generator=generator, device=s.device,
                                         dtype=s.dtype) for _ in range(s.shape[0])])
    else:
        alpha = _random(torch.randn, (*s.shape[:lead], batch, batch), generator, s)
    mixed = (alpha @ acts.flatten(lead + 1)).view_as(acts) * mask  # sum_c alpha[b, c] x[c]
    # the norms are taken over one example (per_example) or over the batch too (overall)
    flat = mixed.flatten(lead + 1) if normalise == "per_example" else mixed.flatten(lead)
    norm = flat.norm(dim=-1).clamp_min(1e-12)
    scale = math.sqrt(flat.shape[-1]) / norm
    return mixed * scale.view(*scale.shape, *([1] * (s.dim() - scale.dim())))


def w_transpose_at(model, pre, i, generator, weights=None) -> Tensor:
    """W^T (paper §2.1, A.4): y_i = mask(s_i) * (W_{i+1}^T eps),  eps ~ N(0, I).

    The guess lies in the range of W_{i+1}^T restricted to the active units, where the
    true dL/ds_i = mask(s_i) * W_{i+1}^T dL/ds_{i+1} lies too. Biased: Cov(y) =
    D W^T W D with D = diag(mask) (A.1). Last layer: random normal. ``weights`` may
    replace W_{i+1} (`singular_power_at`).
    """
    normal = lambda t: _normal_like(t, generator)
    if successor(model, i) is None:
        return normal(pre[i])
    return _pulled_back_noise(model, pre, i, normal, 1, through_nonlinearity=False,
                              weights=weights)


def downstream_at(model, pre, i, generator, k: int = 1) -> Tensor:
    """k-layer downstream, "partial backpropagation" (paper §2.1, A.4, Fig. 5).

    A random normal vector placed at x_{i+k+1} = ReLU(s_{i+k}) is pulled back through the
    next k layers, their masks and weights: y_i = d x_{i+k+1}/d s_i ^T eps. k = 1 is W^T with
    the next layer's mask added. Where fewer than k layers follow, eps sits at the logits.
    Last layer: random normal. (Reads s_{i+k}: one forward pass can draw it only for k = 1.)
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"downstream_guess needs an integer k >= 1, got k={k!r}")
    normal = lambda t: _normal_like(t, generator)
    if successor(model, i) is None:
        return normal(pre[i])
    return _pulled_back_noise(model, pre, i, normal, k, through_nonlinearity=True)


def self_sharpening_at(model, pre, i, generator, targets: Tensor, low: float = 0.0,
                       high: float = 1.0) -> Tensor:
    """Self-sharpening (paper §3, A.4, Table 1): 1-layer downstream with uniform guesses.

    Hidden layers: as `downstream_at` with k = 1 but eps ~ U[low, high) (torch.rand,
    U[0, 1), by default: "random uniform" as PyTorch code most plainly writes it; its
    non-zero mean is one more source of bias). The last layer gets the true error vector
    softmax - onehot, which the estimators use as that layer's exact gradient (not scaled
    by a JVP): this method uses the label on purpose.
    """
    if not high > low:
        raise ValueError(f"self_sharpening_guess needs high > low, got low={low}, high={high}")
    if successor(model, i) is None:
        return error_vector(pre[i], targets)
    uniform = lambda t: low + (high - low) * _random(torch.rand, t.shape, generator, t)
    return _pulled_back_noise(model, pre, i, uniform, 1, through_nonlinearity=True)


def activation_perturbation_guess(model, trace, generator) -> list[Tensor]:
    """`activation_perturbation_at` for every layer."""
    return _every_layer(activation_perturbation_at, model, trace, generator)


def activation_mixing_guess(model, trace, generator, normalise: str = "per_example") -> list[Tensor]:
    """`activation_mixing_at` for every layer."""
    return _every_layer(activation_mixing_at, model, trace, generator, normalise=normalise)


def w_transpose_guess(model, trace, generator) -> list[Tensor]:
    """`w_transpose_at` for every layer."""
    return _every_layer(w_transpose_at, model, trace, generator)


def downstream_guess(model, trace, generator, k: int = 1) -> list[Tensor]:
    """`downstream_at` for every layer."""
    return _every_layer(downstream_at, model, trace, generator, k=k)


def self_sharpening_guess(model, trace, generator, targets: Tensor, low: float = 0.0,
                          high: float = 1.0) -> list[Tensor]:
    """`self_sharpening_at` for every layer."""
    return _every_layer(self_sharpening_at, model, trace, generator, targets=targets, low=low,
                        high=high)


def powered_weights(model, p) -> list[Tensor | None]:
    """U S^p V^T for every W_j = U S V^T but the first (which never pulls a guess back).

    ``p`` is a number, or for a stacked model one power per replicate (a sequence of R).
    """
    power = torch.as_tensor(p, dtype=torch.float64)
    if power.dim() > 1 or not bool((power > 0).all()):
        raise ValueError(f"singular_power_guess needs p > 0 (one number, or one per replicate), "
                         f"got p={p!r}")
    weights = [None]
    for layer in model.layers[1:]:
        u, sv, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        exponent = power.to(sv).view(-1, 1) if power.dim() == 1 else power.to(sv)
        weights.append((u * sv.pow(exponent).unsqueeze(-2)) @ vh)  # also stacked [R, m, n]
    return weights


def singular_power_guess(model, trace, generator, p=1.0,
                         weights: list | None = None) -> list[Tensor]:
    """W^T with W's singular values raised to the power p (paper §3, Fig. 4).

    With W_{i+1} = U S V^T, y_i = mask(s_i) * (U S^p V^T)^T eps, eps ~ N(0, I). p = 1 is W^T;
    larger p lets a few singular directions dominate the guess. Last layer: random normal.
    ``weights``, from `powered_weights`, saves the SVDs when they were computed a few steps
    ago (then the guess uses slightly stale singular vectors).
    """
    if weights is None:
        weights = powered_weights(model, p)
    return _every_layer(w_transpose_at, model, trace, generator, weights=weights)


def debiased_w_transpose_guess(model, trace, generator) -> tuple[list[Tensor], list[Tensor]]:
    """W^T with its covariance undone (beyond the paper: its first open question, A.1).

    The W^T guess y = A eps, A = D_i W_{i+1}^T, has Cov(y) = A A^T, so E[(g.y) y] = A A^T g.
    Stepping along (g.y) z with z = (A A^T)^+ y = (A^+)^T eps instead gives
    E[(g.y) z] = (A A^T)^+ A A^T g = P g, the projection of g onto range(A), which is g
    itself for a hidden layer's true gradient. The JVP is still taken along y.
    Returns (tangents y, update directions z); the last layer's are the same normal guess.
    z is computed per example by `_pseudo_inverse_transpose` (a batched Cholesky, not an SVD).
    MLPs only (2-d weights).
    """
    pre = trace.preactivations
    tangents, updates = [], []
    for i in range(len(pre) - 1):
        eps = _normal_like(pre[i + 1], generator)
        mask, w = relu_mask(pre[i]), model.layers[i + 1].weight  # [B, d_i], [d_{i+1}, d_i]
        y = mask * (eps @ w)                                      # A eps
        tangents.append(y)
        updates.append(_pseudo_inverse_transpose(mask, w, eps, y))
    last = _normal_like(pre[-1], generator)
    return tangents + [last], updates + [last]


def _pseudo_inverse_transpose(mask: Tensor, w: Tensor, eps: Tensor, y: Tensor) -> Tensor:
    """z = (A^+)^T eps for A = D W^T per example (D = diag(mask), y = A eps): ``[B, d_i]``.

    An SVD (`torch.linalg.pinv`) of every [d_i, d_{i+1}] matrix is slow, on a GPU most of all.
    A's rank is at most k, its number of active units, and in the usual case A has full rank
    min(k, d_{i+1}); then A^+ has a closed form, with a positive definite Gram matrix that a
    batched Cholesky solves:

    - k >= d_{i+1} (A tall, full column rank): (A^+)^T = A (A^T A)^{-1}, so
      z = A u with (W D W^T) u = eps, a d_{i+1} x d_{i+1} system;
    - k < d_{i+1} (A's k non-zero rows independent, A_k = W_k^T): (A^+)^T eps = (A_k A_k^T)^{-1}
      A_k eps on the active units and 0 elsewhere, so z solves (D W^T W D + c (I - D)) z = y
      (c > 0 stands in on the inactive units, where y and z are 0), a d_i x d_i system.

    Examples where the factorisation fails or is not trustworthy (A rank deficient beyond
    that, e.g. W itself) fall back to pinv. The Gram matrix squares A's condition number,
    so a factorisation counts as trustworthy only if its smallest pivot is not tiny against
    its largest (ratio above sqrt(machine epsilon)); nearly singular A then takes pinv too.
    """
    z = torch.empty_like(y)
    tall = mask.sum(-1) >= w.shape[0]
    trusted = torch.zeros_like(tall)
    if tall.any():
        gram = (w * mask[tall, None, :]) @ w.T                          # W D W^T
        u, trusted[tall] = _cholesky_solve(gram, eps[tall])
        z[tall] = mask[tall] * (u @ w)                                   # A u
    if not tall.all():
        m, wtw = mask[~tall], w.T @ w
        scale = wtw.diagonal().mean()  # the identity at W^T W's scale, for the pivot check
        gram = wtw * (m[:, :, None] * m[:, None, :]) + scale * torch.diag_embed(1 - m)
        z[~tall], trusted[~tall] = _cholesky_solve(gram, y[~tall])
    if not trusted.all():  # rank deficient beyond the active units (rare): an SVD
        a = mask[~trusted, :, None] * w.T
        z[~trusted] = (torch.linalg.pinv(a).transpose(-1, -2) @ eps[~trusted, :, None]).squeeze(-1)
    return z


def _cholesky_solve(gram: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """gram^{-1} rhs for a batch of positive definite ``gram`` [n, d, d] and ``rhs`` [n, d],
    and for each whether its Cholesky factorisation succeeded with no pivot below
    sqrt(machine epsilon) times the largest (else the solution is not to be trusted)."""
    factor, info = torch.linalg.cholesky_ex(gram)
    pivots = factor.diagonal(dim1=-2, dim2=-1) ** 2
    ok = (info == 0) & (pivots.amin(-1) > torch.finfo(gram.dtype).eps ** 0.5 * pivots.amax(-1))
    return torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1), ok


# --- weight-space guesses ----------------------------------------------------------------

def directional_guess(params: list[Tensor], generator) -> list[Tensor]:
    """Directional descent (Polyak; Spall; Baydin et al. 2022; paper §1, A.4).

    One random direction over all N weights, entries N(0, 1/N) (standard deviation
    1/sqrt(N), the paper's "N(0, 1/sqrt(N))") so that |v| is about 1 whatever N is.
    Unbiased up to that scale: E[(g.v) v] = g / N. Cosine with g is O(1/sqrt(N)).
    """
    n = sum(p.numel() for p in params)
    return [_normal_like(p, generator) / math.sqrt(n) for p in params]


def matched_cosine_guess(params: list[Tensor], generator, true_grads: list[Tensor],
                         cosine: float = 0.02) -> list[Tensor]:
    """Directional descent with its cosine similarity set by hand (paper §3 "Bias", A.4, Fig. 3).

    A random direction is split into g_par along the true gradient g and g_perp orthogonal
    to it; both are normalised and combined as cos(theta) g_par + sin(theta) g_perp with
    cos(theta) = ``cosine``. Uses the true gradient on purpose: an unbiased-in-direction
    guess whose cosine matches the guessing methods'.
    """
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"matched_cosine_guess needs -1 <= cosine <= 1, got {cosine!r}")
    g = torch.cat([t.reshape(-1) for t in true_grads])
    v = torch.cat([_normal_like(p, generator).reshape(-1) for p in params])
    g_hat = g / g.norm().clamp_min(1e-30)
    along = (v @ g_hat) * g_hat  # keeps the random guess's sign along g
    g_par = along / along.norm().clamp_min(1e-30)
    g_perp = (v - along) / (v - along).norm().clamp_min(1e-30)
    guess = cosine * g_par + math.sqrt(1.0 - cosine ** 2) * g_perp
    pieces = torch.split(guess, [p.numel() for p in params])
    return [piece.view_as(p) for piece, p in zip(pieces, params)]


# --- guesses of a prompt-tuned ViT's prompts (paper A.6) ----------------------------------
# ``guess(model, batch, generator) -> Tensor``: one direction [P, D] over the prompts, or one
# per example [B, P, D] (the prompts as that example's activations). ``model`` has
# ``prompts`` [P, D] and ``qkv_weight()`` (`gradguess.core.prompts.PromptedViT`).

def _normal_prompts(model, shape, generator) -> Tensor:
    p = model.prompts
    return _random(torch.randn, shape, generator, p)


def directional_prompt_guess(model, batch: int, generator) -> Tensor:
    """Directional descent over the prompts: one y ~ N(0, I) [P, D] for the whole batch."""
    return _normal_prompts(model, model.prompts.shape, generator)


def activation_perturbation_prompt_guess(model, batch: int, generator) -> Tensor:
    """Activation perturbation: y_b ~ N(0, I) [P, D] for every example b."""
    return _normal_prompts(model, (batch, *model.prompts.shape), generator)


def w_transpose_prompt_guess(model, batch: int, generator) -> Tensor:
    """W^T: y_b = W_qkv^T eta_b, eta_b ~ N(0, I), per example and prompt token: noise at the
    query, key and value projections that first read the prompts, pulled back through them."""
    w = model.qkv_weight()
    return _normal_prompts(model, (batch, model.prompts.shape[0], w.shape[0]), generator) @ w
