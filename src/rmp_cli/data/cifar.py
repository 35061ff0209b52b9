"""CIFAR-10/100: the official pickled batches or JPEG image folders, picked by `dataset.format`."""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmp_cli.data.fetch import download
from rmp_cli.data.folder import class_names, load_image_folder
from rmp_cli.data.locations import data_home
from rmp_cli.errors import RmpError, parsing, read_bytes

log = logging.getLogger(__name__)

FORMATS = ("auto", "pickle", "folder")


@dataclass(frozen=True)
class PickleLayout:
    folder: str  # what torchvision's download unpacks to under root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


LAYOUTS = {
    "cifar10": PickleLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        10,
    ),
    "cifar100": PickleLayout("cifar-100-python", ("train",), ("test",), "fine_labels", 100),
}

# The batches hold plain dicts, lists and numpy arrays: refusing anything else means a
# tampered file cannot run code when unpickled.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, Any]:
    raw = read_bytes(path)
    with parsing(
        path,
        "not a CIFAR batch",
        "replace it or re-download",
        template="cannot read CIFAR batch {path} ({reason})",
    ):
        # The official files were pickled by Python 2: "bytes" keeps their str keys as bytes.
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise RmpError(f"{path} is not a CIFAR batch (not a dict); replace it or re-download")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _read_split(
    folder: Path, files: tuple[str, ...], layout: PickleLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        path = folder / name
        batch = _read_batch(path)
        if "data" not in batch or layout.label_key not in batch:
            raise RmpError(
                f"{path} lacks 'data' or '{layout.label_key}'; is it a CIFAR-"
                f"{layout.num_classes} batch? replace it or re-download"
            )
        with parsing(path, "not a CIFAR batch", "replace it or re-download"):
            data = np.asarray(batch["data"])
            y = np.asarray(batch[layout.label_key])
        if (
            data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32
            or y.shape != (len(data),)
            or (y.size and y.dtype.kind not in "iu")  # no floats cut to ints unseen
        ):
            raise RmpError(
                f"{path} holds data {data.dtype}{data.shape} and {y.dtype}{y.shape} labels, "
                f"expected uint8 (N, 3072) and N integer labels; replace it or re-download"
            )
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= layout.num_classes):
            raise RmpError(f"{path} has labels outside 0..{layout.num_classes - 1}; replace it")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _has_pickles(folder: Path, layout: PickleLayout) -> bool:
    return all((folder / f).is_file() for f in layout.train_files + layout.test_files)


def find_pickle_dir(name: str, root: Path) -> Path | None:
    """<root>/cifar-10-batches-py (torchvision's layout), or root itself holding the batches."""
    layout = LAYOUTS[name]
    for folder in (root / layout.folder, root):
        if _has_pickles(folder, layout):
            return folder
    return None


def find_folder_root(name: str, root: Path) -> Path | None:
    """A folder with train/ and test/ image folders: root itself or <root>/<name>-jpg."""
    for folder in (root, root / f"{name}-jpg"):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    return None


def _download_pickles(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    download(
        name,
        root,
        lambda target: cls(root=target, train=True, download=True),
        f"place the batches in {root / LAYOUTS[name].folder} by hand or check the network",
    )


def _missing_message(name: str, root: Path, fmt: str) -> str:
    layout = LAYOUTS[name]
    pickled = f"the official pickled batches in {root / layout.folder}/"
    folders = (
        f"JPEG folders {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg "
        f"(unpack the train/test .tar.xz archives there)"
    )
    if fmt == "pickle":
        how = f"put {pickled}"
    elif fmt == "folder":
        how = f"put {folders}"
    else:
        how = f"put {pickled}, or {folders}"
    fix = "" if fmt == "folder" else ", or set dataset.download=true"
    return f"{name} ({fmt} format) not found under {root}: {how}; or set dataset.root=DIR{fix}"


def load_cifar(
    name: str, root: Path | None, fmt: str, download_ok: bool, cache_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_images, train_labels, test_images, test_labels); images uint8 (N, 3, 32, 32)."""
    layout = LAYOUTS[name]
    base = root if root is not None else data_home()
    pickle_dir = find_pickle_dir(name, base) if fmt in ("auto", "pickle") else None
    folder_root = (
        find_folder_root(name, base) if fmt in ("auto", "folder") and pickle_dir is None else None
    )
    if pickle_dir is None and folder_root is None and fmt != "folder" and download_ok:
        _download_pickles(name, base)
        pickle_dir = find_pickle_dir(name, base)
    if pickle_dir is not None:
        log.info("reading %s pickled batches from %s", name, pickle_dir)
        return (
            *_read_split(pickle_dir, layout.train_files, layout),
            *_read_split(pickle_dir, layout.test_files, layout),
        )
    if folder_root is not None:
        return _load_folders(name, folder_root, layout.num_classes, cache_dir)
    raise RmpError(_missing_message(name, base, fmt))


def _load_folders(
    name: str, root: Path, num_classes: int, cache_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Check the class folders before decoding tens of thousands of images.
    train_classes, test_classes = class_names(root / "train"), class_names(root / "test")
    if len(train_classes) != num_classes:
        raise RmpError(
            f"{root / 'train'} has {len(train_classes)} class folders, {name} needs "
            f"{num_classes}; point dataset.root at the folder holding train/ and test/"
        )
    if train_classes != test_classes:
        raise RmpError(
            f"{root / 'train'} and {root / 'test'} have different class folders; "
            f"both need the same {num_classes} class names"
        )
    train = load_image_folder(
        root / "train", size=(32, 32), tag=f"{name}-train", cache_dir=cache_dir
    )
    test = load_image_folder(root / "test", size=(32, 32), tag=f"{name}-test", cache_dir=cache_dir)
    return train.images, train.labels, test.images, test.labels
