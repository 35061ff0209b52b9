"""Learning-rate schedules of `rmp train`: the one-cycle curve, the existing ones unchanged."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from rmp_cli.config import compose_config
from rmp_cli.errors import RmpError
from rmp_cli.training.loop import lr_factor, validate_train_config
from tests.conftest import assert_clean_error, last_line


def train_cfg(**train: object):
    base = {
        "epochs": 60,
        "lr": 0.2,
        "schedule": "onecycle",
        "warmup_epochs": 12,
        "milestones": [0.6, 0.8, 0.9],
        "gamma": 0.1,
    }
    return OmegaConf.create({"train": {**base, **train}})


def test_onecycle_rises_linearly_to_the_peak_then_falls_linearly_to_zero() -> None:
    cfg = train_cfg()
    assert lr_factor(0.0, cfg) == pytest.approx(1e-3 / 12)
    assert lr_factor(6.0, cfg) == pytest.approx(0.5, abs=1e-3)
    assert lr_factor(12.0, cfg) == pytest.approx(1.0)
    assert lr_factor(12.0 - 1e-9, cfg) == pytest.approx(1.0, abs=1e-3)  # no jump at the peak
    assert lr_factor(36.0, cfg) == pytest.approx(0.5)  # halfway down
    assert lr_factor(59.0, cfg) == pytest.approx(1 / 48)
    assert lr_factor(60.0, cfg) == 0.0
    grid = [i / 10 for i in range(601)]
    values = [lr_factor(p, cfg) for p in grid]
    assert max(values) == pytest.approx(1.0) and min(values) >= 0.0
    peak = grid.index(12.0)
    assert all(a < b for a, b in itertools.pairwise(values[: peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(values[peak:]))


def test_onecycle_without_warmup_starts_at_the_peak() -> None:
    cfg = train_cfg(warmup_epochs=0, epochs=10)
    assert lr_factor(0.0, cfg) == 1.0
    assert lr_factor(5.0, cfg) == pytest.approx(0.5)


def test_cosine_and_step_are_unchanged() -> None:
    cosine = train_cfg(schedule="cosine", epochs=10, warmup_epochs=1)
    assert lr_factor(0.5, cosine) == pytest.approx((0.5 + 1e-3) / 1)
    assert lr_factor(5.0, cosine) == pytest.approx(0.5)
    step = train_cfg(schedule="step", epochs=10, warmup_epochs=0)
    assert [lr_factor(e, step) for e in (0, 5.9, 6, 8, 9.5)] == pytest.approx(
        [1, 1, 0.1, 0.01, 0.001]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.schedule=linear"], "choose one of: cosine, step, onecycle"),
        (["train.schedule=onecycle", "train.epochs=4", "train.warmup_epochs=4"], "warmup_epochs"),
        (["train.schedule=onecycle", "train.warmup_epochs=-1"], "warmup_epochs"),
    ],
)
def test_bad_schedules_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(RmpError, match=message):
        validate_train_config(compose_config(overrides))


def test_the_fast_preset_peaks_at_its_lr_a_fifth_of_the_way_in() -> None:
    cfg = compose_config(["experiment=cifar10_vgg16_fast"])
    validate_train_config(cfg)
    t = cfg.train
    assert t.schedule == "onecycle" and t.warmup_epochs == pytest.approx(0.2 * t.epochs)
    assert t.lr * lr_factor(float(t.warmup_epochs), cfg) == pytest.approx(t.lr)


@pytest.mark.slow
def test_metrics_log_the_one_cycle_lr(rmp, tmp_path: Path) -> None:
    args = ["train.epochs=3", "train.warmup_epochs=1", "train.schedule=onecycle", "threads=1"]
    run = tmp_path / last_line(rmp("train", *args, "train.lr=0.05"))
    logged = pd.read_csv(run / "metrics.csv")["lr"].tolist()
    steps = 23  # 1437 digits training images in batches of 64
    cfg = compose_config(args)
    expected = [0.05 * lr_factor(e - 1 + (steps - 1) / steps, cfg) for e in (1, 2, 3)]
    assert logged == pytest.approx(expected, abs=1e-8)
    assert logged[0] > logged[1] > logged[2] > 0  # past the peak at epoch 1: falling
    assert_clean_error(rmp("train", "train.schedule=nope", check=False), "onecycle")
