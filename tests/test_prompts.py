"""Prompt tuning: the prompts enter the frozen ViT, the JVP gives each example's g.y, the
isotropic guesses average to the true prompt gradient, W^T has the covariance W^T W, the head's
gradient is exact, and bad input fails clearly."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gradguess.core.data import DataNotFoundError, Dataset, as_rgb, inverted, load_image_task
from gradguess.core.methods import METHODS
from gradguess.core.prompts import PromptedViT, estimate_prompt_gradient, load_vit_b16, small_vit
from gradguess.engine.reference import train_prompts


def tiny(seed=0, prompts=3):
    torch.manual_seed(seed)
    backbone = small_vit(image_size=8, patch=4, layers=2, heads=2, hidden=16, mlp=32)
    model = PromptedViT(backbone, prompts, 4).double()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    return model, x, y


def per_example_prompt_grads(model, x, y):
    grads = []
    for b in range(len(y)):
        p = model.prompts.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model.head(model.features(x[b:b + 1], p)), y[b:b + 1])
        grads.append(torch.autograd.grad(loss, p)[0])
    return torch.stack(grads)


def test_prompts_enter_a_frozen_backbone():
    model, x, y = tiny()
    assert model(x).shape == (6, 4)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompts", "head.weight", "head.bias"]
    moved = model.features(x, model.prompts.detach() + torch.randn_like(model.prompts))
    assert not torch.allclose(moved, model.features(x))
    model.train()
    assert not model.backbone.training


def test_jvp_gives_each_examples_directional_derivative():
    """The update (per-example guesses) equals mean_b (g_b . y_b) y_b with g_b by autograd."""
    model, x, y = tiny()
    true = per_example_prompt_grads(model, x, y)
    for method in ["activation_perturbation", "w_transpose"]:
        guess = METHODS[method].prompt_guess(model, len(y), torch.Generator().manual_seed(1))
        estimate_prompt_gradient(model, x, y, method, torch.Generator().manual_seed(1))
        expected = ((true * guess).sum((1, 2))[:, None, None] * guess).mean(0)
        torch.testing.assert_close(model.prompts.grad, expected)


def test_isotropic_guesses_average_to_the_prompt_gradient():
    model, x, y = tiny()
    true = per_example_prompt_grads(model, x, y).mean(0)
    gen = torch.Generator().manual_seed(0)
    # per-example guesses: one call on the batch repeated 2000 times averages 12000 guesses
    estimate_prompt_gradient(model, x.repeat(2000, 1, 1, 1), y.repeat(2000), "activation_perturbation", gen)
    assert F.cosine_similarity(model.prompts.grad.flatten(), true.flatten(), 0) > 0.95
    total = torch.zeros_like(true)  # one direction per call (48 dimensions): 400 calls
    for _ in range(400):
        estimate_prompt_gradient(model, x, y, "directional", gen)
        total += model.prompts.grad
    assert F.cosine_similarity(total.flatten(), true.flatten(), 0) > 0.85


def test_w_transpose_guess_has_covariance_wtw():
    """y = W_qkv^T eta: E[y y^T] = W^T W per prompt token (the paper's W^T, biased)."""
    model, _, _ = tiny()
    ys = METHODS["w_transpose"].prompt_guess(model, 40000, torch.Generator().manual_seed(0))[:, 0]
    w = model.qkv_weight().detach()
    second = ys.T @ ys / len(ys)
    expected = w.T @ w
    assert (second - expected).abs().max() < 0.05 * expected.abs().max()


def test_head_gradient_is_exact():
    model, x, y = tiny()
    estimate_prompt_gradient(model, x, y, "w_transpose", torch.Generator().manual_seed(0))
    guessed = [model.head.weight.grad.clone(), model.head.bias.grad.clone()]
    estimate_prompt_gradient(model, x, y, "backprop")
    torch.testing.assert_close(guessed, [model.head.weight.grad, model.head.bias.grad])
    estimate_prompt_gradient(model, x, y, "head_only")
    assert model.prompts.grad is None


def test_training_is_seeded_and_bad_input_fails_clearly():
    torch.manual_seed(0)
    data = Dataset("toy", torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,)),
                   torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,)), 4, "random")
    runs = []
    for _ in range(2):
        model, _, _ = tiny()
        model = model.float()
        runs.append(train_prompts(model, data, "w_transpose", steps=4, eval_every=2, batch_size=8,
                                  seed=3, cosine_repeats=1, progress=False))
    assert runs[0]["test_acc"] == runs[1]["test_acc"] and runs[0]["cosine"] == runs[1]["cosine"]
    assert runs[0]["step"] == [0, 2, 4]
    model, x, y = tiny()
    with pytest.raises(ValueError, match="unknown prompt method"):
        estimate_prompt_gradient(model, x, y, "guesswork")
    with pytest.raises(ValueError, match="8x8 images"):
        model(torch.randn(2, 3, 12, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="as_rgb"):
        model(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_prompts"):
        PromptedViT(small_vit(image_size=8, patch=4, layers=1, heads=1, hidden=8, mlp=8), 0, 3)
    with pytest.raises(ValueError, match="steps"):
        train_prompts(model, data, "backprop", steps=0, eval_every=1)


def test_missing_weights_and_data_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="ViT_B_16_Weights"):
        load_vit_b16(tmp_path / "vit_b_16.pth")
    with pytest.raises(DataNotFoundError, match="train/<class>"):
        load_image_task("cub-200", tmp_path / "cub")


def test_image_folder_task_loads(tmp_path):
    for split in ("train", "test"):
        for label in ("a", "b"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for k in range(2):
                Image.new("RGB", (40, 30), (40 * k, 100, 200)).save(folder / f"{k}.png")
    task = load_image_task("toy", tmp_path, size=16)
    assert task.train_x.shape == (4, 3, 16, 16) and task.num_classes == 2
    assert sorted(task.test_y.tolist()) == [0, 0, 1, 1]


def test_shifted_and_rgb_views():
    data = Dataset("d", torch.randn(3, 1, 4, 4), torch.zeros(3, dtype=torch.long),
                   torch.randn(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), 1, "random")
    assert as_rgb(data).train_x.shape == (3, 3, 4, 4)
    flipped = inverted(data)
    assert flipped.name == "d-inverted" and torch.equal(flipped.test_x, -data.test_x)
