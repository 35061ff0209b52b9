"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


class ParseFault(RmpError):
    """A file rmp read whose contents are not what it should hold. Reads `[<label> ]<path> is
    <verdict> (<why>)[; <advice>]`, e.g. "checkpoint run/metrics.csv is corrupt or not a torch
    file (pop from empty list)", or a reader's own `template`; `path` names the file."""

    def __init__(
        self,
        path: str | Path,
        verdict: str,
        reason: str,
        advice: str = "",
        label: str = "",
        template: str = "{head} is {verdict} ({reason})",
    ) -> None:
        self.path = Path(path)
        head = f"{label} {path}" if label else str(path)
        line = template.format(head=head, path=path, verdict=verdict, reason=reason)
        super().__init__(line + (f"; {advice}" if advice else ""))


def reason_of(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (or its type), short enough for one line and
    without terminal colour codes (torch's unpickler sends some)."""
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0].strip() if text else ""
    return (first or type(exc).__name__)[:limit]


def read_bytes(path: str | Path) -> bytes:
    """A reader's first step: the file's bytes, or the disk's refusal as `cannot read PATH`."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FileFault("cannot read", path, exc) from None


@contextlib.contextmanager
def parsing(
    path: str | Path, verdict: str, advice: str = "", *, label: str = "", template: str = ""
) -> Iterator[None]:
    """The boundary of one reader: wrap the step that turns a file's bytes into checked values.

    Whatever a damaged or foreign file makes the parser raise becomes one ParseFault naming the
    file and what it is not ("not valid JSON"): no list of exception types to keep up with bad
    files. The operating system's refusals (a disk error, no permission) keep their `cannot
    read` line, RmpErrors raised inside (a reader's own checks) pass unchanged, and signals pass
    (they are KeyboardInterrupts, not Exceptions). Keep the block to the parse and its checks:
    code run on the values afterwards stays outside, so rmp's own bugs still show a traceback."""
    try:
        yield
    except RmpError:
        raise
    except Exception as exc:
        fault = os_error_in(exc)
        if fault is not None and fault.errno is not None:  # the disk's complaint, not the file's
            raise FileFault("cannot read", path, fault) from None
        extra = {"template": template} if template else {}
        raise ParseFault(path, verdict, reason_of(exc), advice, label, **extra) from None
