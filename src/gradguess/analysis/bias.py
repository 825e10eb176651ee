"""The bias of a guess (paper §3 "Bias", A.1 and Fig. 3).

A guess y with E[y] = 0 steps along g_hat = (g.y) y, whose mean is E[y y^T] g = Cov(y) g: the
bias is (Cov(y) - I) g. This module draws many guesses of one method for one input
(`guess_samples`), estimates both sides of that identity by Monte Carlo, with the sampling
noise of their difference (`mean_step`, `covariance_step`, `expectation_check`), computes W^T's covariance step analytically
(`w_transpose_expected_step`), measures the toy bias of J = 2^k I (`toy_bias`), and follows
the cosine of an average of K guesses with the true gradient as K grows (`averaged_cosines`,
`signal_to_noise_exponent`), the left panel of Fig. 3.
"""
import numpy as np
import torch
from torch import Tensor

from ..core.estimators import (backprop_gradient, guessed_gradient, per_example_gradients,
                         preactivation_jvp, weight_jvp)
from ..core.methods import get_method
from ..core.metrics import cosine_similarity
from ..core.models import Trace

# the columns of `expectation_check`
RELATIVE = "|mean (g.y)y - Cov(y)g| / |Cov(y)g|"
NOISE = "Monte Carlo noise of the difference / |Cov(y)g|"
COSINE = "cos(Cov(y)g, g)"

_MIXING_CHUNK = 256  # mixing's guesses are drawn this many at a time
_CHUNK_NUMBERS = 2 ** 22  # directional descent: directions batched in one JVP, in numbers


def _activation_method(method: str):
    spec = get_method(method)
    if spec.space != "activations":
        raise ValueError(f"{method!r} does not guess activations (its space is {spec.space!r}); "
                         f"use an activation-space method such as 'w_transpose'")
    return spec


def _check_count(n) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of guesses must be a positive integer, got {n!r}")


def _trace(model, x: Tensor) -> Trace:
    trace = Trace()
    with torch.no_grad():
        model(x, trace=trace)
    return trace


def _tangents(guess):
    """A guess's tangents y (a guess may also return update directions z, A.1's de-biasing)."""
    return guess[0] if isinstance(guess, tuple) else guess


def _first_example_guesses(model, inputs, spec, n, generator, options) -> list[Tensor]:
    """n guesses of every layer for the first example of ``inputs``, each drawn within the
    whole batch: ``[n, d_i]`` per layer. A guess that mixes the batch is drawn for the whole
    batch, so one guess call each, in the generator's order; only the first row is kept."""
    trace, draws = _trace(model, inputs), []
    for _ in range(n):
        guess = _tangents(spec.guess(model, trace, generator, **options))
        draws.append([t[0].clone() for t in guess])  # a copy: a view would keep all B rows
    return [torch.stack(layer) for layer in zip(*draws)]


@torch.no_grad()
def guess_samples(model, inputs: Tensor, method: str, n: int, generator: torch.Generator, *,
                  layer: int = 0, within_batch: bool = False, **options) -> Tensor:
    """n guesses y of ``method`` for the first example of ``inputs`` at ``layer`` (A.1): ``[n, d]``.

    Each guess is drawn for that one input repeated n times, in one batch. With
    ``within_batch`` (a guess that depends on the whole batch, as activation mixing's does)
    each is instead the example's guess drawn within the batch ``inputs``, 256 draws at a
    time. ``options`` go to the guess function.
    """
    spec = _activation_method(method)
    _check_count(n)
    if within_batch:  # whole chunks of 256 are drawn, as ever: the generator ends where it did
        drawn = -(-n // _MIXING_CHUNK) * _MIXING_CHUNK
        return _first_example_guesses(model, inputs, spec, drawn, generator, options)[layer][:n]
    trace = _trace(model, inputs[:1].repeat(n, *[1] * (inputs.dim() - 1)))
    return _tangents(spec.guess(model, trace, generator, **options))[layer]


def mean_step(ys: Tensor, g: Tensor) -> Tensor:
    """The Monte Carlo mean step (1/n) sum_j (g.y_j) y_j, an estimate of E[(g.y) y] (A.1)."""
    return ((ys @ g)[:, None] * ys).mean(0)


def step_standard_errors(ys: Tensor, g: Tensor) -> Tensor:
    """The standard error of each coordinate of `mean_step`: std_j((g.y_j) y_j) / sqrt(n)."""
    steps = (ys @ g)[:, None] * ys
    return steps.std(0) / np.sqrt(len(steps))


def step_standard_error(ys: Tensor, g: Tensor) -> float:
    """|standard error of `mean_step`|: the norm of `step_standard_errors`."""
    return float(step_standard_errors(ys, g).norm())


def covariance_step(ys: Tensor, g: Tensor) -> Tensor:
    """Cov(y) g estimated from guesses with E[y] = 0: (Y^T Y / n) g (A.1)."""
    return (ys.T @ ys / len(ys)) @ g


def expectation_check(ys: Tensor, g: Tensor, *, others: Tensor | None = None,
                      expected: Tensor | None = None) -> dict:
    """A.1's identity E[(g.y) y] = Cov(y) g, by Monte Carlo: the mean step of the guesses
    ``ys`` against Cov(y) g estimated from independent guesses ``others``, or against a
    known ``expected`` step (give one of the two).

    Returns `RELATIVE` |mean step - Cov(y)g| / |Cov(y)g|; `NOISE`, the norm of the standard
    error of that difference, sqrt(se_ys^2 + se_others^2) per coordinate, over |Cov(y)g| (the
    size the difference has from sampling alone: (Y^T Y / n) g is itself a mean step); and
    `COSINE` cos(Cov(y)g, g), 1 for an unbiased guess.
    """
    if (others is None) == (expected is None):
        raise ValueError("give either others (guesses to estimate Cov(y) g from) or expected")
    for name, t in (("guesses", ys), ("others", others)):
        if t is not None and (t.dim() != 2 or t.shape[1] != g.shape[-1]):
            raise ValueError(f"{name} must be [n, {g.shape[-1]}] like g, got {list(t.shape)}")
    predicted = covariance_step(others, g) if expected is None else expected
    variance = step_standard_errors(ys, g) ** 2
    if others is not None:
        variance = variance + step_standard_errors(others, g) ** 2
    scale = float(predicted.norm())
    return {RELATIVE: float((mean_step(ys, g) - predicted).norm()) / scale,
            NOISE: float(variance.sum().sqrt()) / scale,
            COSINE: cosine_similarity(predicted, g)}


@torch.no_grad()
def w_transpose_expected_step(model, x: Tensor, g: Tensor, layer: int = 0) -> Tensor:
    """W^T's expected step at ``layer`` for the first example of ``x``, analytically (A.1):
    E[(g.y) y] = D W^T W D g, with W the next layer's weights and D the layer's ReLU mask."""
    s = _trace(model, x[:1]).preactivations[layer][0]
    w, mask = model.layers[layer + 1].weight, (s > 0).float()
    return mask * (w.T @ (w @ (mask * g)))


def toy_bias(g: Tensor, n: int, generator: torch.Generator, ks=(1, 2, 3)) -> dict:
    """§3's toy bias: for y = J eps with J = 2^k I, E[(g.y) y] = J J^T g = 4^k g, so the bias
    |E[g_hat] - g| is (4^k - 1)|g|. For each k: its Monte Carlo value from n guesses, and
    the formula."""
    _check_count(n)
    out = {}
    for k in ks:
        ys = (2 ** k) * torch.randn(n, len(g), generator=generator, device=g.device, dtype=g.dtype)
        out[k] = {"measured |E[g_hat] - g|": float((mean_step(ys, g) - g).norm()),
                  "(4^k - 1)|g|": (4 ** k - 1) * float(g.norm())}
    return out


def _weight_space_cosines(model, x, y, method, n, generator, options) -> np.ndarray:
    """cos(sum of the first K steps (g.v) v, true gradient g) for K = 1..n (global mode).

    The directions v are drawn one guess after another, as n calls of `guessed_gradient`
    would draw them; their JVPs g.v run a chunk at a time, vmapped (`weight_jvp`)."""
    spec = get_method(method)
    _, true = backprop_gradient(model, x, y)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    extra = {"true_grads": true} if spec.needs_true_gradient else {}
    g = torch.cat([t.flatten() for t in true]).double()
    total, out, done = torch.zeros_like(g), [], 0
    while done < n:
        size = min(n - done, max(1, _CHUNK_NUMBERS // g.numel()))
        directions = [spec.guess(params, generator, **options, **extra) for _ in range(size)]
        stacks = [torch.stack(d) for d in zip(*directions)]  # per parameter: [size, *shape]
        derivative = weight_jvp(model, x, y, dict(zip(names, stacks)), batched=True)
        steps = derivative[:, None] * torch.cat([v.flatten(1) for v in stacks], 1)
        running = total + torch.cumsum(steps, 0, dtype=torch.float64)  # sums of the first K steps
        out.append(running @ g / (running.norm(dim=1) * g.norm()))
        total, done = running[-1], done + size
    return torch.cat(out).cpu().numpy()


def _preactivation_steps(model, inputs, targets, spec, n, generator, within_batch,
                         options) -> list[Tensor]:
    """n guessed steps (g.y) y_i at every layer for the first example: ``[n, d_i]`` each.

    One JVP over n copies of that example gives every g.y: its loss depends on its own
    pre-activations only, so a guess drawn within the batch (``within_batch``) has the same
    g.y on a copy as in the batch."""
    xs, ys = inputs[:1].repeat(n, *[1] * (inputs.dim() - 1)), targets[:1].repeat(n)
    if within_batch:
        guesses = _first_example_guesses(model, inputs, spec, n, generator, options)
    else:
        guesses = _tangents(spec.guess(model, _trace(model, xs), generator, **options))
    jvp = preactivation_jvp(model, xs, ys, guesses)
    return [jvp[:, None] * t for t in guesses]


@torch.no_grad()
def averaged_cosines(model, inputs: Tensor, targets: Tensor, method: str, n: int,
                     generator: torch.Generator, *, within_batch: bool = False,
                     **options) -> np.ndarray:
    """cos(mean of the first K guessed gradients, true gradient) for K = 1..n, for the first
    example of ``inputs`` (Fig. 3, left; global mode): ``[n]``.

    For one input each weight update is (g.y) y_i x_i^T (weights and bias: x_i with a 1
    appended), so the cosine follows from the running means r_i of the pre-activation steps:
    sum_i (r_i . g_i) |x_i|^2 / sqrt(sum_i |r_i|^2 |x_i|^2 sum_i |g_i|^2 |x_i|^2). A weight-space
    method (directional descent) averages its weight steps themselves. An activation-space
    method guesses for the first example alone, or, ``within_batch`` (activation mixing),
    within the batch ``inputs``.
    """
    _check_count(n)
    x, y = inputs[:1], targets[:1]
    if get_method(method).space == "weights":
        return _weight_space_cosines(model, x, y, method, n, generator, options)
    spec = _activation_method(method)
    steps = _preactivation_steps(model, inputs, targets, spec, n, generator, within_batch, options)
    ones = torch.ones(1, device=x.device)
    xs = [torch.cat([xi[0], ones]) for xi in _trace(model, x).inputs]  # weight and bias
    counts = torch.arange(1, n + 1, device=x.device)[:, None]
    running = [torch.cumsum(s, 0) / counts for s in steps]  # [K, d_i]
    _, per_layer = per_example_gradients(model, x, y)
    dot = sum((r @ t[0]) * (xi @ xi) for r, t, xi in zip(running, per_layer, xs))
    norm = torch.sqrt(sum((r * r).sum(1) * (xi @ xi) for r, xi in zip(running, xs)))
    true_norm = torch.sqrt(sum((t[0] @ t[0]) * (xi @ xi) for t, xi in zip(per_layer, xs)))
    return (dot / (norm * true_norm)).cpu().numpy()


def signal_to_noise(cosine):
    """A guess's signal-to-noise ratio cos^2 / (1 - cos^2) (§3): grows like K for the average
    of K unbiased guesses; the cosine is clipped to (0, 1)."""
    c = np.clip(cosine, 1e-12, 1 - 1e-12)
    return c ** 2 / (1 - c ** 2)


def signal_to_noise_growth(curve, decade: int = 10) -> float:
    """How much the signal-to-noise of a curve of `averaged_cosines` grew over its last
    decade of K, from K = n/decade to K = n: about ``decade`` if unbiased, ~1 if it stalls
    at the cosine of Cov(y) g with g (Fig. 3)."""
    curve = np.asarray(curve)
    if len(curve) < decade:
        raise ValueError(f"a curve of {len(curve)} values has no decade of K to grow over")
    return float(signal_to_noise(curve[-1]) / signal_to_noise(curve[len(curve) // decade - 1]))


def signal_to_noise_exponent(curve, decade: int = 10) -> float:
    """The growth exponent of the signal-to-noise of a curve of `averaged_cosines` over its last
    decade of K, the log-log slope log(SNR(n) / SNR(n/decade)) / log(decade): 1 for an unbiased
    average (SNR grows like K), 0 once it has saturated at Cov(y) g's cosine (Fig. 3)."""
    return float(np.log(signal_to_noise_growth(curve, decade)) / np.log(decade))


def mean_guess_cosine(model, inputs: Tensor, targets: Tensor, method: str,
                      generator: torch.Generator, batch_size: int) -> float:
    """The mean, over consecutive batches of ``inputs``, of cos(guessed gradient, true
    gradient) of the batch loss: the cosine that matched-cosine directional descent takes
    over (Fig. 3, middle)."""
    cosines = []
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i:i + batch_size], targets[i:i + batch_size]
        guess = guessed_gradient(model, x, y, method, generator=generator)
        cosines.append(cosine_similarity(guess, backprop_gradient(model, x, y)[1]))
    return float(np.mean(cosines))
