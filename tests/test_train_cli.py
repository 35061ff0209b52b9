"""End-to-end `rmp train` on the bundled digits data: accuracy, run dir contents, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import FAST_TRAIN, assert_clean_error, last_line

pytestmark = pytest.mark.slow


def test_default_train_on_digits(rmp, tmp_path: Path) -> None:
    proc = rmp("train", "--quiet")
    run = tmp_path / last_line(proc)
    assert run.parent == tmp_path / "outputs" / "train"
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == [
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "lr",
        "seconds",
    ]
    assert metrics["test_acc"].iloc[-1] >= 0.97
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1], abs=1e-6)
    assert ckpt["config"]["model"]["name"] == "digits_cnn"
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "last.pt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "meta.json").read_text())["git_sha"]


def test_cfg_prints_config_and_makes_no_run_dir(rmp, tmp_path: Path) -> None:
    proc = rmp("train", "--cfg", "train.epochs=7")
    assert "epochs: 7" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def _metrics_rows(run: Path) -> int:
    try:
        return len(pd.read_csv(run / "metrics.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


def test_killed_run_resumes_to_the_same_result(rmp, tmp_path: Path) -> None:
    args = ["train.epochs=6", "threads=1", "dataset.batch_size=32"]
    full = tmp_path / last_line(rmp("train", *args, "run_dir=full"))
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmp_cli", "train", *args, "run_dir=killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = tmp_path / "killed"
    deadline = time.time() + 120
    while _metrics_rows(killed) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows_at_kill = _metrics_rows(killed)
    assert 1 <= rows_at_kill < 6, "the run should have been killed mid-way"
    assert not (killed / "model.pt").exists()
    rmp("train", f"resume={killed / 'last.pt'}")
    a = pd.read_csv(full / "metrics.csv").drop(columns="seconds")
    b = pd.read_csv(killed / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    wa = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    # Test accuracy and every logged metric are equal (above); weights agree to float noise.
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_bad_train_input(rmp, tmp_path: Path) -> None:
    assert_clean_error(rmp("train", "dataset=nope", check=False), "choose one of", "digits")
    assert_clean_error(rmp("train", "model=nope", check=False), "choose one of", "digits_cnn")
    assert_clean_error(rmp("train", "train.epochs=-1", check=False), "train.epochs")
    assert_clean_error(rmp("train", "notanoverride", check=False))
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_clean_error(rmp("train", f"resume={bad}", check=False), "corrupt")
    assert_clean_error(rmp("train", "resume=missing.pt", check=False), "not found")
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))


def test_a_run_that_fails_on_missing_data_leaves_no_folders(rmp, tmp_path: Path) -> None:
    """The run dir is made before the data is read; the failed run takes its parents with it."""
    out = rmp("train", "dataset=cifar10", f"dataset.root={tmp_path / 'none'}", check=False)
    assert_clean_error(out, "not found under")
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "outputs" / "train" / "earlier").mkdir(parents=True)  # another run's folder stays
    assert_clean_error(
        rmp("train", "dataset=cifar10", f"dataset.root={tmp_path / 'none'}", check=False),
        "not found under",
    )
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == ["earlier"]


def test_resume_refuses_changed_config_and_overwrite(rmp, tmp_path: Path) -> None:
    run = tmp_path / last_line(rmp("train", *FAST_TRAIN, "train.epochs=1", "run_dir=one"))
    before = (run / "model.pt").read_bytes()
    assert_clean_error(
        rmp("train", f"resume={run / 'last.pt'}", "model=mnist_cnn", check=False), "model"
    )
    assert_clean_error(rmp("train", f"resume={run / 'last.pt'}", check=False), "nothing to resume")
    assert_clean_error(rmp("train", *FAST_TRAIN, "run_dir=one", check=False), "already holds a run")
    assert_clean_error(rmp("train", f"resume={run / 'model.pt'}", check=False), "last.pt")
    assert (run / "model.pt").read_bytes() == before
