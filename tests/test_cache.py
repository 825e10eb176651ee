"""Cached runs are keyed by the call itself: every argument, the function's code, the globals it
reads and the package code it reaches; a change to any of them computes anew."""
import importlib
import sys
import textwrap

import pytest
import torch

from gradguess.book import store as cache
from gradguess.book.store import CACHE_STATS, cached, cached_call, call_key
from gradguess.core.metrics import cosine_similarity

from conftest import blobs


def run(data, *, depth: int, width: int = 8, method: str = "w_transpose", options=None, seed=0):
    return {"acc": [0.5, float("nan")], "diverged": True, "pair": (depth, width)}


def pretrain(size):
    return {"w": torch.arange(float(size))}


class Computed:
    """How many results were computed (not read back) since it was made."""

    def __init__(self):
        self.start = CACHE_STATS["computed"]

    def __len__(self):
        return CACHE_STATS["computed"] - self.start


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    global CALLS
    CALLS = Computed()
    monkeypatch.setenv("GRADGUESS_CACHE", str(tmp_path / "runs"))


def test_computes_once_per_call_however_it_is_written():
    data = blobs()
    first = cached(run, data, depth=3)
    again = cached(run, data, depth=3, width=8, seed=0)  # the defaults, spelled out
    assert len(CALLS) == 1 and again["diverged"] and again["acc"][0] == 0.5
    assert first == again  # a fresh result reads as a cached one does (tuples become lists)
    assert again["pair"] == [3, 8]
    assert CACHE_STATS["from cache"] >= 1
    assert not list((cache.cache_dir()).glob("*.tmp"))  # written atomically, no leftovers


@pytest.mark.parametrize("change", [dict(depth=6), dict(width=16), dict(method="backprop"),
                                    dict(options={"k": 2}), dict(seed=1)])
def test_every_argument_is_in_the_key(change):
    data = blobs()
    cached(run, data, depth=3, options={"k": 1})
    cached(run, data, **{"depth": 3, "options": {"k": 1}, **change})
    assert len(CALLS) == 2


def test_the_data_is_keyed_by_content():
    cached(run, blobs(seed=0), depth=3)
    cached(run, blobs(seed=1), depth=3)  # same name and shapes, other images
    assert len(CALLS) == 2
    cached(run, blobs(seed=0).subset(50, seed=0), depth=3)
    cached(run, blobs(seed=0).subset(50, seed=1), depth=3)  # another subset of the same size
    assert len(CALLS) == 4


def uses_the_package(a, b):
    return {"cosine": cosine_similarity(a, b)}


def edit(monkeypatch, module: str):
    """Pretend that ``module``'s source on disk changed (a comment appended)."""
    read = cache.module_source
    monkeypatch.setattr(cache, "module_source",
                        lambda name: read(name) + (b"\n# edited\n" if name == module else b""))
    cache.forget_code()


@pytest.fixture
def forget():
    cache.forget_code()
    yield
    cache.forget_code()


@pytest.mark.parametrize("fn", [cosine_similarity, uses_the_package],
                         ids=["package function", "chapter function reading one"])
def test_the_package_code_it_reaches_is_in_the_key(fn, monkeypatch, forget):
    a, b = torch.ones(3), torch.arange(3.0)
    first = cached(fn, a, b)
    assert "gradguess.core.metrics" in call_key(fn, (a, b), {})["code"]["modules"]
    edit(monkeypatch, "gradguess.book.plotting")  # outside the call's reach: the run is kept
    read = CACHE_STATS["from cache"]
    assert cached(fn, a, b) == first and len(CALLS) == 1
    assert CACHE_STATS["from cache"] == read + 1
    edit(monkeypatch, "gradguess.core.metrics")  # inside it: computed anew
    assert cached(fn, a, b) == first and len(CALLS) == 2


def write_module(folder, body):
    (folder / "chapter_code.py").write_text(textwrap.dedent(body))
    sys.modules.pop("chapter_code", None)
    return importlib.import_module("chapter_code")


def test_the_code_of_a_function_outside_the_package_is_in_the_key(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    body = """
        RATE = {rate}
        def helper(x):
            return x * {factor}
        def experiment(n):
            return {{"value": helper(n) + RATE}}
    """
    module = write_module(tmp_path, body.format(rate=1, factor=2))
    assert cached(module.experiment, 3)["value"] == 7
    assert cached(module.experiment, 3)["value"] == 7 and CACHE_STATS["from cache"] >= 1
    module = write_module(tmp_path, body.format(rate=1, factor=10))  # a helper it calls changed
    assert cached(module.experiment, 3)["value"] == 31
    module = write_module(tmp_path, body.format(rate=5, factor=10))  # a global it reads changed
    assert cached(module.experiment, 3)["value"] == 35


def test_arguments_the_key_cannot_see_are_refused():
    data = blobs()
    with pytest.raises(TypeError, match="cannot key"):
        cached(run, data, depth=3, options={"rng": torch.Generator()})
    with pytest.raises(TypeError, match="closure or lambda"):
        cached(run, data, depth=3, options={"on_epoch": lambda model: {}})
    with pytest.raises(TypeError):
        call_key(run, (data,), {"depth": 3, "colour": "red"})  # not an argument of run


def test_checkpoints_are_computed_once(tmp_path):
    first = cached_call(tmp_path, pretrain, 3)
    again = cached_call(tmp_path, pretrain, 3)
    assert len(CALLS) == 1 and torch.equal(first["w"], again["w"])
    assert len(list(tmp_path.glob("*.pt"))) == 1
