"""Faults of shared machines, unit by unit: atomic writes under a full disk / no permission /
read-only filesystem / I/O error, file modes that follow the umask, SIGTERM / SIGINT handling
and the one line a stopped command prints. Faults are injected by monkeypatching the writers:
CI runs as root, where chmod cannot make a file unwritable."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from rmp_cli.commands import stopping
from rmp_cli.errors import FileFault, RmpError, os_error_in
from rmp_cli.report.plot import save_figure
from rmp_cli.runs import atomic, signals
from rmp_cli.runs.atomic import atomic_torch_save, atomic_write, atomic_write_text

FAULTS = [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EIO]


def os_error(code: int, path: object = None) -> OSError:
    return OSError(code, os.strerror(code), *([str(path)] if path is not None else []))


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write may have left (there must be none)."""
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# --- atomic writes: permissions ---------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_files_and_their_folders_follow_the_umask(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    text = atomic_write_text(tmp_path / "new" / "deeper" / "results.csv", "a,b\n1,2\n")
    ckpt = atomic_torch_save(tmp_path / "new" / "last.pt", {"w": torch.ones(3)})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open(..., "w") gives: the reference
    fig = plt.figure()
    png = save_figure(fig, tmp_path / "new" / "plot.png")
    plt.close(fig)
    for path in (text, ckpt, png, plain):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, (path, oct(mask))
    for folder in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~mask, (folder, oct(mask))
    # Rewriting keeps the umask's mode (mkstemp would have made it 0600).
    atomic_write_text(text, "a,b\n3,4\n")
    assert text.stat().st_mode & 0o777 == 0o666 & ~mask
    assert leftovers(tmp_path) == []


def test_umask_is_read_by_the_kernel_in_a_fresh_process(tmp_path: Path) -> None:
    """The mode is the umask's even when it is set by the parent shell, not by Python."""
    code = (
        "from rmp_cli.runs.atomic import atomic_write_text; "
        f"atomic_write_text({str(tmp_path / 'r.csv')!r}, 'x')"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        preexec_fn=lambda: os.umask(0o007),
    )
    assert (tmp_path / "r.csv").stat().st_mode & 0o777 == 0o660


# --- atomic writes: faults --------------------------------------------------------------------


def _fail_replace(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def replace(src: object, dst: object) -> None:
        raise os_error(code, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


def _fail_fsync(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def fsync(fd: int) -> None:
        raise os_error(code)

    monkeypatch.setattr(atomic.os, "fsync", fsync)


def _fail_open(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    real = atomic.os.open

    def open_(path: object, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:
            raise os_error(code, path)
        return real(path, flags, mode)

    monkeypatch.setattr(atomic.os, "open", open_)


INJECTIONS = {"replace": _fail_replace, "fsync": _fail_fsync, "create": _fail_open}


@pytest.mark.parametrize("code", FAULTS)
@pytest.mark.parametrize("where", sorted(INJECTIONS))
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, where: str
) -> None:
    target = tmp_path / "results.csv"
    atomic_write_text(target, "complete,table\n")
    before = target.read_bytes()
    INJECTIONS[where](monkeypatch, code)
    with pytest.raises(FileFault) as info:
        atomic_write_text(target, "a newer,table\n")
    assert str(info.value) == f"cannot write {target}: {os.strerror(code)}"
    assert info.value.errno == code and "\n" not in str(info.value)
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code", FAULTS)
def test_a_write_that_fails_half_way_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    target = tmp_path / "summary.md"
    atomic_write_text(target, "# old summary\n")

    def half(path: Path) -> None:
        path.write_text("# new sum")
        raise os_error(code, path)

    with pytest.raises(FileFault, match=rf"^cannot write {target}: {os.strerror(code)}$"):
        atomic_write(target, half)
    assert target.read_text() == "# old summary\n"
    assert leftovers(tmp_path) == []


def test_torch_save_on_a_full_disk_names_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's writer reports a full disk as a RuntimeError raised while handling the file's
    OSError; the fault still reads 'No space left on device'."""
    target = tmp_path / "last.pt"
    atomic_torch_save(target, {"epoch": 1})
    before = target.read_bytes()

    def save(obj: object, f: object) -> None:
        try:
            f.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
            raise os_error(errno.ENOSPC)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    monkeypatch.setattr(atomic.torch, "save", save)
    with pytest.raises(FileFault, match=rf"cannot write {target}: No space left on device"):
        atomic_torch_save(target, {"epoch": 2})
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_errors_that_are_not_the_disks_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(path: Path) -> None:
        raise ValueError("a bug, not a fault")

    with pytest.raises(ValueError, match="a bug"):
        atomic_write(tmp_path / "x.csv", bug)
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.csv").exists()
    try:
        raise RuntimeError("outer") from os_error(errno.EIO)
    except RuntimeError as exc:
        assert os_error_in(exc).errno == errno.EIO  # type: ignore[union-attr]
    assert os_error_in(ValueError("no os error")) is None


def test_a_full_disk_while_drawing_keeps_the_old_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: matplotlib's PNG writer hits ENOSPC."""
    fig = plt.figure()
    path = save_figure(fig, tmp_path / "accuracy_vs_timesteps.png")
    before = path.read_bytes()
    real = type(fig).savefig

    def savefig(self: object, fname: object, **kw: object) -> None:
        Path(str(fname)).write_bytes(b"\x89PNG half")
        raise os_error(errno.ENOSPC)

    monkeypatch.setattr(type(fig), "savefig", savefig)
    with pytest.raises(FileFault, match=r"accuracy_vs_timesteps\.png: No space left on device"):
        save_figure(fig, path)
    monkeypatch.setattr(type(fig), "savefig", real)
    plt.close(fig)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


# --- signals ------------------------------------------------------------------------------------


def test_sigterm_raises_interrupted_and_handlers_are_restored() -> None:
    before = {s: signal.getsignal(s) for s in signals.HANDLED}
    with pytest.raises(signals.Interrupted) as info, signals.catch_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next bytecode boundary
            pass
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert isinstance(info.value, KeyboardInterrupt)  # `except Exception` lets it pass
    assert {s: signal.getsignal(s) for s in signals.HANDLED} == before


def test_a_signal_during_an_atomic_write_waits_for_the_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"

    def write(path: Path) -> None:
        path.write_text("epoch\n1\n")
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's signal, mid-write
        path.write_text("epoch\n1\n2\n")

    with pytest.raises(signals.Interrupted), signals.catch_signals():
        atomic_write(target, write)
    assert target.read_text() == "epoch\n1\n2\n"  # finished, then stopped
    assert leftovers(tmp_path) == []


def test_a_second_ctrl_c_abandons_the_write(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_text("previous")

    def write(path: Path) -> None:
        path.write_text("half")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        path.write_text("never finished")

    with pytest.raises(signals.Interrupted) as info, signals.catch_signals():
        atomic_write(target, write)
    assert info.value.exit_code == 130
    assert target.read_text() == "previous"
    assert leftovers(tmp_path) == []


def test_repeated_sigterms_still_finish_the_write(tmp_path: Path) -> None:
    """Slurm signals every process of a job and torchrun forwards it again: no harm done."""
    target = tmp_path / "results.csv"

    def write(path: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        path.write_text("all rows\n")

    with pytest.raises(signals.Interrupted), signals.catch_signals():
        atomic_write(target, write)
    assert target.read_text() == "all rows\n"


def test_a_handler_someone_else_installed_is_left_alone() -> None:
    """Under submitit, SIGTERM stays submitit's (it checkpoints and requeues)."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with signals.catch_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- what a stopped command says ---------------------------------------------------------------


def test_stop_lines_name_the_complete_files_and_the_resume_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "my run"
    (run / ".hydra").mkdir(parents=True)
    for name in ("meta.json", "run.log", ".hydra/config.yaml", ".last.pt.0a1b2c3d.tmp"):
        (run / name).write_text("x")
    stopping.command_typed(["train", "train.epochs=9", "threads=1"])
    stopping.run_opened(run, lambda path: ["train", f"resume={path / 'last.pt'}"])
    assert stopping.fault_line() is None  # nothing finished yet
    assert "before anything was saved" in stopping.interrupted_line("SIGTERM")
    assert stopping.resume_command() == "rmp train train.epochs=9 threads=1"

    (run / "metrics.csv").write_text("epoch\n1\n")
    (run / "last.pt").write_text("ckpt")
    assert stopping.complete_files(run) == ["last.pt", "metrics.csv"]
    resume = f"rmp train 'resume={run}/last.pt'"
    assert stopping.interrupted_line("SIGTERM") == (
        f"rmp: interrupted by SIGTERM; finished work is kept in {run}; resume with: {resume}"
    )
    assert (
        stopping.fault_line()
        == f"rmp: complete in {run}: last.pt, metrics.csv; resume with: {resume}"
    )

    fault = FileFault("cannot write", run / "last.pt", os_error(errno.ENOSPC))
    assert stopping.exit_code(fault) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"rmp: error: cannot write {run}/last.pt: No space left on device",
        f"rmp: complete in {run}: last.pt, metrics.csv; resume with: {resume}",
    ]
    assert stopping.exit_code(signals.Interrupted(signal.SIGTERM)) == 143
    assert stopping.exit_code(KeyboardInterrupt()) == 130
    assert stopping.exit_code(ValueError("a bug")) is None  # its traceback should show


def test_with_run_dir_replaces_the_users_run_dir() -> None:
    args = ["sweep", "--timesteps", "1,2", "run_dir=old", "snn.reset=hard,soft"]
    assert stopping.with_run_dir(args, Path("new")) == [
        "sweep",
        "--timesteps",
        "1,2",
        "snn.reset=hard,soft",
        "run_dir=new",
    ]


def test_the_resume_command_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    stopping.command_typed(["sweep", "ckpt=m.pt"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert stopping.resume_command() == "torchrun --nproc_per_node=4 -m rmp_cli sweep ckpt=m.pt"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert stopping.resume_command().startswith("torchrun --nnodes=2 --nproc_per_node=2 -m rmp_cli")


def test_reading_a_results_table_that_the_disk_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rmp_cli.report.results import read_results

    path = tmp_path / "results.csv"
    path.write_text("a\n1\n")

    def read_csv(*args: object, **kw: object) -> pd.DataFrame:
        raise os_error(errno.EIO, path)

    monkeypatch.setattr(pd, "read_csv", read_csv)
    with pytest.raises(FileFault, match=rf"^cannot read {path}: Input/output error$"):
        read_results(path)
    assert issubclass(FileFault, RmpError)


def test_a_rank_whose_peer_stopped_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under torchrun, rank 0 stopping on a full disk breaks rank 1's next collective."""
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]")
    assert stopping.exit_code(lost) is None  # one process: a bug, its traceback should show
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert stopping.exit_code(lost) == 2
    assert capsys.readouterr().err.startswith("rmp: rank 1 stopped: another rank stopped (")
    monkeypatch.setenv("RANK", "0")
    assert stopping.exit_code(lost) == 2
    assert capsys.readouterr().err.startswith("rmp: error: a torchrun rank stopped or lost")
    assert stopping.exit_code(RuntimeError("an ordinary bug")) is None


def test_a_full_disk_under_run_log_warns_once_and_logs_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rmp_cli.runs.rundir import RunLogFile, close_logging, log, setup_logging

    class FullDisk:
        def write(self, text: str) -> int:
            raise os_error(errno.ENOSPC)

        def flush(self) -> None:
            raise os_error(errno.ENOSPC)

        def close(self) -> None:
            pass

    setup_logging(tmp_path / "run.log")
    (handler,) = [h for h in log.handlers if isinstance(h, RunLogFile)]
    handler.stream.close()
    handler.stream = FullDisk()  # type: ignore[assignment]
    try:
        for epoch in range(3):
            log.info("epoch %d", epoch)
    finally:
        close_logging()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    warnings = [line for line in err.splitlines() if line.startswith("rmp: warning:")]
    assert warnings == [
        f"rmp: warning: cannot write {tmp_path}/run.log: No space left on device; "
        "logging to the console only"
    ]
    assert [line for line in err.splitlines() if line.startswith("epoch")] == [
        "epoch 0",
        "epoch 1",
        "epoch 2",
    ]
