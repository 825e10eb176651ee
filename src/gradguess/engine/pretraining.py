"""Pre-training by plain backprop: the backbone the prompt-tuning chapter tunes prompts on."""
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .reference import batches, start_run
from .stack import accuracy


def train_classifier(model, data, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                     seed: int = 0, progress: bool = True) -> dict:
    """Plain backprop with AdamW for any torch classifier ``model(x) -> logits`` (the
    backbone the prompt-tuning chapter pre-trains). Returns per-epoch ``test_acc``."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    opt, order_rng, _ = start_run(model, data, batch_size, "adamw", lr, 0.0, seed)
    history = {"test_acc": []}
    n = len(data.train_y)
    for _ in tqdm(range(epochs), disable=not progress, leave=False, desc="pre-training"):
        model.train()
        for idx in batches(n, batch_size, order_rng, data.train_x.device):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        model.eval()
        history["test_acc"].append(accuracy(model, data.test_x, data.test_y, batch_size=512))
    return history


def pretrain_vit(data, *, epochs: int, lr: float = 1e-3, seed: int = 0,
                 **architecture) -> dict:
    """A small torchvision ViT (`gradguess.core.prompts.small_vit`, ``architecture`` its keywords)
    pre-trained from ``seed`` by `train_classifier`: its state dict, with the test accuracy
    after each epoch under ``"test_acc"`` (a tensor)."""
    from ..core.prompts import small_vit  # torchvision, only here

    torch.manual_seed(seed)
    vit = small_vit(**architecture).to(data.train_x.device)
    history = train_classifier(vit, data, epochs=epochs, lr=lr, seed=seed, progress=False)
    return {**vit.state_dict(), "test_acc": torch.tensor(history["test_acc"])}
