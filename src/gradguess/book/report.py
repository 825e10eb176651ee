"""The book's tables about itself: what each scale means in every chapter (from the settings),
and what the intro, the reproduction report and the status page show, read from what the
chapters committed: every claim from the chapters' ledgers (never retyped), the intro's
results box from the same, and every chapter's last execution from its executed notebook
(papermill's record and the provenance cell)."""
import json
import re
from dataclasses import asdict
from html import escape
from pathlib import Path

import pandas as pd

from .rules import CLAIM_IDS
from ..analysis.decisions import NOT_TESTED, VERDICTS
from .ledger import Claim, Ledger, anchor
from ..core.methods import METHODS
from .provenance import _plain
from .rules import load as load_rules
from .scales import SCALES, run_in_words
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


def ledgers(folder) -> dict[str, Ledger]:
    """Every chapter's committed ledger in ``folder``, by chapter."""
    return {ledger.chapter: ledger for ledger in map(Ledger.load, sorted(Path(folder).glob("*.ledger.json")))}


_VERDICT_WORDS = ("not reproduced", "reproduced", "partly", "inconclusive")
_CLAUSES = re.compile(r";\s*|,\s*(?=(?:not reproduced|reproduced|partly|inconclusive) (?:if|otherwise)\b)")


def _clauses(rule_text: str) -> tuple[list[str], dict[str, str], list[str]]:
    """A rule's text cut into what comes before its verdicts' clauses (definitions), the clause
    of each verdict ("reproduced if ..."), and what comes after (how comparisons are decided)."""
    before, by_verdict, after = [], {}, []
    for clause in filter(None, (c.strip() for c in _CLAUSES.split(rule_text))):
        word = next((w for w in _VERDICT_WORDS if re.match(rf"{w} (if|otherwise)\b", clause)), None)
        if word and word not in by_verdict:
            by_verdict[word] = clause
        else:
            (after if by_verdict else before).append(clause)
    return before, by_verdict, after


def deciding_condition(claim: Claim) -> str:
    """What decided a claim's verdict, from its rule's text: the clause that held (and, for
    "partly", the one that failed), the clauses that failed for "not reproduced", the clauses
    one of whose conditions lay within its noise for "inconclusive", and the requirements
    missed for "not tested"; with the rule's definitions before (how each comparison is decided
    is in the rule's full text, in its chapter)."""
    if claim.verdict == NOT_TESTED:
        return "missed: " + "; ".join(claim.missed)
    before, by_verdict, after = _clauses(claim.rule)
    decided = {
        "reproduced": [f"held: {by_verdict.get('reproduced', claim.rule)}"],
        "partly": [f"held: {by_verdict.get('partly', claim.rule)}",
                   f"failed: {by_verdict.get('reproduced', 'the condition for reproduced')}"],
        "not reproduced": ([f"held: {by_verdict['not reproduced']}"] if "not reproduced" in by_verdict else
                           [f"failed: {by_verdict[w]}" for w in ("reproduced", "partly") if w in by_verdict]
                           or [f"failed: {claim.rule}"]),
        "inconclusive": [f"undecided within its noise: {'; '.join(by_verdict.values()) or claim.rule}"],
    }[claim.verdict]
    return "; ".join([*before, *decided])


def claims_table(folder) -> pd.DataFrame:
    """One row per claim ID of the paper's list, in its order, read from the chapters' ledgers:
    the chapter that checks it, the claim in words, the paper's value and ours, the verdict,
    whether its rule changed after a run it decides, the condition that decided it, our run
    and the paper's protocol, the uncertainty, what a test needs (met or missed), where the run
    was made (`gradguess.book.scales.run_in_words`) and on which data. A claim no ledger records
    says so ("not run")."""
    rules = load_rules()
    found = {}
    for ledger in ledgers(folder).values():
        for claim in ledger.claims:
            found[claim.id] = dict(
                chapter=ledger.chapter, paper=claim.paper, ours=claim.ours, verdict=claim.verdict,
                decided_by=deciding_condition(claim), our_run=claim.run or "–",
                uncertainty=claim.uncertainty or "not recorded",
                tested=claim.tested or "the rule requires nothing more", scale=ledger.scale,
                device=ledger.device, run=run_in_words(ledger.scale, ledger.device), dataset=ledger.dataset)
    rows = []
    for claim_id in CLAIM_IDS:
        rule = rules.get(claim_id)
        row = found.get(claim_id, dict(chapter="–", paper="–", ours="–", verdict="not run", decided_by="–",
                                       our_run="–", uncertainty="–", tested="–", scale="–", device="–",
                                       run="–", dataset="–"))
        rows.append({"claim": claim_id, "statement": rule.statement if rule else "–",
                     "protocol": rule.protocol if rule else "–",
                     "rule changed after a run": bool(rule and rule.changed_after_run), **row})
    return pd.DataFrame(rows).set_index("claim")


def claim_link(claim_id: str, chapter: str, text: str | None = None) -> str:
    """An HTML link to ``claim_id``'s row in its chapter's ledger (the anchor `ledger_table` sets)."""
    return f'<a href="{chapter}.html#{anchor(claim_id)}">{text or claim_id}</a>'


def report_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The report's main table, one row a reader can read alone per claim: the ID (a link to
    its chapter's ledger), the claim, the paper's value beside ours, the verdict (marked † where
    its rule changed after a run it decides), what decided it, and our run against the paper's
    protocol. Cells are HTML: show it with `html_table`."""
    rows = {}
    for claim_id, c in claims.iterrows():
        link = claim_link(claim_id, c["chapter"]) if c["chapter"] != "–" else claim_id
        rows[link] = {"claim": escape(c["statement"]), "paper": escape(c["paper"]), "ours": escape(c["ours"]),
                      "verdict": c["verdict"] + (" †" if c["rule changed after a run"] else ""),
                      "decided by": escape(c["decided_by"]),
                      "our run / the paper's protocol": f"{escape(c['our_run'])} <i>vs</i> {escape(c['protocol'])}"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("ID")


VERDICT_SHADES = {"reproduced": "#d8ecd8", "partly": "#f5ecd0", "not reproduced": "#f3d6d6",
                  "inconclusive": "#e4e4e4", "not tested": "#ffffff", "not run": "#ffffff"}


def html_table(frame: pd.DataFrame, verdict_column: str | None = "verdict", css_class: str = "claims"):
    """A table whose cells are HTML already (links, escaped text), each verdict on its shade;
    ``css_class`` names its layout in the book's CSS (book/_static/gradguess.css)."""
    styler = (frame.style.format(escape=None).format_index(escape=None)
              .set_table_attributes(f'class="{css_class}"'))
    if verdict_column in frame.columns:
        styler = styler.map(lambda v: f"background-color: {VERDICT_SHADES.get(v.rstrip(' †'), '')}",
                            subset=[verdict_column])
    return styler.set_properties(**{"text-align": "left"})


def where_run(claims: pd.DataFrame, status: pd.DataFrame | None = None) -> str:
    """Where the claims' runs were made, once per kind of run: "small scale on a CPU (x86_64, 2
    threads): training, bias; ...", the hardware from the pages' provenance in ``status``."""
    where = {}
    ran = claims[claims["chapter"] != "–"]
    for chapter, c in ran.groupby("chapter", sort=False).first().iterrows():
        device = status.loc[chapter, "device"] if status is not None and chapter in status.index else ""
        hardware = f" ({device.split(': ', 1)[1]})" if ": " in device else ""
        where.setdefault(c["run"] + hardware, []).append(chapter)
    return "; ".join(f"{_listed(chapters)} at {run}" for run, chapters in where.items()) or "nothing ran"


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def results_summary(folder, status: pd.DataFrame | None = None) -> str:
    """The book's answer in one box (HTML), computed from the ledgers: how many claims each
    verdict got, each claim linked to its chapter's ledger, where the runs were made (scale and
    hardware, from the pages' provenance in ``status``, `execution_status`), how many at the
    paper's protocol, and what data stood in for the paper's CIFAR."""
    claims = claims_table(folder)
    counts = claims["verdict"].value_counts()
    verdicts = [v for v in (*VERDICTS, "not run") if counts.get(v, 0)]
    lines = []
    for verdict in verdicts:
        chosen = claims[claims["verdict"] == verdict]
        links = ", ".join(f'<span title="{escape(c["statement"])}">{claim_link(i, c["chapter"])}</span>'
                          if c["chapter"] != "–" else i for i, c in chosen.iterrows())
        lines.append(f'<li><span class="verdict" style="background-color: {VERDICT_SHADES[verdict]}">'
                     f"{counts[verdict]} {verdict}</span>: {links}</li>")
    ran = claims[claims["chapter"] != "–"]
    at_paper = int((ran["scale"] == "paper").sum())
    cifar = ran[ran["protocol"].str.contains("CIFAR") & ~ran["dataset"].str.contains("cifar", case=False)]
    stand_ins = sorted({d.strip() for ds in cifar["dataset"] for d in ds.split(",")} - {"–", ""})
    cifar_text = (f"{len(cifar)} of the claims the paper tested on CIFAR ran on {' or '.join(stand_ins)} "
                  "instead (CIFAR-10, CIFAR-100 and SVHN cannot be downloaded where this book was executed)."
                  if len(cifar) else "Every claim the paper tested on CIFAR ran on CIFAR.")
    protocol_text = (f"{at_paper} of them at the paper's scale." if at_paper else
                     "None ran at the paper's scale: read every verdict as a statement about these runs.")
    where_text = where_run(claims, status)
    return (f'<div class="results-box"><p><b>What this reproduction found.</b> Of the paper\'s '
            f"{len(claims)} claims:</p><ul>{''.join(lines)}</ul>"
            f"<p><b>Where.</b> {escape(where_text)}. {protocol_text} {escape(cifar_text)}</p></div>")


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
        scale = run.get("parameters", {}).get("scale", "–")
        rows[path.stem] = {
            "executed at (UTC)": (run.get("end_time") or "–")[:16].replace("T", " "),
            "run": run_in_words(scale, record["device"]) if "device" in record else "–",
            "device": record.get("device", "–"),
            "scale": scale,
            "wall time": f"{run['duration']:.0f} s" if run.get("duration") else "–",
            "commit": record.get("git commit", "–"),
            "source fingerprint": record.get("source fingerprint", "–"),
        }
    order = [name for name in (toc_order or []) if name in rows] + \
            [name for name in rows if name not in (toc_order or [])]
    return pd.DataFrame.from_dict({name: rows[name] for name in order}, orient="index")
