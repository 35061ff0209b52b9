"""Atomic writes: a crash, a full disk or a signal never leaves a half-written checkpoint or result.

Each file is written to a temporary name beside it, flushed to disk, then renamed over the target.
The temporary file is created with mode 0666 and the kernel applies the umask, so results get the
permissions a plain `open(path, "w")` would give them (tempfile.mkstemp would make them 0600,
unreadable to colleagues on a shared server). Any OSError becomes one `FileFault` naming the
target, and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rmp_cli.errors import FileFault, os_error_in
from rmp_cli.runs.signals import deferred

FILE_MODE = 0o666  # less the umask, as open() does
# Filesystems that cannot fsync (some FUSE and special mounts): the rename still keeps it atomic.
_NO_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temp(path: Path) -> Path:
    while True:
        tmp = temp_path(path)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
            return tmp
        except FileExistsError:
            continue


def _sync(path: Path) -> None:
    """Flush to the device, so a full disk or an I/O error shows up before the rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FSYNC:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename tmp over ``path`` (same dir, so the rename is atomic).

    A SIGTERM / SIGINT arriving meanwhile takes effect once the file is in place."""
    path = Path(path)
    tmp: Path | None = None
    with deferred():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _create_temp(path)
            write(tmp)
            _sync(tmp)
            os.replace(tmp, path)
        except BaseException as exc:
            if tmp is not None:
                # On a filesystem gone read-only nothing more can be done.
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            fault = os_error_in(exc) if isinstance(exc, Exception) else None
            if fault is not None:
                raise FileFault("cannot write", path, fault) from exc
            raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object: torch's own file writer turns a full disk into a bare
    # RuntimeError, a Python file keeps the OSError (and its errno) in the exception chain.
    with path.open("wb") as f:
        torch.save(obj, f)


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda p: _torch_save(obj, p))
