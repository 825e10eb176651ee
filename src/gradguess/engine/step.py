"""A stack's step, eager or compiled: the family's gradients (forward, guesses, directional
derivatives, update), the optimizer's step and the divergence check, as one function.

Compiled, the whole step is one `torch.compile`d function (inductor; on a GPU with CUDA graphs,
``mode="reduce-overhead"``), so a step stops paying a kernel launch per operation. Its random
draws are taken just before it, from the replicates' own generators in the order an eager
step takes them (`core.draws.Tape`, recorded on the first step, which runs eagerly): a
compiled step sees the guesses an eager one sees and leaves every generator where an eager one
leaves it. What differs is float rounding (fused kernels), so a compiled run is an eager run
up to rounding, not bit for bit.

The setting ``GRADGUESS_COMPILE`` chooses:

- ``off``: every step eager, for exact reproduction of an eager run and for debugging;
- ``on``: compiled, on any device;
- ``auto`` (the default): compiled on a GPU, eager on a CPU. On the 2-core CPU the book is
  built on, compiling a stack's step costs 13-74 s per stack shape and saves 12-115 ms per
  step (a 42-run MLP stack: 52 s against 12 ms, even after about 4,000 steps), which the
  small scale's few hundred steps per stack do not win back, prompt tuning's aside
  (`benchmarks/compiled_step.py` measures both).

Each execution's provenance records the setting and the time spent compiling (`compile_seconds`).
"""
import os
import time

import torch
from torch import Tensor

from ..core.draws import Tape

MODES = ("auto", "on", "off")
_compile_seconds = [0.0]


def setting() -> str:
    """``GRADGUESS_COMPILE``: auto (default), on or off."""
    mode = os.environ.get("GRADGUESS_COMPILE") or "auto"
    if mode not in MODES:
        raise ValueError(f"GRADGUESS_COMPILE must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def compiles(device) -> bool:
    """Whether a stack on ``device`` (a device or its type) runs compiled steps."""
    mode = setting()
    kind = device if isinstance(device, str) else torch.device(device).type
    return mode == "on" or (mode == "auto" and kind.startswith("cuda"))


def compile_seconds() -> float:
    """Seconds this process has spent compiling steps (the first compiled call of each stack,
    less the time of an ordinary step)."""
    return _compile_seconds[0]


def diverging(loss: Tensor, params) -> Tensor:
    """[R]: whether each replicate's loss or any of its weights is non-finite, all parameters
    checked in one go."""
    finite = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in params])
    return ~torch.isfinite(loss) | ~finite.all(0)


class Step:
    """``gradients(x, targets, generators)`` (a family's step: writes ``.grad``, returns the
    batch loss [R]), then ``optimizer.step()``, then `diverging`: called as ``step(x,
    targets)``, it returns (loss, diverging). ``generators`` are the replicates' guess
    generators; compiled, the step draws through a `Tape` of them."""

    def __init__(self, gradients, optimizer, params, generators, device):
        self.gradients, self.optimizer, self.params = gradients, optimizer, list(params)
        self.generators = list(generators)
        self.device = torch.device(device)
        self.compiled = compiles(self.device)
        self.tape, self._fn = Tape(self.generators) if self.compiled else None, None

    def __call__(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if not self.compiled:
            return self._whole(x, targets, self.generators)
        if self._fn is None:  # eager, recording what the step draws
            start = time.perf_counter()
            result = self._whole(x, targets, self.tape.stand_ins())
            self._fn = self._compile()
            self._eager = time.perf_counter() - start
            self._first = True
            return result
        return self.replay(x, targets, self.draw())

    def draw(self) -> list[Tensor]:
        """What the next compiled step draws, taken now from the replicates' generators, in
        the order the first (eager) step drew it (`Tape.draw`)."""
        return self.tape.draw()

    def replay(self, x: Tensor, targets: Tensor, drawn: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The compiled step on ``drawn`` (from `draw`): (loss, diverging)."""
        if self._first:
            start = time.perf_counter()
            loss, bad = self._fn(x, targets, drawn)
            _compile_seconds[0] += max(0.0, time.perf_counter() - start - self._eager)
            self._first = False
        else:
            loss, bad = self._fn(x, targets, drawn)
        if self.device.type == "cuda":  # a CUDA graph's outputs are its next replay's buffers
            loss, bad = loss.clone(), bad.clone()
        return loss, bad

    def _whole(self, x, targets, generators):
        loss = self.gradients(x, targets, generators)
        self.optimizer.step()
        return loss, diverging(loss, self.params)

    def _replayed(self, x, targets, drawn):
        return self._whole(x, targets, self.tape.replaying(drawn))

    def _compile(self):
        torch._dynamo.reset()  # one stack at a time: the last stack's graphs are not reused
        if self.device.type == "cuda":  # what the graph updates in place stays where it is
            for t in self._state_tensors():
                torch._dynamo.mark_static_address(t)
            return torch.compile(self._replayed, mode="reduce-overhead", dynamic=False)
        return torch.compile(self._replayed, dynamic=False)

    def _state_tensors(self) -> list[Tensor]:
        tensors = [*self.params, *(p.grad for p in self.params if p.grad is not None),
                   self.optimizer.t]
        for row in self.optimizer.state:
            for state in row:
                tensors += [v for v in state.values() if torch.is_tensor(v)]
        return tensors
