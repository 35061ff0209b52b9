"""Training batches made where the model runs: uint8 images held on the device, augmented there.

A host DataLoader over the in-memory datasets indexes, augments, normalizes, unbinds and
re-stacks every batch on the CPU and copies it over, while the GPU, synchronised by the training
loop at every step, waits. Here the uint8 images (150 MB for CIFAR-10's training split) move to
the device once, and a batch is one gather, one crop/flip and one multiply-add there.

Same batches as the host path, by construction: the order comes from a DataLoader over the
indices with the seed `make_loader` would get (same sampler, same generator use), and the crop
offsets and flips are drawn from the CPU generator in the same order as the host dataset draws
them (`RandomShiftFlip.draw`), then applied on the device. So `dataset.on_device` changes where
the work happens, never what a run computes (tested bit for bit with device=cpu).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from rmp_cli.data.loader import make_loader
from rmp_cli.data.memory import InMemoryImages, RandomShiftFlip
from rmp_cli.errors import RmpError


def in_memory_source(dataset: Dataset) -> tuple[InMemoryImages, list[int] | None] | None:
    """The InMemoryImages behind `dataset` (itself or a Subset of it) and the Subset's indices."""
    if isinstance(dataset, InMemoryImages):
        return dataset, None
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, InMemoryImages):
        return dataset.dataset, [int(i) for i in dataset.indices]
    return None


def check_setting(setting: Any) -> None:
    if not (setting == "auto" or isinstance(setting, bool)):
        raise RmpError(f"dataset.on_device must be auto, true or false, got {setting!r}")


def wants_device_data(setting: Any, device: torch.device, dataset: Dataset) -> bool:
    """Decide `dataset.on_device`: auto = on CUDA for in-memory datasets; true = always (refused
    for datasets read from files, e.g. imagenet); false = the host DataLoader."""
    check_setting(setting)
    if setting is False:
        return False
    in_memory = in_memory_source(dataset) is not None
    if setting is True and not in_memory:
        raise RmpError(
            "dataset.on_device=true needs an in-memory dataset (digits, mnist, fashion_mnist, "
            "cifar10, cifar100); this one is read from files, so set dataset.on_device=false"
        )
    return in_memory and (setting is True or device.type == "cuda")


class DeviceImages:
    """One in-memory dataset's uint8 images and labels, copied to `device` once."""

    def __init__(self, source: InMemoryImages, device: torch.device) -> None:
        self.device = device
        self.images = source.images.to(device)
        self.labels = source.labels.to(device)
        self.augment = source.augment
        self.scale, self.shift = (t.to(device) for t in source.normalization)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized float32 images and int64 labels of `indices` (a CPU tensor), on the device.

        The augmentation draws happen here, on the CPU generator, in the host path's order."""
        draws = None
        if isinstance(self.augment, RandomShiftFlip):
            draws = self.augment.draw(len(indices))
        elif self.augment is not None:
            raise RmpError(
                f"dataset.on_device supports the crop/flip augmentation only, not {self.augment!r}"
            )
        # One small copy carries the indices and the draws.
        packed = indices[None] if draws is None else torch.cat((indices[None], draws))
        packed = packed.to(self.device, non_blocking=True)
        index = packed[0]
        images = self.images[index]
        if draws is not None:
            images = self.augment.apply(images, packed[1:])
        x = images.float().mul_(self.scale).sub_(self.shift)
        return x, self.labels[index]


class _Indices(Dataset):
    """range(n) (or a Subset's indices) as a dataset: the DataLoader below batches indices only."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor([self.indices[p] for p in positions], dtype=torch.long)

    def __getitem__(self, position: int) -> int:
        return self.indices[position]


def _no_collate(batch: torch.Tensor) -> torch.Tensor:
    return batch


class DeviceLoader:
    """Iterates (x, y) batches on the device in the order `make_loader` gives for the same
    arguments (shuffle, seed, sampler, batch size; the last batch may be smaller)."""

    def __init__(
        self,
        images: DeviceImages,
        subset: list[int] | None,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        sampler: Sampler | None = None,
    ) -> None:
        self.images = images
        n = len(images.labels) if subset is None else len(subset)
        self.order: DataLoader = make_loader(
            _Indices(range(n) if subset is None else subset),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            sampler=sampler,
            pin_memory=False,
        )
        self.order.collate_fn = _no_collate

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Like iter(DataLoader), this starts the index iterator at once (which draws its base
        # seed from the loader's generator: tqdm.auto calls iter() twice, and the order must
        # follow the host's), while the batches and their draws come one next() at a time.
        return _DeviceIter(self.images, iter(self.order))


class _DeviceIter:
    def __init__(self, images: DeviceImages, indices: Iterator[torch.Tensor]) -> None:
        self.images = images
        self.indices = indices

    def __iter__(self) -> _DeviceIter:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Lazily, batch by batch: the draws interleave with the model's own use of the CPU
        # generator (dropout on CPU) exactly as the host DataLoader's fetches do.
        return self.images.batch(next(self.indices))


class BatchSource:
    """Makes train/test loaders for `rmp train`: host DataLoaders, or DeviceLoaders over device
    copies of the in-memory datasets (copied once per dataset, reused every epoch)."""

    def __init__(self, setting: Any, device: torch.device, num_workers: int) -> None:
        self.setting = setting
        self.device = device
        self.num_workers = num_workers
        self._copies: dict[int, DeviceImages] = {}

    def on_device(self, dataset: Dataset) -> bool:
        return wants_device_data(self.setting, self.device, dataset)

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        sampler: Sampler | None = None,
    ) -> DataLoader | DeviceLoader:
        if not self.on_device(dataset):
            return make_loader(
                dataset,
                batch_size,
                shuffle=shuffle,
                seed=seed,
                sampler=sampler,
                num_workers=self.num_workers,
            )
        source, subset = in_memory_source(dataset)  # type: ignore[misc]
        key = id(source)
        if key not in self._copies:
            self._copies[key] = DeviceImages(source, self.device)
        return DeviceLoader(
            self._copies[key], subset, batch_size, shuffle=shuffle, seed=seed, sampler=sampler
        )
