"""Where a long run saves its state and whether a chunk of a grid is stored on its own.

The engine asks; the book's run store answers. Outside a stored call (a test, a script) there
is nowhere to save: `resume` finds nothing, `save` does nothing, and `chunk` calls through.

- `resume()`: the state a previous, interrupted attempt at this very call saved, or None.
- `save(state)`: the run's state so far (weights, optimizer state, generator states, history),
  written atomically, with a checksum, where the store keeps this call's checkpoint; the store
  deletes it once the call's result is stored. A checkpoint that does not load whole is moved
  aside (``*.corrupt``, `gradguess.engine.files`) and the run starts from the beginning.
- `chunk(fn, *args, **kwargs)`: ``fn(*args, **kwargs)``, stored under its own key, so that a
  grid's finished chunks survive an interrupted grid.
"""
import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import files


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
    """The saved state of this call's interrupted attempt, or None (none saved, or a damaged
    one, moved aside with a line that says so)."""
    place = _PLACE.get()
    if place is None or not place.path.exists():
        return None
    try:
        return files.load_checked(place.path)
    except files.DamagedFileError as damaged:
        aside = files.move_aside(place.path)
        files.report(f"run store: the checkpoint {damaged.path} {damaged.why}; moved it aside "
                     f"to {aside.name} and starting the run from the beginning")
        return None


def save(state: dict) -> None:
    """Save ``state`` for `resume`, replacing the previous one whole (`files.save_checked`)."""
    place = _PLACE.get()
    if place is not None:
        files.save_checked(state, place.path)


def chunk(fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)``, stored on its own when a store lends a place, else computed.
    A nested call gets its own place (its own checkpoint) from the store."""
    place = _PLACE.get()
    if place is None:
        return fn(*args, **kwargs)
    return place.store_call(fn, *args, **kwargs)
