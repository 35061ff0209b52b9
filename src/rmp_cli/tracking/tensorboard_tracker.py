"""`logger=tensorboard`: event files under RUN/tensorboard/, one subfolder per grid point.

`tensorboard --logdir outputs/` then shows every run; a resumed run appends a new event file to
the same folder, which TensorBoard reads as one continuing series.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rmp_cli.errors import RmpError
from rmp_cli.runs.rundir import TENSORBOARD_DIR
from rmp_cli.tracking.base import RunInfo, Tracker


def _writer(logdir: Path) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir))


class TensorBoardTracker(Tracker):
    def __init__(self) -> None:
        try:  # checked when the logger is built, before any work starts
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise RmpError(
                "logger=tensorboard needs TensorBoard (not installed); install the extra: "
                "pip install -e '.[tensorboard]'"
            ) from None
        self.logdir: Path | None = None
        self.writer: Any = None

    @property
    def label(self) -> str:
        return "tensorboard"

    def start(self, info: RunInfo, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self.logdir = info.run_dir / TENSORBOARD_DIR
        self.writer = _writer(self.logdir)
        return {"logdir": str(self.logdir)}

    def log_params(self, params: Mapping[str, str]) -> None:
        # The TEXT tab renders markdown: the params as a two-column table.
        rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in params.items())
        self.writer.add_text("params", f"| param | value |\n|---|---|\n{rows}", global_step=0)
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=int(step or 0))
        self.writer.flush()  # a stopped run keeps what it logged; faults show here, not later

    def child(self, name: str) -> Tracker:
        assert self.logdir is not None
        nested = TensorBoardTracker.__new__(TensorBoardTracker)
        nested.logdir = self.logdir / name
        nested.writer = _writer(nested.logdir)
        return nested

    def finish(self, status: str = "FINISHED") -> None:
        if self.writer is not None:
            self.writer.close()
