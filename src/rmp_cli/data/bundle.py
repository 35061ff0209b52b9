"""The dataset registry: `build_data(cfg.dataset, seed)` -> train/test/calibration splits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from rmp_cli.data import cifar, digits, idx, imagenet
from rmp_cli.data.memory import InMemoryImages, RandomShiftFlip
from rmp_cli.data.options import DataOptions
from rmp_cli.errors import RmpError


@dataclass
class DataBundle:
    name: str
    train: Dataset  # training augmentation when augment=True
    test: Dataset  # eval transforms, `subset` applied
    calib: Dataset  # seeded subset of train with eval transforms (threshold balancing)
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) after transforms
    mean: tuple[float, ...]  # normalization used
    std: tuple[float, ...]
    test_note: str | None = None  # "test set: 1,000 of 10,000 official images" for a short split


@dataclass(frozen=True)
class Splits:
    """What each dataset builder returns; build_data adds the seeded subsets."""

    train: Dataset
    train_eval: Dataset  # the same images as train, eval transforms
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _in_memory(
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    num_classes: int,
    max_value: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: RandomShiftFlip | None,
) -> Splits:
    train_x, train_y, test_x, test_y = tensors
    train_eval = InMemoryImages(train_x, train_y, max_value=max_value, mean=mean, std=std)
    test = InMemoryImages(test_x, test_y, max_value=max_value, mean=mean, std=std)
    return Splits(
        train_eval.with_augment(augment),
        train_eval,
        test,
        num_classes,
        tuple(train_x.shape[1:]),
        mean,
        std,
    )


def _digits(opts: DataOptions) -> Splits:
    # Optional 1-pixel shift: at 8x8 a bigger one moves a stroke off the canvas. Never flip digits.
    mean, std = opts.normalisation(digits.MEAN, digits.STD)
    return _in_memory(
        digits.load_digits_split(),
        num_classes=10,
        max_value=digits.MAX_VALUE,
        mean=mean,
        std=std,
        augment=RandomShiftFlip(pad=1, flip=False) if opts.augment else None,
    )


IDX_STATS = {"mnist": ((0.1307,), (0.3081,)), "fashion_mnist": ((0.2860,), (0.3530,))}


def _idx(opts: DataOptions) -> Splits:
    mean, std = opts.normalisation(*IDX_STATS[opts.name])
    return _in_memory(
        idx.load_idx_dataset(opts.name, opts.root, opts.download),
        num_classes=10,
        max_value=255.0,
        mean=mean,
        std=std,
        augment=RandomShiftFlip(pad=2, flip=False) if opts.augment else None,
    )


CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _cifar(opts: DataOptions) -> Splits:
    mean, std = opts.normalisation(*CIFAR_STATS[opts.name])
    tensors = cifar.load_cifar(opts.name, opts.root, opts.format, opts.download, opts.cache_dir)
    return _in_memory(
        tensors,
        num_classes=cifar.LAYOUTS[opts.name].num_classes,
        max_value=255.0,
        mean=mean,
        std=std,
        augment=RandomShiftFlip(pad=4, flip=True) if opts.augment else None,
    )


def _imagenet(opts: DataOptions) -> Splits:
    mean, std = opts.normalisation(imagenet.MEAN, imagenet.STD)
    train, train_eval, val, num_classes = imagenet.load_imagenet(opts.root, opts.augment, mean, std)
    return Splits(train, train_eval, val, num_classes, (3, imagenet.CROP, imagenet.CROP), mean, std)


BUILDERS: dict[str, Callable[[DataOptions], Splits]] = {
    "digits": _digits,
    "mnist": _idx,
    "fashion_mnist": _idx,
    "cifar10": _cifar,
    "cifar100": _cifar,
    "imagenet": _imagenet,
}
DATASETS: tuple[str, ...] = tuple(BUILDERS)
FORMATS: dict[str, tuple[str, ...]] = {"cifar10": cifar.FORMATS, "cifar100": cifar.FORMATS}

# The official test splits: a copy holding fewer images is accepted, and every run says so.
OFFICIAL_TEST_IMAGES = {
    "mnist": 10_000,
    "fashion_mnist": 10_000,
    "cifar10": 10_000,
    "cifar100": 10_000,
    "imagenet": 50_000,
}

# Separate random streams, so changing calib_size never changes the test subset and vice versa.
_CALIB_STREAM, _SUBSET_STREAM = 1, 2


def seeded_indices(n: int, k: int, seed: int, stream: int) -> list[int]:
    """k distinct indices of range(n) in random order (a prefix of them is still a random sample)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + stream) % 2**63)
    return torch.randperm(n, generator=generator)[:k].tolist()


def build_data(cfg: Mapping[str, Any], seed: int) -> DataBundle:
    """Build the dataset described by the `dataset` config group; splits are deterministic in seed."""
    opts = DataOptions.from_config(cfg)
    if opts.name not in BUILDERS:
        raise RmpError(f"unknown dataset '{opts.name}'; choose one of: {', '.join(DATASETS)}")
    formats = FORMATS.get(opts.name, ("auto",))
    if opts.format not in formats:
        raise RmpError(
            f"dataset.format={opts.format} is not valid for {opts.name}; "
            f"choose one of: {', '.join(formats)}"
        )
    splits = BUILDERS[opts.name](opts)
    n_train, n_test = len(splits.train_eval), len(splits.test)
    if opts.calib_size > n_train:
        raise RmpError(
            f"dataset.calib_size={opts.calib_size} exceeds the {n_train} training images "
            f"of {opts.name}; lower it"
        )
    calib = Subset(splits.train_eval, seeded_indices(n_train, opts.calib_size, seed, _CALIB_STREAM))
    test = splits.test
    if opts.subset is not None:
        if opts.subset > n_test:
            raise RmpError(
                f"dataset.subset={opts.subset} exceeds the {n_test} test images of "
                f"{opts.name}; lower it or set dataset.subset=null"
            )
        test = Subset(test, seeded_indices(n_test, opts.subset, seed, _SUBSET_STREAM))
    return DataBundle(
        name=opts.name,
        train=splits.train,
        test=test,
        calib=calib,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        mean=tuple(splits.mean),
        std=tuple(splits.std),
        test_note=short_test_note(opts.name, n_test, opts.subset),
    )


def redraw_calibration(bundle: DataBundle, seed: int) -> DataBundle:
    """The same bundle with its calibration subset drawn by another seed (a seed axis over one
    trained network: the calibration images are part of what a seed varies)."""
    calib = bundle.calib
    if not isinstance(calib, Subset):
        return bundle
    source = calib.dataset
    indices = seeded_indices(len(source), len(calib), seed, _CALIB_STREAM)  # type: ignore[arg-type]
    return dataclasses.replace(bundle, calib=Subset(source, indices))


def short_test_note(name: str, n_test: int, subset: int | None) -> str | None:
    """What a run says when its test split is shorter than the official one (None when not)."""
    official = OFFICIAL_TEST_IMAGES.get(name)
    if official is None or n_test >= official:
        return None
    note = f"test set: {n_test:,} of {official:,} official images"
    return note if subset is None else f"{note} (dataset.subset={subset:,} of them)"
