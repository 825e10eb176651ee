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

`LocalMixer.stack` puts R LocalMixers of one architecture side by side as one whose weights
carry a leading replicate dimension (``[R, ...]``, every site ``[R, B, ...]``) and whose
``local`` is one flag per replicate: the same forward pass, losses and layer connections serve
both, so that a stack's replicate r computes what mixer r computes alone
(`gradguess.engine.mixer_grid` trains such stacks).
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


class StackedLayer(nn.Module):
    """One layer of R stacked LocalMixers: weight ``[R, out, in]`` (a linear map) or
    ``[R, G, out, in]`` (a grouped one), bias ``[R, out]`` or ``[R, G, out]``. Parameters in a
    stack; plain tensors (views of a stack's parameters) in a part of one (`LocalMixer.part`)."""

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dim() == 4:  # grouped: [R, B, T, G, in] -> [R, B, T, G, out]
            return torch.einsum("rbtgi,rgoi->rbtgo", x, self.weight) + self.bias[:, None, None]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [R, ..., in]: one batched matmul
        s = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))
        return s.view(*x.shape[:-1], s.shape[-1])


class LocalMixer(nn.Module):
    """LocalMixer for [B, C, H, W] images; see the module's docstring. ``replicates`` is None
    for one mixer, R for a stack of R (`stack`)."""

    replicates = None

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

    # --- stacks of LocalMixers -------------------------------------------------------------

    @classmethod
    def stack(cls, mixers: list["LocalMixer"]) -> "LocalMixer":
        """R LocalMixers of one architecture side by side: replicate r starts as ``mixers[r]``
        (its weights, its ``local`` flag); layer i's weight is ``[R, *mixers[r].layers[i]
        .weight.shape]``. The stack's ``local`` is the R flags, ``local_rows`` the same as a
        buffer (on the weights' device)."""
        if not mixers:
            raise ValueError("a stack needs at least one LocalMixer")
        first = mixers[0]
        shape = lambda m: ([p.shape for p in m.parameters()], m.patch, m.groups, m.image_size,
                           m.split_losses, m.replicates)
        if any(shape(m) != shape(first) for m in mixers) or first.replicates is not None:
            raise ValueError("a stack needs single LocalMixers of one architecture")
        params = lambda i, name: nn.Parameter(torch.stack([getattr(m.layers[i], name).detach()
                                                           for m in mixers]))
        layers = [StackedLayer(params(i, "weight"), params(i, "bias"))
                  for i in range(len(first.layers))]
        out = first._like(layers, tuple(bool(m.local) for m in mixers))
        out.register_buffer("local_rows", torch.tensor(out.local), persistent=False)
        return out

    def part(self, lo: int, hi: int, detach: bool = True) -> "LocalMixer":
        """Replicates ``lo:hi`` of a stack: views of its weights, detached (the optimizer
        updates them in place, so a detached part made once stays current) or not (for a
        forward pass that autograd differentiates)."""
        cut = (lambda t: t.detach()[lo:hi]) if detach else (lambda t: t[lo:hi])
        layers = [StackedLayer(cut(layer.weight), cut(layer.bias)) for layer in self.layers]
        out = self._like(layers, self.local[lo:hi])
        out.local_rows = self.local_rows[lo:hi]
        return out

    def _like(self, layers: list[nn.Module], local: tuple[bool, ...]) -> "LocalMixer":
        """A stack of this geometry with ``layers`` as they are (no fresh initialisation)."""
        out = LocalMixer.__new__(LocalMixer)
        nn.Module.__init__(out)
        for name in ("patch", "groups", "channels", "image_size", "tokens", "split_losses"):
            setattr(out, name, getattr(self, name))
        out.layers, out.local, out.replicates = nn.ModuleList(layers), local, len(local)
        return out

    @property
    def local_flags(self) -> tuple[bool, ...]:
        """``local`` per replicate: one flag for a single mixer, R for a stack."""
        return (self.local,) if self.replicates is None else self.local

    # --- the forward pass ----------------------------------------------------------------
    # One mixer's sites are [B, ...]; a stack's are [R, B, ...], every operation below the
    # same for both but for the few that name their dimensions (`StackedLayer`, `pull_back`).

    site_dims = {"embed": 3, "token": 3, "channel": 4, "head": 2}  # dims of s_i, batch included

    def _kind(self, i: int) -> str:
        return "embed" if i == 0 else ("token", "channel", "head")[(i - 1) % 3]

    def patches(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, T, C * P * P] tokens, row by row. A stack takes one batch per
        replicate ([R, B, C, H, W]) or one for all ([B, C, H, W]) -> [R, B, T, C * P * P]."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"LocalMixer was built for {self.image_size}x{self.image_size} images, "
                             f"got {tuple(x.shape[-2:])}; pad them (gradguess.core.data.pad_images)")
        if self.replicates is None:
            return F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)
        if x.dim() == 4:
            p = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)
            return p.expand(self.replicates, *p.shape)
        p = F.unfold(x.flatten(0, 1), self.patch, stride=self.patch).transpose(1, 2)
        return p.unflatten(0, x.shape[:2])

    def _cut(self, h: Tensor) -> Tensor:
        """The residual stream as a head and the next block see it: detached in local mode
        (per replicate in a stack), as it is end to end."""
        flags = self.local_flags
        if all(flags):
            return h.detach()
        if not any(flags):
            return h
        return torch.where(self.local_rows.view(-1, 1, 1, 1), h.detach(), h)

    def blocks(self, x: Tensor, perturbations=None, trace=None) -> list[tuple[Tensor, Tensor]]:
        """Every block's output h [B, T, D] and its head's logits, the last head being the
        readout. In local mode a head reads its block's output detached: the block learns
        from the head's loss through `local_losses`' slices instead."""
        d, g = self.channels, self.groups
        h = linear_site(0, self.layers[0], self.patches(x), perturbations, trace)  # [B, T, D]
        out = []
        for i in range(1, len(self.layers), 3):
            u = F.layer_norm(h, (d,)).transpose(-1, -2)                             # [B, D, T]
            s = linear_site(i, self.layers[i], u, perturbations, trace)
            h = h + torch.relu(s).transpose(-1, -2)
            u = F.layer_norm(h, (d,)).unflatten(-1, (g, d // g))                    # [B, T, G, D/G]
            s = linear_site(i + 1, self.layers[i + 1], u, perturbations, trace)
            h = h + torch.relu(s).flatten(-2)
            cut = self._cut(h)  # local: the next block does not train this one (nor tangents)
            logits = linear_site(i + 2, self.layers[i + 2], cut.mean(-2), perturbations, trace)
            out.append((h, logits))
            h = cut
        return out

    def head_logits(self, x: Tensor, perturbations=None, trace=None) -> list[Tensor]:
        return [logits for _, logits in self.blocks(x, perturbations, trace)]

    def forward(self, x: Tensor, perturbations=None, trace=None) -> Tensor:
        return self.head_logits(x, perturbations, trace)[-1]

    def losses(self, x: Tensor, targets: Tensor, perturbations=None, trace=None):
        """One forward pass's readout logits and `local_losses`' ``heads`` and ``slices``, the
        last two None where no replicate is local (a stack's replicates may differ)."""
        outs = self.blocks(x, perturbations, trace)
        if not any(self.local_flags):
            return outs[-1][1], None, None
        heads, slices = 0, []
        for k, (h, logits) in enumerate(outs):
            heads = heads + cross_entropy_per_example(logits, targets)
            w = self.layers[3 * k + 3].weight.detach()
            d_pooled = error_vector(logits.detach(), targets) @ w / self.tokens  # [B, D]
            live = (h - h.detach()) * d_pooled.unsqueeze(-2)
            slices.append(live.unflatten(-1, (self.groups, -1)).sum(-1).flatten(-2))
        return outs[-1][1], heads, torch.cat(slices, -1)

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
        if not all(self.local_flags):
            raise ValueError("local_losses needs a LocalMixer built with local=True")
        return self.losses(x, targets, perturbations, trace)[1:]

    def per_example_loss(self, x: Tensor, targets: Tensor, perturbations=None, trace=None) -> Tensor:
        """Local: the sum of every block's local loss; end to end: the readout's loss (in a
        stack, [R, B], each replicate by its own flag)."""
        readout, heads, slices = self.losses(x, targets, perturbations, trace)
        local = None if heads is None else heads + slices.sum(-1)
        if all(self.local_flags):
            return local
        end_to_end = cross_entropy_per_example(readout, targets)
        return end_to_end if local is None else torch.where(self.local_rows[:, None], local,
                                                            end_to_end)

    def local_scale(self, i: int, derivatives: Tensor) -> Tensor:
        """The directional derivatives of the local losses that s_i reaches, summed, shaped to
        scale a guess at s_i (``derivatives``: [B, blocks * T * G], from ``local_losses``).

        A grouped channel layer's output at (t, g) reaches only the slice (t, g); a token
        layer's output at token t reaches every group at t (through the LayerNorm and the
        channel layer); the embedding reaches its whole block. With ``split_losses`` False
        every layer takes its block's total: one loss per block, for comparison.
        """
        lead = derivatives.shape[:-1]  # [B], or [R, B] in a stack
        kind, block = self._kind(i), max(i - 1, 0) // 3
        d = derivatives.view(*lead, -1, self.tokens, self.groups)[..., block, :, :]  # [B, T, G]
        if kind == "channel" and self.split_losses:
            return d[..., None]                 # [B, T, G, 1]
        if kind == "token" and self.split_losses:
            return d.sum(-1).unsqueeze(-2)      # [B, 1, T]
        total = d.sum((-2, -1))
        return total.view(*lead, *[1] * (self.site_dims[kind] - 1))

    def exact_preactivation_grads(self, trace, targets: Tensor) -> dict[int, Tensor]:
        """In local mode the heads learn from their exact local gradient, as in Ren et al.:
        dL_k/d logits = softmax(logits) - onehot(target), per example, no guess needed."""
        if not all(self.local_flags):
            return {}
        return {i: error_vector(s, targets) for i, s in enumerate(trace.preactivations) if self._kind(i) == "head"}

    # --- how layers connect, for the architecture-aware guesses ----------------------------

    def successor(self, i: int) -> int | None:
        return None if self._kind(i) == "head" else i + 1

    def pull_back(self, j: int, v: Tensor, weight: Tensor | None = None) -> Tensor:
        """v at s_j, times W_j^T, in the layout of s_{j-1} (layer j's input before its norm)."""
        w = self.layers[j].weight if weight is None else weight
        kind, stacked = self._kind(j), self.replicates is not None
        if kind == "token":    # v [B, D, T] -> the embedding's s [B, T, D]
            return (v @ (w.unsqueeze(1) if stacked else w)).transpose(-1, -2)
        if kind == "channel":  # v [B, T, G, D/G] -> the token layer's s [B, D, T]
            back = torch.einsum("rbtgo,rgoi->rbtgi" if stacked else "...go,goi->...gi", v, w)
            return back.flatten(-2).transpose(-1, -2)
        if kind == "head":     # v [B, classes] -> the channel layer's s, through the token mean
            back = (torch.bmm(v, w) if stacked else v @ w) / self.tokens            # [B, D]
            back = back.unsqueeze(-2).repeat(*[1] * (back.dim() - 1), self.tokens, 1)
            return back.unflatten(-1, (self.groups, -1))                            # [B, T, G, D/G]
        raise ValueError(f"layer {j} (the embedding) has no layer before it")

    def inactive(self, i: int, s: Tensor) -> Tensor:
        if self._kind(i) in ("token", "channel"):
            return s <= 0
        return torch.zeros_like(s, dtype=torch.bool)  # no activation after it

    def activation(self, i: int, s: Tensor) -> Tensor:
        return torch.relu(s) if self._kind(i) in ("token", "channel") else s
