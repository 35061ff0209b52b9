"""ImageNet from image folders (root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG); never downloaded."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from rmp_cli.errors import RmpError, parsing, read_bytes

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 224
RESIZE = 256
LAYOUT_HINT = (
    "lay it out as root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG (one folder per "
    "class, the same class folders in both; val sorted into class folders)"
)


def load_image(path: str) -> Any:
    """ImageFolder's loader behind the read boundary: a damaged JPEG is one line naming it. A
    plain RmpError, so that a DataLoader worker can send it back (it rebuilds the exception
    from its message alone)."""
    from PIL import Image

    try:
        raw = read_bytes(path)
        with (
            parsing(path, "", "replace or delete it", template="cannot decode {path} ({reason})"),
            Image.open(io.BytesIO(raw)) as img,
        ):
            return img.convert("RGB")
    except RmpError as exc:
        raise RmpError(str(exc)) from None


def load_imagenet(
    root: Path | None,
    augment: bool,
    mean: tuple[float, ...] = MEAN,
    std: tuple[float, ...] = STD,
) -> tuple[Dataset, Dataset, Dataset, int]:
    """(train, train with eval transforms, val, num_classes), read lazily from disk."""
    from torchvision import datasets, transforms

    if root is None:
        raise RmpError(f"imagenet cannot be downloaded: set dataset.root=DIR and {LAYOUT_HINT}")
    missing = [str(root / split) for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise RmpError(f"imagenet folder {' and '.join(missing)} not found: {LAYOUT_HINT}")
    normalize = transforms.Normalize(mean, std)
    eval_tf = transforms.Compose(
        [
            transforms.Resize(RESIZE),
            transforms.CenterCrop(CROP),
            transforms.ToTensor(),
            normalize,
        ]
    )
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(CROP),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    try:
        train = datasets.ImageFolder(
            str(root / "train"), transform=train_tf if augment else eval_tf, loader=load_image
        )
        val = datasets.ImageFolder(str(root / "val"), transform=eval_tf, loader=load_image)
    except (FileNotFoundError, OSError) as exc:
        raise RmpError(f"cannot read imagenet under {root} ({exc}); {LAYOUT_HINT}") from None
    if train.classes != val.classes:
        raise RmpError(
            f"{root / 'train'} and {root / 'val'} have different class folders; {LAYOUT_HINT}"
        )
    # A shallow copy shares the (long) file list: scanning 1.28M files once is enough.
    train_eval = copy.copy(train)
    train_eval.transform = eval_tf
    return train, train_eval, val, len(train.classes)
