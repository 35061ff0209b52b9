"""SIGTERM and SIGINT end a command the same way: the file being written is finished, the work in
progress is dropped, and `Interrupted` unwinds the stack so the CLI can say how to resume.

A scheduler (Slurm's time limit, preemption) sends SIGTERM, a user presses Ctrl-C (SIGINT). The
handler raises `Interrupted` at once, except inside `deferred()` (an atomic write): there it is
raised when the write is done, so the run keeps that file too. A second Ctrl-C abandons a write
still in progress (its temporary file is removed), or ends the process at once when none is;
repeated SIGTERMs (the scheduler signals every process of a job, torchrun forwards it again)
change nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT)

_received: int | None = None  # the first signal, once one arrived
_pending = False  # raising it waits for the current atomic write
_depth = 0  # nesting of deferred() blocks


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGINT. A KeyboardInterrupt, so `except Exception` blocks let it pass."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by this signal


def received() -> int | None:
    """The signal that asked this process to stop, if any (it may surface as another error, e.g.
    a torchrun peer's collective failing because its partner stopped first)."""
    return _received


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received, _pending
    if _received is None:
        _received = signum
        if _depth > 0:
            _pending = True
            return
        raise Interrupted(signum)
    if signum != signal.SIGINT:
        return
    if _pending:  # Ctrl-C again: do not wait for the write
        _pending = False
        raise Interrupted(signum)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # and once more: stop now
    os.kill(os.getpid(), signal.SIGINT)


def _ours_to_take(signum: int) -> bool:
    """Only signals nobody else handles: under submitit, its own handlers checkpoint and requeue."""
    current = signal.getsignal(signum)
    return current in (signal.SIG_DFL, None) or current is signal.default_int_handler


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """Turn SIGTERM / SIGINT into `Interrupted` for the block (main thread only)."""
    global _received, _pending, _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED if _ours_to_take(s)}
    _received, _pending, _depth = None, False, 0
    for signum in previous:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A signal arriving inside the block is raised when the block has finished."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if _depth == 0 and _pending and _received is not None:
        _pending = False
        raise Interrupted(_received)
