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

from ..analysis.decisions import NOT_TESTED, verdict
from ..engine import files
from .rules import CLAIM_IDS, rule


def anchor(claim_id: str) -> str:
    """The HTML id of a claim's row in its chapter's ledger table (the report links to it)."""
    return f"claim-{claim_id}"


@dataclass
class Claim:
    id: str
    paper: str  # the paper's value, as the paper states it
    ours: str  # our value, formatted from the run
    rule: str  # what decides the verdict: its registered text (book/rules.toml)
    verdict: str
    uncertainty: str = ""  # how uncertain the statistic is, and how that was measured
    tested: str = ""  # what a test of the claim needs (the rule's `requires`), each met or missed
    rule_outcome: str = ""  # where not tested: what the rule's conditions give on these runs
    missed: list = field(default_factory=list)  # the `requires` these runs missed, in words
    run: str = ""  # our run in the terms of the paper's protocol (the rule's `protocol`)


@dataclass
class Ledger:
    chapter: str
    scale: str
    device: str
    dataset: str
    seed: int
    claims: list[Claim] = field(default_factory=list)

    def record(self, claim_id: str, *, paper: str, ours: str, uncertainty: str,
               reproduced: bool | None, partly: bool | None = False,
               tested: dict[str, bool] | None = None, run: str = "") -> Claim:
        """One claim's verdict under its registered rule (book/rules.toml), which must be this
        chapter's; ``uncertainty`` says how uncertain ``ours`` is and how that was measured.
        ``tested`` says, for each of the rule's `requires` (what a test of the claim needs),
        whether these runs meet it: where one is missed the verdict is "not tested", whatever
        the rule's conditions give. ``run`` says what our run was in the terms of the paper's
        protocol for the claim (the rule's `protocol`): "5 epochs, 3 seeds", say."""
        if claim_id not in CLAIM_IDS:
            raise ValueError(f"unknown claim ID {claim_id!r}; known IDs: {', '.join(CLAIM_IDS)}")
        if any(c.id == claim_id for c in self.claims):
            raise ValueError(f"claim {claim_id} is already in the ledger")
        registered = rule(claim_id)
        if registered.chapter != self.chapter:
            raise ValueError(f"claim {claim_id} is registered to the {registered.chapter} chapter, "
                             f"not {self.chapter}")
        tested = {k: bool(met) for k, met in (tested or {}).items()}
        if tested.keys() != registered.requires.keys():
            raise ValueError(f"claim {claim_id}: its rule requires {sorted(registered.requires) or 'nothing'}; "
                             f"the chapter checked {sorted(tested) or 'nothing'}")
        outcome = verdict(reproduced, partly)
        missed = [registered.requires[k] for k, met in tested.items() if not met]
        coverage = " | ".join(f"{'met' if met else 'missed'}: {registered.requires[k]}" for k, met in tested.items())
        if missed:
            claim = Claim(claim_id, paper, ours, registered.text, NOT_TESTED, uncertainty, coverage, outcome,
                          missed, run)
        else:
            claim = Claim(claim_id, paper, ours, registered.text, outcome, uncertainty, coverage, run=run)
        self.claims.append(claim)
        return claim

    def verdicts(self) -> str:
        """One line per claim, ``ID: verdict``, and for a claim not tested the conditions it
        missed: what CI compares with the committed run."""
        return "\n".join(f"{c.id}: {c.verdict}" + "".join(f"; missed: {text}" for text in c.missed)
                         for c in self.claims)

    def table(self):
        """The ledger as a pandas DataFrame (rendered as a table in the book)."""
        import pandas as pd
        rows = [{"claim": c.id, "paper": c.paper, "ours": c.ours, "uncertainty": c.uncertainty,
                 "our run": c.run or "–", "the paper's protocol": rule(c.id).protocol or "–",
                 "rule": c.rule, "tested": c.tested or "the rule requires nothing more",
                 "verdict": c.verdict + (f" (the rule's conditions on these runs: {c.rule_outcome})"
                                         if c.verdict == NOT_TESTED else "")} for c in self.claims]
        return pd.DataFrame(rows).set_index("claim")

    def styled(self):
        """`table` as the chapter shows it: text escaped (rules contain '<'), and each claim ID
        an anchor (`anchor`) that the report and the intro link to."""
        return (self.table().style.format(escape="html")
                .format_index(lambda claim_id: f'<span id="{anchor(claim_id)}">{claim_id}</span>', escape=None)
                .set_properties(**{"text-align": "left"}))

    def save(self, path) -> None:
        # whole or not at all: an interrupted run or a full disk leaves the old ledger
        files.write_atomically(path, json.dumps(asdict(self), indent=2) + "\n")

    def publish(self) -> None:
        """Save to the path in ``GRADGUESS_LEDGER``, if the execution script set one."""
        if os.environ.get("GRADGUESS_LEDGER"):
            self.save(os.environ["GRADGUESS_LEDGER"])

    @classmethod
    def load(cls, path) -> "Ledger":
        raw = json.loads(Path(path).read_text())
        raw["claims"] = [Claim(**c) for c in raw["claims"]]
        return cls(**raw)
