"""Estimated GPU time of each chapter's main workloads at `gpu` and `paper` scale, from work
counted here (on any machine) and two constants measured on a GPU.

    python benchmarks/gpu_estimate.py [--scales gpu paper] [--us-per-op 17] [--tflops 30]
        [--us-per-replay 20] [--us-per-kernel 2.5] [--json benchmarks/results/gpu_estimate.json]

For each workload the script runs the package's own function twice on synthetic data of the
chapter's shapes, with two step counts, and counts what one more step costs: the aten
operations dispatched (each one a kernel launch or a view on a GPU) and the floating-point
operations (`torch.utils.flop_counter`). Evaluations (accuracies) are left out of the count.
A step's GPU time is then estimated as

    ops x (seconds per op) + FLOPs / (FLOP/s),

launch-bound steps being the rule at these sizes. That is the eager step ("before"). The
stacks' compiled step (`gradguess.engine.step`, CUDA graphs on a GPU; "after") is counted on
the same workloads by `compiled_step.step_cost` at their third step: what its draws and the
code outside compiled graphs dispatch (each at the seconds per op), the graphs replayed and the
kernels inside them, compiled here for the CPU (inductor's CPU kernels standing in for its GPU
ones):

    host ops x (seconds per op) + graphs x (seconds per replay) + kernels x (seconds per
    kernel in a graph) + FLOPs / (FLOP/s).

The seconds per replay (20 us) and per kernel in a graph (2.5 us) are assumptions, not yet
measured on a GPU: correct them with a GPU's step times (`benchmarks/compiled_step.py
--device cuda`). The seconds per op (17 us) is an H200's
measured step time (`benchmarks/step_time.py --device cuda`: backprop 2.9 ms, fused W^T
2.3 ms, on a 6x1024 MLP at batch 128) divided by the ops this script counts for those steps
(155 and 157); the FLOP rate (30 TFLOP/s) is a sustained float32 rate on one H100, 150 with
TF32 for the chapters that allow it. Multiplied by each chapter's step counts (from
`gradguess.book.settings`), this gives an estimate, not a measurement: on a GPU, run the chapters.
Parts of chapters left out (plots, probes outside training loops, the cost chapter's own timing
loops) are listed in the output as such.

Each workload is one stored call of its chapter (a grid's stack, a training run): one task for
a Ray cluster (`gradguess.book.cluster`). Its ``stage`` says what may run at once: a chapter's
workloads of one stage side by side (`Chapter.side_by_side`), its stages one after another.
``--json`` writes the rows with their stages, the constants, and the package code they were
counted with (its modules and their hash, as the run store keys runs): the cost chapter
simulates the paper scale on many GPUs from them (`gradguess.analysis.schedule`).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.flop_counter import FlopCounterMode

from gradguess.analysis import along_backprop
from gradguess.engine import grid, pretraining, prompt_stack, stack as engine, training
from gradguess.core.data import Dataset
from gradguess.core.estimators import guessed_gradient
from gradguess.engine.grid import Run, train_grid
from gradguess.engine.mixer_grid import MixerRun, train_mixer_stack
from gradguess.core.models import MLP
from gradguess.core.prompts import small_vit
from gradguess.book.settings import chapter_settings
from gradguess.analysis.subspaces import subspace_scores
from gradguess.engine.step import Step

from compiled_step import OpCount, compile_setting, step_cost

FULL_TRAIN = 60000  # Fashion-MNIST's and MNIST's training sets: the `gpu` and `paper` scales


def _unmeasured(fn):
    """``fn`` run outside the counting modes (evaluations)."""
    def wrapper(*args, **kwargs):
        with _disable_current_modes():
            return fn(*args, **kwargs)
    return wrapper


def count(fn, flops: bool = True) -> tuple[int, float]:
    """(aten ops, FLOPs) of ``fn()``, accuracies and probes not counted. ``flops=False`` for
    code that the FLOP counter's autograd hooks break (``autograd.grad`` of a leaf): 0 FLOPs."""
    patches = [mock.patch.object(engine, "correct", _unmeasured(engine.correct)),  # every count
               mock.patch.object(grid._Probes, "observe", _unmeasured(grid._Probes.observe)),
               # torch's optimizers step every tensor in one foreach call on a GPU, as here
               mock.patch("torch.optim.optimizer._get_foreach_kernels_supported_devices",
                          lambda: ["cuda", "cpu"])]
    for patch in patches:
        patch.start()
    try:
        counter, ops = FlopCounterMode(display=False), OpCount()
        if flops:
            with counter, ops:
                fn()
        else:
            with ops:
                fn()
    finally:
        for patch in patches:
            patch.stop()
    return ops.ops, counter.get_total_flops() if flops else 0.0


def per_step(run, a: int, b: int) -> tuple[float, float]:
    """(ops, FLOPs) of one more step: ``run(steps)`` counted at ``a`` and ``b`` steps."""
    (ops_a, flops_a), (ops_b, flops_b) = count(lambda: run(a)), count(lambda: run(b))
    return (ops_b - ops_a) / (b - a), (flops_b - flops_a) / (b - a)


def compiled(run, steps: int = 3) -> tuple[int, dict]:
    """What the steps of the stacks ``run(steps)`` trains dispatch at their third step, summed
    over the stacks: eagerly (aten ops of the step's call) and compiled (`step_cost`)."""
    seen, original = {"off": [], "on": []}, Step.__call__

    def measured(self, x, y):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls != 3:
            return original(self, x, y)
        cost, result = step_cost(self, x, y)
        seen[mode].append(cost)
        return result

    for mode in ("off", "on"):
        with compile_setting(mode), mock.patch.object(Step, "__call__", measured):
            run(steps)
    parts = ("draw ops", "eager ops", "graphs", "kernels")
    return (sum(c["ops"] for c in seen["off"]),
            {k: sum(c[k] for c in seen["on"]) for k in parts})


def synthetic(n: int, shape=(1, 28, 28), classes: int = 10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return Dataset("synthetic", x, y, x[:64], y[:64], classes, "random numbers")


def at_batch(cost, counted: int, batch: int = 128) -> tuple[float, float]:
    """A step counted at batch ``counted`` as one at ``batch``: the ops do not depend on the
    batch size, an MLP's matmul FLOPs grow in proportion to it."""
    ops, flops = cost
    return ops, flops * batch / counted


def stacked(run, counted: int, batch: int = 128) -> tuple[float, float, int, dict]:
    """One step of the stacks ``run(steps)`` trains: (ops, FLOPs) at ``batch`` (`at_batch`),
    and `compiled`'s counts of its step's call."""
    return (*at_batch(per_step(run, 1, 2), counted, batch), *compiled(run))


def mlp_grid_step(runs, depth, width, counted=16, datasets=1):
    """One step of a stack of ``runs`` (`grid.train_grid`), at batch 128; with ``datasets`` > 1
    the runs name datasets "fashion" and "mnist" (synthetic, the same shapes)."""
    def run(steps):
        data = synthetic(steps * counted)
        if datasets > 1:
            data = {"fashion": data, "mnist": data}
        train_grid(data, runs, depth=depth, width=width, epochs=1, batch_size=counted)
    return stacked(run, counted)


def single_step(method, depth, width, counted=16):
    """One step of `training.reference_mlp` (the reference loop, one run: a host sync per
    step), at batch 128."""
    return at_batch(per_step(lambda s: training.reference_mlp(
        synthetic(s * counted), depth=depth, width=width, method=method, epochs=1,
        batch_size=counted), 1, 2), counted)


def estimate(scale: str, us_per_op: float, tflops: float, us_per_replay: float = 20.0,
             us_per_kernel: float = 2.5) -> list[tuple[str, str, float, float, str, str]]:
    """Rows (chapter, workload, seconds eager, seconds with compiled steps, basis, stage) at
    ``scale``; a chapter's rows of one stage run side by side on a cluster."""
    rows = []
    steps_per_epoch = FULL_TRAIN // 128

    def add(chapter, workload, steps, step_cost, rate=tflops, note="", stage=None):
        ops, flops = step_cost[:2]
        arithmetic = flops / (rate * 1e12)
        seconds = steps * (ops * us_per_op * 1e-6 + arithmetic)
        after, basis = seconds, f"{steps:,} steps x ({ops:.0f} ops, {flops / 1e9:.2f} GFLOP)"
        if len(step_cost) == 4:  # a stack: its step compiled
            eager_call, c = step_cost[2:]
            host = ops - eager_call + c["draw ops"] + c["eager ops"]
            after = steps * (host * us_per_op * 1e-6 + c["graphs"] * us_per_replay * 1e-6
                             + c["kernels"] * us_per_kernel * 1e-6 + arithmetic)
            basis += (f"; compiled: {host:.0f} host ops ({c['draw ops']} drawing), "
                      f"{c['graphs']} graphs of {c['kernels']} kernels")
        rows.append((chapter, workload, seconds, after, basis + note, stage or workload))

    A = chapter_settings("architecture", scale)
    guessed = ["directional", "activation_perturbation", "activation_mixing", "w_transpose",
               "downstream"]
    for mode in ("global", "per_layer"):
        def trajectory(steps, mode=mode):
            torch.manual_seed(0)
            model = MLP(784, A.width, A.depth, 10)
            along_backprop.guess_quality_along_backprop(
                model, synthetic(4 * A.batch_size), guessed, steps=steps, mode=mode,
                batch_size=A.batch_size, progress=False,
                step_sizes=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1) if mode == "global" else None)
        add("architecture", f"Fig. 1 trajectory, {mode}", A.steps, per_step(trajectory, 1, 2))
    for width in A.dim_widths:
        net, x = MLP(784, width, 3, 10), torch.randn(A.batch_size, 784)
        y = torch.randint(0, 10, (A.batch_size,))
        add("architecture", f"1/sqrt(N): width {width}", A.dim_guesses,
            count(lambda: guessed_gradient(net, x, y, "directional",
                                           generator=torch.Generator().manual_seed(0))))

    F = chapter_settings("features", scale)
    for depth in F.depths:
        add("features", f"Fig. 7 backprop training, depth {depth}", F.epochs * steps_per_epoch,
            single_step("backprop", depth, F.width))
        torch.manual_seed(0)
        model, data = MLP(784, F.width, depth, 10), synthetic(F.reference + F.evaluation)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if k <= F.width]
        add("features", f"Fig. 7 subspace scores, depth {depth}", F.epochs + 1,
            count(lambda: subspace_scores(model, data, ks, torch.Generator().manual_seed(0),
                                          reference=F.reference, evaluation=F.evaluation),
                  flops=False), note=" (FLOPs not counted)")

    T = chapter_settings("training", scale)
    rate = tflops * 5 if T.tf32 else tflops
    methods = ["directional", "activation_perturbation", "activation_mixing", "w_transpose",
               "downstream", "self_sharpening", "backprop"]
    optimizer = {m: "stable_adamw" if m == "self_sharpening" else "adamw" for m in methods}
    sweep = [Run(m, 0, lr, o) for m in methods for o in ("adamw", "sgd", "stable_adamw")
             for lr in T.learning_rates if m != "self_sharpening" or o == "stable_adamw"]
    add("training", f"Fig. 8 sweep, a stack of {len(sweep)}", T.sweep_epochs * steps_per_epoch,
        mlp_grid_step(sweep, 3, T.sweep_width), rate)
    for depth, width in T.architectures:
        # Fashion-MNIST and MNIST share their shapes: one stack per architecture
        table = [Run(m, k, 1e-3, optimizer[m], dataset=name) for name in ("fashion", "mnist")
                 for m in methods for k in range(T.seeds)]
        add("training", f"Table 1 {depth}x{width}, a stack of {len(table)}",
            T.epochs * steps_per_epoch, mlp_grid_step(table, depth, width, datasets=2), rate,
            stage="Table 1")  # the architectures side by side

    B = chapter_settings("bias", scale)
    compared = [("matched_cosine", {"cosine": 0.05}), ("w_transpose", None), ("backprop", None)]
    bias_grid = [Run(m, 0, lr, o, options=options) for o in ("adamw", "sgd_momentum", "sgd")
                 for m, options in compared for lr in B.learning_rates]
    add("bias", f"optimizer grid, a stack of {len(bias_grid)}", B.epochs * steps_per_epoch,
        mlp_grid_step(bias_grid, 3, B.width))
    add("bias", "de-biased W^T, 4 single runs", 4 * B.epochs * steps_per_epoch,
        single_step("w_transpose_debiased", 3, B.width))
    down = [("w_transpose", None), ("downstream", {"k": 1}), ("downstream", {"k": 2}),
            ("downstream", {"k": 3})]
    add("bias", "Fig. 5 downstream stack", B.epochs * steps_per_epoch,
        mlp_grid_step([Run(m, k, options=o) for m, o in down for k in range(B.seeds)], 6,
                      B.downstream_width))

    S = chapter_settings("self_sharpening", scale)
    table = [Run(m, k, optimizer="stable_adamw" if m == "self_sharpening" else "adamw")
             for m in S.methods for k in range(S.seeds)]
    add("self_sharpening", f"Table 1 row, a stack of {len(table)}", S.epochs * steps_per_epoch,
        mlp_grid_step(table, S.depth, S.width))
    powers = [p for p in S.powers for _ in range(S.replicates)]

    def fig4(steps, record_every):
        training.train_singular_powers(synthetic(4 * 16), powers=powers, depth=S.svd_depth,
                                       width=S.svd_width, steps=steps, lr=S.svd_lr,
                                       batch_size=16, record_every=record_every,
                                       svd_every=S.svd_every)

    # steps with their SVD refreshes (every svd_every), then what a record (every
    # record_every: backprop, cosines, the effective rank of every layer) adds to a step
    step = at_batch(per_step(lambda s: fig4(s, 10 ** 9), S.svd_every, 2 * S.svd_every), 16)
    record = at_batch(per_step(lambda s: fig4(s, 1), 1, 2), 16)
    add("self_sharpening", f"Fig. 4, {len(powers)} replicates", S.steps, step,
        note=f", SVDs every {S.svd_every} (their FLOPs not counted)")
    add("self_sharpening", "Fig. 4 records", S.steps // S.record_every,
        (record[0] - step[0], record[1] - step[1]))

    M = chapter_settings("localmixer", scale)
    arch = dict(image_size=M.image_size, patch=M.patch, channels=M.channels, blocks=M.blocks,
                groups=M.groups)
    mixer_runs = [("backprop", False), ("backprop", True), ("activation_perturbation", True),
                  ("activation_mixing", True), ("w_transpose", True)]
    mixer_steps = M.epochs * (FULL_TRAIN // M.batch_size)
    rate = tflops * 5 if M.tf32 else tflops

    def images(s):
        return synthetic(s * M.batch_size, (1, 32, 32))

    if M.side_by_side:
        grid_runs = [MixerRun(m, local, augment) for m, local in mixer_runs
                     for augment in (False, True)]
        add("localmixer", f"stack of {len(grid_runs)}", mixer_steps, stacked(
            lambda s: train_mixer_stack(images(s), grid_runs, epochs=1, lr=M.lr,
                                        batch_size=M.batch_size, **arch), M.batch_size,
            M.batch_size), rate)
    else:
        for method, local in mixer_runs:
            cost = per_step(lambda s: training.reference_mixer(
                images(s), method=method, local=local, epochs=1, lr=M.lr,
                batch_size=M.batch_size, **arch), 1, 2)
            add("localmixer", f"{method} ({'local' if local else 'end to end'}), 2 runs",
                2 * mixer_steps, cost, rate)

    P = chapter_settings("prompt_tuning", scale)
    vit = dict(image_size=28, patch=7, layers=4, heads=4, hidden=64, mlp=128)
    rgb = synthetic(4 * 128, (3, 28, 28))
    add("prompt_tuning", "backbone pre-training", P.pretrain_epochs * steps_per_epoch,
        per_step(lambda s: pretraining.pretrain_vit(synthetic(s * 128, (3, 28, 28)), epochs=1, **vit),
                 1, 2))
    torch.manual_seed(0)
    backbone = small_vit(**vit)
    grid_runs = [(m, k) for m in ("backprop", "head_only", "directional",
                                  "activation_perturbation", "w_transpose")
                 for k in range(P.seeds)]
    stack = stacked(lambda s: prompt_stack.tune_prompt_stack(
        backbone, rgb, grid_runs, prompts=P.prompts, steps=s, eval_every=10 ** 6,
        batch_size=P.batch_size, lr=P.lr, cosine_repeats=P.cosine_repeats), P.batch_size,
        P.batch_size)
    for task in ("second task", "inverted task"):
        add("prompt_tuning", f"{task}: stack of {len(grid_runs)}", P.steps, stack,
            note=" (test accuracy every eval_every steps not counted)", stage="tasks")
    return rows


# the package modules `estimate` runs: the code its counts depend on
COUNTED = ["gradguess.analysis.along_backprop", "gradguess.analysis.subspaces",
           "gradguess.book.settings", "gradguess.core.data", "gradguess.core.estimators",
           "gradguess.core.models", "gradguess.core.prompts", "gradguess.engine.grid",
           "gradguess.engine.mixer_grid", "gradguess.engine.pretraining",
           "gradguess.engine.prompt_stack", "gradguess.engine.stack", "gradguess.engine.step",
           "gradguess.engine.training"]


def as_json(rows, scale: str, args) -> dict:
    """The rows of ``scale`` with the constants, the command and the code they were counted
    with (`gradguess.book.store.reach_of`, `reach_fingerprint`)."""
    from gradguess.book.store import reach_fingerprint, reach_of
    modules = reach_of(COUNTED)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"scale": scale, "command": "python " + " ".join(["benchmarks/gpu_estimate.py", *sys.argv[1:]]),
            "git commit": commit, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "us per op": args.us_per_op, "TFLOP/s": args.tflops,
            "us per replay": args.us_per_replay, "us per kernel": args.us_per_kernel,
            "code": {"modules": modules, "fingerprint": reach_fingerprint(modules)},
            "rows": [{"chapter": c, "workload": w, "stage": stage, "eager (s)": round(e, 3),
                      "compiled (s)": round(a, 3), "basis": basis}
                     for c, w, e, a, basis, stage in rows]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["gpu", "paper"])
    parser.add_argument("--us-per-op", type=float, default=17.0)
    parser.add_argument("--tflops", type=float, default=30.0)
    parser.add_argument("--us-per-replay", type=float, default=20.0)
    parser.add_argument("--us-per-kernel", type=float, default=2.5)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows of the last scale (with their stages and the "
                             "code they were counted with) to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for scale in args.scales:
        rows = estimate(scale, args.us_per_op, args.tflops, args.us_per_replay,
                        args.us_per_kernel)
        print(f"\n== {scale} scale: {args.us_per_op:g} us per op, {args.tflops:g} TFLOP/s "
              f"float32; compiled: {args.us_per_replay:g} us per graph replay, "
              f"{args.us_per_kernel:g} us per kernel in a graph")
        print(f"{'chapter':16s}{'workload':44s}{'eager':>9s}{'compiled':>10s}")
        totals = {}
        for chapter, workload, seconds, after, basis, _ in rows:
            before_total, after_total = totals.get(chapter, (0, 0))
            totals[chapter] = (before_total + seconds, after_total + after)
            print(f"{chapter:16s}{workload:44s}{seconds:8.0f} s{after:8.0f} s   {basis}")
        for chapter, (seconds, after) in totals.items():
            print(f"{chapter:16s}{'total of the workloads above':44s}{seconds:8.0f} s{after:8.0f} s")
        before, after = (sum(t[k] for t in totals.values()) for k in (0, 1))
        print(f"{'the book':16s}{'total':44s}{before:8.0f} s{after:8.0f} s   "
              f"({before / 60:.1f} -> {after / 60:.1f} minutes)")
        if args.json is not None and scale == args.scales[-1]:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(as_json(rows, scale, args), indent=1) + "\n")
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
