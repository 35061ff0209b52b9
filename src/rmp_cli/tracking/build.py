"""The `logger` config group -> trackers, with Hydra's `instantiate` of its `_target_`.

Built before any work starts, so a missing optional package (or a `_target_` that cannot be
loaded) is one line at once, not a failure after an hour of training. Under torchrun every rank
builds it (all fail alike) and rank 0 alone keeps the trackers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from rmp_cli.errors import RmpError
from rmp_cli.tracking.base import Tracker
from rmp_cli.tracking.session import Tracking, reason

# Keys of the group that rmp reads itself; the rest are the tracker class's arguments.
RMP_KEYS = ("experiment", "log_checkpoints")
DEFAULT_EXPERIMENT = "rmp"


def _arguments(spec: Any) -> Any:
    if isinstance(spec, Mapping):
        return {k: _arguments(v) for k, v in spec.items() if k not in RMP_KEYS}
    return spec


def _cause(exc: BaseException) -> BaseException:
    """The error inside Hydra's InstantiationException wrappers."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def build_tracker(spec: Mapping[str, Any]) -> Tracker:
    target = spec.get("_target_")
    try:
        tracker = instantiate(_arguments(dict(spec)), _convert_="partial")
    except Exception as exc:  # Hydra wraps what the class raised
        cause = _cause(exc)
        if isinstance(cause, RmpError):
            raise RmpError(str(cause)) from None
        text = reason(cause).split(", set env var HYDRA_FULL_ERROR")[0]
        raise RmpError(f"logger._target_ {target} cannot be built: {text}") from None
    if not isinstance(tracker, Tracker):
        raise RmpError(
            f"logger._target_ {target} is not a tracker; its class must subclass "
            "rmp_cli.tracking.base.Tracker"
        )
    return tracker


def build_tracking(
    logger: Mapping[str, Any] | None, *, command: str, preset: str | None = None
) -> Tracking:
    """The run's Tracking: none without a `logger` (logger=none), else the trackers built."""
    if not logger or not logger.get("_target_"):
        return Tracking(command=command)
    log_checkpoints = logger.get("log_checkpoints", False)
    if not isinstance(log_checkpoints, bool):
        raise RmpError(f"logger.log_checkpoints must be true or false, got {log_checkpoints!r}")
    experiment = str(logger.get("experiment") or preset or DEFAULT_EXPERIMENT)
    tracker = build_tracker(logger)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 alone logs
        return Tracking(command=command)
    return Tracking(
        tracker.parts(), command=command, experiment=experiment, log_checkpoints=log_checkpoints
    )
