"""The Ray executor (`gradguess.book.cluster`) on a local Ray cluster of two CPUs: a grid's
chunks computed by Ray workers equal the chunks computed here, number for number; a worker
killed mid-chunk is retried and nothing is lost or stored twice; a chunk that raises names
the chapter, the call and the chunk; a bad setting or a missing Ray says what to do."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray
import torch
from ray import cloudpickle

from gradguess.book import cluster
from gradguess.book.chapter import Chapter
from gradguess.book.scales import get_scale
from gradguess.book.settings import chapter_settings
from gradguess.book.store import CACHE_STATS, Store
from gradguess.core.data import Dataset
from gradguess.engine import checkpoints, files
from gradguess.engine.grid import Run, train_grid

ROOT = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import tests/

pytestmark = pytest.mark.usefixtures("empty_store")  # conftest: a run store of its own per test


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    """A Ray cluster of two CPUs on this machine, for this module's tests."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def images(dtype, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g).to(dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return Dataset("synthetic", x, y, x[:64], y[:64], 4, "random numbers")


RUNS = [Run(m, k, lr, o) for m, o in (("backprop", "adamw"), ("w_transpose", "sgd"),
                                      ("activation_perturbation", "adamw"))
        for k, lr in ((0, 1e-2), (1, 1e-3))]


def without_times(histories):
    """Histories as stored (JSON), wall times left out: the numbers a run computes."""
    return [{k: v for k, v in h.items() if k != "seconds"}
            for h in json.loads(json.dumps(histories))]


def stored(tmp_path, suffix):
    return sorted((tmp_path / "runs").glob(f"*{suffix}"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_grid_on_the_cluster_equals_the_grid_computed_here(tmp_path, dtype):
    data = images(dtype)
    grid = dict(depth=2, width=16, epochs=2, batch_size=32, max_replicates=2)
    here = train_grid(data, RUNS, **grid)
    computed = CACHE_STATS["computed"]
    on_ray = Store(executor=cluster.RayExecutor(chapter="test")).call(train_grid, data, RUNS, **grid)
    assert without_times(on_ray) == without_times(here)  # every number, in float32 too
    assert CACHE_STATS["computed"] == computed + 3 + 1  # three chunks and the grid, once each
    assert len(stored(tmp_path, ".json")) == 4
    again = Store(executor=cluster.RayExecutor(chapter="test")).call(train_grid, data, RUNS, **grid)
    assert again == on_ray and CACHE_STATS["computed"] == computed + 4  # read back


def test_a_chapters_independent_calls_side_by_side_equal_them_one_after_another():
    data = images(torch.float64)
    grid = dict(depth=2, width=8, epochs=1, batch_size=32)
    chapter = Chapter("test", get_scale("small"), chapter_settings("cost", "small"),
                      torch.device("cpu"), 0, None, executor=cluster.RayExecutor(chapter="test"))
    parts = [RUNS[:2], RUNS[2:4], RUNS[4:]]
    side_by_side = chapter.side_by_side(
        lambda runs: chapter.cached(train_grid, data, runs, **grid), parts)
    assert [without_times(h) for h in side_by_side] == \
        [without_times(train_grid(data, runs, **grid)) for runs in parts]


def kill_a_worker_mid_chunk(folder: Path, killed: list, stop: threading.Event):
    """Once a chunk has saved its first checkpoint (mid-chunk, its result not yet stored),
    SIGKILL the Ray worker computing it (its process title names the chunk)."""
    while not stop.is_set():
        for checkpoint in folder.glob("*.ckpt.pt"):
            for process in psutil.process_iter(["pid", "cmdline"]):
                if f"ray::chunk train_stack ({checkpoint.name.split('.')[0]})" \
                        in " ".join(process.info["cmdline"] or []):
                    os.kill(process.info["pid"], signal.SIGKILL)
                    killed.append(process.info["pid"])
                    return
        time.sleep(0.02)


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_stored_twice(tmp_path):
    data = images(torch.float64, n=512)
    grid = dict(depth=2, width=32, epochs=6, batch_size=32, max_replicates=3)
    here = train_grid(data, RUNS, **grid)
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=kill_a_worker_mid_chunk,
                              args=(tmp_path / "runs", killed, stop))
    killer.start()
    computed = CACHE_STATS["computed"]
    try:
        on_ray = Store(executor=cluster.RayExecutor(chapter="test")).call(
            train_grid, data, RUNS, **grid)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was killed mid-chunk"
    assert without_times(on_ray) == without_times(here)  # retried, resumed: every number
    assert CACHE_STATS["computed"] == computed + 2 + 1  # each chunk stored once, the grid once
    assert len(stored(tmp_path, ".json")) == 3
    assert not stored(tmp_path, ".ckpt.pt") and not stored(tmp_path, ".corrupt")


def piece(i):
    """A chunk; the second raises."""
    if i == 1:
        raise ValueError(f"piece {i} cannot be computed")
    return {"square": i * i}


def pieces(n):
    return [p["square"] for p in checkpoints.chunks(piece, [((i,), {}) for i in range(n)])]


def test_a_chunk_that_raises_names_the_chapter_the_call_and_the_chunk():
    store = Store(executor=cluster.RayExecutor(chapter="training"))
    with pytest.raises(cluster.ChunkError) as raised:
        store.calls(piece, [((i,), {}) for i in range(3)], within=store.entry(pieces, (3,), {}))
    message = str(raised.value)
    assert message.startswith("training: chunk 2 of 3, piece (")
    assert "of the call pieces (" in message
    assert message.endswith("ValueError: piece 1 cannot be computed")
    with pytest.raises(cluster.ChunkError, match=r"^training: the call pieces \(\w+\) failed "
                                                 r"on the Ray cluster: ValueError: piece 1"):
        store.call(pieces, 3)  # not a grid: one task, its chunks computed in turn there


def square(x):
    return {"square": (x * x).tolist(), "pid": os.getpid()}


def test_a_call_that_is_not_a_grid_is_one_task_stored_once():
    store = Store(executor=cluster.RayExecutor(chapter="test"))
    x = torch.arange(3.0)
    computed = CACHE_STATS["computed"]
    result = store.call(square, x)
    assert result["square"] == [0.0, 1.0, 4.0] and result["pid"] != os.getpid()  # a worker's
    assert store.call(square, x) == result and CACHE_STATS["computed"] == computed + 1
    assert store.executor.computes_here(train_grid, {})


def test_a_call_another_process_is_computing_is_waited_for_and_read_not_computed(capsys):
    store = Store(executor=cluster.RayExecutor(chapter="test"))
    x = torch.arange(4.0)
    entry = store.entry(square, (x,), {})
    locked = threading.Event()

    def another_process():  # its own lock file handle: flock tells it apart as it would a process
        with files.locked(entry.lock):
            locked.set()
            time.sleep(2)
            store.write(entry, square(x), 2.0)

    other = threading.Thread(target=another_process)
    other.start()
    locked.wait()
    computed = CACHE_STATS["computed"]
    result = store.call(square, x)
    other.join()
    assert result["pid"] == os.getpid()  # the other's result, computed here, not a worker's
    assert CACHE_STATS["computed"] == computed + 1  # the other's write only
    assert "another process is computing square (" in capsys.readouterr().err


def test_a_worker_with_other_code_refuses_the_chunk():
    setting = {"code": {"modules": ["gradguess.engine.grid"], "fingerprint": "0" * 16},
               "torch": torch.__version__, "threads": 1, "tf32": False, "compile": "auto"}
    with pytest.raises(cluster.ClusterError, match="start the cluster from the same checkout"):
        cluster.compute_chunk(piece, "/nonexistent/c.pt", setting, [], 0)


def test_executor_settings_and_a_missing_ray_say_what_to_do(monkeypatch):
    assert cluster.parse(None) == ("local", None) == cluster.parse("local")
    assert cluster.parse("ray") == ("ray", None)
    assert cluster.parse("ray:10.0.0.1:6379") == ("ray", "10.0.0.1:6379")
    with pytest.raises(cluster.ClusterError, match="one of local, ray, ray:ADDRESS"):
        cluster.parse("slurm")
    assert cluster.from_setting("local", "x") is None
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(cluster.ClusterError, match=r"pip install -e '\.\[cluster\]'"):
        cluster.from_setting("ray", "x")


def test_the_execution_script_refuses_a_bad_executor_in_one_line():
    done = subprocess.run([sys.executable, "scripts/execute.py", "cost", "--executor", "slurm"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert "the executor must be one of local, ray, ray:ADDRESS, got 'slurm'" in done.stderr
