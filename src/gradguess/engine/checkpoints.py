"""Where a long run saves its state and whether a chunk of a grid is stored on its own.

The engine asks; the book's run store answers. Outside a stored call (a test, a script) there
is nowhere to save: `resume` finds nothing, `save` does nothing, and `chunk` calls through.

- `resume()`: the state a previous, interrupted attempt at this very call saved, or None.
- `save(state)`: the run's state so far (weights, optimizer state, generator states, history),
  written atomically where the store keeps this call's checkpoint; the store deletes it once
  the call's result is stored.
- `chunk(fn, *args, **kwargs)`: ``fn(*args, **kwargs)``, stored under its own key, so that a
  grid's finished chunks survive an interrupted grid.
"""
import contextvars
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class Place:
    """What the store lends the call it computes: a checkpoint file and a way to store a
    nested call under its own key."""
    path: Path
    store_call: Callable  # store_call(fn, *args, **kwargs) -> fn(*args, **kwargs), stored


_PLACE: contextvars.ContextVar[Place | None] = contextvars.ContextVar("checkpoint", default=None)


@contextmanager
def saving_to(path, store_call: Callable):
    """Within this block, `resume`, `save` and `chunk` use ``path`` and ``store_call``."""
    token = _PLACE.set(Place(Path(path), store_call))
    try:
        yield
    finally:
        _PLACE.reset(token)


def active() -> bool:
    """Whether a store lends a place here (whether `save` writes anything): a caller skips
    gathering a state that would not be kept."""
    return _PLACE.get() is not None


def resume():
    """The saved state of this call's interrupted attempt, or None."""
    place = _PLACE.get()
    if place is None or not place.path.exists():
        return None
    return torch.load(place.path, map_location="cpu", weights_only=True)


def save(state: dict) -> None:
    """Save ``state`` for `resume`, replacing the previous one whole (a temporary file renamed)."""
    place = _PLACE.get()
    if place is None:
        return
    place.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = place.path.with_name(f"{place.path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(place.path)


def chunk(fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)``, stored on its own when a store lends a place, else computed.
    A nested call gets its own place (its own checkpoint) from the store."""
    place = _PLACE.get()
    if place is None:
        return fn(*args, **kwargs)
    return place.store_call(fn, *args, **kwargs)
