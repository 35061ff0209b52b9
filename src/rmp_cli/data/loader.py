"""DataLoader construction with seeded shuffling (the same seed replays the same batches)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rmp_cli.errors import RmpError


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader whose shuffling and worker seeds derive from `seed` only.

    With a `sampler` (e.g. DistributedSampler) the sampler decides the order: pass shuffle=False.
    pin_memory defaults to True when CUDA is available (faster host-to-device copies).
    """
    if batch_size < 1:
        raise RmpError(f"batch size must be a positive integer, got {batch_size}")
    if num_workers < 0:
        raise RmpError(f"num_workers must be >= 0, got {num_workers}")
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle=False with a sampler: the sampler decides the order")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        # The generator also seeds each worker's torch RNG, hence random augmentations.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
