import pytest

from gradguess.analysis.decisions import all_of, any_of, at_least, banded, exceeds, verdict
from gradguess.book.ledger import Ledger
from gradguess.book.rules import rule


def test_verdict_follows_the_rule():
    assert verdict(True) == "reproduced"
    assert verdict(False, True) == "partly"
    assert verdict(False) == "not reproduced"


def test_an_undecided_condition_is_inconclusive_only_where_it_could_change_the_verdict():
    assert verdict(None, True) == "inconclusive"  # reproduced or partly: cannot say which
    assert verdict(False, None) == "inconclusive"  # partly or not reproduced
    assert verdict(True, None) == "reproduced"  # partly does not matter once reproduced holds


def test_exceeds_decides_only_beyond_its_noise():
    assert exceeds(10.0, 5.0, se=1.0) is True
    assert exceeds(0.0, 5.0, se=1.0) is False
    assert exceeds(6.0, 5.0, se=1.0) is None  # within two standard errors
    assert exceeds(6.0, 5.0, se=1.0, z=0.5) is True
    assert exceeds(6.0, 5.0, se=0.0) is True
    with pytest.raises(ValueError, match="cannot be negative"):
        exceeds(1.0, 0.0, se=-1.0)


def test_three_valued_logic():
    assert all_of(True, True) is True and all_of(True, None) is None and all_of(None, False) is False
    assert any_of(False, False) is False and any_of(False, None) is None and any_of(None, True) is True
    assert at_least(2, [True, True, None]) is True
    assert at_least(3, [True, True, None]) is None
    assert at_least(3, [True, False, None]) is False
    import numpy as np
    assert verdict(np.bool_(False), np.bool_(True)) == "partly"  # numpy's booleans are not False


def test_ledger_round_trip_and_bad_ids(tmp_path, monkeypatch):
    ledger = Ledger("architecture", "small", "cpu", "mnist", 0)
    ledger.record("F1-dim", paper="-0.5", ours="-0.49", uncertainty="0.01", reproduced=True)
    assert ledger.claims[0].rule == rule("F1-dim").text  # the registered text, not the chapter's
    with pytest.raises(ValueError, match="unknown claim ID 'F1-size'"):
        ledger.record("F1-size", paper="", ours="", uncertainty="", reproduced=True)
    with pytest.raises(ValueError, match="already"):
        ledger.record("F1-dim", paper="", ours="", uncertainty="", reproduced=False)
    with pytest.raises(ValueError, match="registered to the training chapter"):
        ledger.record("T1-order", paper="", ours="", uncertainty="", reproduced=False)
    monkeypatch.setenv("GRADGUESS_LEDGER", str(tmp_path / "x.ledger.json"))
    ledger.publish()
    assert Ledger.load(tmp_path / "x.ledger.json") == ledger
    assert ledger.verdicts() == "F1-dim: reproduced"
    monkeypatch.delenv("GRADGUESS_LEDGER")
    (tmp_path / "x.ledger.json").unlink()
    ledger.publish()  # no path named: validation runs write nothing
    assert not (tmp_path / "x.ledger.json").exists()


def test_banded_decides_by_the_whole_interval():
    assert verdict(**banded(0.85, 0.95, 0.8, 0.6)) == "reproduced"
    assert verdict(**banded(0.65, 0.75, 0.8, 0.6)) == "partly"
    assert verdict(**banded(0.30, 0.50, 0.8, 0.6)) == "not reproduced"
    assert verdict(**banded(0.75, 0.85, 0.8, 0.6)) == "inconclusive"  # straddles 0.8
    assert verdict(**banded(0.55, 0.65, 0.8, 0.6)) == "inconclusive"  # straddles 0.6
    assert verdict(**banded(0.8, 0.8, 0.8, 0.6)) == "reproduced"      # on the threshold: it holds
    assert verdict(**banded(0.5, 0.9, 0.8)) == "inconclusive"
    assert verdict(**banded(0.5, 0.7, 0.8)) == "not reproduced"
    with pytest.raises(ValueError, match="low <= high"):
        banded(0.9, 0.8, 0.8)
    ledger = Ledger("training", "small", "cpu", "mnist", 0)
    ledger.record("T1-order", paper="", ours="", uncertainty="", **banded(0.75, 0.85, 0.8, 0.6),
                  tested={"trained": True, "rates": True})
    assert ledger.verdicts() == "T1-order: inconclusive"


def test_a_rule_whose_test_conditions_fail_gives_not_tested():
    ledger = Ledger("localmixer", "small", "cpu", "fashion-mnist", 0)
    # the rule's own conditions would say "not reproduced"; the run is too short to test the claim
    claim = ledger.record("LM-aug", paper="", ours="", uncertainty="", reproduced=False, partly=False,
                          tested={"epochs": False})
    assert claim.verdict == "not tested" and claim.rule_outcome == "not reproduced"
    assert "missed: at least 500 epochs" in claim.tested
    assert ledger.verdicts().startswith("LM-aug: not tested; missed: at least 500 epochs")
    # met: the rule decides
    ledger = Ledger("localmixer", "small", "cpu", "fashion-mnist", 0)
    assert ledger.record("LM-aug", paper="", ours="", uncertainty="", reproduced=False,
                         tested={"epochs": True}).verdict == "not reproduced"
    assert ledger.record("LM-adam", paper="", ours="", uncertainty="", reproduced=True,
                         tested={"trained": True}).verdict == "reproduced"


def test_a_chapter_must_check_exactly_the_rules_test_conditions():
    ledger = Ledger("localmixer", "small", "cpu", "fashion-mnist", 0)
    with pytest.raises(ValueError, match="requires"):
        ledger.record("LM-aug", paper="", ours="", uncertainty="", reproduced=True)  # not checked
    with pytest.raises(ValueError, match="requires nothing|requires"):
        Ledger("architecture", "small", "cpu", "mnist", 0).record(
            "F1-dim", paper="", ours="", uncertainty="", reproduced=True, tested={"epochs": True})


def test_critical_values_are_the_t_quantiles_of_2_3_and_4_seeds():
    from gradguess.analysis.decisions import critical
    # two-sided 95% Student-t quantiles (printed tables: 12.706, 4.303, 3.182)
    assert critical(1) == pytest.approx(12.706, abs=1e-3)
    assert critical(2) == pytest.approx(4.303, abs=1e-3)
    assert critical(3) == pytest.approx(3.182, abs=1e-3)
    from scipy.stats import t
    assert critical(3) == pytest.approx(t.ppf(0.975, 3))
    assert critical() == 2.0  # large-sample errors: two standard errors
    # a 5-SE margin is decided with 4 seeds (3.18) but not with 2 (12.7)
    assert exceeds(5.0, 0.0, se=1.0, df=3) is True
    assert exceeds(5.0, 0.0, se=1.0, df=1) is None
    with pytest.raises(ValueError, match="degree of freedom"):
        critical(0)
