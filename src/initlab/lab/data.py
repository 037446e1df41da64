"""Real, offline data sets for the lab, as tensors and a tiny batching helper.

- `digits`: scikit-learn's `load_digits` (1,797 images 8x8, in the wheel; always present).
  A fixed stratified split: 1,437 train / 360 test.
- `fashion-mnist`: the IDX .gz files of the Debian package `dataset-fashion-mnist`
  (60,000 train / 10,000 test, 28x28). Looked up in the `root` argument, else `$INITLAB_DATA`
  (the folder itself or its `fashion-mnist/` subfolder), else /usr/share/datasets/fashion-mnist.

Images come as float32 (N, 1, H, W), normalized with the training set's mean and std; labels as
int64 (N,). `pad_to` zero-pads them (black, before normalizing) to a larger square, so that
32x32 layer lists apply unchanged. Nothing is downloaded: missing data raises
`DataNotFoundError` naming the package.

`Augment` is the GradInit authors' CIFAR augmentation (random crop with zero padding,
horizontal flip, cutout; their train_cifar.py and utils.py) on batches of normalized images,
scaled to the image: padding 1/8 and hole 1/2 of the image side (4 and 16 px for 32x32).
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch

log = logging.getLogger(__name__)

DATASETS = ("digits", "fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
PathLike = Union[str, os.PathLike]


class DataNotFoundError(FileNotFoundError):
    pass


@dataclass
class Dataset:
    """A train/test split of images (N, C, H, W) and labels (N,)."""
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int = 10
    black: float = 0.0                # the normalized value of a zero pixel (padding, crops)
    content_size: int | None = None   # the images' side before padding (None: not padded)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"shape={tuple(self.x_train.shape[1:])}, classes={self.num_classes})")


def load_dataset(name: str, root: PathLike | None = None, *, subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, pad_to: int = 0) -> Dataset:
    """Load a data set by name ("digits" or "fashion-mnist").

    `subset` / `test_subset` keep that many examples of the train / test split, chosen by a
    permutation drawn from `seed` (the same seed gives the same examples). `pad_to` (> the
    image side) centers each image on a black square of that side; statistics are those of the
    unpadded training images.
    """
    if name == "digits":
        x_tr, y_tr, x_te, y_te = _digits()
    elif name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        name = "fashion-mnist"
        x_tr, y_tr, x_te, y_te = _fashion_mnist(root)
    else:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    x_tr, y_tr = _subset(x_tr, y_tr, subset, seed)
    x_te, y_te = _subset(x_te, y_te, test_subset, seed + 1)
    mean, std = float(x_tr.mean()), float(x_tr.std())  # training statistics only
    black, side = (0.0 - mean) / std, x_tr.shape[-1]
    x_tr, x_te = ((x - mean) / std for x in (x_tr, x_te))
    if pad_to and pad_to != side:
        if pad_to < side:
            raise ValueError(f"pad_to={pad_to} is smaller than the {side}x{side} images")
        before = (pad_to - side) // 2
        sides = (before, pad_to - side - before) * 2                   # left, right, top, bottom
        x_tr, x_te = (torch.nn.functional.pad(x, sides, value=black) for x in (x_tr, x_te))
    data = Dataset(name, x_tr, y_tr, x_te, y_te, black=black,
                   content_size=side if pad_to and pad_to != side else None)
    log.info("loaded %r (normalized with train mean %.4f, std %.4f)", data, mean, std)
    return data


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    if n is None or n >= len(y):
        return x, y
    if n < 1:
        raise ValueError(f"a subset needs at least 1 example, got {n}")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[keep], y[keep]


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(d.target, dtype=torch.int64)
    # A fixed split, the same for every run and seed.
    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0,
                                  stratify=d.target)
    return x[i_tr], y[i_tr], x[i_te], y[i_te]


def fashion_mnist_dir(root: PathLike | None = None) -> Path:
    """The folder holding Fashion-MNIST's IDX files, or `DataNotFoundError` saying how to get it."""
    where = root if root is not None else os.environ.get("INITLAB_DATA") or None
    if where is not None:  # a place the user named: look only there
        candidates = [Path(where), Path(where) / "fashion-mnist"]
    else:
        candidates = [FASHION_MNIST_SYSTEM_DIR]
    needed = [f for pair in FASHION_MNIST_FILES.values() for f in pair]
    for folder in candidates:
        if all((folder / f).is_file() for f in needed):
            return folder
    raise DataNotFoundError(
        "Fashion-MNIST not found (looked in " + ", ".join(str(c) for c in candidates) + "). "
        f"Install the Debian package:  sudo apt-get install {FASHION_MNIST_PACKAGE}  "
        "or point INITLAB_DATA (or the data directory argument) at a folder holding "
        + ", ".join(needed) + ".")


def read_idx(path: PathLike) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format: magic, dims as big-endian int32, uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {np.prod(dims)} values, found {data.size}")
    return data.reshape(dims)


def _fashion_mnist(root: PathLike | None):
    folder = fashion_mnist_dir(root)
    out = []
    for split in ("train", "test"):
        images, labels = (read_idx(folder / f) for f in FASHION_MNIST_FILES[split])
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
        out += [x, torch.from_numpy(labels.astype(np.int64))]
    return tuple(out)


@dataclass
class Augment:
    """Random crop with `crop` px of padding (filled with `fill`), horizontal flip with
    probability 1/2, and one `cutout` x `cutout` hole set to 0 (the data's mean), applied in that
    order to (B, C, H, W) batches, each image drawn independently from the own generator."""
    crop: int = 0
    flip: bool = False
    cutout: int = 0
    fill: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def from_spec(cls, spec: str, data: Dataset, seed: int) -> Augment | None:
        """"none" or a comma list of "crop", "flip", "cutout", sized to the image's content."""
        parts = {p.strip() for p in spec.split(",") if p.strip()} - {"none"}
        unknown = parts - {"crop", "flip", "cutout"}
        if unknown:
            raise ValueError(f"unknown augmentation {sorted(unknown)}: use 'none' or a comma list "
                             "of crop, flip, cutout")
        if not parts:
            return None
        side = data.content_size or data.image_size
        return cls(crop=round(side / 8) if "crop" in parts else 0, flip="flip" in parts,
                   cutout=side // 2 if "cutout" in parts else 0, fill=data.black, seed=seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        draw = lambda hi: torch.randint(0, hi, (B,), generator=self.generator).to(x.device)  # noqa: E731
        if self.crop:
            p = self.crop
            padded = torch.nn.functional.pad(x, (p, p, p, p), value=self.fill)
            rows = draw(2 * p + 1)[:, None] + torch.arange(H, device=x.device)  # (B, H)
            cols = draw(2 * p + 1)[:, None] + torch.arange(W, device=x.device)  # (B, W)
            b = torch.arange(B, device=x.device)[:, None, None]
            x = padded[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B,C,H,W)
        if self.flip:
            x = torch.where(draw(2).bool()[:, None, None, None], x.flip(3), x)
        if self.cutout:
            half = self.cutout // 2                                # rows [y - half, y + half)
            y, xc = draw(H)[:, None], draw(W)[:, None]
            ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
            in_y = (ys >= y - half) & (ys < y + half)              # (B, H)
            in_x = (xs >= xc - half) & (xs < xc + half)            # (B, W)
            x = x * ~(in_y[:, None, :, None] & in_x[:, None, None, :])
        return x.contiguous()


class Batches:
    """Re-iterable (inputs, targets) batches over tensors, like a minimal DataLoader.

    With `shuffle`, pass k (k = 0, 1, ...) uses the permutation drawn from `seed + k`, so a run is
    repeatable and every pass sees a new order. The tensors are moved to `device` once.
    `augment` (e.g. an `Augment`) transforms each batch's inputs as it is drawn.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False,
                 device: str | torch.device | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = (x.to(device), y.to(device)) if device is not None else (x, y)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.augment = seed, augment
        self.passes = 0

    def __len__(self) -> int:
        n, b = len(self.y), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.passes)
            order = torch.randperm(n, generator=gen).to(self.y.device)
        else:
            order = None
        self.passes += 1
        for i in range(len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size)
            take = idx if order is None else order[idx]
            x = self.x[take]
            yield (x if self.augment is None else self.augment(x)), self.y[take]
