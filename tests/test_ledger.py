import pytest

from gradguess.ledger import Ledger, banded, verdict


def test_verdict_follows_the_rule():
    assert verdict(True) == "reproduced"
    assert verdict(False, True) == "partly"
    assert verdict(False) == "not reproduced"


def test_ledger_round_trip_and_bad_ids(tmp_path, monkeypatch):
    ledger = Ledger("chapter", "small", "cpu", "mnist", 0)
    ledger.record("F1-dim", paper="-0.5", ours="-0.49", rule="within 0.1", reproduced=True)
    with pytest.raises(ValueError, match="unknown claim ID 'F1-size'"):
        ledger.record("F1-size", paper="", ours="", rule="", reproduced=True)
    with pytest.raises(ValueError, match="already"):
        ledger.record("F1-dim", paper="", ours="", rule="", reproduced=False)
    monkeypatch.setenv("GRADGUESS_LEDGER", str(tmp_path / "x.ledger.json"))
    ledger.publish()
    assert Ledger.load(tmp_path / "x.ledger.json") == ledger
    assert ledger.verdicts() == "F1-dim: reproduced"
    monkeypatch.delenv("GRADGUESS_LEDGER")
    (tmp_path / "x.ledger.json").unlink()
    ledger.publish()  # no path named: validation runs write nothing
    assert not (tmp_path / "x.ledger.json").exists()


def test_inconclusive_overrides_and_banded_decides_by_the_whole_interval():
    assert verdict(True, True, inconclusive=True) == "inconclusive"
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
    ledger = Ledger("chapter", "small", "cpu", "mnist", 0)
    ledger.record("T1-order", paper="", ours="", rule="", **banded(0.75, 0.85, 0.8, 0.6))
    assert ledger.verdicts() == "T1-order: inconclusive"
