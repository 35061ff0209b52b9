"""`logger=many`: several trackers at once, each built from its own entry under `trackers`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rmp_cli.errors import RmpError
from rmp_cli.tracking.base import RunInfo, Tracker


class MultiTracker(Tracker):
    """Fans every call out to its trackers. rmp itself guards each member alone (see `parts`),
    so one failing tracker does not stop the others."""

    def __init__(self, trackers: Mapping[str, Tracker] | None = None) -> None:
        self.trackers = dict(trackers or {})
        for name, tracker in self.trackers.items():
            if not isinstance(tracker, Tracker):
                raise RmpError(
                    f"logger.trackers.{name} is not a tracker (give it a _target_ whose class "
                    "subclasses rmp_cli.tracking.base.Tracker)"
                )

    def parts(self) -> list[Tracker]:
        return [part for tracker in self.trackers.values() for part in tracker.parts()]

    def start(self, info: RunInfo, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resume = resume or {}
        return {n: t.start(info, resume.get(n)) for n, t in self.trackers.items()}

    def log_params(self, params: Mapping[str, str]) -> None:
        for tracker in self.trackers.values():
            tracker.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for tracker in self.trackers.values():
            tracker.log_metrics(metrics, step)

    def child(self, name: str) -> Tracker:
        return MultiTracker({n: t.child(name) for n, t in self.trackers.items()})

    def log_artifact(self, path: Path, folder: str = "") -> None:
        for tracker in self.trackers.values():
            tracker.log_artifact(path, folder)

    def finish(self, status: str = "FINISHED") -> None:
        for tracker in self.trackers.values():
            tracker.finish(status)
