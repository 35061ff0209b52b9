"""`logger=mlflow`: runs in an MLflow tracking store, by default a SQLite file in outputs/.

Written through MlflowClient (no global active run): a sweep's grid points are nested runs
(the `mlflow.parentRunId` tag the UI groups by), and a resumed rmp run reopens its MLflow run.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rmp_cli.errors import RmpError
from rmp_cli.runs.rundir import make_dir
from rmp_cli.tracking.base import RunInfo, Tracker

DEFAULT_DB = Path("outputs") / "mlflow.db"  # beside the run dirs, which are made in ./outputs
ARTIFACTS = "mlartifacts"  # beside the SQLite file, like `mlflow server`'s default
BATCH = 100  # MLflow takes at most 100 params and 1000 metrics per log_batch
MAX_PARAM = 6000  # MLflow's longest param value


def default_tracking_uri() -> str:
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    return f"sqlite:///{DEFAULT_DB.resolve()}"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths against the working dir)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])  # 4 slashes: an absolute path


class MlflowTracker(Tracker):
    def __init__(self, tracking_uri: str | None = None) -> None:
        try:  # checked when the logger is built, before any work starts
            import mlflow  # noqa: F401
            import sqlalchemy  # noqa: F401
        except ImportError as exc:
            raise RmpError(
                f"logger=mlflow needs MLflow ({exc.name} is not installed); install the extra: "
                "pip install -e '.[mlflow]'"
            ) from None
        # Their INFO lines (creating tables) and error tracebacks are not rmp's: a failure
        # reaches rmp as an exception, which is one warning line.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.tracking_uri = str(tracking_uri) if tracking_uri else None
        self.client: Any = None
        self.run_id = ""
        self.experiment_id = ""

    @property
    def label(self) -> str:
        return "mlflow"

    def start(self, info: RunInfo, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from mlflow import MlflowClient

        uri = self.tracking_uri or default_tracking_uri()
        db = sqlite_file(uri)
        with _store_lock(db):  # parallel Hydra jobs: one creates the tables and the experiment
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment(info.experiment, db)
        old = dict(resume or {})
        if old.get("run_id") and old.get("tracking_uri") == uri and self._exists(old["run_id"]):
            self.run_id = str(old["run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {
                "mlflow.source.name": f"rmp {info.command}",
                "mlflow.source.type": "LOCAL",
                **info.tags,
            }
            if sha := info.tags.get("git_sha"):
                tags["mlflow.source.git.commit"] = sha.removesuffix("-dirty")
            run = self.client.create_run(self.experiment_id, run_name=info.name, tags=tags)
            self.run_id = run.info.run_id
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": self.experiment_id}

    def _experiment(self, name: str, db: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if db is not None:  # artifacts beside the database, not in the working dir
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            location = (db.resolve().parent / ARTIFACTS / slug).as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # deleted, or another store: start a new run
            return False
        return True

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), 10 * BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + 10 * BATCH])

    def child(self, name: str) -> Tracker:
        nested = MlflowTracker.__new__(MlflowTracker)
        nested.tracking_uri, nested.client = self.tracking_uri, self.client
        nested.experiment_id = self.experiment_id
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={"mlflow.parentRunId": self.run_id}
        )
        nested.run_id = run.info.run_id
        return nested

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def finish(self, status: str = "FINISHED") -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, status=status)


@contextlib.contextmanager
def _store_lock(db: Path | None) -> Iterator[None]:
    """An exclusive lock beside a SQLite store while it may be created (schema migrations do
    not survive two processes at once); other stores need none."""
    if db is None:
        yield
        return
    make_dir(db.resolve().parent, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
