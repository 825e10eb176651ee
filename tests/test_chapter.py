"""The chapter runtime: settings per scale, data, cached runs, ledger and provenance."""
import dataclasses
import json

import pytest

from gradguess.book import chapter as runtime
from gradguess.book.chapter import start
from gradguess.book.scales import SCALES
from gradguess.book.settings import SETTINGS, NoSettings, chapter_settings

from conftest import blobs


def constant_run(data, *, epochs: int):
    return {"train_acc": [0.5] * epochs, "diverged": False}


@pytest.fixture
def blob_data(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "load_dataset", lambda name, device=None, download=False: blobs())
    monkeypatch.delenv("GRADGUESS_SCALE", raising=False)
    monkeypatch.setenv("GRADGUESS_CACHE", str(tmp_path / "runs"))


def test_every_chapter_has_frozen_settings_at_every_scale():
    for name, by_scale in SETTINGS.items():
        assert set(by_scale) == set(SCALES), name
        kinds = {type(s) for s in by_scale.values()}
        assert len(kinds) == 1, f"{name}: one dataclass for all scales"
        for settings in by_scale.values():
            with pytest.raises(dataclasses.FrozenInstanceError):
                settings.__setattr__(dataclasses.fields(settings)[0].name, 0)
    assert isinstance(chapter_settings("report", "small"), NoSettings)


def test_start_reads_settings_data_and_runs_through_the_cache(blob_data, capsys):
    chapter = start("bias", scale="small", device="cpu", dataset="blobs", seed=3)
    assert chapter.settings is SETTINGS["bias"]["small"]
    assert len(chapter.data.train_y) == 200  # blobs has fewer images than the settings ask for
    assert "small scale on a CPU; blobs" in capsys.readouterr().out
    first = chapter.cached(constant_run, chapter.data, epochs=2)
    again = chapter.cached(constant_run, chapter.data, epochs=2)
    assert first == again
    record = chapter.provenance()["provenance"]
    assert record["runs computed / read from the cache"] == "1 / 1"
    assert record["setting: max_guesses"] == str(chapter.settings.max_guesses)
    assert record["setting: learning_rates"] == "0.1, 0.01, 0.001, 0.0001"
    assert record["seed"] == 3 and "blobs (synthetic)" in record["dataset"]


def test_the_environment_overrides_the_scale(monkeypatch):
    monkeypatch.setenv("GRADGUESS_SCALE", "small")
    chapter = start("architecture", scale="paper", device="cpu", load=False)
    assert chapter.scale.name == "small" and chapter.settings is SETTINGS["architecture"]["small"]


def test_the_ledger_is_published_where_the_execution_script_says(blob_data, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("GRADGUESS_LEDGER", str(tmp_path / "bias.ledger.json"))
    chapter = start("bias", device="cpu", dataset="blobs")
    chapter.record("A1-exp", paper="p", ours="o", uncertainty="u", reproduced=True)
    table = chapter.close()
    assert table.data.loc["A1-exp", "verdict"] == "reproduced"
    assert 'id="claim-A1-exp"' in table.to_html()  # the anchor the report links to
    saved = json.loads((tmp_path / "bias.ledger.json").read_text())
    assert saved["dataset"] == "blobs" and saved["claims"][0]["id"] == "A1-exp"
    chapter.verdicts()
    assert capsys.readouterr().out.strip().endswith("A1-exp: reproduced")


def test_bad_parameters_fail_clearly():
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        start("bias", scale="huge", device="cpu", load=False)
    with pytest.raises(ValueError, match="seed must be an integer"):
        start("bias", device="cpu", seed="0", load=False)
    with pytest.raises(ValueError, match="unknown device"):
        start("bias", device="tpu", load=False)


def test_source_fingerprint_changes_with_the_code_the_chapter_reaches_the_rules_or_the_chapter(
        tmp_path, monkeypatch):
    from gradguess.book import provenance, store
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (tmp_path / "rules.toml").write_text("# rules\n")
    (chapters / "intro.md").write_text(
        "# Intro\n\n```{code-cell} ipython3\n:tags: [hide-input]\n\n%matplotlib inline\n"
        "!ls\nfrom gradguess.book import plotting\nimport numpy as np\n```\n")
    monkeypatch.setattr(provenance, "CHAPTER_SOURCES", chapters)
    read, edits = store.module_source, {}
    monkeypatch.setattr(store, "module_source", lambda name: read(name) + edits.get(name, b""))

    def fingerprint():
        store.forget_code()
        return provenance.source_fingerprint("intro")

    reached = provenance.chapter_reach("intro")
    assert "gradguess.book.plotting" in reached
    outside = sorted(set(store.package_modules()) - set(reached))[0]
    first = fingerprint()
    assert first == fingerprint()
    edits[outside] = b"\n# edited\n"  # outside the chapter's reach: the page stays fresh
    assert fingerprint() == first
    edits["gradguess.book.plotting"] = b"\n# edited\n"
    second = fingerprint()
    (chapters / "intro.md").write_text((chapters / "intro.md").read_text() + "More text.\n")
    third = fingerprint()
    (tmp_path / "rules.toml").write_text("# rules, revised\n")
    assert len({first, second, third, fingerprint()}) == 4
    assert provenance.source_fingerprint("missing").startswith("unknown")
    store.forget_code()


def test_load_found_leaves_out_what_the_machine_lacks(monkeypatch, tmp_path):
    from gradguess.core.data import DataNotFoundError

    def load(name, device=None, download=False):
        if name == "cifar10":
            raise DataNotFoundError("cifar10 is not here")
        return blobs()

    monkeypatch.setattr(runtime, "load_dataset", load)
    monkeypatch.setenv("GRADGUESS_CACHE", str(tmp_path))
    chapter = start("training", scale="small", device="cpu", load=False, quiet=True)
    found = chapter.load_found(["mnist", "cifar10", "svhn"])
    assert list(found) == ["mnist", "svhn"]
