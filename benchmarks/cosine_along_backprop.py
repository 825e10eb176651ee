"""Mean cosine similarity of every guess along a backprop trajectory (the poster's table).

    python benchmarks/cosine_along_backprop.py --depth 6 --width 1024 --steps 200

Trains an MLP by backprop (AdamW) and, at every step, scores each method's guess on the
same batch and weights, in both estimator modes. Prints one table: mean (and std) cosine
per method and mode, and the ratio to directional descent.
"""
import argparse
import statistics
import time

import torch

from gradguess.core.data import load_dataset
from gradguess.core.models import MLP, count_parameters
from gradguess.book.scales import resolve_device
from gradguess.analysis.along_backprop import guess_quality_along_backprop

METHODS = ["directional", "activation_perturbation", "activation_mixing", "w_transpose",
           "downstream", "self_sharpening"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", nargs="+", default=["global", "per_layer"])
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, device=device)
    rows = {}
    for mode in args.modes:
        torch.manual_seed(args.seed)  # same initial weights and trajectory for both modes
        model = MLP(data.in_features, args.width, args.depth, data.num_classes).to(device)
        start = time.perf_counter()
        scores = guess_quality_along_backprop(model, data, METHODS, steps=args.steps,
                                              batch_size=args.batch_size, lr=args.lr,
                                              mode=mode, seed=args.seed)
        print(f"# {mode}: {time.perf_counter() - start:.0f} s", flush=True)
        for m in METHODS:
            c = scores[m]["cosine"]
            rows[(m, mode)] = (statistics.mean(c), statistics.stdev(c) if len(c) > 1 else 0.0)

    print(f"\n{args.depth}x{args.width} MLP ({count_parameters(model):,} parameters), "
          f"{args.dataset}, batch {args.batch_size}, {args.steps} AdamW backprop steps "
          f"(lr {args.lr:g}), seed {args.seed}, {device}")
    print(f"{'method':26s}" + "".join(f"{mode + ' mean':>16s}{'std':>10s}{'/ dd':>8s}"
                                      for mode in args.modes))
    for m in METHODS:
        line = f"{m:26s}"
        for mode in args.modes:
            mean, std = rows[(m, mode)]
            line += f"{mean:16.5f}{std:10.5f}{mean / rows[('directional', mode)][0]:8.1f}"
        print(line)


if __name__ == "__main__":
    main()
