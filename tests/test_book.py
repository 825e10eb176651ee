"""The book's sources and committed executions stay consistent with each other."""
import ast
import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from gradguess.book.rules import CLAIM_IDS
from gradguess.analysis.decisions import VERDICTS
from gradguess.book.ledger import Ledger
from gradguess.book.provenance import source_fingerprint
from gradguess.book.report import execution_status, provenance_of
from gradguess.book.scales import SCALES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "book" / "chapters"
EXECUTED = ROOT / "book" / "executed"
CHAPTERS = sorted(p.stem for p in SOURCES.glob("*.md"))
REQUIRED_PARAMETERS = ("scale", "device", "dataset", "seed")


def code_sources(notebook) -> list[str]:
    """Code cells but the parameters, whose executed copy shows the values that ran."""
    skip = {"parameters", "injected-parameters"}
    return [c.source.strip() for c in notebook.cells
            if c.cell_type == "code" and not skip & set(c.metadata.get("tags", []))]


def test_sources_are_text_only_myst_notebooks():
    assert CHAPTERS, "no chapter sources"
    stray = [p.name for p in SOURCES.iterdir() if p.suffix != ".md"]
    assert not stray, f"only MyST-markdown sources belong in book/chapters: {stray}"
    for name in CHAPTERS:
        text = (SOURCES / f"{name}.md").read_text()
        assert "format_name: myst" in text, name
        assert "cell_metadata_filter: -all" not in text, f"{name}: that filter drops the parameters tag"
        notebook = jupytext.read(SOURCES / f"{name}.md")
        for cell in notebook.cells:
            assert not cell.get("outputs") and cell.get("execution_count") is None, name


@pytest.mark.parametrize("name", CHAPTERS)
def test_each_source_has_a_parameters_cell(name):
    cells = [c for c in jupytext.read(SOURCES / f"{name}.md").cells
             if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}: exactly one parameters-tagged cell"
    for parameter in REQUIRED_PARAMETERS:
        assert f"{parameter} =" in cells[0].source, f"{name}: parameter {parameter} missing"


@pytest.mark.parametrize("name", CHAPTERS)
def test_executed_page_shows_one_parameters_cell_with_the_values_that_ran(name):
    notebook = nbformat.read(EXECUTED / f"{name}.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in notebook.cells]
    assert not any("injected-parameters" in t for t in tags), f"{name}: papermill's cell shown too"
    [cell] = [c for c, t in zip(notebook.cells, tags) if "parameters" in t]
    namespace = {}
    exec(cell.source, namespace)
    for key, value in notebook.metadata["papermill"]["parameters"].items():
        assert namespace[key] == value, f"{name}: the page shows {key} = {namespace[key]!r}, ran {value!r}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_execution_is_of_the_current_source(name):
    executed = EXECUTED / f"{name}.ipynb"
    assert executed.exists(), f"{name} has no committed execution: make execute CHAPTER={name}"
    current = code_sources(jupytext.read(SOURCES / f"{name}.md"))
    ran = code_sources(nbformat.read(executed, as_version=4))
    assert ran == current, f"{name}: the committed execution is stale; execute it again"
    small = EXECUTED / "small" / f"{name}.ipynb"  # CI's copy while a larger run is rendered
    if small.exists():
        assert code_sources(nbformat.read(small, as_version=4)) == current, \
            f"{name}: the committed small-scale execution is stale; execute it again at small scale"


@pytest.mark.parametrize("name", CHAPTERS)
def test_committed_execution_ran_cleanly_and_records_provenance(name):
    notebook = nbformat.read(EXECUTED / f"{name}.ipynb", as_version=4)
    assert notebook.metadata["papermill"]["parameters"]["scale"] in SCALES
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    last = [c for c in notebook.cells if c.cell_type == "code"][-1]
    text = json.dumps(last.outputs)
    for field in ("scale", "device", "dataset", "seed", "git commit", "torch", "wall time"):
        assert field in text, f"{name}: provenance cell lacks {field}"


def test_ledgers_are_whole_and_match_their_notebooks():
    ledgers = sorted(EXECUTED.glob("*.ledger.json"))
    assert ledgers, "no chapter ledger committed"
    for path in ledgers:
        ledger = Ledger.load(path)
        notebook = nbformat.read(EXECUTED / path.name.replace(".ledger.json", ".ipynb"), as_version=4)
        assert ledger.scale == notebook.metadata["papermill"]["parameters"]["scale"]
        for claim in ledger.claims:
            assert claim.id in CLAIM_IDS and claim.verdict in VERDICTS
            assert claim.paper and claim.ours and claim.rule
        printed = "".join(o.get("text", "") for c in notebook.cells
                          if "NBVAL_CHECK_OUTPUT" in c.source for o in c.outputs)
        assert printed.strip() == ledger.verdicts(), f"{path.name}: ledger and verdict cell differ"


EXECUTIONS = sorted(EXECUTED.glob("*.ipynb")) + sorted((EXECUTED / "small").glob("*.ipynb"))


@pytest.mark.parametrize("path", EXECUTIONS, ids=lambda p: p.relative_to(EXECUTED).as_posix())
def test_committed_execution_ran_todays_code_from_a_clean_commit(path):
    record = provenance_of(json.loads(path.read_text()))
    assert "+changes" not in record.get("git commit", "+changes"), \
        f"{path.name} ran from a tree with uncommitted changes ({record.get('git commit')}): commit, then execute"
    assert record.get("source fingerprint") == source_fingerprint(path.stem), \
        f"{path.name} ran other code than today's package and chapter source: execute it again"


def test_status_page_agrees_with_every_pages_own_record():
    notebook = json.loads((EXECUTED / "status.ipynb").read_text())
    glued = {record["name"]: "".join(output["data"][record.get("mime_prefix", "") + "text/plain"])
             for cell in notebook["cells"] for output in cell.get("outputs", [])
             if (record := output.get("metadata", {}).get("scrapbook", {})).get("name")}
    shown = ast.literal_eval(glued["status_records"])
    recorded = execution_status(EXECUTED).drop(index="status").to_dict(orient="index")
    assert shown == recorded, "the status page is older than a page it lists: execute status again, last"


MAX_CODE_LINE = 88  # what fits a code cell of the text column at a 1280 px window
# A method's colour comes from its record (`plotting.color`, `plotting.variants`); a figure may
# add neutral greys for references, never another colour, nor a colour map that would give a
# method's variants hues of their own.
LITERAL_COLOUR = re.compile(r"""["'](?:#[0-9a-fA-F]{3,8}|C\d|(?:tab:|xkcd:)?(?:red|blue|green|orange|purple|brown|pink|"""
                            r"""olive|cyan|navy|teal|magenta|yellow|gold|crimson|darkred|darkblue))["']""")
COLOUR_MAP = re.compile(r"\bplt\.cm\.|\bcmap\s*=\s*(?!mpl\.colors\.ListedColormap)|\bcm\.[a-z]+\(")


@pytest.mark.parametrize("name", CHAPTERS)
def test_code_lines_fit_the_page(name):
    long = [line for cell in jupytext.read(SOURCES / f"{name}.md").cells if cell.cell_type == "code"
            for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long, f"{name}: {len(long)} code lines longer than {MAX_CODE_LINE} characters: {long[:3]}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_figures_draw_methods_in_their_registered_colours_only(name):
    code = "\n".join(c.source for c in jupytext.read(SOURCES / f"{name}.md").cells if c.cell_type == "code")
    code = re.sub(r"background_gradient\([^)]*\)", "", code)  # a table's shading, not a method's colour
    assert not LITERAL_COLOUR.findall(code), f"{name}: a literal colour: {LITERAL_COLOUR.findall(code)}"
    assert not COLOUR_MAP.findall(code), f"{name}: a colour map; shade a method with plotting.variants"


@pytest.mark.parametrize("name", CHAPTERS)
def test_one_name_for_w_transpose_in_text_and_one_in_math(name):
    text = (SOURCES / f"{name}.md").read_text()
    assert "W^T" not in text, f"{name}: write Wᵀ in text and $W^\\top$ in formulas, not W^T"
