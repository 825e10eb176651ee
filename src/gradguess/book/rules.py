"""The registered rules (book/rules.toml): for each claim, the statistic that decides it, that
statistic's uncertainty, the thresholds, the verdicts they give, and the rule's history.

A chapter takes its rules from here, so the rule a reader sees and the thresholds its code
applies are one text: ``rule("T1-order")["reproduced"]`` is 0.8 and ``rule("T1-order").text``
says so.
"""
import string
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CLAIM_IDS = (
    "F1-cos", "F1-step", "F1-dim", "T1-order", "T1-gap", "F8-adam", "LM-adam", "LM-aug",
    "F6-pc", "F6-sub", "A1-exp", "F3-avg", "F3-match", "F3-mom", "F5-down", "T1-sharp",
    "F4-svd", "F9-vpt",
)
RULES_FILE = Path(__file__).resolve().parents[3] / "book" / "rules.toml"
HISTORY_FIELDS = ("date", "change", "reason", "after_run")


@dataclass(frozen=True)
class Rule:
    claim: str
    chapter: str
    statistic: str
    uncertainty: str
    text: str  # the rule with its thresholds filled in
    thresholds: dict
    requires: dict  # what a test of the claim needs, by name, thresholds filled in (none: {})
    history: tuple  # dicts: date, change, reason, after_run, and commit where known
    statement: str = ""  # the claim in words, short (shared/paper/claims.md has it whole)
    protocol: str = ""  # the paper's protocol for the claim: data, architecture, length, seeds

    @property
    def changed_after_run(self) -> bool:
        """Whether the rule changed after a run it decides (the report marks its verdict)."""
        return any(entry["after_run"] for entry in self.history)

    def __getitem__(self, name: str) -> float:
        return self.thresholds[name]


def _rule(claim: str, raw: dict) -> Rule:
    missing = {"chapter", "statistic", "uncertainty", "rule", "thresholds", "history"} - raw.keys()
    if missing:
        raise ValueError(f"rule {claim} lacks {', '.join(sorted(missing))}")
    requires = raw.get("requires", {})
    fields = {name for text in (raw["rule"], *requires.values())
              for _, name, _, _ in string.Formatter().parse(text) if name}
    if fields != set(raw["thresholds"]):
        raise ValueError(f"rule {claim}: its text and requirements name thresholds {sorted(fields)} but it has "
                         f"{sorted(raw['thresholds'])}")
    for entry in raw["history"]:
        if not set(HISTORY_FIELDS) <= entry.keys():
            raise ValueError(f"rule {claim}: a history entry lacks one of {', '.join(HISTORY_FIELDS)}")
    return Rule(claim, raw["chapter"], raw["statistic"], raw["uncertainty"],
                raw["rule"].format(**raw["thresholds"]), dict(raw["thresholds"]),
                {name: text.format(**raw["thresholds"]) for name, text in requires.items()},
                tuple(raw["history"]), raw.get("statement", ""), raw.get("protocol", ""))


@cache
def load(path: Path = RULES_FILE) -> dict[str, Rule]:
    """Every registered rule by claim ID; unknown IDs and malformed rules are errors."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no registered rules at {path}: run from a checkout of the book")
    raw = tomllib.loads(Path(path).read_text())
    unknown = raw.keys() - set(CLAIM_IDS)
    if unknown:
        raise ValueError(f"rules for unknown claim IDs: {', '.join(sorted(unknown))}")
    return {claim: _rule(claim, raw[claim]) for claim in CLAIM_IDS if claim in raw}


def rule(claim: str) -> Rule:
    """The registered rule of ``claim``."""
    rules = load()
    if claim not in rules:
        raise KeyError(f"no registered rule for {claim!r} in {RULES_FILE}")
    return rules[claim]


def chapter_rules(chapter: str) -> dict[str, Rule]:
    """The rules a chapter decides, by claim ID."""
    return {claim: r for claim, r in load().items() if r.chapter == chapter}


def history():
    """Every change to every rule as a pandas DataFrame, oldest first within each claim, with the
    way each change made after a run moved that run's verdict, where it did."""
    import pandas as pd
    rows = [{"claim": r.claim, "date": entry["date"], "commit": entry.get("commit", "–"),
             "change": entry["change"], "reason": entry["reason"],
             "after a run": "yes" if entry["after_run"] else "no",
             "verdict moved (on the run it came after)": entry.get("moved", "–")}
            for r in load().values() for entry in r.history]
    return pd.DataFrame(rows).set_index("claim")


def rules_table(chapter: str):
    """A chapter's rules as the reader sees them: statistic, uncertainty and rule per claim
    (a pandas Styler; the text is HTML-escaped, since rules contain '<')."""
    import pandas as pd
    table = pd.DataFrame({claim: {"statistic": r.statistic, "uncertainty": r.uncertainty, "rule": r.text,
                                  "tested only with": "; ".join(r.requires.values()) or "–"}
                          for claim, r in chapter_rules(chapter).items()}).T
    return table.style.format(escape="html").set_properties(**{"text-align": "left"})
