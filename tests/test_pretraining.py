"""Networks trained by backprop before a chapter measures them (`engine.pretraining`): one run,
its weights kept at the epochs asked for, equal to training that long from scratch."""
import torch

from gradguess.core.data import Dataset
from gradguess.core.models import MLP
from gradguess.engine.pretraining import mixer_snapshots, mlp_snapshots, transfer_tasks
from gradguess.engine.reference import train

from conftest import blobs


def test_snapshots_are_the_weights_after_that_many_epochs():
    data = blobs()
    states = mlp_snapshots(data, depth=3, width=8, epochs=[0, 1, 3], lr=1e-2, seed=2,
                           batch_size=20)
    torch.manual_seed(2)
    fresh = MLP(data.in_features, 8, 3, data.num_classes)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in states[0].items())
    for epochs, state in [(1, states[1]), (3, states[2])]:
        torch.manual_seed(2)
        model = MLP(data.in_features, 8, 3, data.num_classes)
        train(model, data, "backprop", epochs=epochs, lr=1e-2, seed=2, batch_size=20,
              progress=False)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not all(torch.equal(states[1][k], states[2][k]) for k in states[1])


def test_a_mixer_snapshot_loads_into_a_mixer_of_its_architecture():
    from gradguess.core.mixer import LocalMixer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    data = Dataset("tiny", x[:30], y[:30], x[30:], y[30:], 3, "synthetic")
    arch = dict(image_size=8, patch=2, channels=8, blocks=2, groups=2)
    [state] = mixer_snapshots(data, epochs=[1], lr=1e-2, batch_size=10, **arch)
    model = LocalMixer(1, 3, local=True, **arch)
    model.load_state_dict(state)


def test_transfer_tasks_are_rgb_padded_to_the_backbones_size():
    loaded = []

    def load(name):
        loaded.append(name)
        d = blobs(n=40, dim=16)
        return Dataset(name, d.train_x.view(-1, 1, 4, 4), d.train_y, d.test_x.view(-1, 1, 4, 4),
                       d.test_y, d.num_classes, "synthetic")

    tasks = transfer_tasks("mnist", 8, load)
    assert list(tasks) == ["fashion-mnist", "mnist-inverted"] and loaded == ["fashion-mnist", "mnist"]
    assert all(t.train_x.shape[1:] == (3, 8, 8) for t in tasks.values())
