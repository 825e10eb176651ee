"""The run store: a run's key holds only the package code it reaches and the device it runs
on; an interrupted run resumes from its checkpoint and its finished chunks; at the larger
scales every JSON result is also committed as a plain record, read before the local folder."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gradguess.book import store
from gradguess.book.store import CACHE_STATS, Store, call_key, reach
from gradguess.engine import checkpoints, files

from conftest import blobs


pytestmark = pytest.mark.usefixtures("empty_store")  # conftest: a run store of its own per test


# ---------------------------------------------------------------- reach

def test_the_reach_follows_imports_not_the_whole_package():
    grid = reach("gradguess.engine.grid")
    assert grid == sorted(grid) and "gradguess.engine.grid" in grid
    assert "gradguess.core.guesses" in grid  # imported by what grid imports
    assert "gradguess.book.plotting" not in grid and "gradguess.book.chapter" not in grid
    assert {"gradguess", "gradguess.engine"} <= set(grid)  # its packages run first
    assert "gradguess.book.plotting" in reach("gradguess.book.chapter")


def test_every_kind_of_import_statement_counts():
    source = """
import gradguess.core.losses
from . import checkpoints
from ..core import guesses
from ..core.metrics import cosine_similarity
def later():
    from gradguess.book import plotting  # a lazy import
    import numpy
"""
    found = store.imported_by(source, "gradguess.engine.training")
    assert {"gradguess.core.losses", "gradguess.engine.checkpoints", "gradguess.core.guesses",
            "gradguess.core.metrics", "gradguess.book.plotting"} <= found
    assert {"gradguess", "gradguess.core", "gradguess.engine", "gradguess.book"} <= found
    assert not any(name.startswith("numpy") for name in found)


def test_a_lazy_import_inside_a_function_is_in_the_reach(monkeypatch):
    read = store.module_source
    monkeypatch.setattr(store, "module_source", lambda name: read(name) + (
        b"\ndef _later():\n    from ..book import plotting\n" if name == "gradguess.core.metrics" else b""))
    store.forget_code()
    assert "gradguess.book.plotting" in reach("gradguess.core.metrics")


def test_the_key_names_the_reach_the_torch_version_and_the_device():
    data = blobs()
    key = call_key(run_on, (data,), {})
    assert key["device"] == "cpu" and key["torch"] == torch.__version__
    assert "gradguess.core.data" in key["code"]["modules"]  # the Dataset's class
    assert "gradguess.book.plotting" not in key["code"]["modules"]
    net = nn.Linear(2, 2)
    assert call_key(run_on, (net,), {})["device"] == "cpu"
    assert call_key(run_on, ([torch.ones(1)],), {"device": "cuda"})["device"] == "cuda"
    assert call_key(run_on, (3,), {"device": torch.device("cuda", 0)})["device"] == "cuda"
    assert call_key(run_on, (3,), {})["device"] == "cpu"  # nothing to say: the CPU
    assert call_key(run_on, (torch.ones(1),), {"device": "cpu"}) != \
        call_key(run_on, (torch.ones(1),), {"device": "cuda"})


def run_on(data, device=None):
    return {"n": 1}


# ---------------------------------------------------------------- checkpoints and chunks

def counting(n):
    """Adds 1 n times, saving after each step; its first attempt stops halfway."""
    state = checkpoints.resume()
    resumed = state is not None
    state = state or {"done": 0, "total": 0}
    for _ in range(state["done"], n):
        if not resumed and state["done"] == n // 2:
            raise KeyboardInterrupt("interrupted")
        state = {"done": state["done"] + 1, "total": state["total"] + 1}
        checkpoints.save(state)
    return {"total": state["total"], "resumed at": n // 2 if resumed else 0}


def test_an_interrupted_call_resumes_from_its_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        store.cached(counting, 6)
    [saved] = list(store.cache_dir().glob("*.ckpt.pt"))
    assert files.load_checked(saved)["done"] == 3
    assert store.cached(counting, 6) == {"total": 6, "resumed at": 3}
    assert not list(store.cache_dir().glob("*.ckpt.pt"))  # gone once the result is stored
    assert store.cached(counting, 6) == {"total": 6, "resumed at": 3}
    assert checkpoints.resume() is None  # outside a stored call: nowhere to resume from


def piece(i):
    """One chunk; the third fails if $CHUNKED_FAIL is set."""
    if os.environ.get("CHUNKED_FAIL") and i == 2:
        raise RuntimeError("interrupted")
    return {"square": i * i}


def chunked(n):
    """n pieces, each stored on its own."""
    return [r["square"] for r in checkpoints.chunks(piece, [((i,), {}) for i in range(n)])]


def test_a_grids_finished_chunks_are_read_back_after_an_interruption(monkeypatch):
    monkeypatch.setenv("CHUNKED_FAIL", "1")
    computed = CACHE_STATS["computed"]
    with pytest.raises(RuntimeError):
        store.cached(chunked, 4)
    assert CACHE_STATS["computed"] == computed + 2  # two chunks stored
    monkeypatch.delenv("CHUNKED_FAIL")
    read = CACHE_STATS["from cache"]
    assert store.cached(chunked, 4) == [0, 1, 4, 9]
    assert CACHE_STATS["from cache"] == read + 2  # the finished chunks
    assert CACHE_STATS["computed"] == computed + 2 + 3  # the two others and the whole
    assert store.cached(piece, 3) == {"square": 9}  # a chunk is a call like any other
    assert CACHE_STATS["computed"] == computed + 5


# ---------------------------------------------------------------- committed records

def summary(data, *, epochs: int):
    return {"acc": [0.5] * epochs, "diverged": False, "loss": float("nan")}


def weights(size):
    return {"w": torch.arange(float(size))}


def test_a_larger_scale_commits_a_readable_record_that_a_fresh_store_reads(tmp_path):
    records = store.records_folder("gpu")
    assert records is not None and records.parts[-3:] == ("runs", "gpu", "records")
    assert store.records_folder("small") is None
    records = tmp_path / "book" / "runs" / "gpu" / "records"
    gpu = Store(tmp_path / "local", records=records, commit="abc123")
    data = blobs()
    result = gpu.call(summary, data, epochs=2)
    [path] = list(records.glob("*.json"))
    digest = store.key_hash(call_key(summary, (data,), {"epochs": 2}))
    assert path.name == f"summary-{digest}.json"
    record = json.loads(path.read_text())
    assert record["function"].endswith("test_store.summary")
    assert record["arguments"]["epochs"] == 2 and "Dataset" in record["arguments"]["data"]
    assert "gradguess.core.data" in record["code"]["modules"] and record["code"]["fingerprint"]
    assert record["git commit"] == "abc123" and record["device"] == "cpu"
    assert record["torch"] == torch.__version__ and record["wall time (s)"] >= 0
    assert record["result"]["acc"] == result["acc"] == [0.5, 0.5]
    assert math.isnan(record["result"]["loss"])  # plain JSON (NaN as Python's json writes it)
    # another process with an empty local folder of its own: the record answers
    script = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from conftest import blobs\n"
              "from gradguess.book.store import Store, CACHE_STATS\n"
              "import test_store\n"
              f"store = Store({str(tmp_path / 'other')!r}, records=__import__('pathlib').Path({str(records)!r}))\n"
              "print(json.dumps([store.call(test_store.summary, blobs(), epochs=2)['acc'], CACHE_STATS]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    acc, stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert acc == [0.5, 0.5] and stats["computed"] == 0 and stats["from records"] == 1
    assert not (tmp_path / "other").exists()
    # tensors stay in the local folder only
    gpu.call(weights, 3)
    assert len(list(records.glob("*.json"))) == 1 and len(list((tmp_path / "local").glob("*.pt"))) == 1


def test_a_small_scale_store_commits_nothing(tmp_path):
    local = Store(tmp_path / "local")
    local.call(summary, blobs(), epochs=1)
    assert not list(tmp_path.rglob("records"))


def test_a_chapter_at_gpu_scale_writes_its_records_where_it_is_told(tmp_path, monkeypatch):
    from gradguess.book.chapter import start
    monkeypatch.setenv("GRADGUESS_RECORDS", str(tmp_path / "records"))
    monkeypatch.delenv("GRADGUESS_SCALE", raising=False)
    gpu = start("architecture", scale="gpu", device="cpu", load=False, quiet=True)
    assert gpu.store.records == tmp_path / "records" and gpu.store.commit
    gpu.cached(summary, blobs(), epochs=1)
    assert len(list((tmp_path / "records").glob("summary-*.json"))) == 1
    small = start("architecture", scale="small", device="cpu", load=False, quiet=True)
    assert small.store.records is None


def test_a_run_stored_only_locally_is_committed_when_a_larger_scale_reads_it(tmp_path):
    data = blobs()
    Store(tmp_path / "local", commit="abc123").call(summary, data, epochs=3)
    records = tmp_path / "records"
    computed = CACHE_STATS["computed"]
    again = Store(tmp_path / "local", records=records, commit="def456").call(summary, data, epochs=3)
    assert CACHE_STATS["computed"] == computed and again["acc"] == [0.5] * 3
    [path] = list(records.glob("summary-*.json"))
    assert json.loads(path.read_text())["git commit"] == "abc123"  # the commit that computed it
