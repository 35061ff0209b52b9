"""The tracker interface: what rmp's commands call, and all a logger of your own implements.

A tracker is built from `logger._target_` with Hydra's `instantiate` (the other keys of the
`logger` group are its keyword arguments, less `experiment` and `log_checkpoints`, which rmp
reads itself). rmp calls it in this order: `start` once, `log_params` once for a new run,
`log_metrics` with a step as the run goes (final numbers with step None), `child` for each
grid point of a sweep or convert, `log_artifact` at the end, then `finish`. A tracker may raise
anything: rmp turns a failure into one warning line and stops calling it, the run goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """Where and what the run is: its dir, a display name, the experiment that groups runs."""

    run_dir: Path
    name: str
    experiment: str
    command: str
    tags: dict[str, str] = field(default_factory=dict)


class Tracker(ABC):
    """One tracker's run. Subclass it (and point `logger._target_` at the subclass) to log
    rmp's runs elsewhere."""

    @abstractmethod
    def start(self, info: RunInfo, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Open the run, or continue the one an earlier `start` described (``resume`` is what
        it returned, read back from the run dir); returns what a later resume needs."""

    @abstractmethod
    def log_params(self, params: Mapping[str, str]) -> None:
        """The run's settings, once (a resumed run has them already)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numbers at a step (an epoch, a time-step count T); step None: final numbers."""

    @abstractmethod
    def child(self, name: str) -> Tracker:
        """A started sub-run of this one (an MLflow nested run, a TensorBoard subfolder), for
        one grid point; rmp logs its params and metrics and finishes it."""

    def log_artifact(self, path: Path, folder: str = "") -> None:  # noqa: B027 - optional
        """A finished file of the run dir, kept under ``folder`` (trackers without artifact
        storage ignore it: the file stays in the run dir)."""

    @abstractmethod
    def finish(self, status: str = "FINISHED") -> None:
        """Close the run: FINISHED, FAILED, or KILLED (stopped by a signal, resumable)."""

    def parts(self) -> list[Tracker]:
        """The trackers this one stands for (several for MultiTracker), each guarded alone."""
        return [self]

    @property
    def label(self) -> str:
        """How warnings name this tracker."""
        return type(self).__name__
