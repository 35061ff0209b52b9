"""Datasets for rmp: a registry of loaders behind `build_data` and `make_loader`.

Modules: options (config validation), locations (default folders), memory (in-memory uint8
datasets with batched augmentation), digits / idx / cifar / folder / imagenet (one source each),
archives (the offline CIFAR-10 JPEG archives), bundle (the registry), loader (DataLoaders).
"""

from __future__ import annotations

from rmp_cli.data.archives import unpack_cifar10_archives
from rmp_cli.data.bundle import DATASETS, DataBundle, build_data
from rmp_cli.data.loader import make_loader

__all__ = ["DATASETS", "DataBundle", "build_data", "make_loader", "unpack_cifar10_archives"]
