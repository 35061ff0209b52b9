"""What a resumed sweep reads before it writes anything: results.csv (a line cut by a crash is
left out, every complete row kept), layers.csv, predictions.npz, the ANN records and the
checkpoints of the ANNs it trained. A file that cannot be read stops the resume with its one
line and says that nothing was changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from rmp_cli.commands.run_state import read_json, untouched_if_unreadable
from rmp_cli.commands.train import load_resumable
from rmp_cli.errors import RmpError
from rmp_cli.report import layer_report, predictions
from rmp_cli.report.results import COLUMNS, point_key, read_results
from rmp_cli.training.checkpoint import load_checkpoint

MOVE_AWAY = "move it away (e.g. to {name}.bad) and rerun to recompute those points"


def read_done(
    run_path: Path, steps: list[int], *, say: Callable[..., None]
) -> tuple[pd.DataFrame, dict[str, set[int]]]:
    """The rows of results.csv a resume keeps, and the points among them that lack some T
    (point key -> the T kept): a last line cut by a crash is left out, every complete row is
    kept, and the point it belonged to gets its missing T computed."""
    path = run_path / "results.csv"
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS), {}
    cut: list[str] = []
    done = untouched_if_unreadable(
        run_path,
        lambda: read_results(path, cut=cut.append),
        MOVE_AWAY.format(name=path.name),
    )
    have: dict[str, set[int]] = {}
    for _, row in done.iterrows():
        have.setdefault(point_key(row), set()).add(int(row["timesteps"]))
    partial = {key: ts for key, ts in have.items() if not set(steps) <= ts}
    if cut:
        say(
            "rmp: warning: %s ended in a line cut by a crash (%r); left it out and kept all "
            "%d complete rows%s",
            path,
            cut[0][:60],
            len(done),
            "; computing the missing T of " + "; ".join(sorted(partial)) if partial else "",
        )
    return done, partial


def silent(*_: object) -> None:
    pass


def state_check(steps: list[int]) -> Callable[[Path], None]:
    """What a resume reads, read once before the run dir is touched: results.csv, layers.csv,
    the ANN accuracy records and the checkpoints of the ANNs this sweep trained."""

    def check(run_path: Path) -> None:
        read_done(run_path, steps, say=silent)
        tables = (
            (layer_report.LAYERS_FILE, layer_report.read_layers, "their layer rows"),
            (predictions.PREDICTIONS_FILE, predictions.read_predictions, "their predictions"),
        )
        for name, read, what in tables:
            if (run_path / name).is_file():
                untouched_if_unreadable(
                    run_path,
                    lambda read=read, name=name: read(run_path / name),
                    MOVE_AWAY.format(name=name).replace("those points", what),
                )
        for record in sorted(run_path.glob("ann*.json")):
            untouched_if_unreadable(
                run_path,
                lambda record=record: read_ann_accuracy(record),
                "move it away and rerun to evaluate the ANN again",
            )
        for ann_dir in sorted(p for p in run_path.glob("ann*") if p.is_dir()):
            model, last = ann_dir / "model.pt", ann_dir / "last.pt"
            if model.is_file() or last.is_file():
                untouched_if_unreadable(
                    run_path,
                    lambda model=model, last=last: (
                        load_checkpoint(model) if model.is_file() else load_resumable(last)
                    ),
                    "move it away and rerun to train that ANN again",
                )

    return check


def read_ann_accuracy(path: Path) -> float:
    """ann.json's accuracy, a number in [0, 1]."""
    data = read_json(path)
    accuracy = data.get("accuracy") if isinstance(data, dict) else None
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        raise RmpError(f'{path} holds no ANN accuracy (expected {{"accuracy": 0.98, ...}})')
    if not 0.0 <= accuracy <= 1.0:
        raise RmpError(f"{path} holds ANN accuracy {accuracy}, not a fraction in [0, 1]")
    return float(accuracy)
