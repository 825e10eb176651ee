import pytest

from gradguess.ledger import Ledger, verdict


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
