"""`rmp ... logger=...` end to end, read back through the stores' own readers: MlflowClient on
outputs/mlflow.db and TensorBoard's EventAccumulator on RUN/tensorboard/."""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rmp_cli.report.results import AXES
from tests.conftest import assert_clean_error, last_line
from tests.test_stop_cli import _as_rmp, _start, _stopped, _wait_until
from tests.test_sweep_cli import QUICK

pytestmark = pytest.mark.slow

LABELS = {"dataset", "model", *AXES, "timesteps"}  # what names a row, not a measurement


def _client(cwd: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


def _runs(client: MlflowClient, experiment: str = "rmp") -> tuple[list, list]:
    """The experiment's parent runs and nested runs."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id])
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return [r for r in runs if r not in nested], nested


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_sweep_logs_a_run_with_nested_points_to_mlflow_and_tensorboard(rmp, tmp_path: Path) -> None:
    proc = rmp(
        "sweep",
        "logger=many",
        "train.epochs=2",
        "--timesteps",
        "1,4",
        "snn.reset=hard,soft",
        "balance=spike_norm",
        "report.layers=true",
        *QUICK,
    )
    run = (tmp_path / last_line(proc)).resolve()
    assert "warning" not in proc.stderr and "mlflow" not in proc.stderr, proc.stderr
    client = _client(tmp_path)
    [parent], nested = _runs(client)
    assert parent.info.status == "FINISHED"
    params = parent.data.params
    assert params["snn.reset"] == '["hard", "soft"]' and params["sweep.timesteps"] == "[1, 4]"
    assert params["run_dir"] == str(run) and params["command"] == "sweep"
    assert params["git_sha"] and params["host"]
    assert _steps(client, parent.info.run_id, "ann/test_acc") == [1, 2]  # the ANN's epochs
    assert 0 < parent.data.metrics["best_accuracy"] <= 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "summary.md", "accuracy_vs_timesteps.png", "layers.csv"} <= artifacts
    assert not any(name.endswith(".pt") for name in artifacts)  # logger.log_checkpoints=false
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "ann")] == ["ann/metrics.csv"]

    # One nested run per grid point, with every numeric results.csv column by T.
    results = pd.read_csv(run / "results.csv")
    measured = {c for c in results.select_dtypes("number").columns if c not in LABELS}
    assert {"ci_low", "ci_high", "energy_ratio"} <= measured
    assert sorted(r.data.params["reset"] for r in nested) == ["hard", "soft"]
    for child in nested:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert measured - {"top5"} <= set(child.data.metrics)  # top5 is empty on 10 classes
        assert _steps(client, child.info.run_id, "accuracy") == [1, 4]
        assert "first_t_best" in child.data.metrics  # the summary's numbers, final

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("ann/test_acc")] == [1, 2]
    folders = sorted(p.name for p in (run / "tensorboard").iterdir() if p.is_dir())
    assert [f.split(",")[0] for f in folders] == ["reset=hard", "reset=soft"]
    point = EventAccumulator(str(run / "tensorboard" / folders[0]))
    point.Reload()
    assert [e.step for e in point.Scalars("accuracy")] == [1, 4]


def test_a_resumed_sweep_continues_its_mlflow_run(rmp, tmp_path: Path, ckpt: Path) -> None:
    args = [
        "sweep",
        "--timesteps",
        "1,2,4,8,16,32,64,128",
        f"ckpt={ckpt}",
        "snn.reset=hard,soft",
        "balance=spike_norm",
        "logger=mlflow",
        "logger.experiment=resumed",
        *QUICK,
        "run_dir=cut",
    ]
    log = tmp_path / "cut.log"
    proc = _start(tmp_path, args, log)
    cut = tmp_path / "cut"
    _wait_until(lambda: (cut / "results.csv").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    resume = _as_rmp(_stopped(log, "SIGTERM"))
    assert resume == args  # the logger is part of the command that resumes
    client = _client(tmp_path)
    [stopped], _ = _runs(client, "resumed")
    assert stopped.info.status == "KILLED"

    rmp(*resume)
    [parent], nested = _runs(client, "resumed")
    assert parent.info.run_id == stopped.info.run_id and parent.info.status == "FINISHED"
    # Each point once: the one logged before the stop is not logged again.
    assert sorted(r.data.params["reset"] for r in nested) == ["hard", "soft"]
    for child in nested:
        assert _steps(client, child.info.run_id, "accuracy") == [1, 2, 4, 8, 16, 32, 64, 128]


def test_train_logs_epochs_and_a_failing_tracker_costs_nothing(
    rmp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logger of one's own (`+logger._target_=`), failing mid-run like a full disk."""
    (tmp_path / "flaky.py").write_text(
        "import errno\n"
        "from rmp_cli.tracking.base import Tracker\n"
        "class Flaky(Tracker):\n"
        "    def start(self, info, resume=None):\n"
        "        return {}\n"
        "    def log_params(self, params):\n"
        "        pass\n"
        "    def log_metrics(self, metrics, step=None):\n"
        "        if step == 2:\n"
        "            raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    def child(self, name):\n"
        "        return self\n"
        "    def finish(self, status='FINISHED'):\n"
        "        pass\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = rmp("train", "train.epochs=3", "threads=1", "+logger._target_=flaky.Flaky")
    run = tmp_path / last_line(proc)
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "rmp: warning: logger Flaky failed (OSError: No space left on device); it logs "
        "nothing more of this run, whose own files are written as usual"
    ]
    assert len(pd.read_csv(run / "metrics.csv")) == 3 and (run / "model.pt").is_file()


def test_a_missing_package_is_one_line_before_any_work(
    rmp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tmp_path / "hidden" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden', name='mlflow')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden.parent))
    proc = rmp("sweep", "logger=mlflow", check=False)
    assert proc.returncode == 2
    assert_clean_error(proc, "logger=mlflow needs MLflow", "pip install -e '.[mlflow]'")
    assert not (tmp_path / "outputs" / "sweep").exists()  # nothing was started
