"""Demo: train a 3-layer, 128-wide MLP on Fashion-MNIST with W^T guesses, no backward pass.

    python examples/train_w_transpose.py [--epochs 3] [--device auto]

Prints train and test accuracy per epoch, then the cosine similarity of W^T guesses (and of
directional descent's) with the true gradient on a few batches at the trained weights.
"""
import argparse
import statistics

import torch

from gradguess.data import load_dataset
from gradguess.estimators import backprop_gradient, guessed_gradient
from gradguess.metrics import cosine_similarity
from gradguess.models import MLP
from gradguess.scales import resolve_device
from gradguess.training import train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None, help="default: all")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, device=device).subset(args.train_size, seed=args.seed)
    torch.manual_seed(args.seed)
    model = MLP(data.in_features, 128, 3, data.num_classes).to(device)
    history = train(model, data, "w_transpose", epochs=args.epochs, lr=args.lr, seed=args.seed)
    for epoch, (tr, te) in enumerate(zip(history["train_acc"], history["test_acc"]), 1):
        print(f"epoch {epoch}: train accuracy {tr:.3f}, test accuracy {te:.3f}")
    print(f"{history['steps']} W^T steps in {history['seconds']:.1f} s on {device}, "
          f"{data.name} ({len(data.train_y)} training images, from {data.source})")

    generator = torch.Generator(device=device).manual_seed(args.seed)
    cosines = {"w_transpose": [], "directional": []}
    for b in range(20):
        x, y = data.train_x[b * 128:(b + 1) * 128], data.train_y[b * 128:(b + 1) * 128]
        _, true = backprop_gradient(model, x, y)
        for method in cosines:
            cosines[method].append(cosine_similarity(guessed_gradient(model, x, y, method,
                                                                      generator=generator), true))
    for method, values in cosines.items():
        print(f"mean cosine similarity with the true gradient, {method}: "
              f"{statistics.mean(values):.4f} (20 batches of 128)")


if __name__ == "__main__":
    main()
