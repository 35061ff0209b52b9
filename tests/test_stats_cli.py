"""End-to-end: predictions.npz, intervals in results.csv, seeds as a sweep axis, `rmp compare`
and the bad input around them, on digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import assert_clean_error, last_line

pytestmark = pytest.mark.slow

QUICK = ["threads=1", "balance.num_images=64", "balance.timesteps=32", "dataset.subset=120"]


def test_seed_axis_over_one_network_redraws_calibration(rmp, tmp_path: Path, ckpt: Path) -> None:
    run = tmp_path / last_line(
        rmp(
            "sweep",
            "--timesteps",
            "4,16,64",
            f"ckpt={ckpt}",
            "seed=0,1",
            "sweep.grid=['snn.reset=hard,soft']",
            *QUICK,
        )
    )
    df = pd.read_csv(run / "results.csv")
    assert sorted(df["seed"].unique()) == [0, 1] and len(df) == 12
    assert (df["images"] == 120).all() and (df["correct"] == (df["accuracy"] * 120).round()).all()
    assert ((df["ci_low"] <= df["accuracy"]) & (df["accuracy"] <= df["ci_high"])).all()
    assert df["agreement"].between(0, 1).all() and df["p_vs_ann"].between(0, 1).all()
    # Another seed draws other calibration images: other thresholds, other spike counts.
    by_seed = df.set_index(["seed", "reset", "timesteps"])["spikes_per_image"]
    assert (by_seed.loc[0] != by_seed.loc[1]).any()
    preds = np.load(run / "predictions.npz")
    assert preds["snn"].shape == (4, 3, 120) and preds["ann"].shape == (4, 120)
    assert sorted(preds["index"].tolist()) == sorted(set(preds["index"].tolist()))
    right = preds["snn"] == preds["label"]
    assert right.sum(-1).ravel().tolist() == df["correct"].tolist()
    summary = (run / "summary.md").read_text()
    assert "## Over seeds (0, 1)" in summary
    assert "across 2 seeds" in summary
    table = rmp("compare", str(run), str(run)).stdout
    assert "| 64 |" in table and "| +0.00 |" in table


def test_seed_axis_trains_one_network_per_seed(rmp, tmp_path: Path) -> None:
    run = tmp_path / last_line(
        rmp(
            "sweep",
            "--timesteps",
            "8",
            "seed=3,4",
            "train.epochs=1",
            "sweep.grid=['snn.reset=soft']",
            *QUICK,
        )
    )
    first, second = (torch.load(run / f"ann-seed{s}" / "model.pt") for s in (3, 4))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(first["state_dict"].values(), second["state_dict"].values(), strict=True)
    )
    assert (run / "ann-seed3.json").is_file() and not (run / "ann").exists()
    # Both seeds are tested on the same seeded subset of test images.
    assert np.load(run / "predictions.npz")["snn"].shape == (2, 1, 120)
    assert sorted(pd.read_csv(run / "results.csv")["seed"]) == [3, 4]


def test_convert_writes_predictions_and_compare_pairs_two_runs(
    rmp, tmp_path: Path, ckpt: Path
) -> None:
    args = ["convert", f"ckpt={ckpt}", "snn.timesteps=16", *QUICK]
    a = tmp_path / last_line(rmp(*args, "balance=spike_norm"))
    b = tmp_path / last_line(rmp(*args, "balance=max_act"))
    report = pd.read_json(a / "convert.json", typ="series")
    assert report["snn_ci_low"] <= report["snn_accuracy"] <= report["snn_ci_high"]
    assert report["snn_correct"] == round(report["snn_accuracy"] * 120)
    table = rmp("compare", str(a), str(b)).stdout
    assert "balance=spike_norm vs balance=max_act" in table and "| 16 |" in table
    other = tmp_path / last_line(rmp("convert", f"ckpt={ckpt}", "snn.timesteps=16", *QUICK[:3]))
    proc = rmp("compare", str(a), str(other), check=False)
    assert proc.returncode == 2
    assert_clean_error(proc, "tested on different images (120 and 360 test images")
    (tmp_path / "old").mkdir()
    assert_clean_error(rmp("compare", str(a), str(tmp_path / "old"), check=False), "no predictions")
    assert_clean_error(rmp("compare", str(a), "nowhere", check=False), "run dir not found")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("report.alpha=2", "report.alpha must be a number strictly between 0 and 1, got 2"),
        ("report.confidence=0", "report.confidence must be a number strictly between 0 and 1"),
    ],
)
def test_bad_levels_are_refused_before_anything_is_written(
    rmp, tmp_path: Path, ckpt: Path, override: str, fragment: str
) -> None:
    for command in (["sweep", "--timesteps", "4"], ["convert"]):
        proc = rmp(*command, f"ckpt={ckpt}", override, *QUICK, check=False)
        assert proc.returncode == 2
        assert_clean_error(proc, fragment)
    assert not (tmp_path / "outputs").exists()
