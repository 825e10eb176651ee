"""The claims ledger: per chapter, each claim of the paper it checks, the paper's value beside
ours, the rule that decides the verdict (fixed before the run), and the verdict it gives.

A chapter's ledger is saved as JSON next to its executed notebook (the execution script names
the file through ``GRADGUESS_LEDGER``; validation runs write nothing); the reproduction
report gathers them. Claim IDs are those of the paper's claim list (shared/paper/claims.md).
"""
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

CLAIM_IDS = (
    "F1-cos", "F1-step", "F1-dim", "T1-order", "T1-gap", "F8-adam", "LM-adam", "LM-aug",
    "F6-pc", "F6-sub", "A1-exp", "F3-avg", "F3-match", "F3-mom", "F5-down", "T1-sharp",
    "F4-svd", "F9-vpt",
)
VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive")


def verdict(reproduced: bool, partly: bool = False, inconclusive: bool = False) -> str:
    """The verdict a rule gives: inconclusive where the data cannot decide, else reproduced,
    else partly, else not reproduced."""
    if inconclusive:
        return VERDICTS[3]
    return VERDICTS[0] if reproduced else VERDICTS[1] if partly else VERDICTS[2]


def banded(low: float, high: float, reproduced_at: float, partly_at: float | None = None) -> dict:
    """A threshold rule decided by an interval [low, high] of its statistic (its uncertainty:
    a bootstrap interval, a seed spread): reproduced if the whole interval is >= reproduced_at,
    partly if it is >= partly_at (when given) and below reproduced_at, not reproduced if it is
    below every threshold, and inconclusive if it straddles one. `Ledger.record`'s keywords."""
    if not low <= high:
        raise ValueError(f"an interval needs low <= high, got [{low}, {high}]")
    thresholds = [t for t in (reproduced_at, partly_at) if t is not None]
    return {"reproduced": low >= reproduced_at,
            "partly": partly_at is not None and low >= partly_at,
            "inconclusive": any(low < t <= high for t in thresholds)}


@dataclass
class Claim:
    id: str
    paper: str  # the paper's value, as the paper states it
    ours: str  # our value, formatted from the run
    rule: str  # what decides the verdict, written before the run
    verdict: str


@dataclass
class Ledger:
    chapter: str
    scale: str
    device: str
    dataset: str
    seed: int
    claims: list[Claim] = field(default_factory=list)

    def record(self, claim_id: str, *, paper: str, ours: str, rule: str, reproduced: bool,
               partly: bool = False, inconclusive: bool = False) -> Claim:
        if claim_id not in CLAIM_IDS:
            raise ValueError(f"unknown claim ID {claim_id!r}; known IDs: {', '.join(CLAIM_IDS)}")
        if any(c.id == claim_id for c in self.claims):
            raise ValueError(f"claim {claim_id} is already in the ledger")
        claim = Claim(claim_id, paper, ours, rule,
                      verdict(bool(reproduced), bool(partly), bool(inconclusive)))
        self.claims.append(claim)
        return claim

    def verdicts(self) -> str:
        """One line per claim, ``ID: verdict``: what CI compares with the committed run."""
        return "\n".join(f"{c.id}: {c.verdict}" for c in self.claims)

    def table(self):
        """The ledger as a pandas DataFrame (rendered as a table in the book)."""
        import pandas as pd
        rows = [{"claim": c.id, "paper": c.paper, "ours": c.ours, "rule": c.rule,
                 "verdict": c.verdict} for c in self.claims]
        return pd.DataFrame(rows).set_index("claim")

    def save(self, path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)  # atomic: an interrupted run leaves the old ledger whole

    def publish(self) -> None:
        """Save to the path in ``GRADGUESS_LEDGER``, if the execution script set one."""
        if os.environ.get("GRADGUESS_LEDGER"):
            self.save(os.environ["GRADGUESS_LEDGER"])

    @classmethod
    def load(cls, path) -> "Ledger":
        raw = json.loads(Path(path).read_text())
        raw["claims"] = [Claim(**c) for c in raw["claims"]]
        return cls(**raw)
