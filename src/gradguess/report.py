"""The book's tables about itself: what each scale means in every chapter (from the settings),
and the reproduction report's two tables, read from what the chapters committed: every claim
from the chapters' ledgers (never retyped), and every chapter's last execution from its
executed notebook (papermill's record and the provenance cell)."""
import json
import re
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .ledger import CLAIM_IDS, Ledger
from .methods import METHODS
from .provenance import _plain
from .scales import SCALES
from .settings import SETTINGS

_ROW = re.compile(r"<tr>\s*<th>(.*?)</th>\s*<td>(.*?)</td>\s*</tr>", re.S)


def _named(value):
    """Method identifiers in a setting as the methods' names (the provenance keeps identifiers)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_named(v) for v in value)
    return METHODS[value].label if isinstance(value, str) and value in METHODS else value


def scales_table(settings: dict | None = None, scales: dict | None = None, *,
                 varying_only: bool = False) -> pd.DataFrame:
    """What each scale means in each chapter: one row per chapter and setting, one column per
    scale, the values as the provenance cells write them (a size of None as "all"; "–" where a
    chapter has no settings at that scale), the scales' descriptions in a first row. With
    ``varying_only``, only the settings that differ between scales."""
    settings = SETTINGS if settings is None else settings
    scales = SCALES if scales is None else scales
    rows = {("", "description"): {name: scale.description for name, scale in scales.items()}}
    for chapter, by_scale in settings.items():
        values = {name: asdict(by_scale[name]) for name in scales if name in by_scale}
        fields = next(iter(values.values()), {})
        for field in fields:
            row = {name: _plain(_named(values[name][field])) if name in values else "–" for name in scales}
            if not varying_only or len(set(row.values())) > 1:
                rows[chapter, field] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["chapter", "setting"])
    return table


def executed_folder(start=None) -> Path:
    """book/executed, found from the working directory up (papermill runs chapters from the
    repository's root, nbval from the notebook's own folder)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if folder.name == "executed" and folder.parent.name == "book":
            return folder
        if (folder / "book" / "executed").is_dir():
            return folder / "book" / "executed"
    raise FileNotFoundError(f"no book/executed folder at or above {here}")


def claims_table(folder) -> pd.DataFrame:
    """One row per claim ID of the paper's list, in its order: the chapter that checks it, the
    paper's value, ours with its uncertainty, what a test of it needs (met or missed), the scale,
    device and dataset of the run, and the verdict. A claim no ledger records says so; a claim run only below paper scale is marked."""
    found = {}
    for path in sorted(Path(folder).glob("*.ledger.json")):
        ledger = Ledger.load(path)
        for claim in ledger.claims:
            found[claim.id] = dict(chapter=ledger.chapter, paper=claim.paper, ours=claim.ours,
                                   uncertainty=claim.uncertainty or "not recorded",
                                   tested=claim.tested or "the rule requires nothing more", scale=ledger.scale,
                                   device=ledger.device, dataset=ledger.dataset, verdict=claim.verdict)
    rows = []
    for claim_id in CLAIM_IDS:
        row = found.get(claim_id, dict(chapter="–", paper="–", ours="–", uncertainty="–", tested="–",
                                       scale="–", device="–", dataset="–", verdict="not run"))
        if row["scale"] not in ("paper", "–"):
            row = {**row, "scale": f"{row['scale']} (not yet run at paper scale)"}
        rows.append({"claim": claim_id, **row})
    return pd.DataFrame(rows).set_index("claim")


def provenance_of(notebook: dict) -> dict[str, str]:
    """The provenance cell's record (its HTML table) of an executed notebook."""
    for cell in reversed(notebook["cells"]):
        for output in cell.get("outputs", []):
            html = "".join(output.get("data", {}).get("text/html", ""))
            if ">provenance<" in html:
                return {key.strip(): value.strip() for key, value in _ROW.findall(html)}
    return {}


def execution_status(folder, toc_order: list[str] | None = None) -> pd.DataFrame:
    """Per executed chapter: when it was last executed, on what, at what scale, how long it
    took, from which commit and code (`provenance.source_fingerprint`), in ``toc_order`` if
    given."""
    rows = {}
    for path in sorted(Path(folder).glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        run = notebook["metadata"].get("papermill", {})
        record = provenance_of(notebook)
        rows[path.stem] = {
            "executed at (UTC)": (run.get("end_time") or "–")[:16].replace("T", " "),
            "device": record.get("device", "–"),
            "scale": run.get("parameters", {}).get("scale", "–"),
            "wall time": f"{run['duration']:.0f} s" if run.get("duration") else "–",
            "commit": record.get("git commit", "–"),
            "source fingerprint": record.get("source fingerprint", "–"),
        }
    order = [name for name in (toc_order or []) if name in rows] + \
            [name for name in rows if name not in (toc_order or [])]
    return pd.DataFrame.from_dict({name: rows[name] for name in order}, orient="index")
