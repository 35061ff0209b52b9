"""The tracking package: the logger group's configs, building trackers from `_target_`, the
guard around a failing tracker, and the MLflow and TensorBoard adapters read back through their
own readers (MlflowClient on the SQLite file, TensorBoard's EventAccumulator)."""

from __future__ import annotations

import errno
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rmp_cli.config import compose_config
from rmp_cli.errors import RmpError
from rmp_cli.runs.rundir import TRACKER_STATE
from rmp_cli.tracking import RunInfo, Tracker, Tracking, build_tracking
from rmp_cli.tracking.mlflow_tracker import MlflowTracker, sqlite_file
from rmp_cli.tracking.session import flatten, numbers
from rmp_cli.tracking.tensorboard_tracker import TensorBoardTracker


class Memory(Tracker):
    """Records every call; `fail_on` names a method that raises a full disk."""

    def __init__(self, fail_on: str = "", name: str = "memory") -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on, self.name = fail_on, name

    @property
    def label(self) -> str:
        return self.name

    def _call(self, what: str, value: Any) -> None:
        if what == self.fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.calls.append((what, value))

    def start(self, info: RunInfo, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self._call("start", dict(resume or {}))
        return dict(resume or {"id": info.name})

    def log_params(self, params: Mapping[str, str]) -> None:
        self._call("params", dict(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._call("metrics", (dict(metrics), step))

    def child(self, name: str) -> Tracker:
        self._call("child", name)
        return self

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self._call("artifact", (path.name, folder))

    def finish(self, status: str = "FINISHED") -> None:
        self._call("finish", status)

    def names(self) -> list[str]:
        return [what for what, _ in self.calls]


@pytest.fixture
def rmp_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    logging.getLogger("rmp").propagate = True  # setup_logging of earlier tests turns it off
    caplog.set_level(logging.WARNING, logger="rmp")
    return caplog


# --- the logger group ----------------------------------------------------------------------
def test_logger_defaults_to_none_and_leaves_the_config_as_it_was() -> None:
    assert "logger" not in compose_config([])
    assert not build_tracking(None, command="sweep").active
    assert not build_tracking(compose_config(["logger=none"]).get("logger"), command="x").active


@pytest.mark.parametrize("choice", ["mlflow", "tensorboard", "many"])
def test_each_logger_choice_builds_its_trackers(choice: str) -> None:
    cfg = compose_config([f"logger={choice}", "logger.experiment=study"])
    tracking = build_tracking(cfg.logger, command="sweep")
    labels = {"mlflow": ["mlflow"], "tensorboard": ["tensorboard"]}
    assert tracking.labels == labels.get(choice, ["mlflow", "tensorboard"])
    assert tracking.experiment == "study" and tracking.log_checkpoints is False


def test_experiment_name_is_the_preset_unless_given() -> None:
    spec = {"_target_": "rmp_cli.tracking.tensorboard_tracker.TensorBoardTracker"}
    assert (
        build_tracking(spec, command="sweep", preset="cifar10_vgg16").experiment == "cifar10_vgg16"
    )
    assert build_tracking(spec, command="sweep").experiment == "rmp"
    named = {**spec, "experiment": "mine"}
    assert build_tracking(named, command="sweep", preset="cifar10_vgg16").experiment == "mine"


def test_unknown_logger_choice_is_one_line() -> None:
    with pytest.raises(RmpError, match="unknown logger 'wandb'; choose one of: many, mlflow"):
        compose_config(["logger=wandb"])


def test_a_target_that_cannot_be_built_is_one_line() -> None:
    with pytest.raises(RmpError, match=r"logger._target_ nowhere.Tracker cannot be built: "):
        build_tracking({"_target_": "nowhere.Tracker"}, command="train")
    with pytest.raises(RmpError, match="is not a tracker; its class must subclass"):
        build_tracking({"_target_": "collections.OrderedDict"}, command="train")
    with pytest.raises(RmpError, match=r"logger\.log_checkpoints must be true or false"):
        build_tracking({"_target_": "x.Y", "log_checkpoints": "yes"}, command="train")


@pytest.mark.parametrize(
    ("choice", "module"),
    [("mlflow", "mlflow"), ("mlflow", "sqlalchemy"), ("tensorboard", "tensorboard")],
)
def test_a_missing_package_names_the_extra(
    choice: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    spec = compose_config([f"logger={choice}"]).logger
    with pytest.raises(RmpError, match=rf"logger={choice} needs .*pip install -e '\.\[{choice}\]'"):
        build_tracking(spec, command="sweep")


def test_only_rank_zero_keeps_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"_target_": "rmp_cli.tracking.tensorboard_tracker.TensorBoardTracker"}
    monkeypatch.setenv("RANK", "1")
    assert not build_tracking(spec, command="sweep").active
    monkeypatch.setenv("RANK", "0")
    assert build_tracking(spec, command="sweep").active


# --- what a run logs, and the guard ----------------------------------------------------------
def test_flatten_and_numbers() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "x"}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "null",
        "e": "x",
    }
    row = {"epoch": 3, "acc": 0.5, "name": "hard", "nan": float("nan"), "flag": True, "n": "7"}
    assert numbers(row, skip=("epoch",)) == {"acc": 0.5, "n": 7.0}


def test_params_once_metrics_points_and_a_resume_that_continues(tmp_path: Path) -> None:
    first = Memory()
    tracking = Tracking([first], command="sweep")
    with tracking.opened(tmp_path, {"snn": {"reset": "soft"}, "logger": {"_target_": "x"}}):
        tracking.epoch({"epoch": 1, "test_acc": 0.5}, prefix="ann/")
        tracking.point("p1", {"reset": "hard"}, [(1, {"accuracy": 0.1}), (4, {"accuracy": 0.2})])
    params = next(value for what, value in first.calls if what == "params")  # the run's, first
    assert params["snn.reset"] == "soft" and params["command"] == "sweep"
    assert params["run_dir"] == str(tmp_path.resolve()) and "git_sha" in params and "host" in params
    assert not any(k.startswith("logger.") for k in params)
    assert ("metrics", ({"ann/test_acc": 0.5}, 1)) in first.calls
    assert ("metrics", ({"accuracy": 0.2}, 4)) in first.calls
    assert first.calls[-1] == ("finish", "FINISHED")
    state = json.loads((tmp_path / TRACKER_STATE).read_text())
    assert state["points"] == {"memory": ["p1"]}

    again = Memory()
    tracking = Tracking([again], command="sweep")
    with tracking.opened(tmp_path, {}):
        assert tracking.logged("p1") and not tracking.logged("p2")
        tracking.point("p1", {}, [(1, {"accuracy": 0.1})])  # logged before: skipped
        tracking.point("p2", {}, [(1, {"accuracy": 0.3})])
    assert again.calls[0] == ("start", state["trackers"]["memory"])  # the same run, continued
    # No params for the run (it has them); p2 alone gets a child (its params, metrics, finish).
    assert again.names() == ["start", "child", "params", "metrics", "finish", "finish"]


def test_no_logger_writes_nothing(tmp_path: Path) -> None:
    tracking = build_tracking(None, command="sweep")
    with tracking.opened(tmp_path, {"seed": 0}):
        tracking.epoch({"epoch": 1, "loss": 1.0})
        tracking.point("p", {}, [(1, {"accuracy": 0.5})])
        tracking.artifacts([tmp_path / "results.csv"])
    assert list(tmp_path.iterdir()) == []


def test_a_stop_marks_the_run_killed_and_a_failure_failed(tmp_path: Path) -> None:
    for exc, status in ((KeyboardInterrupt(), "KILLED"), (ValueError("bug"), "FAILED")):
        memory = Memory()
        with pytest.raises(type(exc)), Tracking([memory]).opened(tmp_path, {}):
            raise exc
        assert memory.calls[-1] == ("finish", status)


def test_a_failing_tracker_is_one_warning_and_the_others_go_on(
    tmp_path: Path, rmp_log: pytest.LogCaptureFixture
) -> None:
    broken, fine = Memory(fail_on="metrics", name="broken"), Memory(name="fine")
    tracking = Tracking([broken, fine])
    with tracking.opened(tmp_path, {}):
        for epoch in (1, 2, 3):
            tracking.epoch({"epoch": epoch, "loss": 1.0 / epoch})
        tracking.point("p", {}, [(1, {"accuracy": 0.5})])
    warnings = [r.getMessage() for r in rmp_log.records]
    assert warnings == [
        "rmp: warning: logger broken failed (OSError: No space left on device); it logs "
        "nothing more of this run, whose own files are written as usual"
    ]
    assert "child" not in broken.names() and "finish" not in broken.names()
    assert fine.names().count("metrics") == 4 and fine.calls[-1] == ("finish", "FINISHED")


def test_a_tracker_failing_to_start_is_one_warning(
    tmp_path: Path, rmp_log: pytest.LogCaptureFixture
) -> None:
    tracking = Tracking([Memory(fail_on="start")])
    with tracking.opened(tmp_path, {}):
        tracking.epoch({"epoch": 1, "loss": 1.0})
    assert len(rmp_log.records) == 1 and not tracking.active
    assert not (tmp_path / TRACKER_STATE).exists()


# --- the real stores -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: MLflow creates its tables once (seconds)."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return f"sqlite:///{db}"


def test_sqlite_file_of_a_uri() -> None:
    assert sqlite_file("sqlite:///outputs/mlflow.db") == Path("outputs/mlflow.db")
    assert sqlite_file("sqlite:////abs/m.db?timeout=3") == Path("/abs/m.db")
    assert sqlite_file("http://127.0.0.1:5000") is None


def test_mlflow_run_nested_points_artifacts_and_resume(tmp_path: Path, store: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("timesteps,accuracy\n1,0.1\n4,0.2\n")
    tracking = Tracking([MlflowTracker(store)], command="sweep", experiment="unit")
    with tracking.opened(run, {"snn": {"reset": "soft"}, "sweep": {"timesteps": [1, 4]}}):
        tracking.epoch({"epoch": 1, "test_acc": 0.4}, prefix="ann/")
        tracking.epoch({"epoch": 2, "test_acc": 0.6}, prefix="ann/")
        tracking.point(
            "reset=hard",
            {"reset": "hard"},
            [(1, {"accuracy": 0.1}), (4, {"accuracy": 0.2})],
            {"best_accuracy": 0.2},
        )
        tracking.artifacts([run / "results.csv"])
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("unit")
    # Artifacts beside the SQLite file, not in the working dir.
    assert (
        experiment.artifact_location
        == (sqlite_file(store).parent / "mlartifacts" / "unit").as_uri()
    )
    state = json.loads((run / TRACKER_STATE).read_text())["trackers"]["mlflow"]
    parent = client.get_run(state["run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == f"{tmp_path.name}/run"
    assert parent.data.params["snn.reset"] == "soft"
    assert parent.data.params["sweep.timesteps"] == "[1, 4]"
    assert parent.data.tags["mlflow.source.name"] == "rmp sweep"
    history = client.get_metric_history(parent.info.run_id, "ann/test_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.4), (2, 0.6)]
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["results.csv"]
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert [c.info.run_name for c in children] == ["reset=hard"]
    child = children[0]
    assert child.data.params == {"reset": "hard"} and child.info.status == "FINISHED"
    steps = client.get_metric_history(child.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in steps] == [(1, 0.1), (4, 0.2)]
    assert child.data.metrics["best_accuracy"] == 0.2

    # Resumed: the same MLflow run goes on (RUNNING again, then FINISHED), no second one.
    tracking = Tracking([MlflowTracker(store)], command="sweep", experiment="unit")
    with tracking.opened(run, {"snn": {"reset": "hard"}}):  # params are not logged again
        assert client.get_run(state["run_id"]).info.status == "RUNNING"
        tracking.point("reset=hard", {}, [(1, {"accuracy": 0.9})])  # has it: skipped
        tracking.point("reset=soft", {"reset": "soft"}, [(1, {"accuracy": 0.3})])
    assert len(client.search_runs([experiment.experiment_id])) == 3  # a parent, 2 children
    parent = client.get_run(state["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["snn.reset"] == "soft"


def test_mlflow_store_failing_mid_run_is_one_warning(
    tmp_path: Path, store: str, rmp_log: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.md").write_text("# done\n")
    tracking = Tracking([MlflowTracker(store)], command="train", experiment="broken-artifacts")
    with tracking.opened(run, {}):
        location = MlflowClient(tracking_uri=store).get_experiment_by_name("broken-artifacts")
        folder = Path(location.artifact_location.removeprefix("file://"))
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_text("not a folder")  # the artifact store cannot be written any more
        tracking.artifacts([run / "summary.md"])
        tracking.epoch({"epoch": 1, "loss": 1.0})
    [warning] = [r.getMessage() for r in rmp_log.records]
    assert warning.startswith("rmp: warning: logger mlflow failed (")
    assert (run / "summary.md").read_text() == "# done\n"


def test_tensorboard_scalars_by_step_and_one_folder_per_point(tmp_path: Path) -> None:
    tracking = Tracking([TensorBoardTracker()], command="train")
    with tracking.opened(tmp_path, {"train": {"epochs": 2}}):
        tracking.epoch({"epoch": 1, "test_acc": 0.4, "lr": 0.1})
        tracking.epoch({"epoch": 2, "test_acc": 0.6, "lr": 0.05})
        tracking.point(
            "reset=soft", {"reset": "soft"}, [(1, {"accuracy": 0.1}), (8, {"accuracy": 0.7})]
        )
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("test_acc")] == [(1, 0.4), (2, 0.6)]
    text = events.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| train.epochs | 2 |" in text
    point = EventAccumulator(str(tmp_path / "tensorboard" / "reset=soft"))
    point.Reload()
    assert [(e.step, round(e.value, 4)) for e in point.Scalars("accuracy")] == [(1, 0.1), (8, 0.7)]


# --- what the commands hand over -----------------------------------------------------------
def _results(reset: str, accuracy: list[float]) -> list[dict[str, Any]]:
    from rmp_cli.report.results import COLUMNS, LATER_AXES

    rows = []
    for t, acc in zip((1, 4), accuracy, strict=True):
        row = dict.fromkeys(COLUMNS, 1.0)
        row |= {"dataset": "digits", "model": "digits_cnn", "reset": reset, "balance": "rmp"}
        row |= {"scale": 1.0, "v_init": 0.0, "encoding": "direct", **LATER_AXES}
        row |= {"timesteps": t, "accuracy": acc, "ann_accuracy": 0.9, "top5": float("nan")}
        rows.append(row)
    return rows


def test_every_numeric_results_column_is_logged_by_t_intervals_included(tmp_path: Path) -> None:
    import pandas as pd

    from rmp_cli.commands.tracked import log_sweep_headline, log_sweep_points
    from rmp_cli.report.results import point_key

    hard, soft = _results("hard", [0.1, 0.5]), _results("soft", [0.2, 0.8])
    df = pd.DataFrame(hard + soft)
    df = df.assign(ci_low=df["accuracy"] - 0.05, ci_high=df["accuracy"] + 0.05)  # a later column
    memory = Memory()
    tracking = Tracking([memory])
    with tracking.opened(tmp_path, {}):
        log_sweep_points(tracking, df)
        log_sweep_points(tracking, df)  # again (a resume's catch-up): nothing twice
        log_sweep_headline(tracking, df)
    children = [v for what, v in memory.calls if what == "child"]
    assert children == [point_key(hard[0]), point_key(soft[0])]
    assert children[0].startswith("reset=hard,balance=rmp,scale=1.0,")
    by_t = [v for what, v in memory.calls if what == "metrics" and v[1] is not None]
    first = by_t[0][0]
    assert by_t[0][1] == 1 and by_t[1][1] == 4
    assert first["ci_low"] == pytest.approx(0.05) and first["ci_high"] == pytest.approx(0.15)
    assert {"accuracy", "spikes_per_image", "synops_per_image", "energy_ratio"} <= set(first)
    assert not {"timesteps", "scale", "v_init", "seed", "top5"} & set(first)
    finals = [v[0] for what, v in memory.calls if what == "metrics" and v[1] is None]
    assert finals[0]["best_accuracy"] == 0.5 and finals[0]["first_t_best"] == 4  # hard's summary
    assert finals[-1]["best_accuracy"] == 0.8 and finals[-1]["best_accuracy_timesteps"] == 4
    assert finals[-1]["points"] == 2


def test_sweep_params_show_each_axis_with_all_its_values() -> None:
    from rmp_cli.commands.tracked import sweep_params

    cfg = compose_config([])
    params = flatten(sweep_params(cfg, [1, 4], {"snn.reset": ["hard", "soft"]}))
    assert params["snn.reset"] == '["hard", "soft"]' and params["sweep.timesteps"] == "[1, 4]"
    assert params["balance.method"] == "spike_norm"
