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

from .losses import error_vector
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
    """ViT-B/16 from a local torchvision weight file (e.g. vit_b_16-c867db91.pth)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no ViT-B/16 weights at {path}. On a machine with internet: python -c \"from "
            f"torchvision.models import vit_b_16, ViT_B_16_Weights; vit_b_16(weights="
            f"ViT_B_16_Weights.IMAGENET1K_V1)\" puts them in ~/.cache/torch/hub/checkpoints/; "
            f"pass that file's path")
    model = vit_b_16()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
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
                             f"{tuple(x.shape[1:])} (grayscale through gradguess.data.as_rgb)")
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


def final_accuracy(histories: list[dict], test_size: int) -> tuple[float, float]:
    """The mean final test accuracy of a method's runs (one history per seed, diverged runs
    left out) and its binomial standard error over the test images of every run counted
    (``test_size`` each): the noise of measuring, not of training. NaNs if every run diverged."""
    from .histories import final

    values = [final(history, "test_acc") for history in histories]
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    p = sum(values) / len(values)
    return p, math.sqrt(p * (1 - p) / (len(values) * test_size))
