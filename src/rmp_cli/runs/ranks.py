"""Commands under torchrun: every rank works, rank 0 alone creates the run dir and writes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from rmp_cli.errors import RmpError
from rmp_cli.runs import distributed as dist
from rmp_cli.runs.rundir import RunDir, setup_logging
from rmp_cli.runs.runtime import resolve_device, set_quiet


@contextlib.contextmanager
def torchrun_session(configs: Sequence[DictConfig]) -> Iterator[torch.device]:
    """Join torchrun's process group for the block (no-op for one process); under several ranks
    each config gets this rank's device (cuda:LOCAL_RANK)."""
    device = dist.init_from_env(resolve_device(configs[0].device))
    try:
        if dist.world_size() > 1:
            for cfg in configs:
                cfg.device = str(device)
        yield device
        # Every rank done before any tears down: gloo aborts a process whose peer has already
        # closed its connections ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.shutdown()


def on_main(make: Callable[[], RunDir]) -> RunDir:
    """Run ``make`` on rank 0 only; every rank gets the run dir (or rank 0's error)."""
    outcome: tuple[str, str, bool] = ("", "", False)
    if dist.is_main():
        try:
            run = make()
            outcome = ("ok", str(run.path), run.created)
        except RmpError as exc:
            outcome = ("error", str(exc), False)
    status, value, created = dist.broadcast_object(outcome)
    if status == "error":
        raise RmpError(value)
    if not dist.is_main():
        set_quiet(True)
        setup_logging(None, verbose=False)
    return run if dist.is_main() else RunDir(path=Path(value), created=created)


@contextlib.contextmanager
def discard_if_failed(run: RunDir) -> Iterator[None]:
    """A run dir left empty by a failure is removed (by rank 0), never another run's."""
    try:
        yield
    except BaseException:
        if dist.is_main():
            run.discard_if_empty_run()
        raise
