"""The reproduction report's two tables, read from what the chapters committed: every claim
from the chapters' ledgers (never retyped), and every chapter's last execution from its
executed notebook (papermill's record and the provenance cell)."""
import json
import re
from pathlib import Path

import pandas as pd

from .ledger import CLAIM_IDS, Ledger

_ROW = re.compile(r"<tr>\s*<th>(.*?)</th>\s*<td>(.*?)</td>\s*</tr>", re.S)


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
    paper's value, ours, the scale, device and dataset of the run, and the verdict. A claim no
    ledger records says so; a claim run only below paper scale is marked."""
    found = {}
    for path in sorted(Path(folder).glob("*.ledger.json")):
        ledger = Ledger.load(path)
        for claim in ledger.claims:
            found[claim.id] = dict(chapter=ledger.chapter, paper=claim.paper, ours=claim.ours,
                                   scale=ledger.scale, device=ledger.device, dataset=ledger.dataset,
                                   verdict=claim.verdict)
    rows = []
    for claim_id in CLAIM_IDS:
        row = found.get(claim_id, dict(chapter="–", paper="–", ours="–", scale="–", device="–",
                                       dataset="–", verdict="not run"))
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
    took, and from which commit (in ``toc_order`` if given)."""
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
        }
    order = [name for name in (toc_order or []) if name in rows] + \
            [name for name in rows if name not in (toc_order or [])]
    return pd.DataFrame.from_dict({name: rows[name] for name in order}, orient="index")
