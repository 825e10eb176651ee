import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradguess.core.data import Dataset
from gradguess.core.mixer import LocalMixer
from gradguess.core.models import MLP, Trace


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    """An empty run store in ``tmp_path/runs``, no committed records, the code read afresh."""
    from gradguess.book import store
    monkeypatch.setenv("GRADGUESS_CACHE", str(tmp_path / "runs"))
    monkeypatch.delenv("GRADGUESS_RECORDS", raising=False)
    store.forget_code()
    yield
    store.forget_code()


@pytest.fixture
def net():
    """A tiny float64 MLP (12 -> 16 -> 16 -> 16 -> 5) with a batch, where exact checks are exact."""
    torch.manual_seed(0)
    model = MLP(12, 16, 4, 5).double()
    x = torch.randn(6, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    return model, x, y


def traced(model, x):
    trace = Trace()
    with torch.no_grad():
        model(x, trace=trace)
    return trace


def blobs(n=400, dim=8, classes=3, seed=0):
    """Separable Gaussian blobs as a Dataset: a task a small MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    half = n // 2
    return Dataset("blobs", x[:half].view(half, 1, 1, dim), y[:half],
                   x[half:].view(n - half, 1, 1, dim), y[half:], classes, "synthetic")


def tiny_mixer(local=True, seed=0, batch=5):
    """A float64 LocalMixer: 8x8 two-channel images, 2x2 patches (16 tokens), 8 channels in 2
    groups, 2 blocks; heads moved off zero so that gradients flow; a batch of ``batch``."""
    torch.manual_seed(seed)
    model = LocalMixer(2, 3, image_size=8, patch=2, channels=8, blocks=2, groups=2, local=local).double()
    for head in model.layers[3::3]:
        torch.nn.init.normal_(head.weight, std=0.5)
    x = torch.randn(batch, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (batch,))
    return model, x, y


class HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (`float(t)`, `bool(t)`, `t.item()`,
    `t.tolist()`: aten._local_scalar_dense), the host syncs a step on a GPU must not make."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))
