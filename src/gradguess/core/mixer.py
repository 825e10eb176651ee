"""LocalMixer (Ren, Kornblith, Liao & Hinton 2022, "Scaling forward gradient with local losses").

An MLP-Mixer trained block by block, written from the paper's description:

- the image is cut into non-overlapping P x P patches, each a token, linearly embedded to D
  channels;
- each block mixes tokens (one linear map across the T tokens, shared by all channels) and then
  channels (a grouped linear map: the D channels split into G groups, each mixed by its own
  (D/G) x (D/G) matrix), each after a LayerNorm without learned scale or shift, followed by a
  ReLU and added to the residual stream;
- each block ends in a local head: the average over tokens, one linear layer to the classes,
  initialised to zero; its cross-entropy is the block's local loss;
- with ``local=True`` the residual stream is detached between blocks, so each block (the first
  with the embedding) learns from its own local loss only; the last block's head is the
  network's readout. With ``local=False`` nothing is detached and only the readout's loss
  trains the whole network end to end.

The layers follow `gradguess.core.models`' protocol: ``layers`` in order [embedding, then per block:
token, channel, head], a forward pass that records (x_i, s_i) and adds perturbations, and the
four methods that tell the guesses how layers connect. W^T's "next layer" of a layer is the
linear map that consumes its output: the token layer's is the channel layer, the channel
layer's is the block's head (through the average over tokens), the embedding's is the first
token layer; LayerNorm and the residual path are not part of the guess.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import cross_entropy_per_example, error_vector
from .models import linear_site


class GroupLinear(nn.Module):
    """G independent linear maps on G channel groups: s[..., g, :] = x[..., g, :] W_g^T + b_g."""

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)  # nn.Linear's default initialisation, per group
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:  # x: [..., G, in]
        return torch.einsum("...gi,goi->...go", x, self.weight) + self.bias

    def write_grad(self, x_in: Tensor, grad_s: Tensor) -> None:
        """dL/dW_g = sum over batch and tokens of grad_s[..., g, :] x_in[..., g, :]^T."""
        self.weight.grad = torch.einsum("...go,...gi->goi", grad_s, x_in)
        self.bias.grad = grad_s.reshape(-1, *grad_s.shape[-2:]).sum(0)


class LocalMixer(nn.Module):
    """LocalMixer for [B, C, H, W] images; see the module's docstring."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32, patch: int = 4,
                 channels: int = 64, blocks: int = 3, groups: int = 4, local: bool = True,
                 split_losses: bool = True):
        super().__init__()
        if image_size % patch or channels % groups or min(blocks, channels, patch) < 1:
            raise ValueError(f"LocalMixer needs image_size divisible by patch and channels by "
                             f"groups, and blocks, channels, patch >= 1; got image_size="
                             f"{image_size}, patch={patch}, channels={channels}, groups={groups}, "
                             f"blocks={blocks}")
        self.patch, self.groups, self.channels, self.local = patch, groups, channels, local
        self.split_losses = split_losses  # False: one derivative per block scales its guesses
        self.image_size = image_size
        self.tokens = (image_size // patch) ** 2
        layers = [nn.Linear(in_channels * patch * patch, channels)]
        for _ in range(blocks):
            head = nn.Linear(channels, num_classes)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            layers += [nn.Linear(self.tokens, self.tokens),
                       GroupLinear(groups, channels // groups, channels // groups), head]
        self.layers = nn.ModuleList(layers)

    # --- the forward pass ----------------------------------------------------------------

    site_dims = {"embed": 3, "token": 3, "channel": 4, "head": 2}  # dims of s_i, batch included

    def _kind(self, i: int) -> str:
        return "embed" if i == 0 else ("token", "channel", "head")[(i - 1) % 3]

    def patches(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, T, C * P * P] tokens, row by row."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"LocalMixer was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(x.shape[-2:])}; pad them (gradguess.core.data.pad_images)")
        return F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)

    def blocks(self, x: Tensor, perturbations=None, trace=None) -> list[tuple[Tensor, Tensor]]:
        """Every block's output h [B, T, D] and its head's logits, the last head being the
        readout. In local mode a head reads its block's output detached: the block learns
        from the head's loss through `local_losses`' slices instead."""
        b, d, g = x.shape[0], self.channels, self.groups
        h = linear_site(0, self.layers[0], self.patches(x), perturbations, trace)  # [B, T, D]
        out = []
        for i in range(1, len(self.layers), 3):
            u = F.layer_norm(h, (d,)).transpose(1, 2)                               # [B, D, T]
            s = linear_site(i, self.layers[i], u, perturbations, trace)
            h = h + torch.relu(s).transpose(1, 2)
            u = F.layer_norm(h, (d,)).reshape(b, self.tokens, g, d // g)            # [B, T, G, D/G]
            s = linear_site(i + 1, self.layers[i + 1], u, perturbations, trace)
            h = h + torch.relu(s).reshape(b, self.tokens, d)
            pooled = (h.detach() if self.local else h).mean(1)
            out.append((h, linear_site(i + 2, self.layers[i + 2], pooled, perturbations, trace)))
            if self.local:
                h = h.detach()  # the next block does not train this one (nor do tangents pass)
        return out

    def head_logits(self, x: Tensor, perturbations=None, trace=None) -> list[Tensor]:
        return [logits for _, logits in self.blocks(x, perturbations, trace)]

    def forward(self, x: Tensor, perturbations=None, trace=None) -> Tensor:
        return self.head_logits(x, perturbations, trace)[-1]

    def local_losses(self, x: Tensor, targets: Tensor, perturbations=None,
                     trace=None) -> tuple[Tensor, Tensor]:
        """Ren et al.'s patch-wise and group-wise local losses (local mode only).

        Block k's loss L_k = CE(W_k mean_t h_t + b_k) is split into one loss per token t and
        channel group g: L_{k,t,g} has L_k's value but sees its block's output only through
        h[t, g] (the others held fixed, Ren et al.'s stop-gradients). To first order

            L_{k,t,g} = L_k + (1/T) sum_{c in g} (dL_k/d mean h)_c (h[t, c] - sg(h[t, c])),

        which is how it is written here: ``heads`` [B] is sum_k L_k with the block's output
        detached (it trains the heads), and ``slices`` [B, blocks * T * G] are the second
        terms, zero in value. The gradient of ``heads + slices.sum(-1)`` is the exact local
        gradient; the JVP of ``slices`` gives every slice's own directional derivative, by
        which a guess at that slice (and only there) is scaled.
        """
        if not self.local:
            raise ValueError("local_losses needs a LocalMixer built with local=True")
        heads, slices = 0, []
        b, g = x.shape[0], self.groups
        for k, (h, logits) in enumerate(self.blocks(x, perturbations, trace)):
            heads = heads + cross_entropy_per_example(logits, targets)
            d_pooled = error_vector(logits.detach(), targets) @ self.layers[3 * k + 3].weight.detach() / self.tokens  # [B, D]
            live = (h - h.detach()) * d_pooled[:, None, :]
            slices.append(live.reshape(b, self.tokens, g, -1).sum(-1).flatten(1))
        return heads, torch.cat(slices, 1)

    def per_example_loss(self, x: Tensor, targets: Tensor, perturbations=None, trace=None) -> Tensor:
        """Local: the sum of every block's local loss; end to end: the readout's loss."""
        if not self.local:
            return cross_entropy_per_example(self(x, perturbations, trace), targets)
        heads, slices = self.local_losses(x, targets, perturbations, trace)
        return heads + slices.sum(-1)

    def local_scale(self, i: int, derivatives: Tensor) -> Tensor:
        """The directional derivatives of the local losses that s_i reaches, summed, shaped to
        scale a guess at s_i (``derivatives``: [B, blocks * T * G], from ``local_losses``).

        A grouped channel layer's output at (t, g) reaches only the slice (t, g); a token
        layer's output at token t reaches every group at t (through the LayerNorm and the
        channel layer); the embedding reaches its whole block. With ``split_losses`` False
        every layer takes its block's total: one loss per block, for comparison.
        """
        d = derivatives.view(derivatives.shape[0], -1, self.tokens, self.groups)
        kind, block = self._kind(i), max(i - 1, 0) // 3
        if kind == "channel" and self.split_losses:
            return d[:, block, :, :, None]                 # [B, T, G, 1]
        if kind == "token" and self.split_losses:
            return d[:, block].sum(-1)[:, None, :]         # [B, 1, T]
        total = d[:, block].sum((1, 2))
        return total.view(-1, *[1] * (self.site_dims[kind] - 1))

    def exact_preactivation_grads(self, trace, targets: Tensor) -> dict[int, Tensor]:
        """In local mode the heads learn from their exact local gradient, as in Ren et al.:
        dL_k/d logits = softmax(logits) - onehot(target), per example, no guess needed."""
        if not self.local:
            return {}
        return {i: error_vector(s, targets) for i, s in enumerate(trace.preactivations) if self._kind(i) == "head"}

    # --- how layers connect, for the architecture-aware guesses ----------------------------

    def successor(self, i: int) -> int | None:
        return None if self._kind(i) == "head" else i + 1

    def pull_back(self, j: int, v: Tensor, weight: Tensor | None = None) -> Tensor:
        """v at s_j, times W_j^T, in the layout of s_{j-1} (layer j's input before its norm)."""
        w = self.layers[j].weight if weight is None else weight
        kind, b = self._kind(j), v.shape[0]
        if kind == "token":    # v [B, D, T] -> the embedding's s [B, T, D]
            return (v @ w).transpose(1, 2)
        if kind == "channel":  # v [B, T, G, D/G] -> the token layer's s [B, D, T]
            return torch.einsum("...go,goi->...gi", v, w).reshape(b, self.tokens, -1).transpose(1, 2)
        if kind == "head":     # v [B, classes] -> the channel layer's s, through the token mean
            back = (v @ w) / self.tokens                                             # [B, D]
            g = self.groups
            return back[:, None, :].repeat(1, self.tokens, 1).reshape(b, self.tokens, g, -1)
        raise ValueError(f"layer {j} (the embedding) has no layer before it")

    def inactive(self, i: int, s: Tensor) -> Tensor:
        if self._kind(i) in ("token", "channel"):
            return s <= 0
        return torch.zeros_like(s, dtype=torch.bool)  # no activation after it

    def activation(self, i: int, s: Tensor) -> Tensor:
        return torch.relu(s) if self._kind(i) in ("token", "channel") else s
