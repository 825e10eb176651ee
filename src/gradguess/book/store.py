"""The run store: each long run computed once, keyed by what it depends on, resumable, and at
the larger scales committed as a plain JSON record.

``cached(train_grid, data, runs, depth=3, ...)`` returns ``train_grid(data, runs, depth=3, ...)``,
computed once. The key is built from the call, never typed by hand (`call_key`):

- ``call``: the function's qualified name; for a function defined outside the package (in a
  chapter), also its source and the key of every global it reads (recursively);
- ``arguments``: every argument it receives, defaults included, keyed by value (`key_of`):
  numbers, strings, lists, dicts, devices, tensors (by content), datasets (by content),
  modules (by class and weights), functions (by name and source). An argument of another kind
  (a generator, a lambda) raises a TypeError: a key that could not see it could return a
  result computed with another one;
- ``code``: the package modules the call reaches (`reach`) and a hash of their source
  (`reach_fingerprint`). The reach starts from the module of every package function, class,
  dataclass or network in the key (the call itself, an argument, a global a chapter's function
  reads, a package module such a function reads) and follows every import statement of the
  package's modules, transitively: absolute ``gradguess.*`` and relative ones, ``from . import
  x``, and lazy imports inside functions alike; importing ``a.b.c`` reaches the packages
  ``a`` and ``a.b`` too (their ``__init__`` runs). An edit of a module outside the reach
  (the plotting, a chapter's runtime) keeps every stored run; an edit inside it computes anew;
- ``torch``: torch's version;
- ``device``: the device type the call runs on (`call_device`): its ``device`` argument
  ("auto": cuda where present), else the device of every tensor, network and dataset among
  its arguments (in lists, dicts and dataclasses too; "cpu+cuda" if they differ), else "cpu";
- ``step``: whether the engine's steps run compiled there (`engine.step.compiles`: a compiled
  run differs from an eager one by float rounding).

Where a result is kept:

- locally, in ``folder`` (else ``$GRADGUESS_CACHE``, else ``~/.cache/gradguess/runs``): a
  JSON-serialisable result as a record (below; returned as it reads back, so a fresh and a
  stored result are alike), one holding tensors (a checkpoint, a ViT's weights) with
  ``torch.save``;
- committed, for a chapter at a scale other than ``small`` (`Store.records`,
  book/runs/<scale>/records/): a JSON-serialisable result also as a readable record
  ``<function>-<key hash>.json`` (`record_of`): the function, its arguments as keyed, the
  code it reached and its hash, the git commit, device, torch version, wall time and the
  result. Anyone can read every number without torch; the store reads a record before the
  local folder, so a checkout with the records computes nothing it holds, and commits a
  result it finds only in the local folder. Tensor results stay local.

While a missed call is computed it may save its state (`gradguess.engine.checkpoints`) beside
its result, ``<key hash>.ckpt.pt``: an interrupted call resumes from it and the file is
deleted once the result is stored; a chunk of it (``checkpoints.chunk``) is a call of its own
through the same store.

Faults (`gradguess.engine.files`):

- every file is written atomically (a temporary file renamed into place): a full disk leaves
  the previous file whole and the error names the path;
- a record carries ``sha256``, the checksum of its content (`record_checksum`), and a tensor
  result the checksum of its tensors. A local file that does not parse, fails its checksum or
  holds another call's key is moved aside (``<name>.corrupt``), with a line that says which
  and why, and the call is computed again. A damaged committed record stops the chapter with
  `DamagedRecordError`, naming the file: a committed result is data, never replaced silently;
- a call is computed under a lock on its key (``<key hash>.lock``): a second process that
  misses the same call (two executions of one chapter) waits, then reads the first's result.
"""
import ast
import dataclasses
import hashlib
import inspect
import json
import math
import os
import sys
import sysconfig
import time
import types
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..engine import checkpoints, files, step

PACKAGE = __name__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHECKOUT = PACKAGE_DIR.parents[1]  # the book's checkout, where the package is installed from one
# How many results this process computed and how many it read back (from the local folder or
# a committed record; ``from records`` counts the latter again): a chapter reports both.
CACHE_STATS = {"computed": 0, "from cache": 0, "from records": 0}


def cache_dir(folder=None) -> Path:
    return Path(folder or os.environ.get("GRADGUESS_CACHE")
                or Path.home() / ".cache" / "gradguess" / "runs")


def records_folder(scale: str) -> Path | None:
    """Where a chapter at ``scale`` commits its records: none at ``small``; else
    ``$GRADGUESS_RECORDS`` (scripts/execute.py sets it), else the checkout's
    book/runs/<scale>/records/ (None where the package is not installed from a checkout)."""
    if scale == "small":
        return None
    if os.environ.get("GRADGUESS_RECORDS"):
        return Path(os.environ["GRADGUESS_RECORDS"])
    if not (CHECKOUT / "book" / "chapters").is_dir():
        return None
    return CHECKOUT / "book" / "runs" / scale / "records"


# ---------------------------------------------------------------- the reach of a module

def module_path(name: str) -> Path | None:
    """The source file of package module ``name`` (a package: its ``__init__.py``), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def package_modules() -> list[str]:
    """Every module of the package (packages by their ``__init__``), sorted."""
    names = {".".join((PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts))
             .removesuffix(".__init__") for path in PACKAGE_DIR.rglob("*.py")}
    return sorted(names)


def module_source(name: str) -> bytes:
    """The source of package module ``name`` as it is on disk now."""
    return module_path(name).read_bytes()


def _is_package(name: str) -> bool:
    return module_path(name).name == "__init__.py"


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_by(source: str | bytes, module: str | None = None) -> set[str]:
    """The package modules an import statement of ``source`` names, anywhere in it (lazy
    imports inside functions included); ``module`` (the source's own module name) resolves
    relative imports. ``from a.b import c`` names ``a.b.c`` where that is a module, else
    ``a.b`` (``c`` is a name in it)."""
    found = set()
    own_package = None
    if module is not None:
        own_package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names
                         if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if own_package is None:
                    continue
                base = own_package.split(".")
                base = base[:len(base) - (node.level - 1)]
                dotted = ".".join(base + ([node.module] if node.module else []))
            else:
                dotted = node.module or ""
            if dotted.split(".")[0] != PACKAGE:
                continue
            found.add(dotted)
            found.update(f"{dotted}.{alias.name}" for alias in node.names
                         if module_path(f"{dotted}.{alias.name}") is not None)
    return {parent for name in found if module_path(name) is not None
            for parent in _with_parents(name)}


@lru_cache(maxsize=None)
def _imports(name: str) -> frozenset:
    return frozenset(imported_by(module_source(name), name))


@lru_cache(maxsize=None)
def _reach(name: str) -> tuple:
    reached, todo = set(), [name, *_with_parents(name)]
    while todo:
        current = todo.pop()
        if current not in reached and module_path(current) is not None:
            reached.add(current)
            todo.extend(_imports(current))
    return tuple(sorted(reached))


def reach(module_name: str) -> list[str]:
    """The package modules that importing ``module_name`` runs: itself, its packages and every
    module its import statements (lazy ones inside functions included) name, transitively.
    Sorted; cached per process (`forget_code` clears that)."""
    return list(_reach(module_name))


def reach_of(module_names) -> list[str]:
    """The union of the reaches of ``module_names`` (package modules only), sorted."""
    return sorted({m for name in module_names if module_path(name) is not None
                   for m in _reach(name)})


@lru_cache(maxsize=None)
def _fingerprint(names: tuple) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + module_source(name) + b"\0")
    return digest.hexdigest()[:16]


def reach_fingerprint(module_names) -> str:
    """A hash of the names and sources of ``module_names`` (cached per process)."""
    return _fingerprint(tuple(sorted(set(module_names))))


def forget_code() -> None:
    """Forget the imports, reaches and fingerprints read so far (after an edit in this process)."""
    for cached_function in (_imports, _reach, _fingerprint):
        cached_function.cache_clear()


# ---------------------------------------------------------------- keys

def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def tensor_fingerprint(t: torch.Tensor) -> str:
    kind, data = files.tensor_bytes(t)
    return f"{kind}:{_digest(data)}"


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


def _function_key(fn, seen: set, modules: set) -> dict:
    """A function by name; one defined outside the package also by its source and the
    values of the globals it reads (recursively), so that editing a chapter's function or a
    global it reads changes the key. A package module, function or class it reads adds its
    module to ``modules`` (the reach)."""
    name = f"{fn.__module__}.{fn.__qualname__}"
    if _in_package(fn):
        modules.add(fn.__module__)
    if not _defined_here(fn) or not isinstance(fn, types.FunctionType):
        return {"function": name}
    if fn.__code__.co_freevars or fn.__name__ == "<lambda>":
        raise TypeError(f"{name} reads variables of an enclosing scope (a closure or lambda): "
                        "define it at the top level and pass what it reads as arguments")
    reads = {}
    for global_name in sorted(set(_global_names(fn.__code__))):
        if global_name in fn.__globals__ and global_name not in seen:
            value = fn.__globals__[global_name]
            if isinstance(value, types.ModuleType):
                if value.__name__.split(".")[0] == PACKAGE:
                    modules.add(value.__name__)
            else:
                reads[global_name] = key_of(value, seen | {global_name}, modules)
    return {"function": name, "source": inspect.getsource(fn), "reads": reads}


def key_of(value, seen: frozenset | set = frozenset(), modules: set | None = None):
    """A JSON-serialisable value that identifies ``value`` for the key. The module of every
    package function, class, dataclass or network met on the way is added to ``modules``."""
    modules = set() if modules is None else modules
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [key_of(v, seen, modules) for v in value]
    if isinstance(value, dict):
        return {"dict": sorted([json.dumps(key_of(k, seen, modules), sort_keys=True),
                                key_of(v, seen, modules)] for k, v in value.items())}
    if isinstance(value, (torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_fingerprint(value)}
    if not isinstance(value, type) and _in_package(type(value)):
        modules.add(type(value).__module__)  # a package network, dataset or record
    if isinstance(value, nn.Module):
        return {"module": type(value).__qualname__,
                "state": {k: tensor_fingerprint(v) for k, v in value.state_dict().items()}}
    if hasattr(value, "fingerprint") and dataclasses.is_dataclass(value):
        return {type(value).__qualname__: value.fingerprint}  # a Dataset: its content
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {type(value).__qualname__: {f.name: key_of(getattr(value, f.name), seen, modules)
                                            for f in dataclasses.fields(value)}}
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType)):
        return _function_key(value, set(seen), modules)
    if isinstance(value, type) and (_in_package(value) or not _defined_here(value)):
        if _in_package(value):
            modules.add(value.__module__)
        return {"class": f"{value.__module__}.{value.__qualname__}"}
    raise TypeError(f"a cached call cannot key an argument of type {type(value).__name__} "
                    f"({value!r:.60}): pass plain values (numbers, strings, lists, dicts, "
                    "tensors, datasets, modules, top-level functions)")


def _device_types(value, found: set) -> None:
    if isinstance(value, torch.Tensor):
        found.add(value.device.type)
    elif isinstance(value, nn.Module):
        for tensor in [*value.parameters(), *value.buffers()][:1]:
            found.add(tensor.device.type)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _device_types(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _device_types(v, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _device_types(getattr(value, f.name), found)


def _device_type(device) -> str:
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def call_device(arguments: dict) -> str:
    """The device type a call runs on, from its bound ``arguments``: a ``device`` argument
    (also one passed through ``**kwargs``) that is not None, else the device types of the
    tensors, networks and datasets among the arguments (looked for in lists, tuples, dict
    values and dataclass fields; several: joined by "+"), else "cpu"."""
    flat = dict(arguments)
    for value in arguments.values():  # **kwargs, bound as one dict
        if isinstance(value, dict) and isinstance(value.get("device"), (str, torch.device)):
            flat.setdefault("device", value["device"])
    if isinstance(flat.get("device"), (str, torch.device)):
        return _device_type(flat["device"])
    found = set()
    _device_types(list(arguments.values()), found)
    return "+".join(sorted(found)) or "cpu"


def call_key(fn: Callable, args: tuple, kwargs: dict) -> dict:
    """The key of ``fn(*args, **kwargs)``: the function, every argument it receives by name
    (defaults applied), the package modules it reaches with their hash, torch's version and
    the device type (see the module's docstring)."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    modules = set()
    call = key_of(fn, frozenset(), modules)
    arguments = {k: key_of(v, frozenset(), modules) for k, v in bound.arguments.items()}
    reached = reach_of(modules)
    device = call_device(bound.arguments)
    return {"call": call, "arguments": arguments,
            "code": {"modules": reached, "fingerprint": reach_fingerprint(reached)},
            "torch": torch.__version__, "device": device,
            "step": "compiled" if step.compiles(device) else "eager"}


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- the store

class DamagedRecordError(RuntimeError):
    """A committed record that does not read back whole: the chapter stops, naming it."""


def _as_json(result) -> str | None:
    try:
        return json.dumps(result)
    except TypeError:  # tensors: a checkpoint
        return None


def record_checksum(record: dict) -> str:
    """sha256 of a record's fields but ``sha256`` itself, as canonical JSON (sorted keys): a
    record reformatted stays valid, one whose content changed fails."""
    content = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def record_of(fn: Callable, key: dict, *, commit: str, seconds: float, result_json: str) -> str:
    """A committed record as text: the key's fields one per line (readable in a diff), the
    git commit, the wall time, the checksum, then the result on one line."""
    head = {"function": f"{fn.__module__}.{fn.__qualname__}", **key, "git commit": commit,
            "wall time (s)": round(seconds, 3)}
    head["sha256"] = record_checksum({**head, "result": json.loads(result_json)})
    text = json.dumps(head, indent=1)
    return f'{text[:-2]},\n "result": {result_json}\n}}\n'


def read_record(path: Path, key: dict):
    """The result in the record at ``path``, checked: it parses, passes its checksum and
    holds ``key``; else `files.DamagedFileError` says why."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise files.DamagedFileError(path, f"does not parse ({error})") from None
    if not isinstance(record, dict) or "result" not in record:
        raise files.DamagedFileError(path, "is not a run record (no result)")
    if "sha256" not in record:
        raise files.DamagedFileError(path, "has no checksum (written before records had one)")
    if record_checksum(record) != record["sha256"]:
        raise files.DamagedFileError(path, "fails its checksum (its content changed after it "
                                           "was written)")
    if {k: record.get(k) for k in key} != json.loads(json.dumps(key)):
        raise files.DamagedFileError(path, "holds another call's key")
    return record["result"]


def read_tensor_result(path: Path, key: dict):
    """The result `files.save_checked` stored at ``path`` for ``key``; else
    `files.DamagedFileError` says why."""
    saved = files.load_checked(path)
    if saved.get("key") != json.dumps(key, sort_keys=True):
        raise files.DamagedFileError(path, "holds another call's key")
    return saved["result"]


def _set_aside(damaged: files.DamagedFileError) -> None:
    try:
        aside = files.move_aside(damaged.path)
    except FileNotFoundError:  # another process set it aside first
        return
    files.report(f"run store: {damaged.path} {damaged.why}; moved it aside to {aside.name} "
                 "and computing the run again")


@dataclasses.dataclass(frozen=True)
class Entry:
    """Where one call is kept: its key and hash, the local files' stem (``.json``, ``.pt``,
    ``.ckpt.pt``, ``.lock``) and the committed record's path (None: none kept)."""
    fn: Callable
    key: dict
    digest: str
    stem: Path
    record: Path | None

    @property
    def name(self) -> str:
        return f"{self.fn.__name__} ({self.digest})"

    @property
    def checkpoint(self) -> Path:
        return self.stem.with_name(f"{self.stem.name}.ckpt.pt")

    @property
    def lock(self) -> Path:
        return self.stem.with_suffix(".lock")


@dataclasses.dataclass(frozen=True)
class Store:
    """Where calls are stored: ``folder`` (None: ``$GRADGUESS_CACHE`` or the default) locally,
    and ``records``, where given, the committed records (`records_folder`), read first and
    written for every JSON-serialisable result; ``commit`` is the git commit records name.
    ``executor`` computes missed calls: None, here (a grid's chunks, `calls`, one after
    another); a `gradguess.book.cluster.RayExecutor`, on a Ray cluster (a grid's chunks side
    by side, any other call as one task)."""
    folder: str | Path | None = None
    records: Path | None = None
    commit: str = "unknown"
    executor: object = None

    def entry(self, fn: Callable, args: tuple, kwargs: dict) -> Entry:
        """The `Entry` of ``fn(*args, **kwargs)``."""
        key = call_key(fn, args, kwargs)
        digest = key_hash(key)
        record = None if self.records is None else Path(self.records) / f"{fn.__name__}-{digest}.json"
        return Entry(fn, key, digest, cache_dir(self.folder) / digest, record)

    def read(self, entry: Entry):
        """(True, result) if the call is stored whole, else (False, None). A damaged
        committed record raises; a damaged local file is set aside."""
        key, record = entry.key, entry.record
        as_json, as_tensors = entry.stem.with_suffix(".json"), entry.stem.with_suffix(".pt")
        if record is not None and record.exists():
            try:
                result = read_record(record, key)
            except files.DamagedFileError as damaged:
                raise DamagedRecordError(
                    f"the committed run record {record} {damaged.why}. A committed result "
                    f"is not replaced silently: restore it (`git checkout -- {record}`) or "
                    "delete it to compute the run again") from None
            CACHE_STATS["from cache"] += 1
            CACHE_STATS["from records"] += 1
            return True, result
        for path, read in ((as_json, read_record), (as_tensors, read_tensor_result)):
            if path.exists():
                try:
                    result = read(path, key)
                except files.DamagedFileError as damaged:
                    _set_aside(damaged)
                    continue
                CACHE_STATS["from cache"] += 1
                if record is not None and path == as_json:  # computed before records were kept
                    files.copy_atomically(as_json, record)
                return True, result
        return False, None

    def call(self, fn: Callable, /, *args, **kwargs):
        """``fn(*args, **kwargs)``, read back if stored, else computed (resuming from this
        call's checkpoint, if an earlier attempt left one) and stored."""
        if self.executor is not None and not checkpoints.active() \
                and not self.executor.computes_here(fn, kwargs):
            return self.executor.calls(self, fn, [(args, kwargs)])[0]  # one task
        entry = self.entry(fn, args, kwargs)
        stored, result = self.read(entry)
        if stored:
            return result
        with files.locked(entry.lock, waiting=f"run store: another process is computing "
                                              f"{entry.name}; waiting for it"):
            stored, result = self.read(entry)  # it may have finished
            if stored:
                return result
            started = time.perf_counter()
            with checkpoints.saving_to(entry.checkpoint, store_call=self.call,
                                       store_calls=self.calls_within(entry)):
                result = fn(*args, **kwargs)
            return self.write(entry, result, time.perf_counter() - started)

    def calls(self, fn: Callable, calls: list, within: Entry | None = None) -> list:
        """``[fn(*args, **kwargs) for args, kwargs in calls]``, each stored on its own (a
        grid's chunks, `checkpoints.chunks`, of the call ``within``): one after another, or
        side by side by the ``executor``."""
        if self.executor is None:
            return [self.call(fn, *args, **kwargs) for args, kwargs in calls]
        return self.executor.calls(self, fn, calls, within)

    def calls_within(self, entry: Entry) -> Callable:
        """`calls` for the chunks of the call ``entry`` computes (its errors name it)."""
        return lambda fn, calls: self.calls(fn, calls, within=entry)

    def write(self, entry: Entry, result, seconds: float):
        """Store ``result`` of ``entry``'s call (computed in ``seconds``), delete the call's
        checkpoint, and return the result as a later read gives it."""
        as_json, as_tensors = entry.stem.with_suffix(".json"), entry.stem.with_suffix(".pt")
        CACHE_STATS["computed"] += 1
        text = _as_json(result)
        if text is None:
            files.save_checked({"key": json.dumps(entry.key, sort_keys=True), "result": result},
                               as_tensors)
        else:  # the local file is the record too, so that it can be committed as it is
            body = record_of(entry.fn, entry.key, commit=self.commit, seconds=seconds,
                             result_json=text)
            for path in (as_json, entry.record) if entry.record is not None else (as_json,):
                files.write_atomically(path, body)
            result = json.loads(text)  # as a later read gives it: lists for tuples, str keys
        entry.checkpoint.unlink(missing_ok=True)
        return result


def cached_call(folder, fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` through the local store in ``folder`` (None: the default)."""
    return Store(folder).call(fn, *args, **kwargs)


def cached(fn: Callable, /, *args, **kwargs):
    """``fn(*args, **kwargs)`` through the default local store (see `Store.call`)."""
    return cached_call(None, fn, *args, **kwargs)
