"""The book's tables about itself: scales per chapter, claims and execution status."""
import json
from dataclasses import dataclass

import pytest

from gradguess.chapter import start
from gradguess.ledger import CLAIM_IDS, Ledger
from gradguess.report import claims_table, execution_status, provenance_of, scales_table
from gradguess.scales import SCALES
from gradguess.settings import SETTINGS


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
    assert claims.loc[CLAIM_IDS[0], "scale"] == "small (not yet run at paper scale)"
    assert (claims["verdict"] == "not run").sum() == len(CLAIM_IDS) - 1


@pytest.mark.parametrize("outputs", [[], [{"output_type": "stream", "text": "provenance"}]])
def test_a_notebook_without_a_provenance_table_has_no_record(outputs):
    assert provenance_of(_notebook([outputs])) == {}
