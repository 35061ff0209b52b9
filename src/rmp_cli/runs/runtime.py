"""Process-level knobs shared by every command: device, seeds, threads, progress bars."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from rmp_cli.errors import RmpError

T = TypeVar("T")

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


def resolve_device(name: str | None) -> torch.device:
    name = str(name or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RmpError(
            f"device={name} requested but CUDA is not available; use device=cpu or device=auto"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise RmpError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, **kw: Any
) -> Iterable[T]:
    """A tqdm bar on stderr, silent under --quiet / CI=true."""
    return tqdm(
        iterable, desc=desc, total=total, disable=_QUIET, leave=False, dynamic_ncols=True, **kw
    )
