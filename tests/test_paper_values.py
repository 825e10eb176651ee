"""The poster's numbers as typed into `gradguess.analysis.paper`, checked against what the poster and the
paper's text say about them."""
import pytest

from gradguess.core.methods import METHODS
from gradguess.analysis.paper import (POSTER_COSINE, POSTER_EFFECTIVENESS, POSTER_LOCALMIXER,
                             POSTER_LOCALMIXER_ROWS)


def test_the_posters_methods_are_methods_the_book_runs():
    for table in (POSTER_COSINE, POSTER_EFFECTIVENESS, POSTER_LOCALMIXER):
        assert set(table) <= set(METHODS)
    assert set(POSTER_COSINE) == set(POSTER_EFFECTIVENESS)


def test_the_posters_mlp_table_agrees_with_the_papers_text():
    # Fig. 1: W^T's cosine "approximately 100x" directional descent's; one step "more than 1000x"
    assert POSTER_COSINE["w_transpose"] / POSTER_COSINE["directional"] == pytest.approx(100)
    assert all(POSTER_EFFECTIVENESS[m] / POSTER_EFFECTIVENESS["directional"] > 1000
               for m in ("activation_mixing", "w_transpose"))


def test_the_posters_localmixer_table_has_its_rows_and_gaps():
    assert all(len(values) == len(POSTER_LOCALMIXER_ROWS) for values in POSTER_LOCALMIXER.values())
    reported = POSTER_LOCALMIXER_ROWS.index("Ren et al. reported")
    assert POSTER_LOCALMIXER["activation_mixing"][reported] is None  # "-" on the poster
    assert POSTER_LOCALMIXER["w_transpose"][reported] is None
    # the poster's own "(+1.3)" and "(+1.4)": W^T over Ren et al. with Adam and at 5000 epochs
    for row, gain in [("reproduced with Adam", 1.3), ("augmented, 5000 epochs", 1.4)]:
        k = POSTER_LOCALMIXER_ROWS.index(row)
        assert POSTER_LOCALMIXER["w_transpose"][k] - POSTER_LOCALMIXER["activation_perturbation"][k] \
            == pytest.approx(gain)
