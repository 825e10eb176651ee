"""Cached runs keyed by the call itself, so an interrupted execution resumes where it stopped.

``cached(train_mlp, data, depth=3, width=128, method="w_transpose", ...)`` returns
``train_mlp(data, depth=3, ...)``, computed once. The key is built from the call, never
typed by hand: the function's qualified name, every argument it receives (defaults
included), the package's source code, the torch version, and, for a function defined outside
the package (in a chapter), its own source and the value of every global it reads. Change
any of them and the result is computed anew.

Arguments are keyed by value: numbers, strings, lists, dicts, devices, tensors (by content),
datasets (by content), modules (by class and weights), functions (by name and source). An
argument of another kind (a generator, a lambda) raises a TypeError: a key that could not
see it could return a result computed with another one.

A JSON-serialisable result is stored as JSON (and returned as it reads back, so a fresh and a
cached result are alike); one holding tensors (a checkpoint) with ``torch.save``. Files are
written atomically (a temporary file renamed into place). The folder is the ``folder``
argument, else ``GRADGUESS_CACHE``, else ``~/.cache/gradguess/runs``.
"""
import dataclasses
import hashlib
import inspect
import json
import math
import os
import sys
import sysconfig
import types
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

PACKAGE = __name__.split(".")[0]
# How many results this process computed and how many it read back: a chapter reports both.
CACHE_STATS = {"computed": 0, "from cache": 0}


def cache_dir(folder=None) -> Path:
    return Path(folder or os.environ.get("GRADGUESS_CACHE")
                or Path.home() / ".cache" / "gradguess" / "runs")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the package's source files: results computed by other code are not reused."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def tensor_fingerprint(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}{list(t.shape)}:{_digest(t.view(-1).view(torch.uint8).numpy().tobytes())}"


def _in_package(obj) -> bool:
    return (getattr(obj, "__module__", "") or "").split(".")[0] == PACKAGE


def _defined_here(obj) -> bool:
    """Defined in a notebook, script or test, not in the package or an installed library."""
    module_name = getattr(obj, "__module__", None) or ""
    if _in_package(obj):
        return False
    if module_name == "__main__":
        return True
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if file is None:  # built in
        return False
    file = os.path.realpath(file)
    libraries = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    return not any(file.startswith(lib + os.sep) for lib in libraries)


def _global_names(code: types.CodeType):
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


def _function_key(fn, seen: set) -> dict:
    """A function by name; one defined outside the package also by its source and the
    values of the globals it reads (recursively), so that editing a chapter's function or a
    global it reads changes the key."""
    name = f"{fn.__module__}.{fn.__qualname__}"
    if not _defined_here(fn) or not isinstance(fn, types.FunctionType):
        return {"function": name}
    if fn.__code__.co_freevars or fn.__name__ == "<lambda>":
        raise TypeError(f"{name} reads variables of an enclosing scope (a closure or lambda): "
                        "define it at the top level and pass what it reads as arguments")
    reads = {}
    for global_name in sorted(set(_global_names(fn.__code__))):
        if global_name in fn.__globals__ and global_name not in seen:
            value = fn.__globals__[global_name]
            if not isinstance(value, types.ModuleType):
                reads[global_name] = key_of(value, seen | {global_name})
    return {"function": name, "source": inspect.getsource(fn), "reads": reads}


def key_of(value, seen: frozenset | set = frozenset()):
    """A JSON-serialisable value that identifies ``value`` for the cache key."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [key_of(v, seen) for v in value]
    if isinstance(value, dict):
        return {"dict": sorted([json.dumps(key_of(k, seen), sort_keys=True), key_of(v, seen)]
                               for k, v in value.items())}
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_fingerprint(value)}
    if isinstance(value, nn.Module):
        return {"module": type(value).__qualname__,
                "state": {k: tensor_fingerprint(v) for k, v in value.state_dict().items()}}
    if hasattr(value, "fingerprint") and dataclasses.is_dataclass(value):
        return {type(value).__qualname__: value.fingerprint}  # a Dataset: its content
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__qualname__: {f.name: key_of(getattr(value, f.name), seen)
                                            for f in dataclasses.fields(value)}}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return _function_key(value, set(seen))
    if isinstance(value, type) and (_in_package(value) or not _defined_here(value)):
        return {"class": f"{value.__module__}.{value.__qualname__}"}
    raise TypeError(f"a cached call cannot key an argument of type {type(value).__name__} "
                    f"({value!r:.60}): pass plain values (numbers, strings, lists, dicts, "
                    "tensors, datasets, modules, top-level functions)")


def call_key(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """The key of ``fn(*args, **kwargs)``: the function, every argument it receives by name
    (defaults applied), the package's code and the torch version."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    return {"call": key_of(fn), "arguments": {k: key_of(v) for k, v in bound.arguments.items()},
            "package code": code_fingerprint(), "torch": torch.__version__}


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def _as_json(result) -> str | None:
    try:
        return json.dumps(result)
    except TypeError:  # tensors: a checkpoint
        return None


def cached_call(folder, fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)``, from the cache in ``folder`` (None: the default) if it is there."""
    key = json.dumps(call_key(fn, args, kwargs), sort_keys=True)
    stem = cache_dir(folder) / hashlib.sha256(key.encode()).hexdigest()[:24]
    as_json, as_checkpoint = stem.with_suffix(".json"), stem.with_suffix(".pt")
    if as_json.exists():
        CACHE_STATS["from cache"] += 1
        return json.loads(as_json.read_text())["result"]
    if as_checkpoint.exists():
        CACHE_STATS["from cache"] += 1
        return torch.load(as_checkpoint, map_location="cpu", weights_only=True)["result"]
    result = fn(*args, **kwargs)
    CACHE_STATS["computed"] += 1
    text = _as_json(result)
    if text is not None:
        _write_atomically(as_json, lambda tmp: tmp.write_text(f'{{"key": {key}, "result": {text}}}'))
        return json.loads(text)  # as a later read gives it: lists for tuples, str keys
    _write_atomically(as_checkpoint, lambda tmp: torch.save({"key": key, "result": result}, tmp))
    return result


def cached(fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` through the default cache folder (see `cached_call`)."""
    return cached_call(None, fn, *args, **kwargs)
