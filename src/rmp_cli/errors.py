"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path


class RmpError(Exception):
    """Bad input from the user (config, data, checkpoint, time-steps). Message = the whole story."""


class FileFault(RmpError):
    """The operating system refused a file operation: a full disk, no permission, a read-only
    filesystem, an I/O error. Reads `<what> <path>: <strerror>` (e.g. "cannot write
    run/results.csv: No space left on device"); the CLI adds which run files are complete."""

    def __init__(self, what: str, path: str | Path, exc: OSError, advice: str = "") -> None:
        self.path = Path(path)
        self.os_error = exc
        self.errno = exc.errno
        self.reason = exc.strerror or (
            os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        )
        super().__init__(f"{what} {path}: {self.reason}" + (f"; {advice}" if advice else ""))


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or one it was raised from or while handling (torch's
    writer reports a full disk as a RuntimeError raised while handling the file's OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
