"""Where a long run saves its state and whether a chunk of a grid is stored on its own.

The engine asks; the book's run store answers. Outside a stored call (a test, a script) there
is nowhere to save: `resume` finds nothing, `save` does nothing, and `chunk` calls through.

- `resume()`: the state a previous, interrupted attempt at this very call saved, or None.
- `save(state)`: the run's state so far (weights, optimizer state, generator states, history),
  written atomically, with a checksum, where the store keeps this call's checkpoint; the store
  deletes it once the call's result is stored. A checkpoint that does not load whole is moved
  aside (``*.corrupt``, `gradguess.engine.files`) and the run starts from the beginning.
- `chunks(fn, calls)`: ``fn(*args, **kwargs)`` for each ``(args, kwargs)`` of ``calls``, each
  stored under its own key, so that a grid's finished chunks survive an interrupted grid. The
  chunks are independent: a store may compute the missed ones side by side (on a Ray cluster,
  `gradguess.book.cluster`), and they equal the chunks computed one after another.
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
    store_calls: Callable | None = None  # store_calls(fn, calls) -> [fn(*a, **k) ...], stored


def one_by_one(store_call: Callable) -> Callable:
    """``store_calls`` from ``store_call``: the calls one after another."""
    return lambda fn, calls: [store_call(fn, *args, **kwargs) for args, kwargs in calls]


_PLACE: contextvars.ContextVar[Place | None] = contextvars.ContextVar("checkpoint", default=None)


@contextmanager
def saving_to(path, store_call: Callable, store_calls: Callable | None = None):
    """Within this block, `resume` and `save` use ``path``, and `chunks` ``store_calls``
    (default: ``store_call`` on each chunk in turn)."""
    token = _PLACE.set(Place(Path(path), store_call, store_calls or one_by_one(store_call)))
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


def chunks(fn: Callable, calls: list) -> list:
    """``[fn(*args, **kwargs) for args, kwargs in calls]``: each stored on its own when a store
    lends a place (which may compute them side by side), else computed in turn. A chunk gets
    its own place (its own checkpoint) from the store."""
    place = _PLACE.get()
    if place is None:
        return [fn(*args, **kwargs) for args, kwargs in calls]
    return place.store_calls(fn, list(calls))
