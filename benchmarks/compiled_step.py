"""A stack's step eager against compiled (`gradguess.engine.step`), per model family: what one
step dispatches and how long it takes on this machine, and what compiling costs, measured in
one run.

    python benchmarks/compiled_step.py [--device auto] [--repeats 20]

Each family's stack is stepped eagerly and compiled (``GRADGUESS_COMPILE`` off and on) on the
same batches; each column is a median over ``--repeats`` steady steps (after the compiled
step's first two calls: its eager, recording step and its compiling call). What a step
dispatches (`step_cost`): eagerly, the aten operations (each a kernel launch or a view on a
GPU); compiled, the operations its draws dispatch outside the compiled function, the
operations dispatched outside compiled graphs (graph breaks), the compiled graphs called and
the kernels they run (inductor's generated kernels and the library calls, a matmul, inside
them). On a GPU with CUDA graphs a graph's kernels replay without the host. Compile time is
measured with an empty inductor cache, as on a fresh machine; the break-even is the number of
steps whose saving pays for it. A benchmark, not a test: it asserts nothing.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

import torch
import torch._inductor.config as inductor_config
from torch.utils._python_dispatch import TorchDispatchMode

from gradguess.book.scales import resolve_device
from gradguess.core.data import Dataset
from gradguess.core.optimizers import StackedOptimizer
from gradguess.engine import grid, mixer_grid
from gradguess.engine.step import Step

inductor_config.cpp.enable_kernel_profile = True  # generated CPU kernels show in the profiler
TABLE_1 = ["directional", "activation_perturbation", "activation_mixing", "w_transpose",
           "downstream", "self_sharpening", "backprop"]


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def compile_setting(mode: str):
    before = os.environ.get("GRADGUESS_COMPILE")
    os.environ["GRADGUESS_COMPILE"] = mode
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GRADGUESS_COMPILE")
        else:
            os.environ["GRADGUESS_COMPILE"] = before


def _graph_call(event) -> bool:
    return event.name.startswith("## Call CompiledFxGraph")


def _under(event, test) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if test(parent):
            return True
        parent = parent.cpu_parent
    return False


def step_cost(step: Step, x, y) -> tuple[dict, tuple]:
    """What one call of ``step`` dispatches: eager, {"ops"}; compiled, {"draw ops", "eager
    ops" (outside compiled graphs), "graphs", "kernels" (inside them)}; and the call's result
    (one step made, as ``step(x, y)`` makes it)."""
    if not step.compiled:
        with OpCount() as count:
            result = step(x, y)
        return {"ops": count.ops}, result
    with OpCount() as count:
        drawn = step.draw()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = step.replay(x, y, drawn)
    events = list(prof.events())
    graphs = sum(_graph_call(e) for e in events)
    kernels = sum(("cpp_fused" in e.name or "triton_" in e.name or
                   (e.name.startswith("aten::") and e.cpu_parent is not None
                    and _graph_call(e.cpu_parent))) for e in events)
    eager = sum(e.name.startswith("aten::") and not _under(e, _graph_call)
                and not _under(e, lambda p: p.name.startswith("aten::")) for e in events)
    return {"draw ops": count.ops, "eager ops": eager, "graphs": graphs, "kernels": kernels}, result


def _timed(step, batches, device) -> list[float]:
    times = []
    for x, y in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _images(n, channels, size, classes, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("random", x.to(device), y.to(device), x[:64].to(device), y[:64].to(device),
                   classes, "random numbers")


def mlp_family(device, depth=3, width=128, seeds=3, batch=128):
    """Table 1's stack for one architecture: every method x ``seeds`` seeds x two datasets of
    one shape (one stack, as the training chapter runs it), AdamW (StableAdamW for
    self-sharpening)."""
    data = _images(4096, 1, 28, 10, device)
    runs = [grid.Run(m, k, 1e-3, "stable_adamw" if m == "self_sharpening" else "adamw")
            for _ in range(2) for m in TABLE_1 for k in range(seeds)]
    stack = [runs[r] for r in grid._order(runs)]

    def make():
        model = grid._stacked_model(stack, data, depth, width)
        groups = grid._groups(stack)
        gens = [torch.Generator(device).manual_seed(r) for r in range(len(stack))]
        optimizer = StackedOptimizer(model.parameters(), [r.optimizer for r in stack],
                                     [r.lr for r in stack])
        return (lambda x, y, g: grid.stacked_step(model, x, y, groups, g), optimizer,
                list(model.parameters()), gens)

    def batches(n):
        g = torch.Generator().manual_seed(1)
        return [(data.train_x.flatten(1)[idx], data.train_y[idx]) for idx in
                (torch.randint(0, 4096, (len(stack), batch), generator=g).to(device)
                 for _ in range(n))]
    return f"MLP {depth}x{width}, Table 1 stack", len(stack), make, batches


def mixer_family(device, channels=32, blocks=2, groups=4, batch=128):
    """The LocalMixer chapter's runs side by side (backprop end to end and local, the three
    guesses local), each with and without augmentation's share of the stack."""
    data = _images(2048, 3, 32, 10, device)
    runs = [mixer_grid.MixerRun(m, local, False, k) for k, (m, local) in enumerate(
        [("activation_perturbation", True), ("activation_mixing", True), ("w_transpose", True),
         ("backprop", False), ("backprop", True)])]
    arch = dict(image_size=32, patch=4, channels=channels, blocks=blocks, groups=groups)

    def make():
        model, _ = mixer_grid._stacked_model(data, runs, arch)
        plan = mixer_grid._Plan(model, runs)
        gens = [torch.Generator(device).manual_seed(r) for r in range(len(runs))]
        return (plan.step, StackedOptimizer(model.parameters(), "adamw", 1e-2),
                list(model.parameters()), gens)

    def batches(n):
        g = torch.Generator().manual_seed(1)
        return [(data.train_x[idx], data.train_y[idx]) for idx in
                (torch.randint(0, 2048, (len(runs), batch), generator=g).to(device)
                 for _ in range(n))]
    return f"LocalMixer {channels} ch x {blocks} blocks", len(runs), make, batches


def prompt_family(device, seeds=3, batch=64):
    """Prompt tuning's stack: backprop, the baseline and three guesses x ``seeds`` seeds on
    a small frozen ViT (28x28 images, 4 layers, width 64)."""
    from gradguess.core.prompts import (PromptedViT, estimate_stacked_prompt_gradients,
                                        prompt_stack_order, small_vit)

    torch.manual_seed(0)
    backbone = small_vit(image_size=28, patch=7, layers=4, heads=4, hidden=64, mlp=128).to(device)
    data = _images(2048, 3, 28, 10, device)
    methods = [m for m in ("directional", "activation_perturbation", "w_transpose", "backprop",
                           "head_only") for _ in range(seeds)]
    methods = [methods[i] for i in prompt_stack_order(methods)]

    def make():
        models = []
        for r in range(len(methods)):
            torch.manual_seed(r)
            models.append(PromptedViT(backbone, 8, 10).to(device))
        stacked = [torch.stack([p.detach() for p in ps]).clone()
                   for ps in zip(*[(m.prompts, m.head.weight, m.head.bias) for m in models])]
        gens = [torch.Generator(device).manual_seed(r) for r in range(len(methods))]
        return (lambda x, y, g: estimate_stacked_prompt_gradients(models[0], *stacked, x, y,
                                                                  methods, g),
                StackedOptimizer(stacked, "adamw", 1e-2), stacked, gens)

    def batches(n):
        g = torch.Generator().manual_seed(1)
        return [(data.train_x[idx], data.train_y[idx]) for idx in
                (torch.randint(0, 2048, (len(methods), batch), generator=g).to(device)
                 for _ in range(n))]
    return "prompt tuning, ViT 4x64", len(methods), make, batches


def measure(family, device, repeats: int) -> dict:
    name, replicates, make, batches = family
    out = {"family": name, "replicates": replicates}
    for mode in ("off", "on"):
        with compile_setting(mode):
            step = Step(*make(), device)
            data = batches(repeats + 3)
            start = time.perf_counter()
            first = _timed(step, data[:2], device)  # eager recording step; compiling call
            setup = time.perf_counter() - start
            times = _timed(step, data[2:repeats + 2], device)
            cost, _ = step_cost(step, *data[-1])
        ms = 1e3 * statistics.median(times)
        if mode == "off":
            out.update(eager_ms=ms, eager_ops=cost["ops"])
        else:
            out.update(compiled_ms=ms, compiled=cost,
                       compile_s=max(0.0, setup - first[0] - statistics.median(times)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    # an empty inductor cache: compile times as on a fresh machine
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    device = resolve_device(args.device)
    print(f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} steps; compiled: draw ops + eager ops + graphs (kernels in them); "
          f"compile time with an empty inductor cache")
    print(f"{'family':34s}{'R':>4s}{'eager ops':>10s}{'ms':>8s}   {'compiled dispatches':28s}"
          f"{'ms':>8s}{'speed-up':>9s}{'compile s':>10s}{'break-even':>11s}")
    for family in (mlp_family(device), mixer_family(device), prompt_family(device)):
        r = measure(family, device, args.repeats)
        c = r["compiled"]
        dispatched = (f"{c['draw ops']} + {c['eager ops']} + {c['graphs']} "
                      f"({c['kernels']} kernels)")
        saved = r["eager_ms"] - r["compiled_ms"]
        even = f"{r['compile_s'] / saved * 1e3:,.0f} steps" if saved > 0 else "never"
        print(f"{r['family']:34s}{r['replicates']:4d}{r['eager_ops']:10d}{r['eager_ms']:8.1f}   "
              f"{dispatched:28s}{r['compiled_ms']:8.1f}{r['eager_ms'] / r['compiled_ms']:8.2f}x"
              f"{r['compile_s']:10.0f} {even:>11s}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
