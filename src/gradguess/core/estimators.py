"""Forward-gradient estimators: draw a guess, measure g.y by a JVP, write (g.y) y into .grad.

No guessing method runs a backward pass through the network. The directional derivative
g.y comes from forward-mode AD (`torch.func.jvp`); the scaled pre-activation guess becomes a
weight update by the outer product with the layer's input x_i, what a single linear layer's
backward would compute (paper A.4), written into ``.grad`` so any torch optimizer can step.

Two modes for activation-space guesses:

- ``global``: one JVP per example with every layer's pre-activation perturbed at once; each
  layer's guess is scaled by the same per-example value sum_i g_i.y_i (the poster's numbers
  are consistent with this). A model trained by many local losses (``model.local_losses``,
  `gradguess.core.mixer.LocalMixer`) gets every local loss's own derivative from the same JVP,
  and scales each part of a guess by the derivatives of the losses it reaches;
- ``per_layer``: layer i's guess is scaled by its own g_i.y_i. All layers' derivatives come
  from one batched JVP (`torch.func.vmap` over L tangent sets, set i holding layer i's guess
  and zeros elsewhere): the cost of L JVPs without a Python loop of them, at L times the
  memory of the tangents.

Weight-space guesses (directional descent) take one JVP per batch, over all weights in
``global`` mode and, batched the same way, one per layer's weights in ``per_layer`` mode.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from .fused import fused_gradient
from .losses import cross_entropy_per_example
from .methods import get_method
from .models import MLP, StackedMLP, Trace, write_linear_grad

MODES = ("global", "per_layer")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known modes: {', '.join(MODES)}")
    return mode


def per_example_loss(model, x: Tensor, targets: Tensor, perturbations=None,
                     trace: Trace | None = None) -> Tensor:
    """Each example's loss: cross-entropy of the logits, or the model's own (several local
    losses summed, `gradguess.core.mixer.LocalMixer`)."""
    if hasattr(model, "per_example_loss"):
        return model.per_example_loss(x, targets, perturbations, trace)
    return cross_entropy_per_example(model(x, perturbations, trace), targets)


def batch_loss(model, x: Tensor, targets: Tensor) -> Tensor:
    """The batch-mean cross-entropy L, one per replicate for a stacked model (then the
    gradient of their sum is every replicate's own gradient)."""
    return per_example_loss(model, x, targets).mean(-1)


def _jvp(function, primals: tuple, tangents: tuple, batched: bool) -> Tensor:
    """The JVP of ``function`` at ``primals`` along ``tangents``; ``batched``: each tangent
    carries a leading dimension of G tangent sets, and the G JVPs run as one, vmapped (the
    primal computation is shared, the tangent computation batched)."""
    jvp = lambda *t: torch.func.jvp(function, primals, t)[1]
    with torch.no_grad():
        return (torch.func.vmap(jvp) if batched else jvp)(*tangents)


def each_alone(groups: list[list[Tensor]]) -> list[Tensor]:
    """G tangent sets in which set g holds group g's tensors and zeros in place of every other
    group's: one stack [G, *t.shape] per tensor, in order. A batched JVP along them gives
    each group's directional derivative alone (the per-layer mode)."""
    stacks = []
    for g, group in enumerate(groups):
        for t in group:
            stack = t.new_zeros(len(groups), *t.shape)
            stack[g] = t
            stacks.append(stack)
    return stacks


def preactivation_jvp(model, x: Tensor, targets: Tensor, tangents: list,
                      losses=per_example_loss, batched: bool = False) -> Tensor:
    """Per-example directional derivatives sum_i dloss_b/ds_i[b] . y_i[b], by one JVP.

    ``tangents[i]`` is y_i (shaped like s_i) or None for a layer left unperturbed. Each
    example's loss depends only on its own pre-activations, so one JVP of the vector of
    per-example losses gives all B directional derivatives at once. ``losses(model, x,
    targets, perturbations)`` may return more than one loss per example (local losses).
    ``batched``: every y_i has a leading dimension of G tangent sets ([G, *s_i.shape]) and
    the result one too ([G, B, ...]).
    """
    perturbed = [i for i, t in enumerate(tangents) if t is not None]

    def loss_of(*deltas):
        perturbations = [None] * len(tangents)
        for i, delta in zip(perturbed, deltas):
            perturbations[i] = delta
        return losses(model, x, targets, perturbations)

    primals = tuple(torch.zeros_like(tangents[i][0] if batched else tangents[i]) for i in perturbed)
    return _jvp(loss_of, primals, tuple(tangents[i] for i in perturbed), batched)


def weight_jvp(model, x: Tensor, targets: Tensor, tangents: dict[str, Tensor],
               batched: bool = False) -> Tensor:
    """Directional derivative of the batch-mean loss along a weight direction: one JVP.
    ``batched``: every tangent has a leading dimension of G directions, the result is [G]."""
    if getattr(model, "replicates", None) is not None:
        raise ValueError("weight-space guesses (directional descent) take one JVP over all "
                         "weights; they are not implemented for stacked replicates: train "
                         "the replicates one by one")
    names = list(tangents)
    params = dict(model.named_parameters())

    def loss_of(*weights):
        logits = torch.func.functional_call(model, dict(zip(names, weights)), (x,))
        return F.cross_entropy(logits, targets)

    return _jvp(loss_of, tuple(params[n].detach() for n in names),
                tuple(tangents[n] for n in names), batched)


def backprop_gradient(model, x: Tensor, targets: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The true gradient of the batch-mean loss by autograd: for reference and metrics."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = batch_loss(model, x, targets)
        grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
    # a parameter the loss does not reach (an unused local head) has gradient zero
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def per_example_gradients(model, x: Tensor, targets: Tensor) -> tuple[Tensor, list[Tensor]]:
    """By autograd, for analysis: d loss_b / d x_b for every input and d loss_b / d s_i[b] for
    every layer, per example (each example's loss depends only on its own activations)."""
    trace = Trace()
    with torch.no_grad():
        model(x, trace=trace)
    x = x.detach().clone().requires_grad_(True)
    deltas = [torch.zeros_like(s, requires_grad=True) for s in trace.preactivations]
    with torch.enable_grad():
        loss = per_example_loss(model, x, targets, deltas).sum()
        grads = torch.autograd.grad(loss, [x, *deltas])
    return grads[0], list(grads[1:])


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """Per-example values ([B] or [R, B]) shaped to broadcast against ``like``."""
    return values.view(*values.shape, *([1] * (like.dim() - values.dim())))


def _local_slices(model, x, targets, perturbations) -> Tensor:
    return model.local_losses(x, targets, perturbations)[1]


def _activation_space_step(model, x, targets, method, mode, generator, options) -> Tensor:
    trace = Trace()
    with torch.no_grad():
        loss = per_example_loss(model, x, targets, trace=trace).mean(-1)
    if method.needs_targets:
        options = {**options, "targets": targets}
    with torch.no_grad():  # guesses read the weights; no graph is needed through them
        ys = method.guess(model, trace, generator, **options)
    ys, zs = ys if isinstance(ys, tuple) else (ys, ys)  # a guess may step along z != y
    n = len(ys)
    # layers whose gradient is known without a guess: a model's heads, self-sharpening's last
    exact = (model.exact_preactivation_grads(trace, targets)
             if hasattr(model, "exact_preactivation_grads") else {})
    if method.exact_last:
        exact[n - 1] = zs[n - 1]
    perturbed = [i for i in range(n) if i not in exact]
    local = getattr(model, "local", False) and hasattr(model, "local_losses")
    # a derivative per local loss (each part of a guess scaled by its own), else per example
    losses = _local_slices if local else per_example_loss
    derivatives = {}
    if perturbed and mode == "global":  # one JVP along every perturbed layer at once
        tangents = [ys[i] if i in perturbed else None for i in range(n)]
        derivative = preactivation_jvp(model, x, targets, tangents, losses)
        derivatives = dict.fromkeys(perturbed, derivative)
    elif perturbed:  # per layer: one batched JVP, set g perturbing layer perturbed[g] alone
        stacks = dict(zip(perturbed, each_alone([[ys[i]] for i in perturbed])))
        tangents = [stacks.get(i) for i in range(n)]
        derivatives = dict(zip(perturbed, preactivation_jvp(model, x, targets, tangents, losses,
                                                            batched=True)))
    scales = {i: model.local_scale(i, d) if local else _per_example(d, zs[i])
              for i, d in derivatives.items()}
    batch = targets.shape[-1]  # the loss is a batch mean: dL/ds_i[b] = dloss_b/ds_i[b] / B
    for i, layer in enumerate(model.layers):
        grad_s = exact[i] if i in exact else scales[i] * zs[i]
        write_linear_grad(layer, trace.inputs[i], grad_s / batch)
    return loss


def _weight_space_step(model, x, targets, method, mode, generator, options) -> Tensor:
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    name_of = {id(p): n for n, p in named.items()}
    if mode == "global":
        groups = [list(named)]
    else:
        groups = [[name_of[id(p)] for p in layer.parameters() if id(p) in name_of]
                  for layer in model.layers]
    true = None
    if method.needs_true_gradient:
        loss, grads = backprop_gradient(model, x, targets)
        true = dict(zip(named, grads))
    else:
        with torch.no_grad():
            loss = F.cross_entropy(model(x), targets)
    directions = []  # drawn group after group, in the order of the generator
    for names in groups:
        params = [named[n].detach() for n in names]
        extra = {"true_grads": [true[n] for n in names]} if true is not None else {}
        directions.append(method.guess(params, generator, **options, **extra))
    if mode == "global":
        derivatives = [weight_jvp(model, x, targets, dict(zip(groups[0], directions[0])))]
    else:  # one batched JVP, direction set g moving layer g's weights alone
        stacks = dict(zip([n for names in groups for n in names], each_alone(directions)))
        derivatives = weight_jvp(model, x, targets, stacks, batched=True)
    for names, direction, derivative in zip(groups, directions, derivatives):
        for n, v in zip(names, direction):
            named[n].grad = derivative * v
    return loss


def estimate_gradient(model, x: Tensor, targets: Tensor, method: str = "w_transpose",
                      mode: str = "global", generator: torch.Generator | None = None,
                      **options) -> Tensor:
    """Write an estimate of d mean-cross-entropy / d weights into every ``.grad``.

    ``method`` names an entry of `gradguess.core.methods.METHODS`; ``options`` go to its guess function (e.g.
    ``k=2`` for ``downstream``, ``p=3`` for ``singular_power``, ``cosine=0.02`` for
    ``matched_cosine``). Returns the batch loss before the step (detached; one per
    replicate for a stacked model).
    """
    spec = get_method(method)
    check_mode(mode)
    if spec.space == "none":
        raise ValueError(f"{method!r} guesses nothing: it is a prompt-tuning baseline")
    if spec.space == "exact":
        if options:
            raise TypeError(f"backprop takes no options, got {sorted(options)}")
        model.zero_grad(set_to_none=False)  # backward then accumulates into the same buffers
        loss = batch_loss(model, x, targets)
        loss.sum().backward()
        return loss.detach()
    step = _activation_space_step if spec.space == "activations" else _weight_space_step
    return step(model, x, targets, spec, mode, generator, options)


def guessed_gradient(model, x, targets, method="w_transpose", mode="global", generator=None,
                     **options) -> list[Tensor]:
    """`estimate_gradient`, returning copies of the gradients in ``model.parameters()`` order."""
    estimate_gradient(model, x, targets, method, mode, generator, **options)
    return [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]


# reference: torch.func.jvp (every method); fused: one forward pass (`gradguess.core.fused`);
# fused-lean: the fused estimator's memory-lean mode (a second forward pass); auto: fused
# where it applies (the same update, tested), else reference.
ESTIMATORS = ("auto", "reference", "fused", "fused-lean")


def resolve_estimator(estimator: str, model, method: str, mode: str, options: dict) -> str:
    """The estimator a run uses: ``auto`` becomes ``fused`` where the fused estimator
    applies (an MLP, the global mode, a method it runs, downstream with k = 1)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    if estimator != "auto":
        return estimator
    fusable = (isinstance(model, (MLP, StackedMLP)) and mode == "global"
               and get_method(method).fused and options.get("k", 1) == 1)
    return "fused" if fusable else "reference"


def gradient_writer(method: str, mode: str, estimator: str):
    """The function ``(model, x, targets, generator, **options) -> loss`` that writes a step's
    gradient into .grad with the chosen estimator (backprop is always exact)."""
    if estimator == "reference" or get_method(method).space == "exact":
        return lambda model, x, y, rng, **o: estimate_gradient(model, x, y, method, mode, rng, **o)
    if mode != "global":
        raise ValueError(f"the fused estimators run the global mode only, not {mode!r}")
    fused_mode = "keep" if estimator == "fused" else "regenerate"
    return lambda model, x, y, rng, **o: fused_gradient(model, x, y, method, rng, fused_mode, **o)
