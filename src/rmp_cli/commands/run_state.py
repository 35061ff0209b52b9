"""A sweep's run dir across processes and restarts: its manifest (sweep.json, the settings a
resume must match) and the lock that keeps a second live process out."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from rmp_cli.errors import FileFault, RmpError, parsing, read_bytes
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.runs.rundir import RunDir, create_run_dir, log

MANIFEST = "sweep.json"
T = TypeVar("T")


def _manifest(cfg: DictConfig, timesteps: list[int], keys: list[str]) -> dict[str, Any]:
    base = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("run_dir", "device", "threads", "logger"):  # a resume may change these
        base.pop(volatile, None)  # type: ignore[union-attr]
    return {"timesteps": timesteps, "grid": keys, "config": base}


def _open_run(
    cfg: DictConfig,
    overrides: list[str],
    manifest: dict[str, Any],
    check: Callable[[Path], None] = lambda path: None,
) -> RunDir:
    """A new run dir, or the run_dir= of this sweep to resume; `check(path)` reads its state
    first, so a file that cannot be read stops the resume before anything is written."""
    explicit = cfg.get("run_dir")
    if explicit and (Path(str(explicit)) / MANIFEST).is_file():
        path = Path(str(explicit))
        old = untouched_if_unreadable(
            path, lambda: read_json(path / MANIFEST), "restore it, or choose another run_dir="
        )
        if old not in (manifest, _as_written_before_later_axes(manifest)):
            raise RmpError(
                f"run dir {explicit} holds a sweep with other settings; resume it with the "
                "same overrides and time-steps, or choose another run_dir="
            )
        check(path)
        run = create_run_dir("sweep", cfg, overrides, reuse=True)
        log.info("resuming the sweep in %s", run.path)
        return run
    run = create_run_dir("sweep", cfg, overrides)
    atomic_write_text(run / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return run


def _as_written_before_later_axes(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as written before grid keys named the neuron options, pre-steps and seed
    (such sweeps still resume: they ran plain IF neurons, no pre-steps, one seed)."""

    def old_key(key: str) -> str:
        parts = str(key).split(",")
        kept = [
            p for p in parts if not p.startswith("seed=") and p not in ("neuron=if", "presteps=0")
        ]
        return ",".join(kept)

    return {**manifest, "grid": [old_key(k) for k in manifest["grid"]]}


def untouched_if_unreadable(run: Path, read: Callable[[], T], advice: str) -> T:
    """``read()`` a file of the run dir being resumed; a file that cannot be parsed stops the
    resume with the reader's line, that nothing was changed, and `advice` (what to do). The
    disk's own faults keep their `cannot read` line."""
    try:
        return read()
    except FileFault:
        raise
    except RmpError as exc:
        raise RmpError(f"{exc}; nothing in {run} was changed: {advice}") from None


def read_json(path: Path) -> Any:
    """A JSON file this sweep wrote (atomically); a read fault is one clear line."""
    raw = read_bytes(path)
    with parsing(path, "not valid JSON", "was it edited by hand?"):
        return json.loads(raw)


class RunLock:
    """Refuse a second live process in the same run dir (a stale lock from a killed run is taken over)."""

    def __init__(self, path: Path) -> None:
        self.path = path / ".lock"

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                self._create()
                return self
            except FileExistsError:
                try:
                    pid = int(self.path.read_text() or 0)
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                except PermissionError:
                    pass
                raise RmpError(
                    f"another rmp process (pid {pid}) is using {self.path.parent}"
                ) from None
            except OSError as exc:
                raise FileFault("cannot write", self.path, exc) from None
        raise RmpError(f"cannot lock {self.path.parent}")

    def _create(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):  # a stale lock is taken over by the next run
            self.path.unlink(missing_ok=True)
