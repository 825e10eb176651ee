"""Grid throughput: a Table-1 stack side by side against the same runs one after another,
measured in one run.

    python benchmarks/grid_throughput.py [--depth 3] [--width 128] [--seeds 3] [--steps 50] [--device auto]

The grid is Table 1's for one architecture: every stackable method x ``--seeds`` seeds, AdamW,
one epoch of ``--steps`` batches of 128 on MNIST-shaped random data. The same runs go once
through `gradguess.engine.grid.train_stack` (one stack) and once through `gradguess.engine.training.reference_mlp`
(the reference loop, one run after another); the script prints run-steps per second of each and their ratio. A
benchmark, not a test: it asserts nothing.
"""
import argparse
import time

import torch

from gradguess.core.data import Dataset
from gradguess.engine.grid import Run, train_stack
from gradguess.book.scales import resolve_device
from gradguess.engine.training import reference_mlp

TABLE_1 = ["directional", "activation_perturbation", "activation_mixing", "w_transpose",
           "downstream", "self_sharpening", "backprop"]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.steps * args.batch_size
    data = Dataset("random", torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                   torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g),
                   10, "synthetic").to(device)
    runs = [Run(method, seed) for method in TABLE_1 for seed in range(args.seeds)]
    arch = {"depth": args.depth, "width": args.width}
    train_stack(data, runs[:2], **arch, epochs=1, batch_size=args.batch_size, progress=False)  # warm-up

    synchronize(device)
    start = time.perf_counter()
    train_stack(data, runs, **arch, epochs=1, batch_size=args.batch_size, progress=False)
    synchronize(device)
    stacked = time.perf_counter() - start

    start = time.perf_counter()
    for run in runs:
        reference_mlp(data, **arch, method=run.method, seed=run.seed, lr=run.lr, epochs=1,
                      batch_size=args.batch_size)
    synchronize(device)
    one_by_one = time.perf_counter() - start

    run_steps = len(runs) * args.steps
    print(f"Table-1 grid: {len(runs)} runs ({len(TABLE_1)} methods x {args.seeds} seeds) of a "
          f"{args.depth}x{args.width} MLP, {args.steps} steps of batch {args.batch_size}, AdamW, "
          f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'':22s}{'seconds':>9s}{'run-steps/s':>13s}")
    print(f"{'one after another':22s}{one_by_one:9.2f}{run_steps / one_by_one:13.0f}")
    print(f"{'stacked':22s}{stacked:9.2f}{run_steps / stacked:13.0f}")
    print(f"stacked / one after another: {one_by_one / stacked:.2f}x the throughput")


if __name__ == "__main__":
    main()
