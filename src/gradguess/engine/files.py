"""Files written whole, read back checked, and one writer at a time.

- `write_atomically(path, data)`: a temporary file beside ``path``, renamed into place. A
  write that fails (a full disk: ``ENOSPC``) leaves the previous file as it was, removes the
  temporary one and raises an `OSError` that names ``path``.
- `save_checked(obj, path)` / `load_checked(path)`: ``torch.save`` with a checksum of the
  content (every tensor's bytes, every number and string); a file that does not load or fails
  its checksum raises `DamagedFileError`, which says why.
- `move_aside(path)`: a damaged file renamed to ``<name>.corrupt`` (``.corrupt.1``, ... if
  taken), kept for a look rather than deleted.
- `locked(path)`: an exclusive lock on ``path`` (``flock``) held for a block: a second process
  that wants it waits (two executions of one chapter, two workers computing one run);
  `try_lock(path)` takes it only if it is free. ``flock`` may not hold across the machines of
  a network filesystem: there, two writers of one file still each write it whole.
- `tensor_bytes(t)`: a tensor's dtype, shape and bytes, what every checksum and key hashes.
"""
import errno
import hashlib
import io
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not on Windows: no lock, writes stay atomic
    fcntl = None


class DamagedFileError(Exception):
    """A stored file that does not read back whole: ``path`` and ``why``."""

    def __init__(self, path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting it to read it is not safe beside other threads


def write_atomically(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it, not mkstemp's 0600
        _write_file(Path(tmp), data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is left as it was" if path.exists() else "nothing was written"
        why = "no space left on device" if error.errno == errno.ENOSPC else error.strerror
        raise OSError(error.errno, f"could not write {path} ({why}); {kept}") from error


def copy_atomically(source, path) -> None:
    """Copy ``source`` to ``path`` whole or not at all."""
    write_atomically(path, Path(source).read_bytes())


def tensor_bytes(t: torch.Tensor) -> tuple[str, bytes]:
    """(``"<dtype>[<shape>]"``, the bytes) of ``t``, on the CPU and contiguous."""
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{list(t.shape)}", t.view(-1).view(torch.uint8).numpy().tobytes()


def _digest(obj, h) -> None:
    if isinstance(obj, torch.Tensor):
        kind, data = tensor_bytes(obj)
        h.update(f"tensor{kind}".encode())
        h.update(data)
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            _digest(key, h)
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for item in obj:
            _digest(item, h)
    else:  # numbers, strings, None, devices, dtypes
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_checksum(obj) -> str:
    """sha256 of ``obj``'s content: tensors by dtype, shape and bytes; containers in order."""
    h = hashlib.sha256()
    _digest(obj, h)
    return h.hexdigest()


def save_checked(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically, with `content_checksum` beside it."""
    buffer = io.BytesIO()
    torch.save({"content": obj, "sha256": content_checksum(obj)}, buffer)
    write_atomically(path, buffer.getvalue())


def load_checked(path):
    """What `save_checked` saved at ``path``; `DamagedFileError` if it does not load whole."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn zip, a pickle cut short, bytes of another format
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise DamagedFileError(path, f"does not load as a torch file, cut short or damaged "
                                     f"({type(error).__name__}: {first_line})") from None
    if not isinstance(saved, dict) or "sha256" not in saved or "content" not in saved:
        raise DamagedFileError(path, "has no checksum (not written by save_checked)")
    if content_checksum(saved["content"]) != saved["sha256"]:
        raise DamagedFileError(path, "fails its checksum (its content changed after it was written)")
    return saved["content"]


def move_aside(path) -> Path:
    """Rename damaged ``path`` to ``<name>.corrupt`` (or ``.corrupt.N``), returned."""
    path = Path(path)
    aside, n = path.with_name(path.name + ".corrupt"), 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, aside)
    return aside


def report(message: str) -> None:
    """A line for the person running the book (stderr: shown in a notebook, not a result)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def try_lock(path):
    """The lock on ``path`` held for the block if it is free (yields True), else at once
    False (another process holds it; nothing is held)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is None:
            yield True
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def locked(path, waiting: str | None = None):
    """Hold an exclusive lock on ``path`` (created if need be) for the block; if another
    process holds it, `report` ``waiting`` (if given) and wait for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    report(waiting)
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
