import torch

from gradguess.cache import cached, cached_checkpoint


def test_computes_once_per_configuration(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"acc": [0.5, float("nan")], "diverged": True}

    first = cached({"lr": 1e-3, "seed": 0}, compute, tmp_path)
    again = cached({"seed": 0, "lr": 1e-3}, compute, tmp_path)  # same configuration
    assert len(calls) == 1 and again["diverged"] and again["acc"][0] == 0.5
    assert first["acc"][0] == again["acc"][0]
    cached({"lr": 1e-2, "seed": 0}, compute, tmp_path)
    assert len(calls) == 2
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers


def test_environment_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADGUESS_CACHE", str(tmp_path / "c"))
    cached({"x": 1}, lambda: {"y": 2})
    assert len(list((tmp_path / "c").glob("*.json"))) == 1


def test_checkpoints_are_computed_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.arange(3.0)}

    first = cached_checkpoint({"model": "vit"}, compute, tmp_path)
    again = cached_checkpoint({"model": "vit"}, compute, tmp_path)
    assert len(calls) == 1 and torch.equal(first["w"], again["w"])
    assert not list(tmp_path.glob("*.tmp"))
