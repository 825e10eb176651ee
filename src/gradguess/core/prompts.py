"""Visual prompt tuning (Jia et al. 2022, shallow) and guesses of the prompts' gradient (A.6).

A frozen vision transformer (torchvision's `VisionTransformer`) reads P learnable prompt tokens
inserted after the class token, after the position embedding; a new linear head reads the
class token's output. Only the prompts and the head are trained.

The prompts' gradient is guessed, as elsewhere in the book, and scaled by a JVP:

- directional descent: one direction y ~ N(0, I) over the prompts per batch (a weight-space
  guess), stepped along (g.y) y;
- activation perturbation: y_b ~ N(0, I) per example for the prompt tokens as that example's
  activations, stepped along the mean over the batch of (g_b.y_b) y_b;
- head only (a baseline, not a guess): the prompts stay at their initialisation;
- W^T: per example, y_b = W_qkv^T eta_b with eta_b ~ N(0, I): noise at the outputs of the first
  linear maps that consume the prompt tokens, the query, key and value projections of the
  first encoder block (W_qkv, 3D x D), pulled back through their transpose. The LayerNorm
  before them is left out, as the activation's slope is for an MLP.

The head learns from its exact gradient (softmax minus one-hot, times the class token's
feature), as in the LocalMixer chapter: one linear layer on a known loss needs no guess.
"""
import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchvision.models import VisionTransformer, vit_b_16

from . import datafiles
from .losses import cross_entropy_per_example, error_vector
from .methods import get_method, method_names

# backprop, the head-only baseline, and every method with a guess of the prompts
PROMPT_METHODS = method_names(lambda method: method.tunes_prompts)


@contextmanager
def forward_mode_attention():
    """torch's fused attention kernels have no forward-mode derivative; its math kernel has."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def small_vit(image_size: int = 28, patch: int = 7, layers: int = 4, heads: int = 4,
              hidden: int = 64, mlp: int = 128, num_classes: int = 10) -> VisionTransformer:
    """A small torchvision ViT for the CPU (no dropout), pre-trained by the chapter itself."""
    return VisionTransformer(image_size=image_size, patch_size=patch, num_layers=layers,
                             num_heads=heads, hidden_dim=hidden, mlp_dim=mlp,
                             num_classes=num_classes)


def load_vit_b16(path) -> VisionTransformer:
    """ViT-B/16 from a local torchvision weight file (e.g. vit_b_16-c867db91.pth), checked
    against the sha256 prefix in its name (`datafiles.read_weights`)."""
    path = Path(path).expanduser()
    fetch = ("on a machine with internet, python -c \"from torchvision.models import vit_b_16, "
             "ViT_B_16_Weights; vit_b_16(weights=ViT_B_16_Weights.IMAGENET1K_V1)\" puts them in "
             "~/.cache/torch/hub/checkpoints/; pass that file's path")
    if not path.is_file():
        raise FileNotFoundError(f"no ViT-B/16 weights at {path}. {fetch[0].upper()}{fetch[1:]}")
    model = vit_b_16()
    model.load_state_dict(datafiles.read_weights(path, f"delete it; {fetch}"))
    return model


class PromptedViT(nn.Module):
    """A frozen ViT with ``num_prompts`` learnable prompt tokens and a new linear head."""

    def __init__(self, backbone: VisionTransformer, num_prompts: int, num_classes: int):
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.backbone = backbone.requires_grad_(False).eval()
        d, patch = backbone.hidden_dim, backbone.patch_size
        bound = math.sqrt(6 / (3 * patch * patch + d))  # VPT's initialisation of the prompts
        self.prompts = nn.Parameter(torch.empty(num_prompts, d).uniform_(-bound, bound))
        self.head = nn.Linear(d, num_classes)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: always in inference mode
        return self

    def features(self, x: Tensor, prompts: Tensor | None = None) -> Tensor:
        """The class token's output [B, D]; ``prompts`` [P, D] or per example [B, P, D]."""
        vit, b = self.backbone, x.shape[0]
        if x.shape[1] != 3 or x.shape[-1] != vit.image_size:
            raise ValueError(f"the backbone takes 3x{vit.image_size}x{vit.image_size} images, got "
                             f"{tuple(x.shape[1:])} (grayscale through gradguess.core.data.as_rgb)")
        prompts = self.prompts if prompts is None else prompts
        tokens = vit._process_input(x)
        tokens = torch.cat([vit.class_token.expand(b, -1, -1), tokens], 1) + vit.encoder.pos_embedding
        tokens = vit.encoder.dropout(tokens)
        tokens = torch.cat([tokens[:, :1], prompts.expand(b, -1, -1), tokens[:, 1:]], 1)
        return vit.encoder.ln(vit.encoder.layers(tokens))[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def qkv_weight(self) -> Tensor:
        """W_qkv [3D, D]: the first linear maps that consume the prompt tokens."""
        return self.backbone.encoder.layers[0].self_attention.in_proj_weight


def _write_exact_head_grad(model: PromptedViT, features: Tensor, error: Tensor) -> None:
    """dL/dW_head = error^T f / B, dL/db = mean(error), error = softmax - onehot: no guess."""
    per_example = error / len(error)
    model.head.weight.grad = per_example.T @ features
    model.head.bias.grad = per_example.sum(0)


def estimate_prompt_gradient(model: PromptedViT, x: Tensor, targets: Tensor, method: str,
                             generator=None) -> Tensor:
    """Write the prompts' gradient (backprop, or a guess scaled by one JVP) and the head's
    exact gradient into ``.grad``; return the batch-mean loss (detached)."""
    if method not in PROMPT_METHODS:
        raise ValueError(f"unknown prompt method {method!r}; known: {', '.join(PROMPT_METHODS)}")
    spec = get_method(method)
    if spec.space == "exact":
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), targets)
        loss.backward()
        return loss.detach()
    if spec.space == "none":  # the baseline: prompts left at their initialisation
        with torch.no_grad():
            features = model.features(x)
            logits = model.head(features)
        _write_exact_head_grad(model, features, error_vector(logits, targets))
        model.prompts.grad = None
        return F.cross_entropy(logits, targets)
    y = spec.prompt_guess(model, len(targets), generator)  # [P, D], or [B, P, D] per example
    prompts = model.prompts.detach().expand(len(targets), -1, -1).contiguous()
    # one JVP of the features (each example with its own copy of the prompts); the loss's
    # derivative through the head follows in closed form: (softmax - onehot) . W_head t_b
    with torch.no_grad(), forward_mode_attention():
        features, tangent = torch.func.jvp(lambda p: model.features(x, p), (prompts,),
                                           (y.expand_as(prompts).contiguous(),))
        logits = model.head(features)
        error = error_vector(logits, targets)
        _write_exact_head_grad(model, features, error)
        derivative = (error * (tangent @ model.head.weight.T)).sum(-1)  # g_b . y_b, per example
        if y.dim() == 2:  # one direction: the derivative of the batch-mean loss
            model.prompts.grad = derivative.mean() * y
        else:  # per example: the batch mean of (g_b . y_b) y_b
            model.prompts.grad = (derivative[:, None, None] * y).mean(0)
    return F.cross_entropy(logits, targets)


# --- R prompt-tuning runs side by side (`engine.prompt_stack`) ---------------------------
# A stack's replicates in `Method.stack_rank` order: the guessed ones (one JVP), then
# backprop's (autograd), then the baseline's (a plain forward pass), one block each.
def _pass(method: str) -> str:
    """Which pass a replicate takes: "exact" (backprop), "none" (the baseline) or "guessed"."""
    space = get_method(method).space
    return space if space in ("exact", "none") else "guessed"


def prompt_stack_order(methods) -> list[int]:
    """The replicates' positions in a stack (`estimate_stacked_prompt_gradients`): sorted by
    `Method.stack_rank`, stably, so that runs of one kind keep their order."""
    return sorted(range(len(methods)), key=lambda r: get_method(methods[r]).stack_rank)


class _Replicate:
    """Replicate r of a stack as a prompt guess sees a model: its prompts [P, D] (a view of
    the stack) and the shared backbone's W_qkv."""

    def __init__(self, model: PromptedViT, prompts: Tensor):
        self.prompts, self._model = prompts, model

    def qkv_weight(self) -> Tensor:
        return self._model.qkv_weight()


def estimate_stacked_prompt_gradients(model: PromptedViT, prompts: Tensor, weight: Tensor,
                                      bias: Tensor, x: Tensor, targets: Tensor, methods,
                                      generators) -> Tensor:
    """`estimate_prompt_gradient` for R replicates on one frozen backbone in one go.

    Replicate r has prompts ``prompts[r]`` [P, D], a head ``weight[r]`` [C, D], ``bias[r]``
    [C], a batch ``x[r]`` [B, 3, H, W] with ``targets[r]`` [B], a method ``methods[r]`` and a
    generator ``generators[r]`` for its guesses (None where it guesses nothing). Its gradient,
    written into ``prompts.grad``, ``weight.grad`` and ``bias.grad`` (row r), is the one
    `estimate_prompt_gradient` writes for that replicate alone, up to float rounding, and its
    guesses are drawn from its own generator in the same order; a head-only replicate's prompt
    gradient is 0 (an elementwise optimizer leaves its prompts as they are). ``methods`` must
    be in `prompt_stack_order`. ``model`` only lends its backbone (its prompts and head are
    not read). Returns every replicate's batch-mean loss [R], on the device: nothing is read
    back to the host.

    Each kind of replicate takes one backbone pass over all its examples, every example with
    its replicate's prompts (`PromptedViT.features` takes per-example prompts): backprop's
    with autograd, the baseline's without, and every guessed method's together in one JVP with
    per-example tangents. Replicates never mix: the backbone treats examples independently, so
    a NaN in one replicate leaves the others' numbers untouched.
    """
    for method in methods:
        if method not in PROMPT_METHODS:
            raise ValueError(f"unknown prompt method {method!r}; known: "
                             f"{', '.join(PROMPT_METHODS)}")
    R, B = targets.shape
    P, D = prompts.shape[1:]
    if prompts.shape[0] != R or len(methods) != R or len(generators) != R or x.shape[:2] != (R, B):
        raise ValueError(f"prompts, x, targets, methods and generators need one entry per "
                         f"replicate ({R}); got {prompts.shape[0]}, {tuple(x.shape[:2])}, "
                         f"{len(methods)}, {len(generators)}")
    ranks = [get_method(method).stack_rank for method in methods]
    if ranks != sorted(ranks):
        raise ValueError("methods must be in prompt_stack_order (guessed, backprop, head only)")
    kinds = [_pass(method) for method in methods]
    blocks = [(kind, kinds.index(kind), R - kinds[::-1].index(kind))
              for kind in dict.fromkeys(kinds)]

    def repeated(lo, hi):
        """Each replicate's prompts over its B examples, [(hi - lo) B, P, D]: a copy, as the
        single run's (forward AD refuses a primal whose elements alias one another)."""
        return prompts[lo:hi, None].expand(-1, B, -1, -1).contiguous().view(-1, P, D)

    features, backprop, guessed = [], None, None
    for kind, lo, hi in blocks:
        xs = x[lo:hi].flatten(0, 1)
        if kind == "exact":  # backprop: autograd through the stacked prompts, into the features
            with torch.enable_grad():
                leaf = prompts[lo:hi].detach().requires_grad_(True)
                traced = model.features(xs, leaf[:, None].expand(-1, B, -1, -1).reshape(-1, P, D))
            backprop = (leaf, traced, lo, hi)
            features.append(traced.detach())
        elif kind == "none":  # the baseline: prompts left at their initialisation
            with torch.no_grad():
                features.append(model.features(xs, repeated(lo, hi)))
        else:  # guessed: each replicate's guess from its own generator, one JVP for all
            ys = [get_method(methods[r]).prompt_guess(_Replicate(model, prompts[r]), B,
                                                      generators[r]).expand(B, P, D)
                  for r in range(lo, hi)]
            tangent = torch.cat(ys)  # [G B, P, D]: a direction [P, D] repeats over its batch
            with torch.no_grad(), forward_mode_attention():
                f, t = torch.func.jvp(lambda p, xs=xs: model.features(xs, p), (repeated(lo, hi),),
                                      (tangent,))
            guessed = (tangent, t, lo, hi)
            features.append(f)
    with torch.no_grad():
        f = torch.cat(features).view(R, B, D)
        logits = torch.baddbmm(bias[:, None], f, weight.transpose(1, 2))
        error = error_vector(logits, targets)  # softmax - onehot [R, B, C]
        weight.grad = error.transpose(1, 2) @ f / B  # exact, as `_write_exact_head_grad`
        bias.grad = error.sum(1) / B
        loss = cross_entropy_per_example(logits, targets).mean(-1)
        grad = torch.zeros_like(prompts)  # head only: 0
    if backprop is not None:  # dL/df_b = W^T error_b / B, pulled back to the prompts
        leaf, traced, lo, hi = backprop
        upstream = (error[lo:hi] @ weight[lo:hi]).flatten(0, 1) / B
        grad[lo:hi] = torch.autograd.grad(traced, leaf, upstream)[0]
    if guessed is not None:
        tangent, t, lo, hi = guessed
        G = hi - lo
        with torch.no_grad():  # g_b . y_b = error_b . W t_b; the update is mean_b (g_b . y_b) y_b
            derivative = (error[lo:hi] * (t.view(G, B, D) @ weight[lo:hi].transpose(1, 2))).sum(-1)
            # for a direction y (one per batch) this is (mean_b g_b . y) y, as the single run's
            grad[lo:hi] = torch.einsum("gb,gbpd->gpd", derivative, tangent.view(G, B, P, D)) / B
    prompts.grad = grad
    return loss


def prompt_cosine(model: PromptedViT, x: Tensor, targets: Tensor, method: str, generator,
                  repeats: int = 1) -> float:
    """Mean cosine similarity of ``repeats`` guesses of the prompts' gradient with the true
    one (by autograd), on one batch, without stepping."""
    estimate_prompt_gradient(model, x, targets, "backprop")
    true = model.prompts.grad.clone()
    total = 0.0
    for _ in range(repeats):
        estimate_prompt_gradient(model, x, targets, method, generator)
        total += float(F.cosine_similarity(model.prompts.grad.flatten(), true.flatten(), 0))
    model.zero_grad(set_to_none=True)
    return total / repeats
