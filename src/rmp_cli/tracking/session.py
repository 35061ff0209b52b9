"""What rmp logs to its trackers over one run, and the guard that keeps a tracker's fault from
ever costing a result: a tracker that raises is one warning line and is not called again; the
run's own files, and its exit code, are what they would have been without it.

The run dir's tracker.json keeps each tracker's run (and the grid points it has), so a resumed
rmp run continues the same tracker run and logs only the points it lacks.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rmp_cli.errors import FileFault
from rmp_cli.runs import signals
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.runs.rundir import TRACKER_STATE, git_sha, log
from rmp_cli.tracking.base import RunInfo, Tracker

T = TypeVar("T")
Metrics = dict[str, float]


class _Guarded:
    """One tracker: calls into it until the first failure, which is one warning line."""

    def __init__(self, tracker: Tracker, key: str) -> None:
        self.tracker, self.key, self.alive = tracker, key, True

    def run(self, work: Callable[[], T]) -> T | None:
        if not self.alive:
            return None
        try:
            return work()
        except Exception as exc:  # a stop (KeyboardInterrupt, SIGTERM) is not the tracker's
            self.alive = False
            log.warning(
                "rmp: warning: logger %s failed (%s); it logs nothing more of this run, whose "
                "own files are written as usual",
                self.key,
                reason(exc),
            )
            return None


def reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
    first = (text.splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def numbers(row: Mapping[str, Any], skip: Sequence[str] = ()) -> Metrics:
    """The finite numbers of a row (a metrics.csv or results.csv row), as floats."""
    out: Metrics = {}
    for key, value in row.items():
        if key in skip or isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted params; lists and nulls as JSON (`[1, 2]`, `null`)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, name + ".")
        elif isinstance(value, (list, tuple)) or value is None:
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


class Tracking:
    """rmp's side of tracking: what a command logs, through the tracker interface only. With
    no trackers (logger=none) every call returns at once and nothing is written."""

    def __init__(
        self,
        trackers: Sequence[Tracker] = (),
        *,
        command: str = "",
        experiment: str = "rmp",
        log_checkpoints: bool = False,
    ) -> None:
        keys: list[str] = []
        for tracker in trackers:  # a stable key per tracker, for tracker.json
            key = tracker.label
            keys.append(key if key not in keys else f"{key}#{len(keys) + 1}")
        self._trackers = [_Guarded(t, k) for t, k in zip(trackers, keys, strict=True)]
        self.command, self.experiment, self.log_checkpoints = command, experiment, log_checkpoints
        self.run_path: Path | None = None
        self._state: dict[str, Any] = {"trackers": {}, "points": {}}
        self._state_lost = False

    @property
    def active(self) -> bool:
        return any(g.alive for g in self._trackers)

    @property
    def labels(self) -> list[str]:
        """Each tracker's name in warnings and in tracker.json."""
        return [g.key for g in self._trackers]

    @contextlib.contextmanager
    def opened(self, run_path: Path, config: Mapping[str, Any]) -> Iterator[Tracking]:
        """Start (or continue) each tracker's run for the block; finish it as the block ends:
        FINISHED, KILLED on a stop (resumable), FAILED otherwise."""
        if not self._trackers:
            yield self
            return
        self._start(Path(run_path), config)
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            for g in self._trackers:
                g.run(lambda g=g: g.tracker.finish(status))

    def _start(self, run_path: Path, config: Mapping[str, Any]) -> None:
        self.run_path = run_path
        state_file = run_path / TRACKER_STATE
        old: dict[str, Any] = {}
        if state_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(state_file.read_text())
        info = RunInfo(
            run_dir=run_path.resolve(),
            name="/".join(run_path.resolve().parts[-2:]),
            experiment=self.experiment,
            command=self.command,
            tags={
                "git_sha": git_sha(),
                "host": platform.node(),
                "command": self.command,
                "experiment": self.experiment,
            },
        )
        params = {k: v for k, v in flatten(config).items() if not k.startswith("logger.")}
        params |= {"run_dir": str(info.run_dir), **info.tags}
        # Trackers not configured this time keep their record, for a later resume with them.
        self._state["trackers"] = dict(old.get("trackers") or {})
        self._state["points"] = {k: list(v) for k, v in dict(old.get("points") or {}).items()}
        for g in self._trackers:
            resume = self._state["trackers"].get(g.key)
            started = g.run(lambda g=g, resume=resume: g.tracker.start(info, resume))
            if started is None:
                continue
            self._state["trackers"][g.key] = started
            if resume is None or started != resume:  # a new tracker run: its params, once
                self._state["points"][g.key] = []
                g.run(lambda g=g: g.tracker.log_params(params))
        self._save()

    def _save(self) -> None:
        if self.run_path is None or not self._state["trackers"]:  # nothing started: no record
            return
        try:
            atomic_write_text(
                self.run_path / TRACKER_STATE, json.dumps(self._state, indent=2) + "\n"
            )
        except FileFault as exc:  # the results' own next write reports the disk; warn once here
            if not self._state_lost:
                log.warning("rmp: warning: %s; a resume will open new tracker runs", exc)
            self._state_lost = True

    def metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for g in self._trackers:
            g.run(lambda g=g: g.tracker.log_metrics(dict(metrics), step))

    def epoch(self, row: Mapping[str, Any], prefix: str = "") -> None:
        """A metrics.csv row: every number but the epoch, with the epoch as the step."""
        if self._trackers:
            values = {prefix + k: v for k, v in numbers(row, skip=("epoch",)).items()}
            self.metrics(values, int(row["epoch"]))

    def logged(self, key: str) -> bool:
        """Whether every live tracker already has this grid point."""
        live = [g for g in self._trackers if g.alive]
        return all(key in self._state["points"].get(g.key, ()) for g in live)

    def point(
        self,
        key: str,
        params: Mapping[str, Any],
        series: Sequence[tuple[int, Metrics]],
        final: Metrics | None = None,
    ) -> None:
        """One grid point as a child run: its axis values, its metrics by step (T), then its
        final numbers; skipped by a tracker that logged it before (a resumed run). A stop
        waits until the point and its record are written: a resume never logs it twice."""
        with signals.deferred():
            self._point(key, params, series, final)

    def _point(
        self,
        key: str,
        params: Mapping[str, Any],
        series: Sequence[tuple[int, Metrics]],
        final: Metrics | None,
    ) -> None:
        changed = False
        for g in self._trackers:
            done = self._state["points"].setdefault(g.key, [])
            if not g.alive or key in done:
                continue

            def log_point(g: _Guarded = g) -> bool:
                child = g.tracker.child(key)
                child.log_params({k: str(v) for k, v in params.items()})
                for step, values in series:
                    child.log_metrics(values, step)
                if final:
                    child.log_metrics(final, None)
                child.finish("FINISHED")
                return True

            if g.run(log_point):
                done.append(key)
                changed = True
        if changed:
            self._save()

    def artifacts(self, paths: Sequence[Path]) -> None:
        """Finished files of the run dir, kept under their folder in it."""
        if not self._trackers or self.run_path is None:
            return
        for path in paths:
            rel = path.parent.relative_to(self.run_path).as_posix()
            folder = "" if rel == "." else rel
            for g in self._trackers:
                g.run(lambda g=g, p=path, f=folder: g.tracker.log_artifact(p, f))
