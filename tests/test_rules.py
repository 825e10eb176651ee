import pytest

from gradguess.book import rules
from gradguess.book.rules import CLAIM_IDS
from gradguess.book.settings import SETTINGS


def test_every_claim_has_one_registered_rule_with_a_history():
    registered = rules.load()
    assert list(registered) == list(CLAIM_IDS)
    for claim, r in registered.items():
        assert r.chapter in SETTINGS, claim
        assert r.history and r.history[0]["after_run"] is False, claim  # registered before a run
        assert "{" not in r.text, claim  # every threshold filled in


def test_the_text_a_reader_sees_carries_the_thresholds_the_code_uses():
    order = rules.rule("T1-order")
    assert order["reproduced"] == 0.8 and ">= 0.8" in order.text and ">= 0.6" in order.text


def test_a_rule_whose_text_and_thresholds_disagree_is_refused(tmp_path):
    path = tmp_path / "rules.toml"
    base = ('[F1-dim]\nchapter = "architecture"\nstatistic = "s"\nuncertainty = "u"\n'
            '{rule}\n[[F1-dim.history]]\ndate = "d"\nchange = "c"\nreason = "r"\nafter_run = false\n')
    path.write_text(base.format(rule='rule = "within {tolerance}"\nthresholds = { slope = 0.1 }'))
    with pytest.raises(ValueError, match="name thresholds"):
        rules.load(path)
    path.write_text(base.format(rule='rule = "within {tolerance}"\nthresholds = { tolerance = 0.1 }')
                    .replace("[F1-dim", "[F1-size"))
    with pytest.raises(ValueError, match="unknown claim IDs: F1-size"):
        rules.load(path)
    with pytest.raises(FileNotFoundError, match="no registered rules"):
        rules.load(tmp_path / "absent.toml")


def test_the_history_lists_every_change_with_its_reason():
    history = rules.history()
    assert set(history.columns) >= {"date", "change", "reason", "after a run"}
    assert (history.loc["T1-sharp", "after a run"] == "yes").any()
    assert history["reason"].str.len().min() > 0


def test_every_chapter_reads_its_rules_from_the_registered_file():
    from pathlib import Path
    chapters = Path(rules.RULES_FILE).parent / "chapters"
    for chapter in {r.chapter for r in rules.load().values()}:
        source = (chapters / f"{chapter}.md").read_text()
        assert "chapter_rules(" in source or "rules.rule(" in source, chapter
        assert "RULES = {" not in source, chapter  # no rule typed into the chapter


def test_the_rules_table_escapes_the_rules_comparisons():
    html = rules.rules_table("architecture").to_html()
    assert "DD &lt; AP" in html and "F1-dim" in html
