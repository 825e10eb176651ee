"""scripts/execute.py never lets a smaller-scale run replace a larger-scale rendering."""
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "execute.py"


@pytest.fixture
def execute(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("execute_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(module, "EXECUTED", tmp_path / "executed")
    return module


def fake_run(folder: Path, chapter: str, scale: str, marker: str, ledger: bool = True):
    folder.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["papermill"] = {"parameters": {"scale": scale}}
    notebook.cells.append(nbformat.v4.new_markdown_cell(marker))
    nbformat.write(notebook, folder / f"{chapter}.ipynb")
    if ledger:
        (folder / f"{chapter}.ledger.json").write_text(f'{{"marker": "{marker}"}}')


def rendered_marker(execute, chapter):
    return nbformat.read(execute.EXECUTED / f"{chapter}.ipynb", as_version=4).cells[0].source


def test_small_run_never_replaces_a_paper_rendering(execute):
    fake_run(execute.EXECUTED, "ch", "paper", "gpu run")
    fake_run(execute.RUNS / "small", "ch", "small", "cpu run")
    execute.promote("ch", "small")
    assert rendered_marker(execute, "ch") == "gpu run"
    assert "gpu run" in (execute.EXECUTED / "ch.ledger.json").read_text()


def test_same_or_larger_scale_replaces_the_rendering_and_its_ledger(execute):
    fake_run(execute.EXECUTED, "ch", "small", "old")
    fake_run(execute.RUNS / "paper", "ch", "paper", "new")
    execute.promote("ch", "paper")
    assert rendered_marker(execute, "ch") == "new"
    assert "new" in (execute.EXECUTED / "ch.ledger.json").read_text()
    fake_run(execute.RUNS / "paper", "ch", "paper", "newer", ledger=False)
    (execute.RUNS / "paper" / "ch.ledger.json").unlink()
    execute.promote("ch", "paper")
    assert rendered_marker(execute, "ch") == "newer"
    assert not (execute.EXECUTED / "ch.ledger.json").exists()  # no stale ledger left behind


def test_scale_order_is_small_then_gpu_then_paper(execute):
    assert execute.SCALE_RANK["small"] < execute.SCALE_RANK["gpu"] < execute.SCALE_RANK["paper"]


def test_the_small_execution_ci_compares_with_is_kept_beside_a_larger_rendering(execute, monkeypatch):
    monkeypatch.setattr(execute, "chapters", lambda: ["ch", "other"])
    fake_run(execute.RUNS / "small", "ch", "small", "cpu run")
    execute.promote("ch", "small")
    fake_run(execute.RUNS / "small", "other", "small", "other cpu run")
    execute.promote("other", "small")
    assert execute.small_executions() == [execute.EXECUTED / "ch.ipynb", execute.EXECUTED / "other.ipynb"]
    fake_run(execute.RUNS / "gpu", "ch", "gpu", "gpu run")
    execute.promote("ch", "gpu")  # the small run moves aside for CI
    assert rendered_marker(execute, "ch") == "gpu run"
    assert execute.small_executions()[0] == execute.small_copy("ch")
    fake_run(execute.RUNS / "small", "ch", "small", "newer cpu run")
    execute.promote("ch", "small")  # a newer small run updates CI's copy, not the page
    assert rendered_marker(execute, "ch") == "gpu run"
    assert nbformat.read(execute.small_copy("ch"), as_version=4).cells[0].source == "newer cpu run"


def test_promote_only_renders_runs_executed_elsewhere_without_executing(execute, monkeypatch):
    monkeypatch.setattr(execute, "chapters", lambda: ["ch", "other"])
    monkeypatch.setattr(execute, "execute", lambda *a: pytest.fail("--promote-only executed a chapter"))
    fake_run(execute.EXECUTED, "ch", "small", "cpu run")
    fake_run(execute.RUNS / "gpu", "ch", "gpu", "gpu run")  # as unpacked from a GPU machine
    monkeypatch.setattr("sys.argv", ["execute.py", "--all", "--scale", "gpu", "--promote-only"])
    execute.main()  # "other" has no gpu run: left alone
    assert rendered_marker(execute, "ch") == "gpu run"
    assert execute.small_executions() == [execute.small_copy("ch")]


def test_the_injected_values_replace_the_defaults_in_one_parameters_cell(execute, tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["papermill"] = {"parameters": {"scale": "gpu", "seed": 3}}
    own = nbformat.v4.new_code_cell('scale = "small"  # the scale\ndevice = "auto"\nseed = 0')
    own.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('# Parameters\nscale = "gpu"\nseed = 3\n')
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells += [own, injected, nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "chapter.ipynb"
    nbformat.write(notebook, path)
    execute.merge_parameters(path)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.source for c in cells] == ['scale = "gpu"    # the scale\ndevice = "auto"\nseed = 3', "x = 1"]


def test_a_larger_scale_execution_commits_its_runs_records_in_the_checkout(execute, monkeypatch):
    """The chapters' store writes records into book/runs/<scale>/records/ (not at small scale)."""
    seen = {}

    def fake_papermill(source, out, parameters, **options):
        seen[parameters["scale"]] = os.environ.get("GRADGUESS_RECORDS")
        fake_run(Path(out).parent, Path(out).stem, parameters["scale"], "run")

    monkeypatch.setattr(execute.papermill, "execute_notebook", fake_papermill)
    monkeypatch.setattr(execute, "SOURCES", Path(__file__).resolve().parents[1] / "book" / "chapters")
    monkeypatch.setattr(execute, "ROOT", execute.RUNS.parent)
    monkeypatch.setenv("GRADGUESS_RECORDS", "/elsewhere")
    monkeypatch.setenv("GRADGUESS_LEDGER", "unused")  # restored after the test
    execute.execute("intro", "gpu", "cpu", None, 0)
    execute.execute("intro", "small", "cpu", None, 0)
    assert seen == {"gpu": str(execute.RUNS / "gpu" / "records"), "small": None}
