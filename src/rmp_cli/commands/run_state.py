"""A sweep's run dir across processes and restarts: its manifest (sweep.json, the settings a
resume must match) and the lock that keeps a second live process out."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmp_cli.errors import FileFault, RmpError
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.runs.rundir import RunDir, create_run_dir, log

MANIFEST = "sweep.json"


def _manifest(cfg: DictConfig, timesteps: list[int], keys: list[str]) -> dict[str, Any]:
    base = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("run_dir", "device", "threads", "logger"):  # a resume may change these
        base.pop(volatile, None)  # type: ignore[union-attr]
    return {"timesteps": timesteps, "grid": keys, "config": base}


def _open_run(cfg: DictConfig, overrides: list[str], manifest: dict[str, Any]) -> RunDir:
    explicit = cfg.get("run_dir")
    if explicit and (Path(str(explicit)) / MANIFEST).is_file():
        old = read_json(Path(str(explicit)) / MANIFEST)
        if old != manifest and old != _without_seed(manifest):
            raise RmpError(
                f"run dir {explicit} holds a sweep with other settings; resume it with the "
                "same overrides and time-steps, or choose another run_dir="
            )
        run = create_run_dir("sweep", cfg, overrides, reuse=True)
        log.info("resuming the sweep in %s", run.path)
        return run
    run = create_run_dir("sweep", cfg, overrides)
    atomic_write_text(run / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return run


def _without_seed(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as written before grid keys named the seed (such sweeps still resume)."""
    grid = [str(k).rpartition(",seed=")[0] or k for k in manifest["grid"]]
    return {**manifest, "grid": grid}


def read_json(path: Path) -> Any:
    """A JSON file this sweep wrote (atomically); a read fault is one clear line."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise FileFault("cannot read", path, exc) from None
    except ValueError:
        raise RmpError(f"{path} is not valid JSON; was it edited by hand?") from None


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
