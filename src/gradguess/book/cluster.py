"""A grid's chunks on a Ray cluster: the run store's executor for many GPUs.

``GRADGUESS_EXECUTOR`` (``scripts/execute.py --executor``) says where the chunks of a grid
(`gradguess.engine.checkpoints.chunks`) that the run store misses are computed:

- ``local`` (the default): one after another, in the chapter's process;
- ``ray`` or ``ray:ADDRESS``: side by side on a Ray cluster. ``ADDRESS`` is a running
  cluster's (``auto``, or ``HOST:6379`` as ``ray start --head`` prints it); without one, the
  cluster ``RAY_ADDRESS`` names, else a new cluster on this machine.

With Ray, a call the store misses is computed on the cluster as one task, unless it hands its
chunks to the store (`HANDS_OUT_CHUNKS`: a grid); then it runs in the chapter's process and its
chunks are the tasks. In both cases (`RayExecutor.calls`):

- a chunk the store holds is read back. Every chunk it misses, and that no other process is
  computing (its lock, `Entry.lock`, is free), is submitted as a Ray task, with one GPU where
  the chunk runs on CUDA; a chunk another process is computing is waited for, then read;
- this process stores each chunk as it arrives (`Store.write`): an interrupted chapter keeps
  every finished chunk, and a chunk is stored once, whole, or not at all;
- a task computes the chunk as this process would: the same function and arguments, the same
  torch thread count, TF32 and compile settings, and the same package code (checked: a worker
  whose code or torch differ from the key's refuses). A chunk computed by a worker is the local
  chunk, number for number, on the same device type. It saves its checkpoint where the store
  keeps it, if that folder is on the worker's machine, so that a retried chunk resumes;
- a worker that dies mid-chunk (killed, out of memory) is retried by Ray (``max_retries``):
  what it had done is never stored as a result;
- a chunk that raises stops the chapter with `ChunkError`, naming the chapter, the call and
  the chunk.

Ray is an optional extra (``pip install -e '.[cluster]'``); asking for it without it raises
`ClusterError`, which says how to install it.
"""
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..engine import checkpoints, files

EXECUTORS = ("local", "ray", "ray:ADDRESS")
# Calls that hand their chunks to the store (`checkpoints.chunks`), by the keyword arguments
# they are called with: computed in the chapter's process, each of their chunks a task.
HANDS_OUT_CHUNKS = {
    "gradguess.engine.grid.train_grid": lambda kwargs: True,
    "gradguess.engine.mixer_grid.train_mixer_stack":
        lambda kwargs: kwargs.get("max_replicates") is not None,
}


class ClusterError(RuntimeError):
    """The executor setting, Ray or the cluster is not usable as asked."""


class ChunkError(RuntimeError):
    """A chunk that raised on the cluster (or whose worker died past its retries)."""


def parse(setting: str | None) -> tuple[str, str | None]:
    """(``"local"``, None) or (``"ray"``, the address or None) from ``setting``."""
    setting = (setting or "local").strip()
    if setting == "local":
        return "local", None
    kind, _, address = setting.partition(":")
    if kind != "ray":
        raise ClusterError(f"the executor must be one of {', '.join(EXECUTORS)}, got {setting!r}")
    return "ray", address or None


def require_ray():
    """The ``ray`` module, or `ClusterError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("the Ray executor needs Ray, an optional extra: "
                           "pip install -e '.[cluster]' (or pip install 'ray>=2.9')") from None
    return ray


_JOINING = threading.Lock()  # a chapter's calls side by side (threads) join once


def connect(address: str | None = None):
    """This process joined to the cluster at ``address`` (see the module's docstring), once."""
    ray = require_ray()
    with _JOINING:
        if ray.is_initialized():
            return ray
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning",
                     log_to_driver=True)
        except ConnectionError as error:
            raise ClusterError(f"no Ray cluster at {address!r} ({error}); start one with "
                               "`ray start --head`, or use --executor ray for a new one on "
                               "this machine") from None
    return ray


def from_setting(setting: str | None, chapter: str) -> "RayExecutor | None":
    """The executor ``setting`` names for ``chapter``: None for local."""
    kind, address = parse(setting)
    if kind == "local":
        return None
    require_ray()  # at the chapter's start, not at its first missed chunk
    return RayExecutor(address, chapter)


def in_words(executor) -> str:
    """The executor for a provenance table: ``local``, or Ray with the cluster's resources."""
    if executor is None:
        return "local"
    ray = connect(executor.address)
    resources = ray.cluster_resources()
    return (f"Ray ({len(ray.nodes())} node(s), {resources.get('GPU', 0):g} GPU(s), "
            f"{resources.get('CPU', 0):g} CPU(s))")


def compute_chunk(fn, checkpoint: str, setting: dict, names: list, *values):
    """A Ray task: ``fn(*args, **kwargs)`` (``values``: the positional arguments, then the
    keyword arguments ``names`` names) under this process's ``setting``, with its checkpoint
    at ``checkpoint`` where that folder exists here. Returns (result, seconds)."""
    from . import store  # a worker checks its own code against the key
    modules = setting["code"]["modules"]
    if store.reach_fingerprint(modules) != setting["code"]["fingerprint"] \
            or torch.__version__ != setting["torch"]:
        raise ClusterError(
            f"this Ray worker's code (gradguess {store.reach_fingerprint(modules)}, torch "
            f"{torch.__version__}) is not the chapter's ({setting['code']['fingerprint']}, "
            f"{setting['torch']}): start the cluster from the same checkout and environment")
    torch.set_num_threads(setting["threads"])
    torch.backends.cuda.matmul.allow_tf32 = setting["tf32"]
    os.environ["GRADGUESS_COMPILE"] = setting["compile"]
    split = len(values) - len(names)
    args, kwargs = values[:split], dict(zip(names, values[split:]))
    started = time.perf_counter()
    if Path(checkpoint).parent.is_dir():
        with checkpoints.saving_to(checkpoint, store_call=lambda f, *a, **k: f(*a, **k)):
            result = fn(*args, **kwargs)
    else:
        result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


@lru_cache(maxsize=None)
def _remote(ray, max_retries: int):
    return ray.remote(max_retries=max_retries, retry_exceptions=False)(compute_chunk)


@dataclass(frozen=True)
class RayExecutor:
    """Computes a grid's missed chunks as Ray tasks (the module's docstring); ``chapter``
    names the chapter in errors; a chunk whose worker dies is retried ``max_retries`` times."""
    address: str | None = None
    chapter: str = "?"
    max_retries: int = 3

    def computes_here(self, fn, kwargs: dict) -> bool:
        """Whether a call of ``fn`` with ``kwargs`` runs in this process, its chunks on the
        cluster (`HANDS_OUT_CHUNKS`), rather than as one task."""
        hands_out = HANDS_OUT_CHUNKS.get(f"{fn.__module__}.{fn.__qualname__}")
        return hands_out is not None and hands_out(kwargs)

    def setting(self, key: dict) -> dict:
        """What a task needs to compute a chunk as this process does."""
        from ..engine import step
        return {"threads": torch.get_num_threads(), "code": key["code"], "torch": key["torch"],
                "tf32": bool(torch.backends.cuda.matmul.allow_tf32), "compile": step.setting()}

    def calls(self, store, fn, calls: list, within=None) -> list:
        """``[fn(*args, **kwargs) for args, kwargs in calls]`` through ``store``, the misses
        computed on the cluster side by side; ``within``: the `Entry` of the call they are
        chunks of (None: each is a call of the chapter's)."""
        ray = connect(self.address)
        remote = _remote(ray, self.max_retries)
        entries = [store.entry(fn, args, kwargs) for args, kwargs in calls]
        results, elsewhere, pending, locks = [None] * len(calls), [], {}, {}
        objects = {}  # each argument put in the object store once (a dataset is shared)
        try:
            for i, (entry, (args, kwargs)) in enumerate(zip(entries, calls)):
                stored, results[i] = store.read(entry)
                if stored:
                    continue
                lock = ExitStack()
                if not lock.enter_context(files.try_lock(entry.lock)):
                    lock.close()
                    elsewhere.append(i)  # another process computes it: read it when it is done
                    continue
                locks[i] = lock
                stored, results[i] = store.read(entry)  # it may have finished meanwhile
                if stored:
                    locks.pop(i).close()
                    continue
                values = []
                for value in (*args, *kwargs.values()):
                    if id(value) not in objects:  # the value kept, so that its id stays its own
                        objects[id(value)] = value, ray.put(value)
                    values.append(objects[id(value)][1])
                gpus = 1 if entry.key["device"].startswith("cuda") else 0
                ref = remote.options(num_gpus=gpus, num_cpus=1, name=f"chunk {entry.name}").remote(
                    fn, str(entry.checkpoint), self.setting(entry.key), list(kwargs), *values)
                pending[ref] = i
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                try:
                    result, seconds = ray.get(done[0])
                except ray.exceptions.RayError as error:
                    self._store_finished(ray, store, pending, entries, locks)
                    raise self._failed(error, entries[i], i, len(calls), within) from error
                results[i] = store.write(entries[i], result, seconds)  # as it arrives
                locks.pop(i).close()
        except BaseException:
            for ref in pending:  # an interruption: what finished is stored, the rest stops
                ray.cancel(ref, force=True)
            raise
        finally:
            for lock in locks.values():
                lock.close()
        for i in elsewhere:  # wait for the other process; read its result (or compute it
            # here, on the cluster, if that process stopped without storing it)
            with files.locked(entries[i].lock, waiting=f"run store: another process is "
                                                        f"computing {entries[i].name}; waiting for it"):
                pass
            results[i] = self.calls(store, fn, [calls[i]], within)[0]
        return results

    @staticmethod
    def _store_finished(ray, store, pending: dict, entries: list, locks: dict) -> None:
        """Store the chunks that have finished beside one that failed: kept for next time."""
        if not pending:
            return
        finished, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in finished:
            i = pending.pop(ref)
            try:
                store.write(entries[i], *ray.get(ref))
            except ray.exceptions.RayError:
                pass  # failed too: the first failure is the one reported
            locks.pop(i).close()

    def _failed(self, error, entry, i: int, n: int, within) -> ChunkError:
        cause = getattr(error, "cause", None) or error
        what = str(cause).strip().splitlines()
        which = (f"chunk {i + 1} of {n}, {entry.name}, of the call {within.name}"
                 if within is not None else f"the call {entry.name}")
        return ChunkError(f"{self.chapter}: {which} failed on the Ray cluster: "
                          f"{type(cause).__name__}: {what[-1] if what else ''}")
