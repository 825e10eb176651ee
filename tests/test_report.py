"""The book's tables about itself: scales per chapter, claims and execution status."""
import json
from dataclasses import dataclass

import pytest

from gradguess.book.chapter import start
from gradguess.book.rules import CLAIM_IDS
from gradguess.analysis.decisions import NOT_TESTED, VERDICTS
from gradguess.book.ledger import Claim, Ledger, anchor
from gradguess.book.report import (claims_table, deciding_condition, execution_status, provenance_of,
                              report_table, results_summary, scales_table)
from gradguess.book.rules import load as load_rules
from gradguess.book.scales import SCALES, run_in_words
from gradguess.book.settings import SETTINGS


@dataclass(frozen=True)
class Toy:
    train_size: int | None
    widths: tuple[int, ...]
    lr: float = 1e-3


def test_scales_table_has_a_row_per_chapter_and_setting_and_a_column_per_scale():
    toy = {"toy": {"small": Toy(100, (8, 16)), "gpu": Toy(None, (8, 16)), "paper": Toy(None, (8, 16, 32))},
           "small_only": {"small": Toy(5, (4,))}}
    table = scales_table(toy, SCALES)
    assert list(table.columns) == list(SCALES)
    assert table.loc[("", "description"), "small"] == SCALES["small"].description
    assert table.loc[("toy", "train_size")].to_dict() == {"small": "100", "gpu": "all", "paper": "all"}
    assert table.loc[("toy", "widths"), "paper"] == "8, 16, 32"
    assert table.loc[("toy", "lr")].to_dict() == {"small": "0.001", "gpu": "0.001", "paper": "0.001"}
    assert table.loc[("small_only", "lr"), "paper"] == "–"
    varying = scales_table(toy, SCALES, varying_only=True)
    assert ("toy", "lr") not in varying.index and ("toy", "train_size") in varying.index


def test_scales_table_covers_every_chapter_setting():
    table = scales_table()
    chapters = set(table.index.get_level_values("chapter")) - {""}
    assert chapters == set(SETTINGS)
    assert len(table) == 1 + sum(len(vars(next(iter(s.values())))) for s in SETTINGS.values())


def _notebook(cells_outputs, scale="small", duration=12.3):
    return {"metadata": {"papermill": {"parameters": {"scale": scale}, "duration": duration,
                                       "end_time": "2026-01-02T03:04:05"}},
            "cells": [{"cell_type": "code", "source": "", "outputs": outputs}
                      for outputs in cells_outputs]}


def test_status_reads_a_chapters_provenance_cell(tmp_path):
    chapter = start("report", device="cpu", load=False)
    table = chapter.provenance(dataset="the chapters' ledgers", source="book/executed/*.ledger.json")
    html = table._repr_html_()
    output = {"output_type": "execute_result", "data": {"text/html": html, "text/plain": ""}}
    record = provenance_of(_notebook([[], [output]]))
    assert record["scale"] == "small" and record["device"].startswith("cpu")
    assert record["dataset"].startswith("the chapters' ledgers (book/executed/")  # pandas may cut it
    assert record["git commit"] == table.loc["git commit", "provenance"]
    (tmp_path / "intro.ipynb").write_text(json.dumps(_notebook([[output]])))
    (tmp_path / "cost.ipynb").write_text(json.dumps(_notebook([[]], duration=None)))
    status = execution_status(tmp_path, ["intro", "cost"])
    assert list(status.index) == ["intro", "cost"]
    assert status.loc["intro", "device"] == record["device"]
    assert status.loc["intro", "wall time"] == "12 s"
    assert status.loc["cost", "device"] == "–" and status.loc["cost", "wall time"] == "–"
    assert status.loc["intro", "executed at (UTC)"] == "2026-01-02 03:04"


def test_claims_table_lists_every_claim_once(tmp_path):
    ledger = Ledger("architecture", "small", "cpu", "mnist", 0)
    ledger.record(CLAIM_IDS[0], paper="1", ours="1.1", uncertainty="0.1", reproduced=True)
    ledger.save(tmp_path / "toy.ledger.json")
    claims = claims_table(tmp_path)
    assert list(claims.index) == list(CLAIM_IDS)
    assert claims.loc[CLAIM_IDS[0], "verdict"] == "reproduced"
    assert claims.loc[CLAIM_IDS[0], "run"] == "small scale on a CPU"
    assert claims.loc[CLAIM_IDS[0], "statement"] == load_rules()[CLAIM_IDS[0]].statement
    assert (claims["verdict"] == "not run").sum() == len(CLAIM_IDS) - 1


def test_a_gpu_scale_run_on_a_cpu_says_so():
    assert run_in_words("gpu", "cpu") == "gpu scale, run on a CPU instead of a GPU"
    assert run_in_words("gpu", "cpu: x86_64, 2 threads").startswith("gpu scale, run on a CPU")
    assert run_in_words("paper", "cuda: NVIDIA H200") == "paper scale on a GPU"
    assert run_in_words("small", "cpu") == "small scale on a CPU"


def test_every_rule_states_its_claim_and_the_papers_protocol():
    for claim_id, rule in load_rules().items():
        assert rule.statement and rule.protocol, claim_id
        assert "W^T" not in rule.text + rule.statement + "".join(rule.requires.values()), \
            f"{claim_id}: the method is written Wᵀ in text"


@pytest.mark.parametrize("verdict", VERDICTS)
def test_every_rule_names_the_condition_behind_every_verdict(verdict):
    for claim_id, rule in load_rules().items():
        claim = Claim(claim_id, "p", "o", rule.text, verdict, missed=["a stated length"])
        decided = deciding_condition(claim)
        if verdict == NOT_TESTED:
            assert decided == "missed: a stated length"
        elif verdict == "reproduced":
            assert "held: " in decided and "failed: " not in decided, (claim_id, decided)
        elif verdict == "partly":
            assert "held: " in decided and "failed: " in decided, (claim_id, decided)
        elif verdict == "not reproduced":
            assert ("failed: " in decided or "held: not reproduced" in decided), (claim_id, decided)
        else:
            assert "undecided within its noise" in decided


def test_the_reports_table_links_every_claim_to_its_chapters_ledger_row(tmp_path):
    ledger = Ledger("architecture", "gpu", "cpu", "fashion-mnist", 0)
    ledger.record("F1-cos", paper="1", ours="1.1", uncertainty="0.1", reproduced=True, run="40 steps")
    ledger.save(tmp_path / "architecture.ledger.json")
    claims = claims_table(tmp_path)
    table = report_table(claims)
    link = f'<a href="architecture.html#{anchor("F1-cos")}">F1-cos</a>'
    assert link in table.index and "F1-step" in table.index  # a claim not run: no link
    row = table.loc[link]
    assert row["verdict"] == "reproduced †"  # F1-cos's rule changed after a run
    assert row["our run / the paper's protocol"].startswith("40 steps <i>vs</i> CIFAR-10")
    assert row["decided by"].startswith("held: reproduced if")
    box = results_summary(tmp_path)
    assert "1 reproduced" in box and link in box and "17 not run" in box
    assert "gpu scale, run on a CPU" in box and "None ran at the paper's scale" in box
    assert "ran on fashion-mnist instead" in box


@pytest.mark.parametrize("outputs", [[], [{"output_type": "stream", "text": "provenance"}]])
def test_a_notebook_without_a_provenance_table_has_no_record(outputs):
    assert provenance_of(_notebook([outputs])) == {}
