"""Training-step time of every method and estimator as a ratio to a backprop step, and peak memory,
measured in one run.

    python benchmarks/step_time.py [--depth 6] [--width 1024] [--batch-size 128] [--device auto]

Each step (guess, directional derivative, update, optimizer step) is timed over the same batch,
interleaved with the others so that machine load affects all alike; the median of the repeats
is divided by backprop's. Memory: the peak the gradient computation needs beyond the model's
state (`gradguess.analysis.cost.peak_step_memory`). A benchmark, not a test: it asserts nothing.
"""
import argparse

import torch

from gradguess.analysis.cost import matmul_units, median_times, peak_step_memory, step_function
from gradguess.core.methods import METHODS
from gradguess.core.models import MLP
from gradguess.book.scales import resolve_device


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = MLP(784, args.width, args.depth, 10).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(args.batch_size, 784, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    # the methods of Table 1: those with a cost model or a fused path (not the analysis variants)
    table = [m for m, spec in METHODS.items() if spec.space != "exact" and (spec.matmuls or spec.fused)]
    variants = [("backprop", "exact")] + [(m, "reference") for m in table]
    variants += [(m, e) for m in table if METHODS[m].fused for e in ("fused", "fused-lean")]
    units_of = matmul_units()
    steps = {v: step_function(model, x, y, v[0], v[1], generator, opt) for v in variants}
    times = median_times(steps, args.repeats, device)
    base = times["backprop", "exact"]
    print(f"{args.depth}x{args.width} MLP, batch {args.batch_size}, global mode, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} steps")
    print(f"{'method':26s}{'estimator':12s}{'ms/step':>9s}{'x backprop':>12s}{'bound':>7s}"
          f"{'peak MiB':>10s}")
    for (method, estimator), seconds in times.items():
        units = units_of.get((method, estimator))
        bound = f"{units / 3:.2f}" if units else "-"
        gradient_only = step_function(model, x, y, method, estimator, generator)  # no optimizer
        peak = peak_step_memory(gradient_only, (x, y), device) / 2 ** 20
        print(f"{method:26s}{estimator:12s}{1e3 * seconds:9.1f}{seconds / base:12.2f}{bound:>7s}"
              f"{peak:10.1f}")


if __name__ == "__main__":
    main()
