"""A Hydra job started again in its own job dir: what submitit's requeue does after a Slurm time
limit or preemption (its checkpoint hook resubmits the launcher with the same arguments, which
calls the task function again with the same config). The job continues: a training resumes from
its last.pt, a sweep keeps its finished points, a finished job is left as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from rmp_cli import app
from rmp_cli.commands import pipeline
from rmp_cli.config import config_dir
from rmp_cli.errors import RmpError
from rmp_cli.training import loop as train

pytestmark = pytest.mark.slow

TRAIN = ["+task=train", "train.epochs=4", "threads=1", "dataset.batch_size=64"]


def job(overrides: list[str], job_dir: Path) -> DictConfig:
    """The config Hydra hands the task function of a job in `job_dir` (which Hydra has already
    made and written its own .hydra/ record into)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
    HydraConfig.instance().set_config(cfg)
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml(cfg.hydra, resolve=False))
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(task):
        del task["hydra"]
    return task


def metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns="seconds")


def test_a_requeued_training_resumes_in_its_job_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    app.run_job(job(TRAIN, reference))

    real_save = train.save_checkpoint

    def preempted_after_epoch_2(path: Path, payload: dict[str, Any]) -> Path:
        out = real_save(path, payload)
        if payload["kind"] == "last" and payload["epoch"] == 2:
            raise SystemExit(-1)  # submitit: checkpoint, requeue, exit
        return out

    requeued = tmp_path / "requeued"
    monkeypatch.setattr(train, "save_checkpoint", preempted_after_epoch_2)
    with pytest.raises(SystemExit):
        app.run_job(job(TRAIN, requeued))
    monkeypatch.undo()
    last = torch.load(requeued / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and not (requeued / "model.pt").exists()

    epochs_trained: list[int] = []

    def counting(path: Path, payload: dict[str, Any]) -> Path:
        if payload["kind"] == "last":
            epochs_trained.append(payload["epoch"])
        return real_save(path, payload)

    monkeypatch.setattr(train, "save_checkpoint", counting)
    app.run_job(job(TRAIN, requeued))  # the requeued job: same config, same job dir
    monkeypatch.undo()
    assert epochs_trained == [3, 4]  # continued, not started over
    pd.testing.assert_frame_equal(metrics(requeued), metrics(reference))
    model = (requeued / "model.pt").read_bytes()

    app.run_job(job(TRAIN, requeued))  # requeued once more after finishing: nothing changes
    assert (requeued / "model.pt").read_bytes() == model
    pd.testing.assert_frame_equal(metrics(requeued), metrics(reference))

    with pytest.raises(RmpError, match="holds a training with other settings"):
        app.run_job(job([*TRAIN, "train.lr=0.5"], requeued))
    assert (requeued / "model.pt").read_bytes() == model


def test_a_requeued_sweep_job_keeps_its_finished_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ann = tmp_path / "ann"
    app.run_job(job(["+task=train", "train.epochs=2", "threads=1"], ann))
    sweep = [
        "+task=sweep",
        f"ckpt={ann / 'model.pt'}",
        "threads=1",
        "sweep.timesteps=[1,4,16]",
        "balance.num_images=32",
        "balance.timesteps=16",
        "dataset.subset=60",
    ]
    point = tmp_path / "point"
    app.run_job(job(sweep, point))
    results = (point / "results.csv").read_bytes()

    def computed_again(*args: object, **kw: object) -> None:
        raise AssertionError("a finished point was simulated again")

    monkeypatch.setattr(pipeline, "simulate_test", computed_again)
    app.run_job(job(sweep, point))
    assert (point / "results.csv").read_bytes() == results
    assert (point / "summary.md").is_file()
