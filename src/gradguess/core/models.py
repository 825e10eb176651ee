"""Networks whose forward pass exposes what a gradient guess needs.

Every model in the book follows one small protocol, so the estimators in
`gradguess.core.estimators` work on all of them:

- ``model.layers`` lists, in order, the linear maps trained by guessed gradients
  (layer i computes the pre-activation s_i = W_i x_i + b_i);
- ``model(x, perturbations=None, trace=None)`` returns the logits. When ``perturbations``
  is given, ``perturbations[i]`` (or None) is added to s_i right after layer i, which is
  where a forward-mode JVP injects its tangent. When ``trace`` is given, the forward pass
  appends each layer's input x_i and pre-activation s_i to it. `linear_site` does both
  for one layer.

Pre-activations may carry extra token dimensions (``[B, ..., d]``) as long as the batch
dimension comes first; the update of a layer sums over all leading dimensions.

A model may also stack R independent replicates (`StackedMLP`): its weights are
``[R, out, in]``, every x_i and s_i is ``[R, B, ..., d]``, and its loss is the sum over
replicates of each one's batch mean, so each replicate gets exactly its own gradient.

The architecture-aware guesses need to know how layers connect. For a chain of linear layers
with ReLUs between them (an MLP) the defaults below say it; a model of another shape
(`gradguess.core.mixer.LocalMixer`) defines the same four methods: ``successor(i)`` (the layer that
consumes layer i's output, None for a layer whose output is a loss's logits),
``pull_back(j, v, weight)`` (v at s_j carried back through W_j^T to the layout of the layer
before), ``inactive(i, s)`` (where the activation after s_i has zero slope) and
``activation(i, s)``. A model with several losses also defines ``per_example_loss`` and,
to have each part of a guess scaled by its own losses, ``local_losses``, ``local_scale`` and
``exact_preactivation_grads`` (see `gradguess.core.mixer.LocalMixer`).
"""
import math

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Trace:
    """What one forward pass records per layer: inputs x_i and pre-activations s_i."""

    inputs: list[Tensor] = field(default_factory=list)
    preactivations: list[Tensor] = field(default_factory=list)

    def record(self, x: Tensor, s: Tensor) -> None:
        self.inputs.append(x)
        self.preactivations.append(s)


def linear_site(i: int, layer: nn.Linear, x: Tensor, perturbations=None,
                trace: Trace | None = None) -> Tensor:
    """Layer i of the protocol: s_i = layer(x_i), recorded in ``trace``, plus its perturbation."""
    s = layer(x)
    if trace is not None:
        trace.record(x, s)
    if perturbations is not None and perturbations[i] is not None:
        s = s + perturbations[i]
    return s


def write_linear_grad(layer, x_in: Tensor, grad_s: Tensor) -> None:
    """Layer i's weight gradient from dL/ds_i, what its backward pass would compute (A.4):
    dL/dW = sum over batch (and tokens) of grad_s x_in^T; dL/db = sum of grad_s.

    For stacked replicates (weight ``[R, out, in]``) the sums run per replicate. A layer of
    another kind (a grouped linear map) writes its own update (``layer.write_grad``).
    """
    if hasattr(layer, "write_grad"):
        return layer.write_grad(x_in, grad_s)
    lead = grad_s.shape[:layer.weight.dim() - 2]  # () or (R,)
    g = grad_s.reshape(*lead, -1, grad_s.shape[-1])
    x_in = x_in.reshape(*lead, -1, x_in.shape[-1])
    _write(layer.weight, lambda out: torch.matmul(g.transpose(-1, -2), x_in, out=out))
    if layer.bias is not None:
        _write(layer.bias, lambda out: torch.sum(g, -2, out=out))


def _write(param, compute) -> None:
    """Write into the existing .grad buffer (no new allocation per step), else a new one."""
    grad = param.grad
    if grad is not None and grad.shape == param.shape and grad.dtype == param.dtype \
            and grad.is_contiguous():
        compute(grad)
    else:
        param.grad = compute(None)


def successor(model, i: int) -> int | None:
    """The layer that consumes layer i's output; None for the last (its output is logits)."""
    if hasattr(model, "successor"):
        return model.successor(i)
    return i + 1 if i + 1 < len(model.layers) else None


def pull_back(model, j: int, v: Tensor, weight: Tensor | None = None) -> Tensor:
    """v (shaped like s_j) times W_j (or ``weight`` in its place): back through layer j."""
    if hasattr(model, "pull_back"):
        return model.pull_back(j, v, weight)
    return v @ (model.layers[j].weight if weight is None else weight)


def inactive(model, i: int, s: Tensor) -> Tensor:
    """Where the activation after s_i has zero slope (ReLU: s <= 0)."""
    return model.inactive(i, s) if hasattr(model, "inactive") else s <= 0


def activation(model, i: int, s: Tensor) -> Tensor:
    """The activation applied to s_i (ReLU in an MLP)."""
    return model.activation(i, s) if hasattr(model, "activation") else torch.relu(s)


def mlp_sizes(in_features: int, width: int, depth: int, num_classes: int) -> list[int]:
    """Layer sizes [in, width, ..., width, classes] of a ``depth``-layer MLP, checked."""
    if depth < 1 or width < 1 or in_features < 1 or num_classes < 2:
        raise ValueError(
            f"MLP needs depth >= 1, width >= 1, in_features >= 1 and num_classes >= 2; "
            f"got depth={depth}, width={width}, in_features={in_features}, "
            f"num_classes={num_classes}")
    return [in_features] + [width] * (depth - 1) + [num_classes]


class MLP(nn.Module):
    """ReLU MLP with ``depth`` linear layers: ``depth - 1`` hidden layers of ``width`` units.

    "A 6-layer, 1024-wide MLP" in the paper is ``MLP(in_features, 1024, 6, classes)``:
    six weight matrices, ReLU after all but the last. Inputs of any shape are flattened.
    """

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int):
        super().__init__()
        sizes = mlp_sizes(in_features, width, depth, num_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor, perturbations=None, trace: Trace | None = None) -> Tensor:
        h = x.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            s = linear_site(i, layer, h, perturbations, trace)
            h = s if i == last else torch.relu(s)
        return h


class StackedLinear(nn.Module):
    """R independent linear maps applied side by side: s[r] = x[r] W[r]^T + b[r]."""

    def __init__(self, replicates: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialisation, per replicate
        self.weight = nn.Parameter(torch.empty(replicates, out_features, in_features)
                                   .uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(replicates, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:  # x: [R, B, in]
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedMLP(nn.Module):
    """R independent `MLP` replicates trained side by side with batched matmuls.

    Every replicate sees the same batch ``x`` (``[B, ...]``, flattened per example) and
    returns its own logits: ``[R, B, classes]``. Replicates differ in initialisation and in
    the guesses drawn for them. `stack_mlps` builds one from existing MLPs, `unstack` gives
    replicate r back as an `MLP`.
    """

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int,
                 replicates: int):
        super().__init__()
        if not isinstance(replicates, int) or replicates < 1:
            raise ValueError(f"StackedMLP needs an integer replicates >= 1, got {replicates!r}")
        sizes = mlp_sizes(in_features, width, depth, num_classes)
        self.replicates = replicates
        self.layers = nn.ModuleList(StackedLinear(replicates, a, b)
                                    for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor, perturbations=None, trace: Trace | None = None) -> Tensor:
        h = x.flatten(1).expand(self.replicates, -1, -1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            s = linear_site(i, layer, h, perturbations, trace)
            h = s if i == last else torch.relu(s)
        return h

    def unstack(self, r: int) -> MLP:
        sizes = [self.layers[0].weight.shape[2]] + [l.weight.shape[1] for l in self.layers]
        model = MLP(sizes[0], sizes[1], len(self.layers), sizes[-1]).to(self.layers[0].weight)
        with torch.no_grad():
            for single, stacked in zip(model.layers, self.layers):
                single.weight.copy_(stacked.weight[r])
                single.bias.copy_(stacked.bias[r])
        return model


def stack_mlps(models: list[MLP]) -> StackedMLP:
    """Stack MLPs of one shape into a `StackedMLP` whose replicate r is ``models[r]``."""
    first = models[0].layers
    sizes = [first[0].in_features] + [l.out_features for l in first]
    if any([l.weight.shape for l in m.layers] != [l.weight.shape for l in first] for m in models):
        raise ValueError("stack_mlps needs MLPs of one shape")
    stacked = StackedMLP(sizes[0], sizes[1], len(first), sizes[-1], len(models)).to(first[0].weight)
    with torch.no_grad():
        for i, layer in enumerate(stacked.layers):
            layer.weight.copy_(torch.stack([m.layers[i].weight for m in models]))
            layer.bias.copy_(torch.stack([m.layers[i].bias for m in models]))
    return stacked


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
