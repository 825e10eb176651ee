"""Faults of the run store and the execution script: a damaged local record is set aside and
computed again, a damaged committed one stops the chapter, a full disk leaves the old file,
and two writers at once corrupt nothing."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradguess.book import store
from gradguess.book.store import CACHE_STATS, DamagedRecordError, Store
from gradguess.engine import checkpoints, files

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("empty_store")  # conftest: a run store of its own per test


def measured(n):
    """A stand-in for a run: numbers that depend on n."""
    return {"n": n, "values": [n / 3, n / 7]}


def weights(n):
    return {"w": torch.arange(n, dtype=torch.float32)}


def computed_counts(call):
    before = CACHE_STATS["computed"]
    result = call()
    return result, CACHE_STATS["computed"] - before


def only(folder, pattern):
    [path] = list(Path(folder).glob(pattern))
    return path


DAMAGES = {
    "a merge's conflict markers": lambda text: "<<<<<<< HEAD\n" + text + "=======\n>>>>>>> other\n",
    "cut short": lambda text: text[: len(text) // 2],
    "a number changed": lambda text: text.replace('"n": 5', '"n": 6', 1),
    "no checksum": lambda text: "\n".join(line for line in text.splitlines()
                                          if '"sha256"' not in line) + "\n",
    "empty (a full disk)": lambda text: "",
}
REASONS = {"a merge's conflict markers": "does not parse", "cut short": "does not parse",
           "a number changed": "fails its checksum", "no checksum": "has no checksum",
           "empty (a full disk)": "does not parse"}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_local_record_is_set_aside_and_computed_again(tmp_path, capsys, damage):
    first, _ = computed_counts(lambda: store.cached(measured, 5))
    record = only(tmp_path / "runs", "*.json")
    good = record.read_text()
    record.write_text(DAMAGES[damage](good))
    damaged = record.read_text()
    again, computed = computed_counts(lambda: store.cached(measured, 5))
    assert again == first and computed == 1
    assert record.read_text() == good  # written afresh, whole
    aside = record.with_name(record.name + ".corrupt")
    assert aside.read_text() == damaged  # kept for a look, not deleted
    message = capsys.readouterr().err
    assert f"run store: {record} {REASONS[damage]}" in message
    assert f"moved it aside to {aside.name} and computing the run again" in message
    # read back now, nothing computed
    assert computed_counts(lambda: store.cached(measured, 5)) == (first, 0)


def test_a_record_under_another_calls_name_is_not_read(tmp_path, capsys):
    store.cached(measured, 5)
    store.cached(measured, 6)
    five, six = sorted((tmp_path / "runs").glob("*.json"),
                       key=lambda p: json.loads(p.read_text())["result"]["n"])
    six.write_text(five.read_text())  # a valid record, but another call's
    assert computed_counts(lambda: store.cached(measured, 6)) == (measured(6), 1)
    assert "holds another call's key" in capsys.readouterr().err


def test_a_damaged_committed_record_stops_the_chapter_naming_it(tmp_path):
    committed = Store(tmp_path / "local", records=tmp_path / "records", commit="abc")
    committed.call(measured, 5)
    record = only(tmp_path / "records", "*.json")
    record.write_text(DAMAGES["a merge's conflict markers"](record.read_text()))
    damaged = record.read_text()
    with pytest.raises(DamagedRecordError) as error:
        committed.call(measured, 5)
    message = str(error.value)
    assert f"the committed run record {record} does not parse" in message
    assert "git checkout" in message and "delete it" in message
    assert record.read_text() == damaged  # data: not replaced, not moved
    record.unlink()  # deleting it computes the run again (here: from the local copy)
    assert committed.call(measured, 5) == measured(5) and record.exists()


def test_a_damaged_tensor_result_is_set_aside_and_computed_again(tmp_path, capsys):
    store.cached(weights, 4)
    saved = only(tmp_path / "runs", "*.pt")
    saved.write_bytes(saved.read_bytes()[:200])
    result, computed = computed_counts(lambda: store.cached(weights, 4))
    assert computed == 1 and torch.equal(result["w"], torch.arange(4.0))
    assert saved.with_name(saved.name + ".corrupt").exists()
    assert "does not load" in capsys.readouterr().err
    # a checksum catches what still loads: a tensor's bytes changed in place
    content = files.load_checked(saved)
    content["result"]["w"][0] = 9.0
    torch.save({"content": content, "sha256": files.content_checksum(weights(4))}, saved)
    assert computed_counts(lambda: store.cached(weights, 4))[1] == 1
    assert "fails its checksum" in capsys.readouterr().err


def counting(n):
    state = checkpoints.resume() or {"done": 0}
    for _ in range(state["done"], n):
        state = {"done": state["done"] + 1}
        checkpoints.save(state)
    return state["done"]


def test_a_damaged_checkpoint_is_set_aside_and_the_run_starts_over(tmp_path, capsys):
    key = store.key_hash(store.call_key(counting, (3,), {}))
    progress = tmp_path / "runs" / f"{key}.ckpt.pt"
    progress.parent.mkdir(parents=True)
    progress.write_bytes(b"PK\x03\x04 half a checkpoint")
    assert store.cached(counting, 3) == 3
    assert progress.with_name(progress.name + ".corrupt").exists() and not progress.exists()
    assert "and starting the run from the beginning" in capsys.readouterr().err


def no_space_after_half(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_previous_file_whole_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "notebook.ipynb"
    files.write_atomically(path, "the previous, good file")
    monkeypatch.setattr(files, "_write_file", no_space_after_half)
    with pytest.raises(OSError) as error:
        files.write_atomically(path, "a new file " * 1000)
    assert error.value.errno == errno.ENOSPC
    assert f"could not write {path} (no space left on device); the previous file is left as it " \
           "was" in str(error.value)
    assert path.read_text() == "the previous, good file"
    assert [p.name for p in tmp_path.iterdir()] == ["notebook.ipynb"]  # no temporary file left


def test_a_full_disk_while_storing_leaves_no_record_and_the_next_call_computes(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_write_file", no_space_after_half)
    with pytest.raises(OSError, match=rf"could not write {tmp_path / 'runs'}/\w+\.json"):
        store.cached(measured, 5)
    assert not list((tmp_path / "runs").glob("*.json*"))
    monkeypatch.undo()
    monkeypatch.setenv("GRADGUESS_CACHE", str(tmp_path / "runs"))
    assert computed_counts(lambda: store.cached(measured, 5)) == (measured(5), 1)


# ---------------------------------------------------------------- two writers at once

WRITER = """
import json, sys, time
sys.path.insert(0, {tests!r})
from gradguess.book.store import Store, CACHE_STATS
import test_store_faults

result = Store({folder!r}).call(test_store_faults.slow, {log!r})
print(json.dumps([result, CACHE_STATS["computed"]]))
"""


def slow(log):
    with open(log, "a") as f:
        f.write("computed\n")
    import time
    time.sleep(2)
    return {"values": list(range(20000))}


def test_two_processes_missing_one_call_compute_it_once_and_both_read_it(tmp_path):
    script = WRITER.format(tests=str(TESTS), folder=str(tmp_path / "shared"), log=str(tmp_path / "log"))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert results[0][0] == results[1][0] == {"values": list(range(20000))}
    assert sorted(computed for _, computed in results) == [0, 1]
    assert (tmp_path / "log").read_text() == "computed\n"  # once
    assert "another process is computing slow" in "".join(err for _, err in outs)
    record = only(tmp_path / "shared", "*.json")
    assert store.read_record(record, {}) == results[0][0]  # whole: it parses, passes its checksum


CHAPTER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
# A tiny chapter

```{code-cell} ipython3
:tags: [parameters]
scale = "small"
device = "auto"
seed = 0
```

```{code-cell} ipython3
import json, os, sys, time
time.sleep(1)
print("run store: a line the store prints", file=sys.stderr)
if os.environ.get("TINY_FAILS"):
    raise ValueError("the data is not here; fetch it with `make data`")
print("x" * 200000)
with open(os.environ["GRADGUESS_LEDGER"], "w") as f:
    json.dump({"claims": ["T1"], "seed": seed}, f)
```
"""

EXECUTE = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("execute_script", {script!r})
execute = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute)
root = Path({root!r})
execute.ROOT, execute.SOURCES = root, root / "chapters"
execute.RUNS, execute.EXECUTED = root / "runs", root / "executed"
sys.argv = ["execute.py", "tiny", "--scale", "small", "--device", "cpu"]
execute.main()
"""


def run_executions(tmp_path, n, env=None):
    (tmp_path / "chapters").mkdir(exist_ok=True)
    (tmp_path / "chapters" / "tiny.md").write_text(CHAPTER)
    script = EXECUTE.format(script=str(TESTS.parent / "scripts" / "execute.py"), root=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    return [(p.returncode, *p.communicate(timeout=300)) if p.wait(timeout=300) is not None
            else None for p in procs]


def test_two_executions_of_one_chapter_side_by_side_leave_whole_files(tmp_path):
    import nbformat
    outcomes = run_executions(tmp_path, 2)
    assert [code for code, _, _ in outcomes] == [0, 0], [err for _, _, err in outcomes]
    assert "another execution at small scale is running; waiting" in "".join(e for _, _, e in outcomes)
    for notebook in (tmp_path / "runs" / "small" / "tiny.ipynb", tmp_path / "executed" / "tiny.ipynb"):
        cells = nbformat.read(notebook, as_version=4).cells
        assert cells[-1].outputs[0]["text"] == "x" * 200000 + "\n"
    for ledger in (tmp_path / "runs" / "small" / "tiny.ledger.json",
                   tmp_path / "executed" / "tiny.ledger.json"):
        assert json.loads(ledger.read_text()) == {"claims": ["T1"], "seed": 0}
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failing_chapter_ends_in_one_line_and_keeps_the_previous_execution(tmp_path):
    import os
    assert run_executions(tmp_path, 1)[0][0] == 0
    good = (tmp_path / "executed" / "tiny.ipynb").read_text()
    [(code, _, err)] = run_executions(tmp_path, 1, env={**os.environ, "TINY_FAILS": "1"})
    assert code == 1
    assert err.strip().splitlines()[-3:] == [  # after the kernel's own start-up lines
        "tiny: run store: a line the store prints",  # shown in the terminal too
        "tiny: ValueError: the data is not here; fetch it with `make data`",
        "(the traceback: runs/small/tiny.failed.ipynb)"]
    assert (tmp_path / "executed" / "tiny.ipynb").read_text() == good
    assert (tmp_path / "runs" / "small" / "tiny.ledger.json").exists()


def test_files_are_written_with_the_umasks_mode_not_mkstemps(tmp_path):
    import os
    path = tmp_path / "record.json"
    files.write_atomically(path, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_full_disk_while_promoting_keeps_the_rendered_notebook_and_says_so_in_one_line(
        tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("execute_script", TESTS.parent / "scripts" / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    monkeypatch.setattr(execute, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(execute, "EXECUTED", tmp_path / "executed")
    import nbformat
    for folder, marker in ((tmp_path / "runs" / "small", "new"), (tmp_path / "executed", "old")):
        folder.mkdir(parents=True)
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(marker)])
        notebook.metadata["papermill"] = {"parameters": {"scale": "small"}}
        nbformat.write(notebook, folder / "intro.ipynb")
    rendered = (tmp_path / "executed" / "intro.ipynb").read_text()
    monkeypatch.setattr(files, "_write_file", no_space_after_half)
    monkeypatch.setattr(sys, "argv", ["execute.py", "intro", "--promote-only"])
    with pytest.raises(SystemExit) as stop:
        execute.main()
    assert str(stop.value) == (f"intro: [Errno 28] could not write {tmp_path / 'executed' / 'intro.ipynb'}"
                               " (no space left on device); the previous file is left as it was")
    assert (tmp_path / "executed" / "intro.ipynb").read_text() == rendered
