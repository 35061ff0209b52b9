"""How a command that stops early ends: bad input or an OS fault (a full disk, no permission) is
one `rmp: error:` line and exit 2; a SIGTERM / SIGINT is one line with the exact command that
resumes the run, and exit 143 / 130. Never a traceback.

The entry point records the command as typed; the command layer, once its run dir exists, says
how that run is continued (`rmp train resume=RUN/last.pt`, the same sweep with `run_dir=RUN`).
Every file in a run dir is written atomically, so each one present is complete.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rmp_cli.errors import FileFault, RmpError
from rmp_cli.runs import signals
from rmp_cli.runs.rundir import BOOKKEEPING

BAD_INPUT = 2
T = TypeVar("T")


@dataclass
class _Command:
    typed: list[str] = field(default_factory=list)  # the arguments, as typed
    program: list[str] | None = None  # None: `rmp`, or torchrun's equivalent
    run: Path | None = None
    resume: Callable[[Path], list[str]] | None = None


_current = _Command()


def command_typed(args: Sequence[str], program: Sequence[str] | None = None) -> None:
    """Record the command line (after the program name); forgets any earlier run."""
    global _current
    _current = _Command(typed=list(args), program=list(program) if program else None)


def run_opened(run: Path, resume: Callable[[Path], list[str]]) -> None:
    """The command works in `run`; ``resume(run)`` gives the arguments that continue it."""
    _current.run, _current.resume = Path(run), resume


def with_run_dir(args: Sequence[str], run: Path, key: str = "run_dir") -> list[str]:
    """`args` with `KEY=RUN` in place of any KEY= they had."""
    return [a for a in args if not a.lstrip("+").startswith(f"{key}=")] + [f"{key}={run}"]


def typed() -> list[str]:
    return list(_current.typed)


def launcher() -> list[str]:
    """How rmp was started: plainly, or by torchrun (on several nodes the user adds the
    rendezvous options as before)."""
    if _current.program:
        return list(_current.program)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ["rmp"]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    nodes = [f"--nnodes={world // local}"] if world != local else []
    return ["torchrun", *nodes, f"--nproc_per_node={local}", "-m", "rmp_cli"]


def complete_files(run: Path) -> list[str]:
    """The run's result files (paths relative to it), leaving out the bookkeeping, the log and
    hidden temporary files."""
    names = []
    try:
        for path in sorted(run.rglob("*")):
            rel = path.relative_to(run)
            top = rel.parts[0]
            hidden = any(part.startswith(".") for part in rel.parts)
            record = top in BOOKKEEPING or (top.startswith("meta") and top.endswith(".json"))
            if not hidden and not record and path.is_file():
                names.append(rel.as_posix())
    except OSError:
        return names
    return names


def _saved_run() -> Path | None:
    run = _current.run
    return run if run is not None and run.is_dir() and complete_files(run) else None


def resume_command() -> str:
    """The command that continues the run (or, when nothing was saved, starts it again)."""
    run = _saved_run()
    args = _current.resume(run) if run is not None and _current.resume else _current.typed
    return shlex.join([*launcher(), *args])


def interrupted_line(signal_name: str) -> str:
    run = _saved_run()
    if run is None:
        return (
            f"rmp: interrupted by {signal_name} before anything was saved; start again with: "
            f"{resume_command()}"
        )
    return (
        f"rmp: interrupted by {signal_name}; finished work is kept in {run}; resume with: "
        f"{resume_command()}"
    )


def fault_line() -> str | None:
    """After an OS fault: which files of the run are complete and how to continue, if any are."""
    run = _saved_run()
    if run is None:
        return None
    files = ", ".join(complete_files(run))
    return f"rmp: complete in {run}: {files}; resume with: {resume_command()}"


def _rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _collective_failed(exc: BaseException) -> bool:
    """Under torchrun, a collective that failed because a peer rank is gone (it stopped on a
    fault or a signal first): gloo / NCCL report it as a RuntimeError from torch.distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(exc, RuntimeError):
        return False
    import torch.distributed

    tb, innermost = exc.__traceback__, None
    while tb is not None:
        innermost, tb = tb, tb.tb_next
    module = str(innermost.tb_frame.f_globals.get("__name__", "")) if innermost else ""
    transport = any(word in str(exc) for word in ("gloo", "NCCL", "closed by peer"))
    return (
        module.startswith("torch.distributed")
        or transport
        or (isinstance(exc, torch.distributed.DistError))
    )


def exit_code(exc: BaseException) -> int | None:
    """Tell the user how the command ended and return its exit code; None for an exception that
    is neither a stop nor a fault (a bug, whose traceback should show)."""
    stop = signals.received()
    if isinstance(exc, KeyboardInterrupt) or stop is not None:
        # Under torchrun a rank whose peer stopped first sees a failed collective: still a stop.
        signum = getattr(exc, "signum", None) or stop or signal.SIGINT
        if _rank_zero():
            _say(interrupted_line(signal.Signals(signum).name))
        return 128 + signum
    if _collective_failed(exc):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if _rank_zero():
            _say(f"rmp: error: a torchrun rank stopped or lost contact ({first})")
        else:  # rank 0 reports; this rank only says why it stops too
            _say(f"rmp: rank {os.environ.get('RANK')} stopped: another rank stopped ({first})")
        return BAD_INPUT
    if isinstance(exc, OSError):  # one not met where files are used: still one line
        exc = FileFault("cannot use", exc.filename, exc) if exc.filename else exc
    if not isinstance(exc, (RmpError, OSError)):
        return None
    reason = exc.strerror or str(exc) if isinstance(exc, OSError) else _from_worker(str(exc))
    _say(f"rmp: error: {reason}")
    if isinstance(exc, FileFault) and _rank_zero() and (line := fault_line()):
        _say(line)
    return BAD_INPUT


def _from_worker(message: str) -> str:
    """An RmpError raised in a DataLoader worker (a damaged image read lazily) comes back as
    "Caught RmpError in DataLoader worker process 0." and the worker's traceback, whose last
    line holds the message."""
    lines = message.strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return lines[-1].split(": ", 1)[-1]
    return message


def guarded(work: Callable[[], T]) -> T:
    """Run a command's work with SIGTERM / SIGINT caught; a stop or a fault ends the process
    with its exit code after its one line (see `exit_code`)."""
    with signals.catch_signals():
        try:
            return work()
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise
        except KeyboardInterrupt as exc:
            code = exit_code(exc)
    sys.exit(code)
