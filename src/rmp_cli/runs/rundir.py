"""Run directories: one per command invocation, holding the composed config, overrides, git SHA, log."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rmp_cli import __version__
from rmp_cli.errors import FileFault, RmpError
from rmp_cli.runs.atomic import atomic_write_text

LOG_NAME = "run.log"
TRACKER_STATE = "tracker.json"  # the tracker's run id (logger=...), so a resume continues it
TENSORBOARD_DIR = "tensorboard"  # logger=tensorboard's event files
# What every run dir gets before any work is done (a sweep adds its manifest and lock, a
# tracker its state and event files): a run that failed with only these was empty and is removed.
BOOKKEEPING = {".hydra", LOG_NAME, "meta.json", "sweep.json", ".lock", TRACKER_STATE}
BOOKKEEPING |= {TENSORBOARD_DIR}
log = logging.getLogger("rmp")


@dataclass
class RunDir:
    path: Path
    created: bool  # False when an existing run dir is reused (resume)
    # Folders above it that this invocation made (outputs/, outputs/train/), deepest first:
    # discarding the run removes those left empty, so a failed first run leaves no trace.
    new_parents: tuple[Path, ...] = ()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def discard_if_empty_run(self) -> None:
        """Remove a run dir this invocation created when it failed before producing anything."""
        if not self.created:
            return
        try:
            produced = [p for p in self.path.iterdir() if p.name not in BOOKKEEPING]
        except OSError:
            return
        if not produced:
            close_logging()
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.new_parents:
            try:
                parent.rmdir()  # only if empty: another run may have moved in meanwhile
            except OSError:
                break


def git_sha() -> str:
    """SHA of the source checkout rmp runs from (with -dirty), or 'unknown' for installed copies."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def new_run_path(command: str, base: str | Path = "outputs") -> Path:
    """outputs/<command>/<YYYY-mm-dd_HH-MM-SS>-<random id>: unique below one second."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path(base) / command / f"{stamp}-{secrets.token_hex(3)}"


def create_run_dir(
    command: str, cfg: DictConfig, overrides: Sequence[str], *, reuse: bool = False
) -> RunDir:
    """Make (or, with ``reuse``, reopen) the run dir and record how the run was made.

    An explicit ``run_dir=`` that already holds another run is refused unless ``reuse`` (resume).
    """
    if cfg.get("run_dir"):
        path = Path(str(cfg.run_dir))
        new_parents = missing_parents(path)
        try:
            existing = path.exists() and any(path.iterdir())
        except OSError as exc:
            raise FileFault("cannot read", path, exc) from None
        if existing and not reuse:
            raise RmpError(
                f"run dir {path} already holds a run; choose another run_dir= (nothing was overwritten)"
            )
        make_dir(path, exist_ok=True)
        created = not existing
    else:
        while True:
            path = new_run_path(command)
            new_parents = missing_parents(path)
            try:
                make_dir(path)
                break
            except FileExistsError:
                continue
        created = True
    run = RunDir(path=path, created=created, new_parents=new_parents if created else ())
    cfg.run_dir = str(path)
    try:
        _record(run, command, cfg, overrides)
    except BaseException:
        if created:  # a full disk or a signal before any work: leave no half-made run dir
            close_logging()
            run.remove()
        raise
    return run


def missing_parents(path: Path) -> tuple[Path, ...]:
    """The folders above `path` that do not exist yet, deepest first."""
    return tuple(p for p in path.parents if p != Path(".") and not p.exists())


def _record(run: RunDir, command: str, cfg: DictConfig, overrides: Sequence[str]) -> None:
    """The run's record: composed config, overrides, meta.json; then the log starts."""
    path, created = run.path, run.created
    hydra_dir = path / ".hydra"
    make_dir(hydra_dir, exist_ok=True)
    # A reopened (resumed) run keeps its original record; each resume adds its own overrides file.
    suffix = "" if created else "." + time.strftime("%Y%m%d-%H%M%S") + "-resume"
    if created or not (hydra_dir / "config.yaml").exists():
        atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_text(
        hydra_dir / f"overrides{suffix}.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides)))
    )
    meta = {
        "command": command,
        "argv": sys.argv,
        "git_sha": git_sha(),
        "rmp_version": __version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    atomic_write_text(path / f"meta{suffix}.json", json.dumps(meta, indent=2) + "\n")
    setup_logging(path / LOG_NAME)
    log.info("rmp %s %s | git %s | run dir %s", command, " ".join(overrides), meta["git_sha"], path)


def make_dir(path: Path, *, exist_ok: bool = False) -> None:
    """mkdir -p (mode 0777 less the umask, like any directory); an OS refusal is a FileFault."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as exc:
        if isinstance(exc, FileExistsError) and not exist_ok:
            raise  # the caller picks another name
        raise FileFault("cannot create", path, exc) from None


def quiet_mode(flag: bool = False) -> bool:
    """Quiet (no progress bars) under --quiet or CI=true."""
    return flag or os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def setup_logging(logfile: Path | None, *, verbose: bool = True) -> None:
    close_logging()
    log.setLevel(logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    log.addHandler(console)
    if logfile is not None:
        try:
            handler = RunLogFile(logfile)
        except OSError as exc:
            raise FileFault("cannot write", logfile, exc) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)


class RunLogFile(logging.FileHandler):
    """run.log. When the disk fills up the log goes on on the console alone, with one warning,
    instead of logging's traceback per message; the next result file written reports the fault."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        log.removeHandler(self)
        with contextlib.suppress(OSError):
            self.close()
        log.warning(
            "rmp: warning: cannot write %s: %s; logging to the console only",
            self.baseFilename,
            exc.strerror,
        )


def close_logging() -> None:
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
