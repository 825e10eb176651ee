"""Training-step time of every method as a ratio to a backprop step, measured in one run.

    python benchmarks/step_time.py [--depth 6] [--width 1024] [--batch-size 128]

Each method's step (guess, JVP, update, optimizer step) is timed over the same batches,
interleaved with the others so that machine load affects all alike; the median of the
repeats is divided by backprop's median. A benchmark, not a test: it asserts nothing.
"""
import argparse
import statistics
import time

import torch

from gradguess.estimators import METHODS, estimate_gradient
from gradguess.models import MLP
from gradguess.scales import resolve_device

OPTIONS = {"downstream": {"k": 1}, "singular_power": {"p": 2.0}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mode", default="global", choices=["global", "per_layer"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = MLP(784, args.width, args.depth, 10).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(args.batch_size, 784, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(method):
        estimate_gradient(model, x, y, method, args.mode, generator, **OPTIONS.get(method, {}))
        opt.step()

    times = {m: [] for m in METHODS if m != "matched_cosine"}
    for m in times:  # warm-up
        step(m)
    for _ in range(args.repeats):
        for m in times:
            sync()
            start = time.perf_counter()
            step(m)
            sync()
            times[m].append(time.perf_counter() - start)
    base = statistics.median(times["backprop"])
    print(f"{args.depth}x{args.width} MLP, batch {args.batch_size}, {args.mode} mode, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} steps")
    print(f"{'method':26s}{'ms/step':>10s}{'x backprop':>12s}")
    for m, ts in times.items():
        print(f"{m:26s}{1e3 * statistics.median(ts):10.1f}{statistics.median(ts) / base:12.2f}")


if __name__ == "__main__":
    main()
