"""Scale-out on existing engines: torchrun/DDP training and Hydra launchers (joblib, submitit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import last_line

pytestmark = pytest.mark.slow

EPOCHS = ["train.epochs=6", "threads=1"]
QUICK = [
    "threads=1",
    "balance.num_images=64",
    "balance.timesteps=32",
    "dataset.subset=100",
    "sweep.timesteps=[1,4,16]",
]


def _env() -> dict[str, str]:
    return {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "rmp_cli",
        *args,
    ]


def _run_torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """rmp under torchrun with 2 CPU ranks; fails the test with the stderr tail on error."""
    proc = subprocess.run(
        _torchrun(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _final_acc(run: Path) -> float:
    return float(pd.read_csv(run / "metrics.csv")["test_acc"].iloc[-1])


def test_torchrun_ddp_training_and_resume(rmp, tmp_path: Path) -> None:
    single = tmp_path / last_line(rmp("train", *EPOCHS, "run_dir=single"))
    proc = _run_torchrun(tmp_path, "train", *EPOCHS, "run_dir=ddp")
    ddp = tmp_path / "ddp"
    assert proc.stdout.strip().splitlines()[-1] == "ddp"  # printed once, by rank 0
    assert abs(_final_acc(ddp) - _final_acc(single)) <= 0.01
    metrics = pd.read_csv(ddp / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4, 5, 6]  # one writer: no duplicated rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]

    # Kill the whole DDP job mid-run, resume it under torchrun: same result as uninterrupted.
    killed = subprocess.Popen(
        _torchrun("train", *EPOCHS, "run_dir=killed"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        try:
            if len(pd.read_csv(tmp_path / "killed" / "metrics.csv")) >= 1:
                break
        except (FileNotFoundError, pd.errors.EmptyDataError):
            pass
        time.sleep(0.02)
    # The elastic agent starts its workers in their own sessions: kill every process of the job.
    subprocess.run(["pkill", "-9", "-f", "run_dir=killed"], check=False)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = subprocess.run(
        _torchrun("train", f"resume={tmp_path / 'killed' / 'last.pt'}"),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = pd.read_csv(ddp / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(tmp_path / "killed" / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ann")
    proc = subprocess.run(
        [sys.executable, "-m", "rmp_cli", "train", "train.epochs=4", "threads=1"],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return cwd / last_line(proc) / "model.pt"


def _multirun(tmp_path: Path, ckpt: Path, *launcher: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rmp_cli.app",
            "-m",
            f"ckpt={ckpt}",
            "snn.reset=hard,soft",
            *QUICK,
            f"hydra.sweep.dir={tmp_path / 'multi'}",
            *launcher,
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_hydra_joblib_multirun(tmp_path: Path, ckpt: Path) -> None:
    proc = _multirun(tmp_path, ckpt, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "multi").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    resets = {pd.read_csv(job / "results.csv")["reset"].iloc[0] for job in jobs}
    assert resets == {"hard", "soft"}
    overlay = subprocess.run(
        [sys.executable, "-m", "rmp_cli", "plot", *map(str, jobs), "-o", str(tmp_path / "overlay")],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "overlay.png").is_file(), overlay.stderr


def test_submitit_slurm_config_composes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rmp_cli.app",
            "hydra/launcher=submitit_slurm",
            "--cfg",
            "hydra",
            "-p",
            "hydra.launcher",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SlurmLauncher" in proc.stdout


def test_submitit_local_executor_runs_a_job(tmp_path: Path, ckpt: Path) -> None:
    proc = _multirun(
        tmp_path, ckpt, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "multi").glob("*/results.csv"))
    assert len(results) == 2


def test_torchrun_sweep_shards_the_test_set_and_sums_counts_exactly(rmp, tmp_path: Path) -> None:
    ckpt = tmp_path / last_line(rmp("train", "train.epochs=3", "threads=1", "run_dir=ann"))
    args = [
        "sweep",
        f"ckpt={ckpt / 'model.pt'}",
        "threads=1",
        "balance.num_images=64",
        "balance.timesteps=32",
        "--timesteps",
        "1,4,16",
        "sweep.grid=['snn.reset=hard,soft']",
        "report.layers=true",
    ]
    single = tmp_path / last_line(rmp(*args, "run_dir=single"))
    proc = _run_torchrun(tmp_path, *args, "run_dir=sharded")
    assert proc.stdout.strip().splitlines()[-1] == "sharded"  # printed once, by rank 0
    counted = ["timesteps", "accuracy", "spikes_per_image", "synops_per_image", "ann_accuracy"]
    a = pd.read_csv(single / "results.csv")[["reset", *counted]]
    b = pd.read_csv(tmp_path / "sharded" / "results.csv")[["reset", *counted]]
    assert len(b) == 6  # one writer: no duplicated rows
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # Every image's predicted class, gathered from the ranks back in test-set order.
    with (
        np.load(single / "predictions.npz") as x,
        np.load(tmp_path / "sharded" / "predictions.npz") as y,
    ):
        for name in x.files:
            assert np.array_equal(x[name], y[name]), name
    stats = ["correct", "images", "ci_low", "ci_high", "agreement", "p_vs_ann"]
    pd.testing.assert_frame_equal(
        pd.read_csv(single / "results.csv")[stats],
        pd.read_csv(tmp_path / "sharded" / "results.csv")[stats],
        check_exact=True,
    )
    # Layer statistics are sums over images too: the ranks' sums add up to one process's.
    pd.testing.assert_frame_equal(
        pd.read_csv(single / "layers.csv"),
        pd.read_csv(tmp_path / "sharded" / "layers.csv"),
        check_exact=False,
        rtol=1e-6,
    )
    # rmp convert shards the same way: the same accuracy as one process, one run dir.
    convert = ["convert", f"ckpt={ckpt / 'model.pt'}", "threads=1", "snn.timesteps=8"]
    one = json.loads(
        (tmp_path / last_line(rmp(*convert, "run_dir=c1")) / "convert.json").read_text()
    )
    proc = _run_torchrun(tmp_path, *convert, "run_dir=c2")
    two = json.loads((tmp_path / "c2" / "convert.json").read_text())
    assert (two["snn_accuracy"], two["num_images"]) == (one["snn_accuracy"], one["num_images"])
    assert two["spikes_per_image"] == one["spikes_per_image"]
    with (
        np.load(tmp_path / "c1" / "predictions.npz") as x,
        np.load(tmp_path / "c2" / "predictions.npz") as y,
    ):
        assert all(np.array_equal(x[name], y[name]) for name in x.files)
