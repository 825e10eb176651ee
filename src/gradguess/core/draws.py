"""A step's random draws, taken outside a compiled step and handed to it in order.

A compiled step (`gradguess.engine.step`) cannot draw from a `torch.Generator`: dynamo
breaks its graph at every ``torch.randn(..., generator=g)``. But a step's draws have the same
shapes, from the same generators, in the same order, every step. So a `Tape` records them
once, on an eager first step, and from then on `Tape.draw` takes them before the compiled
step, from the real generators in the recorded order, and the step reads them back in that
order. Each generator gives exactly the numbers it gives an eager step, and advances as it
would: a compiled step's guesses are an eager step's guesses.

Inside a step, a replicate's generator is a `Taped` stand-in. `guesses._random` draws
through it: `Tape.take` draws for real and records while recording, and returns the next
tensor handed in while replaying.
"""
import torch
from torch import Tensor


class Taped:
    """Stands in for replicate ``index``'s generator in a step that draws through ``tape``."""

    def __init__(self, tape, index: int):
        self.tape, self.index = tape, index


class Tape:
    """The draws of one step of a stack with ``generators`` (one per replicate)."""

    def __init__(self, generators):
        self.generators = list(generators)
        self.plan = []  # (sample, shape, dtype, device, replicate indices, stacked), in order
        self.replay: tuple[Tensor, ...] | None = None
        self.at = 0

    def stand_ins(self) -> list[Taped]:
        return [Taped(self, r) for r in range(len(self.generators))]

    def take(self, sample, shape, like: Tensor, indices: tuple[int, ...], stacked: bool) -> Tensor:
        """One draw of ``sample`` (torch.randn or torch.rand) of ``shape`` per replicate of
        ``indices``, stacked along a new first dimension if ``stacked``."""
        if self.replay is not None:
            drawn = self.replay[self.at]
            self.at += 1
            return drawn
        entry = (sample, tuple(shape), like.dtype, like.device, tuple(indices), stacked)
        self.plan.append(entry)
        return self._draw(*entry)

    def _draw(self, sample, shape, dtype, device, indices, stacked) -> Tensor:
        draws = [sample(shape, generator=self.generators[r], device=device, dtype=dtype)
                 for r in indices]
        return torch.stack(draws) if stacked else draws[0]

    def draw(self) -> tuple[Tensor, ...]:
        """The next step's draws, in the recorded order (outside the compiled step)."""
        return tuple(self._draw(*entry) for entry in self.plan)

    def replaying(self, drawn: tuple[Tensor, ...]) -> list[Taped]:
        """Stand-ins that hand out ``drawn`` in order (inside the compiled step)."""
        replay = Tape(())
        replay.replay = drawn
        return [Taped(replay, r) for r in range(len(self.generators))]
