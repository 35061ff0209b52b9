"""The `dataset` config group, validated once into typed options (bad values -> one-line RmpError)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmp_cli.errors import RmpError

# Used when a key is absent, so a notebook can call build_data({"name": "digits"}, seed=0).
DEFAULTS: dict[str, Any] = {
    "root": None,
    "download": False,
    "format": "auto",
    "batch_size": 64,
    "eval_batch_size": 256,
    "num_workers": 0,
    "augment": True,
    "calib_size": 256,
    "subset": None,
    "cache_dir": None,
    "mean": None,
    "std": None,
}


@dataclass(frozen=True)
class DataOptions:
    name: str
    root: Path | None
    download: bool
    format: str
    batch_size: int
    eval_batch_size: int
    num_workers: int
    augment: bool
    calib_size: int
    subset: int | None
    cache_dir: Path | None
    mean: tuple[float, ...] | None = None  # None = the dataset's standard normalisation
    std: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DataOptions:
        def get(key: str) -> Any:
            return cfg.get(key, DEFAULTS.get(key))

        name = get("name")
        if not isinstance(name, str) or not name:
            raise RmpError("dataset.name is missing; choose a dataset, e.g. dataset=digits")
        subset = get("subset")
        return cls(
            name=name,
            root=_path(get("root")),
            download=_flag("download", get("download")),
            format=str(get("format")),
            batch_size=_positive_int("batch_size", get("batch_size")),
            eval_batch_size=_positive_int("eval_batch_size", get("eval_batch_size")),
            num_workers=_non_negative_int("num_workers", get("num_workers")),
            augment=_flag("augment", get("augment")),
            calib_size=_positive_int("calib_size", get("calib_size")),
            subset=None if subset is None else _positive_int("subset", subset),
            cache_dir=_path(get("cache_dir")),
            mean=_floats("mean", get("mean")),
            std=_floats("std", get("std"), positive=True),
        )

    def normalisation(
        self, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The dataset's standard (mean, std), with dataset.mean / dataset.std overriding."""
        out = (self.mean or mean, self.std or std)
        for key, values in zip(("mean", "std"), out, strict=True):
            if len(values) != len(mean):
                raise RmpError(
                    f"dataset.{key} needs {len(mean)} value(s), one per channel of "
                    f"{self.name}, got {list(values)}"
                )
        return out


def _floats(key: str, value: Any, *, positive: bool = False) -> tuple[float, ...] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") else None
    if isinstance(value, (str, bytes)) or items is None or not items:
        raise RmpError(f"dataset.{key} must be a list of numbers (one per channel), got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise RmpError(f"dataset.{key} must be a list of numbers (one per channel), got {value!r}")
    if positive and any(v <= 0 for v in items):
        raise RmpError(f"dataset.{key} values must be positive, got {list(items)}")
    return tuple(float(v) for v in items)


def _path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(str(value)).expanduser()


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise RmpError(f"dataset.{key} must be true or false, got {value!r}")
    return value


def _positive_int(key: str, value: Any) -> int:
    # bool is an int subclass: `dataset.subset=true` must not mean a subset of one image.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RmpError(f"dataset.{key} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RmpError(f"dataset.{key} must be a non-negative integer, got {value!r}")
    return value
