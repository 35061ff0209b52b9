"""SIGTERM (a scheduler's time limit or preemption) and SIGINT (Ctrl-C) in the middle of
`rmp train`, `rmp sweep` and `rmp convert`, alone and under torchrun: exit 143 / 130, one line
with the exact command that resumes, no traceback, no temporary file; the printed command then
ends exactly where an uninterrupted run does."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import last_line
from tests.test_sweep_cli import QUICK
from tests.test_train_cli import _metrics_rows

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1", **extra}


def _start(cwd: Path, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rmp_cli", *args],
        cwd=cwd,
        env=_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def _wait_until(ready: Callable[[], bool], *procs: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, "the run never got that far"
        assert all(p.poll() is None for p in procs), "the run ended before the signal"
        time.sleep(0.02)


def _stopped(log: Path, signal_name: str) -> list[str]:
    """The one `rmp:` line of a stopped run; returns its resume command as argv."""
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.startswith("rmp:")]
    assert len(lines) == 1, text[-3000:]
    assert lines[0].startswith(f"rmp: interrupted by {signal_name}; finished work is kept in ")
    return shlex.split(lines[0].split("; resume with: ", 1)[1])


def _as_rmp(argv: list[str]) -> list[str]:
    assert argv[0] == "rmp", argv
    return argv[1:]


def _no_temp_files(run: Path) -> None:
    assert sorted(run.rglob("*.tmp")) == []


def test_sigterm_during_train_resumes_to_the_same_result(rmp, tmp_path: Path) -> None:
    args = ["train", "train.epochs=6", "threads=1", "dataset.batch_size=32"]
    full = tmp_path / last_line(rmp(*args, "run_dir=full"))
    log = tmp_path / "cut.log"
    proc = _start(tmp_path, [*args, "run_dir=cut"], log)
    cut = tmp_path / "cut"
    _wait_until(lambda: _metrics_rows(cut) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    resume = _as_rmp(_stopped(log, "SIGTERM"))
    assert resume == ["train", f"resume={Path('cut') / 'last.pt'}", "threads=1"]
    assert 2 <= _metrics_rows(cut) < 6 and not (cut / "model.pt").exists()
    _no_temp_files(cut)

    rmp(*resume)
    a = pd.read_csv(full / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(cut / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    wa = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(cut / "model.pt", weights_only=True)["state_dict"]
    # Every logged metric is equal (above); weights agree to float noise, as for any resume.
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_sigterm_during_sweep_resumes_to_the_same_results(rmp, tmp_path: Path, ckpt: Path) -> None:
    args = [
        "sweep",
        "--timesteps",
        "1,2,4,8,16,32,64,128",
        f"ckpt={ckpt}",
        "snn.reset=hard,soft",
        "snn.v_init=0,0.5",
        *QUICK,
    ]
    full = tmp_path / last_line(rmp(*args, "run_dir=full"))
    log = tmp_path / "cut.log"
    proc = _start(tmp_path, [*args, "run_dir=cut"], log)
    cut = tmp_path / "cut"
    _wait_until(lambda: (cut / "results.csv").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    resume = _as_rmp(_stopped(log, "SIGTERM"))
    assert resume == [*args, "run_dir=cut"]  # the same command, in the same run dir
    points = pd.read_csv(cut / "results.csv").groupby(["reset", "v_init"]).ngroups
    assert 1 <= points < 4 and not (cut / "summary.csv").exists()
    assert not (cut / ".lock").exists()
    _no_temp_files(cut)

    rmp(*resume)
    a = pd.read_csv(full / "results.csv").drop(columns="seconds")
    b = pd.read_csv(cut / "results.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    assert (cut / "accuracy_vs_timesteps.png").is_file()


def test_ctrl_c_during_convert_finishes_in_the_same_run_dir(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    args = ["convert", f"ckpt={ckpt}", "snn.timesteps=1024", "threads=1", "balance.timesteps=64"]
    full = json.loads(
        (tmp_path / last_line(rmp(*args, "run_dir=full")) / "convert.json").read_text()
    )
    log = tmp_path / "cut.log"
    proc = _start(tmp_path, [*args, "run_dir=cut"], log)
    cut = tmp_path / "cut"
    _wait_until(lambda: (cut / "snn.pt").is_file(), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    resume = _as_rmp(_stopped(log, "SIGINT"))
    assert resume == [*args, "run_dir=cut"]
    assert not (cut / "convert.json").exists()
    _no_temp_files(cut)

    rmp(*resume)
    done = json.loads((cut / "convert.json").read_text())
    for key in ("ann_accuracy", "snn_accuracy", "spikes_per_image", "synops_per_image"):
        assert done[key] == full[key], key
    # A finished convert is a finished run dir: the same command is refused, nothing rewritten.
    again = rmp(*resume, check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_under_torchrun_stops_every_rank_and_resumes(tmp_path: Path) -> None:
    """Slurm signals every process of a job: both ranks exit 143, rank 0 alone prints the
    command, and that torchrun command ends where an uninterrupted DDP run ends."""
    args = ["train", "train.epochs=5", "threads=1"]
    ddp = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "rmp_cli", *args]
    ref = subprocess.run(
        [*ddp, "run_dir=full"], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert ref.returncode == 0, ref.stderr[-3000:]

    port = str(_free_port())
    ranks = [
        _start(
            tmp_path,
            [*args, "run_dir=cut"],
            tmp_path / f"rank{rank}.log",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
        for rank in range(2)
    ]
    cut = tmp_path / "cut"
    _wait_until(lambda: _metrics_rows(cut) >= 1, *ranks)
    for proc in ranks:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=120) for proc in ranks] == [143, 143]
    resume = _stopped(tmp_path / "rank0.log", "SIGTERM")
    quiet = (tmp_path / "rank1.log").read_text()
    assert "Traceback" not in quiet and "rmp:" not in quiet, quiet[-3000:]
    assert resume[:4] == ["torchrun", "--nproc_per_node=2", "-m", "rmp_cli"]
    assert resume[4:] == ["train", f"resume={Path('cut') / 'last.pt'}", "threads=1"]
    assert not (cut / "model.pt").exists()
    _no_temp_files(cut)

    done = subprocess.run(
        [*TORCHRUN, f"--master-port={_free_port()}", *resume[1:]],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a = pd.read_csv(tmp_path / "full" / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(cut / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
