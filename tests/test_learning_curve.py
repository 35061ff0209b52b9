"""scripts/learning_curve.py: training curves as a table with intervals, and a plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "learning_curve.py"


def metrics(path: Path, test_acc: list[float]) -> Path:
    epochs = range(1, len(test_acc) + 1)
    pd.DataFrame(
        {"epoch": epochs, "train_acc": test_acc, "test_acc": test_acc, "seconds": 1.0}
    ).to_csv(path, index=False)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_table_gives_wilson_intervals_per_epoch_and_blank_past_a_runs_end(tmp_path: Path) -> None:
    a = metrics(tmp_path / "a.csv", [0.5, 0.9])
    b = metrics(tmp_path / "b.csv", [0.3])
    out = run(f"long={a}:10", f"short={b}", "--epochs", "1,2", "-o", str(tmp_path / "lc.png"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "| epoch | long (10 images) | short |"
    # 5/10 and 9/10, the bounds worked by hand in test_interval_table.py
    assert lines[2] == "| 1 | 50.0 (23.7-76.3) | 30.0 |"
    assert lines[3] == "| 2 | 90.0 (59.6-98.2) |  |"
    assert (tmp_path / "lc.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    for spec in ["no-label", f"x={tmp_path / 'missing.csv'}", f"x={wrong}", f"x={wrong}:ten"]:
        out = run(spec)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().startswith("learning_curve: "), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
