"""The loss and its exact derivative at the logits: what every estimator builds on."""
import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy_per_example(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of every example: logits ``[B, C]`` give ``[B]``; the logits
    ``[R, B, C]`` of R stacked replicates (one target per example) give ``[R, B]``."""
    targets = targets.expand(logits.shape[:-1])
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(),
                           reduction="none").view(logits.shape[:-1])


def error_vector(logits: Tensor, targets: Tensor) -> Tensor:
    """softmax(logits) - onehot(targets): the exact d loss_b / d logits_b of cross-entropy.
    (Subtracting 1 at the target in place of `F.one_hot`, which reads the targets' range
    back to the host.)"""
    error = torch.softmax(logits, dim=-1)
    return error.scatter_add_(-1, targets.expand(logits.shape[:-1]).unsqueeze(-1),
                              torch.full_like(error[..., :1], -1.0).expand(*logits.shape[:-1], 1))
