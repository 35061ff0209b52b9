"""MNIST and Fashion-MNIST from their idx files (.gz or raw), parsed directly with numpy."""

from __future__ import annotations

import gzip
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rmp_cli.data.fetch import download
from rmp_cli.data.locations import DEBIAN_FASHION_MNIST, data_home
from rmp_cli.errors import RmpError, parsing, read_bytes

log = logging.getLogger(__name__)

UBYTE = 0x08
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = tuple(stem for pair in FILES.values() for stem in pair)
# torchvision's download layout: <root>/<class name>/raw/
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def read_idx(path: Path) -> np.ndarray:
    """One idx file of unsigned bytes (magic 0x0000 08 <ndim>: 2049 labels, 2051 images)."""
    raw = read_bytes(path)
    advice = "replace the file or delete it and re-download"
    with parsing(path, "not an intact idx file" + " (gzip)" * (path.suffix == ".gz"), advice):
        # bytearray: numpy views of it stay writable for torch
        raw = bytearray(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] != UBYTE:
        raise RmpError(
            f"{path} is not an idx file of unsigned bytes (bad magic number); replace it"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise RmpError(f"{path} is truncated (incomplete header); replace it")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != math.prod(shape):
        raise RmpError(
            f"{path} holds {len(raw) - header} bytes of data but its header says "
            f"{shape}; the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidate_dirs(name: str, roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        yield root
        yield root / TORCHVISION_NAMES[name] / "raw"
        yield root / name
        yield root / name.replace("_", "-")


def search_roots(name: str, root: Path | None) -> list[Path]:
    if root is not None:
        return [root]
    debian = [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else []
    return [*debian, data_home()]


def find_idx_dir(name: str, roots: list[Path]) -> Path | None:
    """The first candidate folder holding all four idx files."""
    for folder in _candidate_dirs(name, roots):
        if all(_find(folder, stem) for stem in ALL_FILES):
            return folder
    return None


def _read_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    image_stem, label_stem = FILES[split]
    image_path, label_path = _find(folder, image_stem), _find(folder, label_stem)
    assert image_path is not None and label_path is not None
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise RmpError(
            f"{image_path} and {label_path} do not match (shapes {images.shape} and "
            f"{labels.shape}); replace them with a consistent pair"
        )
    if labels.size and labels.max() >= 10:
        raise RmpError(f"{label_path} has label {labels.max()}, expected 0..9; replace it")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def _download(name: str, target: Path) -> None:
    import torchvision.datasets as tvd

    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST

    def fetch(root: str) -> None:
        for train in (True, False):
            cls(root=root, train=train, download=True)

    download(name, target, fetch, "place the idx files there by hand or check the network")


def _missing_message(name: str, roots: list[Path]) -> str:
    where = " or ".join(str(r) for r in roots)
    files = ", ".join(stem + ".gz" for stem in ALL_FILES)
    extra = ""
    if name == "fashion_mnist":
        extra = " (on Debian/Ubuntu: `apt-get install dataset-fashion-mnist`)"
    return (
        f"{name} not found in {where}: put {files} in dataset.root=DIR{extra}, "
        f"or set dataset.download=true"
    )


def load_idx_dataset(
    name: str, root: Path | None, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_images, train_labels, test_images, test_labels); images uint8 (N, 1, 28, 28)."""
    roots = search_roots(name, root)
    folder = find_idx_dir(name, roots)
    if folder is None and download:
        target = root if root is not None else data_home()
        _download(name, target)
        folder = find_idx_dir(name, [target])
    if folder is None:
        raise RmpError(_missing_message(name, roots))
    log.info("reading %s from %s", name, folder)
    return (*_read_split(folder, "train"), *_read_split(folder, "test"))
