"""Networks whose forward pass exposes what a gradient guess needs.

Every model in the book follows one small protocol, so the estimators in
`gradguess.estimators` work on all of them:

- ``model.layers`` lists, in order, the linear maps trained by guessed gradients
  (layer i computes the pre-activation s_i = W_i x_i + b_i);
- ``model(x, perturbations=None, trace=None)`` returns the logits. When ``perturbations``
  is given, ``perturbations[i]`` (or None) is added to s_i right after layer i, which is
  where a forward-mode JVP injects its tangent. When ``trace`` is given, the forward pass
  appends each layer's input x_i and pre-activation s_i to it. `linear_site` does both
  for one layer.

Pre-activations may carry extra token dimensions (``[B, ..., d]``) as long as the batch
dimension comes first; the update of a layer sums over all leading dimensions.
"""
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


class MLP(nn.Module):
    """ReLU MLP with ``depth`` linear layers: ``depth - 1`` hidden layers of ``width`` units.

    "A 6-layer, 1024-wide MLP" in the paper is ``MLP(in_features, 1024, 6, classes)``:
    six weight matrices, ReLU after all but the last. Inputs of any shape are flattened.
    """

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int):
        super().__init__()
        if depth < 1 or width < 1 or in_features < 1 or num_classes < 2:
            raise ValueError(
                f"MLP needs depth >= 1, width >= 1, in_features >= 1 and num_classes >= 2; "
                f"got depth={depth}, width={width}, in_features={in_features}, "
                f"num_classes={num_classes}")
        sizes = [in_features] + [width] * (depth - 1) + [num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor, perturbations=None, trace: Trace | None = None) -> Tensor:
        h = x.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            s = linear_site(i, layer, h, perturbations, trace)
            h = s if i == last else torch.relu(s)
        return h


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
