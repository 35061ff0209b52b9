"""End-to-end `rmp sweep` / `rmp convert` / `rmp plot` on digits: one pass, resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FAST_TRAIN, assert_clean_error, last_line

pytestmark = pytest.mark.slow

QUICK = ["threads=1", "balance.num_images=64", "balance.timesteps=64", "dataset.subset=120"]


def test_sweep_writes_results_summary_plot(rmp, tmp_path: Path, ckpt: Path) -> None:
    proc = rmp(
        "sweep",
        "--timesteps",
        "1,4,16,64",
        f"ckpt={ckpt}",
        "snn.reset=hard,soft",
        "balance=spike_norm",
        *QUICK,
    )
    run = tmp_path / last_line(proc)
    df = pd.read_csv(run / "results.csv")
    assert set(df["reset"]) == {"hard", "soft"}
    assert sorted(df["timesteps"].unique()) == [1, 4, 16, 64]
    assert len(df) == 8 and df["accuracy"].between(0, 1).all()
    assert (df["spikes_per_image"].diff().fillna(0)[df["timesteps"] > 1] >= 0).all()
    for name in (
        "summary.csv",
        "summary.md",
        "accuracy_vs_timesteps.png",
        "accuracy_vs_timesteps.pdf",
    ):
        assert (run / name).stat().st_size > 0, name
    summary = (run / "summary.md").read_text()
    headlines = ("fewer time-steps", "more time-steps", "indistinguishable", "stays significantly")
    assert any(h in summary for h in headlines), summary
    replot = rmp("plot", str(run), str(run), "-o", str(tmp_path / "overlay"))
    assert (tmp_path / "overlay.png").is_file() and "overlay.png" in replot.stdout


def test_one_pass_equals_separate_run(rmp, tmp_path: Path, ckpt: Path) -> None:
    """Accuracy at T=k from a sweep to K equals `rmp convert` run to exactly k steps."""
    sweep = tmp_path / last_line(
        rmp(
            "sweep",
            "--timesteps",
            "3,8,40",
            f"ckpt={ckpt}",
            "snn.reset=soft",
            "balance=spike_norm",
            *QUICK,
        )
    )
    df = pd.read_csv(sweep / "results.csv").set_index("timesteps")
    for k in (3, 8):
        conv = tmp_path / last_line(rmp("convert", f"ckpt={ckpt}", f"snn.timesteps={k}", *QUICK))
        report = pd.read_json(conv / "convert.json", typ="series")
        assert report["snn_accuracy"] == pytest.approx(df.loc[k, "accuracy"], abs=1e-9), k
        assert report["spikes_per_image"] == pytest.approx(df.loc[k, "spikes_per_image"], rel=1e-6)


def test_killed_sweep_resumes_to_same_results(rmp, tmp_path: Path, ckpt: Path) -> None:
    args = [
        "sweep",
        "--timesteps",
        "1,2,4,8,16,32,64,128",
        f"ckpt={ckpt}",
        "snn.reset=hard,soft",
        "snn.v_init=0,0.5",
        "report.layers=true",
        *QUICK,
    ]
    full = tmp_path / last_line(rmp(*args, "run_dir=full"))
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rmp_cli", *args, "run_dir=cut"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cut = tmp_path / "cut"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (cut / "results.csv").is_file():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    points_done = pd.read_csv(cut / "results.csv").groupby(["reset", "v_init"]).ngroups
    assert 1 <= points_done < 4, "the sweep should have been killed after its first grid point"
    rmp(*args, "run_dir=cut")
    a = pd.read_csv(full / "results.csv").drop(columns="seconds")
    b = pd.read_csv(cut / "results.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    # layers.csv holds every point once, as an uninterrupted sweep wrote it.
    pd.testing.assert_frame_equal(pd.read_csv(full / "layers.csv"), pd.read_csv(cut / "layers.csv"))
    # So does predictions.npz: every image's class per point and T, as if never interrupted.
    with np.load(full / "predictions.npz") as x, np.load(cut / "predictions.npz") as y:
        assert sorted(x.files) == sorted(y.files) and x["snn"].shape == (8, 8, 120)
        for name in x.files:
            assert np.array_equal(x[name], y[name]), name


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--timesteps", "0"], ">= 1"),
        (["--timesteps=-4"], ">= 1"),
        (["--timesteps", "abc"], "invalid time-step"),
        (["--timesteps", ""], "no time-steps"),
        (["--timesteps", "4,4"], "duplicate"),
        (["snn.reset=hard,medium"], "snn.reset"),
        (["balance=spike_norm,nope"], "choose one of"),
        (["train.epochs=1,2"], "grid only on"),
        (["balance=trained"], "balance=trained reads the ceilings"),
        (["sweep.variants=[['train.epochs=3']]"], "sweep.variants entry"),
    ],
)
def test_bad_sweep_input(rmp, tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_clean_error(rmp("sweep", *args, "run_dir=bad", check=False), fragment)
    assert not (tmp_path / "bad").exists()


def test_bad_convert_input(rmp, tmp_path: Path, ckpt: Path) -> None:
    assert_clean_error(rmp("convert", check=False), "ckpt=")
    assert_clean_error(rmp("convert", "ckpt=missing.pt", check=False), "not found")
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(b"\x00garbage")
    assert_clean_error(rmp("convert", f"ckpt={corrupt}", check=False), "corrupt")
    assert_clean_error(rmp("convert", f"ckpt={ckpt}", "model=vgg16", check=False), "model.name")
    assert_clean_error(
        rmp("convert", f"ckpt={ckpt}", "snn.timesteps=0", check=False), "snn.timesteps"
    )
    assert_clean_error(
        rmp("convert", f"ckpt={ckpt}", "balance=percentile", "balance.percentile=120", check=False),
        "percentile",
    )
    assert not (tmp_path / "outputs").exists()


def test_variants_train_one_ann_per_activation(rmp, tmp_path: Path) -> None:
    """A low-latency sweep in one run dir: relu + mse next to qcfs + trained ceilings."""
    variants = "[['balance=mse','balance.timesteps=4'],['model.activation=qcfs','balance=trained']]"
    run = tmp_path / last_line(
        rmp(
            "sweep",
            *FAST_TRAIN,
            "--timesteps",
            "1,2,4",
            "sweep.grid=['snn.v_init=0.0,0.5']",
            f"sweep.variants={variants}",
        )
    )
    assert (run / "ann" / "model.pt").is_file() and (run / "ann-qcfs-L8" / "model.pt").is_file()
    df = pd.read_csv(run / "results.csv")
    points = df.groupby(["activation", "balance", "v_init"]).size()
    assert dict(points) == {
        ("qcfs-L8", "trained", 0.0): 3,
        ("qcfs-L8", "trained", 0.5): 3,
        ("relu", "mse", 0.0): 3,
        ("relu", "mse", 0.5): 3,
    }
    anns = df.groupby("activation")["ann_accuracy"].first()
    assert anns["qcfs-L8"] != anns["relu"]  # each variant scored against its own ANN
    assert "| activation |" in (run / "summary.md").read_text()
