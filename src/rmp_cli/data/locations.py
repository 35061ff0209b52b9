"""Where datasets are looked for when `dataset.root` is null, and where caches may go."""

from __future__ import annotations

from pathlib import Path

# Debian's `dataset-fashion-mnist` package installs the four idx .gz files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_home() -> Path:
    """~/.cache/rmp: the fallback for caches when a dataset folder is read-only."""
    return Path.home() / ".cache" / "rmp"


def data_home() -> Path:
    """~/.cache/rmp/data: the default root for datasets (and for downloads)."""
    return cache_home() / "data"
