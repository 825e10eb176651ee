"""The many-GPU simulation (`gradguess.analysis.schedule`) and the estimate it reads."""
import json
from pathlib import Path

import pytest

from gradguess.analysis.schedule import critical_path, longest_workload, simulate, stages_of
from gradguess.book.store import reach_fingerprint

ESTIMATE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu_estimate_paper.json"
BOOK = {"a": [[3.0, 3.0], [1.0]], "b": [[4.0]], "c": [[2.0], [], [2.0, 0.5]]}


def test_a_small_book_by_hand():
    # two GPUs: b (4 s) and one of a's first stage start; the other waits for the GPU that
    # frees at 3 s; a's second stage waits for both (6 s); c waits behind them all
    assert simulate({"a": BOOK["a"], "b": BOOK["b"]}, 2) == 7.0
    assert critical_path(BOOK) == 4.0 and longest_workload(BOOK) == 4.0


@pytest.mark.parametrize("gpus", [1, 2, 3, 5, 8])
def test_the_simulation_is_bounded_by_the_work_the_chain_and_one_gpu(gpus):
    total = sum(s for stages in BOOK.values() for stage in stages for s in stage)
    wall = simulate(BOOK, gpus)
    assert max(total / gpus, critical_path(BOOK), longest_workload(BOOK)) <= wall + 1e-12
    assert wall <= total
    assert simulate(BOOK, 1) == total  # one GPU: every workload in turn
    assert simulate(BOOK, 100) == critical_path(BOOK)  # a GPU each: the longest chain


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="gpus must be an integer >= 1"):
        simulate(BOOK, 0)
    with pytest.raises(ValueError, match="a workload of -1"):
        simulate({"a": [[-1.0]]}, 1)


def test_rows_become_stages_in_their_order():
    rows = [{"chapter": "t", "stage": "sweep", "compiled (s)": 5},
            {"chapter": "t", "stage": "Table 1", "compiled (s)": 2},
            {"chapter": "p", "stage": "pre-training", "compiled (s)": 1},
            {"chapter": "t", "stage": "Table 1", "compiled (s)": 3}]
    assert stages_of(rows) == {"t": [[5], [2, 3]], "p": [[1]]}


def test_the_committed_gpu_estimate_was_counted_with_this_code():
    """The cost chapter's simulation reads it; after an edit of the code it counts, run its
    command again (it is in the file)."""
    estimate = json.loads(ESTIMATE.read_text())
    assert estimate["scale"] == "paper"
    assert reach_fingerprint(estimate["code"]["modules"]) == estimate["code"]["fingerprint"], \
        f"run `{estimate['command']}` again"
    chapters = {row["chapter"] for row in estimate["rows"]}
    assert chapters == {"architecture", "features", "training", "bias", "self_sharpening",
                        "localmixer", "prompt_tuning"}
    assert all(row["compiled (s)"] > 0 for row in estimate["rows"])
