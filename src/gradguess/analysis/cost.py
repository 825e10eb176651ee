"""What a step costs: time against backprop, peak memory, replicates side by side.

Measurements, not tests: every ratio here comes from one run that interleaves the methods,
so machine load affects all of them alike.
"""
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..core.estimators import estimate_gradient, gradient_writer
from ..core.methods import METHODS
from ..core.models import MLP, StackedMLP


def matmul_units() -> dict[tuple[str, str], int]:
    """(method, estimator) -> matmul units per layer of a step (one unit: a [B, d_in] x
    [d_in, d_out] product), from the method registry; backprop's 3 bounds the time ratios."""
    return {(name, estimator): units for name, method in METHODS.items()
            for estimator, units in method.matmuls.items()}


def step_function(model, x, targets, method: str, estimator: str, generator, optimizer=None):
    """One training step of ``method`` with ``estimator`` ("reference", "fused" or
    "fused-lean"; backprop's "exact" is always exact), followed by ``optimizer.step()`` if given."""
    write = gradient_writer(method, "global", estimator)

    def step():
        write(model, x, targets, generator)
        if optimizer is not None:
            optimizer.step()
    return step


def step_times(x, targets, variants, depths, *, width: int, repeats: int, seed: int = 0,
               classes: int = 10) -> dict:
    """Median seconds of one AdamW step of each (method, estimator) in ``variants`` on an MLP of
    width ``width`` and each depth (initialised from ``seed``; a tiny learning rate, so the
    weights barely move), the variants interleaved (`median_times`):
    {((method, estimator), depth): seconds}."""
    device = x.device
    seconds = {}
    for depth in depths:
        torch.manual_seed(seed)
        model = MLP(x.shape[1], width, depth, classes).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        generator = torch.Generator(device=device).manual_seed(seed)
        steps = {v: step_function(model, x, targets, *v, generator, opt) for v in variants}
        for variant, median in median_times(steps, repeats, device).items():
            seconds[variant, depth] = median
    return seconds


def peak_memories(x, targets, variants, depths, *, width: int, seed: int = 0,
                  classes: int = 10) -> dict:
    """Peak bytes of one step of each (method, estimator) in ``variants`` beyond the model's
    state (`peak_step_memory`, the batch included), on an MLP of each depth:
    {((method, estimator), depth): bytes}."""
    device = x.device
    peaks = {}
    for depth in depths:
        torch.manual_seed(seed)
        model = MLP(x.shape[1], width, depth, classes).to(device)
        generator = torch.Generator(device=device).manual_seed(seed)
        for variant in variants:
            step = step_function(model, x, targets, *variant, generator)
            step()  # gradient buffers exist, as in training
            peaks[variant, depth] = peak_step_memory(step, (x, targets), device)
    return peaks


def _synchronizer(device):
    """What waits for queued GPU work before a clock is read; nothing on the CPU."""
    on_gpu = device is not None and torch.device(device).type == "cuda"
    return torch.cuda.synchronize if on_gpu else (lambda: None)


def median_times(steps: dict, repeats: int, device=None) -> dict:
    """Median seconds of each step function; the steps run interleaved, after one warm-up."""
    sync = _synchronizer(device)
    times = {name: [] for name in steps}
    for step in steps.values():
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


class _LiveTensors(TorchDispatchMode):
    """Bytes of the tensors created while active and still alive, and their peak.

    Every ATen op's fresh outputs are counted (by storage, views share it) until the last
    tensor using that storage is freed. PyTorch keeps a tensor's Python object alive while
    autograd or a kernel still holds the tensor, so memory saved for a backward pass counts.
    """

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for k, t in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self._hold(t, fresh=k < len(returns) and returns[k].alias_info is None)
        return out

    def _hold(self, t, fresh: bool) -> None:
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
        except RuntimeError:  # a torch.func wrapper: its inner tensor is counted on its own
            return
        if ptr in self.live:
            self.live[ptr][1] += 1
        elif fresh and storage.nbytes() > 0:
            self.live[ptr] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            return  # a view of memory from before the measurement
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr) -> None:
        entry = self.live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del self.live[ptr]
                self.current -= entry[0]


def peak_step_memory(step, inputs=(), device=None) -> int:
    """Peak bytes a step needs beyond the model's state (weights, gradient buffers, optimizer
    state): what it allocates while it runs, plus its input batch ``inputs``.

    On a GPU: ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated
    before it. On the CPU, which keeps no such statistic, every tensor the step creates is
    tracked (`_LiveTensors`). Run the step once before, so that gradient buffers exist.
    """
    batch = sum(t.untyped_storage().nbytes() for t in inputs)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before + batch
    with _LiveTensors() as tracker:
        step()
    return tracker.peak + batch


def replicate_throughput(data, replicates: int, steps: int, *, depth: int = 6, width: int = 128,
                         method: str = "w_transpose", batch_size: int = 128, seed: int = 0) -> dict:
    """Seconds for ``replicates`` MLPs to take ``steps`` AdamW steps each: one after another,
    and side by side as a `StackedMLP` (same batches, same method)."""
    device = data.train_x.device
    generator = torch.Generator(device=device).manual_seed(seed)
    batches = [torch.randint(0, len(data.train_y), (batch_size,), generator=torch.Generator()
                             .manual_seed(seed + k)).to(device) for k in range(steps)]

    def run(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for idx in batches:
            estimate_gradient(model, data.train_x[idx], data.train_y[idx], method, "global",
                              generator)
            opt.step()

    sync = _synchronizer(device)
    torch.manual_seed(seed)
    single = lambda: MLP(data.in_features, width, depth, data.num_classes).to(device)
    stack = lambda: StackedMLP(data.in_features, width, depth, data.num_classes,
                               replicates).to(device)
    run(single())  # warm-up, on models thrown away
    run(stack())
    singles, stacked = [single() for _ in range(replicates)], stack()
    sync()
    start = time.perf_counter()
    for model in singles:
        run(model)
    sync()
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    run(stacked)
    sync()
    side_by_side = time.perf_counter() - start
    return {"sequential": sequential, "side_by_side": side_by_side,
            "speed-up": sequential / side_by_side}
