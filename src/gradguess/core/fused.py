"""The fused estimator: primal and tangent in one forward pass, no torch.func, no graph.

The reference estimator (`gradguess.core.estimators`) runs a forward pass, draws every guess, then
a JVP through the network. For an MLP the same numbers come out of one pass: layer i's guess
needs only s_i and W_{i+1} (and, for 1-layer downstream, s_{i+1}, one layer ahead), so the
pass carries the primal s_i and the tangent

    t_i = W_i (mask(s_{i-1}) * t_{i-1}) + y_i,        t_0 = y_0,

and at the logits the per-example directional derivative is d_b = (softmax(z_b) - onehot_b) . t_L.
The update of layer i is sum_b d_b y_i[b] x_i[b]^T / B (paper A.4). It needs x_i and y_i after d
is known. Two modes:

- ``keep`` (fast): x_i and y_i are kept from the pass;
- ``regenerate`` (memory-lean, the paper's "second forward pass"): nothing is kept; a second
  forward pass recomputes x_i and redraws y_i from the generator's saved state, so memory does
  not grow with depth.

Both give the reference estimator's update in the global mode (tests check this to float
tolerance) and leave the generator in the same state.
"""
import torch
from torch import Tensor

from .losses import cross_entropy_per_example, error_vector
from .methods import get_method, method_names
from .models import MLP, StackedMLP, write_linear_grad

# The methods whose guess for layer i reads no more than s_{i+1} (`Method.guess_at`).
FUSED_METHODS = method_names(lambda method: method.fused)
FUSED_MODES = ("keep", "regenerate")


def _layer_pass(model, x: Tensor, method: str, generator, options: dict, inputs: bool = True):
    """Yield, layer by layer, (i, x_i, a_i, y_i), holding no more than two layers at a time.

    a_i is ReLU(s_i) for a hidden layer (computed in place: s_i itself is not kept) and the
    logits s_L for the last. Every guess reads s_i only through ReLU(s_i) and its mask, which
    a_i gives alike. The primal runs one layer ahead so that a guess may read s_{i+1}. With
    ``inputs=False`` x_i is not yielded (None): the memory-lean first pass does not need it.
    """
    guess_at = get_method(method).guess_at
    layers = model.layers
    last = len(layers) - 1
    h = x.flatten(1) if isinstance(model, MLP) else x.flatten(1).expand(model.replicates, -1, -1)
    s = layers[0](h)
    for i in range(last + 1):
        if i < last:
            s = s.relu_()  # a_i = x_{i+1}
        s_next = layers[i + 1](s) if i < last else None
        y = guess_at(model, [None] * i + [s, s_next], i, generator, **options)
        yield i, (h if inputs else None), s, y
        h, s = (s if inputs else None), s_next
        del s_next, y


@torch.no_grad()
def fused_gradient(model, x: Tensor, targets: Tensor, method: str = "w_transpose",
                   generator: torch.Generator | None = None, mode: str = "keep",
                   **options) -> Tensor:
    """Write the guessed gradient of ``method`` into every ``.grad`` from one forward pass
    (two in the ``regenerate`` mode). Same contract as `estimators.estimate_gradient` in its
    global mode; returns the batch loss (one per replicate for a `StackedMLP`)."""
    spec = get_method(method)
    if not spec.fused:
        raise ValueError(f"the fused estimator runs {', '.join(FUSED_METHODS)}; got {method!r}")
    if mode not in FUSED_MODES:
        raise ValueError(f"unknown fused mode {mode!r}; known modes: {', '.join(FUSED_MODES)}")
    if not isinstance(model, (MLP, StackedMLP)):
        raise TypeError(f"the fused estimator is written for MLP and StackedMLP, not "
                        f"{type(model).__name__}")
    if options.get("k", 1) != 1:
        raise ValueError("the fused estimator runs 1-layer downstream only (k = 1): a k-layer "
                         "guess reads s_{i+k}, beyond the one-layer look-ahead")
    exact_last = spec.exact_last
    if spec.needs_targets:
        options = {**options, "targets": targets}
    last = len(model.layers) - 1
    batch = targets.shape[-1]
    state = generator.get_state() if mode == "regenerate" and generator is not None else None
    if mode == "regenerate" and generator is None:
        raise ValueError("the regenerate mode replays the guesses: pass a torch.Generator")

    kept, tangent = [], None
    for i, h, a, y in _layer_pass(model, x, method, generator, options, inputs=mode == "keep"):
        perturbed = not (exact_last and i == last)
        w_t = model.layers[i].weight.transpose(-1, -2)
        if tangent is None:  # t_0 = y_0
            t = y if perturbed else None
        elif perturbed:  # t_i = y_i + W_i (mask(s_{i-1}) * t_{i-1}), one fused product
            t = torch.baddbmm(y, tangent, w_t) if w_t.dim() == 3 else torch.addmm(y, tangent, w_t)
        else:
            t = tangent @ w_t
        tangent = None
        if mode == "keep":
            kept.append((h, y))
        if i < last and t is not None:  # y_0 is kept for the update: mask a copy of it
            tangent = t.masked_fill(a <= 0, 0) if t is y else t.masked_fill_(a <= 0, 0)
        elif i == last:
            logits, tangent_logits = a, t
        del t, y, h, a, w_t
    error = error_vector(logits, targets)
    if tangent_logits is None:  # self-sharpening on a single layer: nothing is guessed
        tangent_logits = torch.zeros_like(logits)
    derivative = (error * tangent_logits).sum(-1)  # d_b = d loss_b / d s . t, per example
    loss = cross_entropy_per_example(logits, targets).mean(-1)

    def write(i, h, y):  # y is not needed afterwards: scaled in place
        if exact_last and i == last:  # self-sharpening's last layer: the error vector itself
            y.div_(batch)
        else:
            y.mul_(derivative.unsqueeze(-1) / batch)
        write_linear_grad(model.layers[i], h, y)

    if mode == "keep":
        for i, (h, y) in enumerate(kept):
            write(i, h, y)
        kept.clear()
    else:
        after = generator.get_state()
        generator.set_state(state)
        for i, h, _, y in _layer_pass(model, x, method, generator, options):
            write(i, h, y)
            del h, y  # before the pass draws the next layer's guess
        if not torch.equal(generator.get_state(), after):
            raise RuntimeError("the second pass drew different guesses from the first")
    return loss
