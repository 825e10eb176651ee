"""Results cached by their configuration, so an interrupted execution resumes where it stopped.

A result is stored as JSON under a name derived from its configuration, the package's source
code and the torch version: change any of them and the result is computed anew. Files are
written atomically (a temporary file renamed into place), so a killed run never leaves a torn
result behind. The folder is the ``folder`` argument, else ``GRADGUESS_CACHE``, else
``~/.cache/gradguess/runs``.
"""
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

# How many results this process computed and how many it read back: a chapter reports both.
CACHE_STATS = {"computed": 0, "from cache": 0}


def cache_dir(folder=None) -> Path:
    return Path(folder or os.environ.get("GRADGUESS_CACHE")
                or Path.home() / ".cache" / "gradguess" / "runs")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the package's source files: results computed by other code are not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _path(config: dict, folder, suffix: str) -> tuple[Path, str]:
    key = json.dumps({"config": config, "code": code_fingerprint(), "torch": torch.__version__},
                     sort_keys=True)
    return cache_dir(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}{suffix}", key


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def cached(config: dict, compute: Callable[[], dict], folder=None) -> dict:
    """``compute()``'s JSON-serialisable result for ``config``, from the cache if it is there."""
    path, key = _path(config, folder, ".json")
    if path.exists():
        CACHE_STATS["from cache"] += 1
        return json.loads(path.read_text())["result"]
    result = compute()
    CACHE_STATS["computed"] += 1
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps({"key": json.loads(key),
                                                                   "result": result})))
    return result


def cached_checkpoint(config: dict, compute: Callable[[], dict], folder=None) -> dict:
    """``compute()``'s state dict (tensors) for ``config``, from the cache if it is there: a
    pre-trained model is trained once."""
    path, _ = _path(config, folder, ".pt")
    if path.exists():
        CACHE_STATS["from cache"] += 1
        return torch.load(path, map_location="cpu", weights_only=True)
    state = compute()
    CACHE_STATS["computed"] += 1
    _write_atomically(path, lambda tmp: torch.save(state, tmp))
    return state
