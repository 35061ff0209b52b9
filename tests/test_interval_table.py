"""scripts/interval_table.py: an old results.csv (no counts) restated with Wilson intervals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "interval_table.py"


def old_table(path: Path) -> Path:
    """Two grid points at T=8 and 64, in the schema before the `images` column."""
    rows = [
        ("hard", 8, 0.1),
        ("hard", 64, 0.5),
        ("soft", 8, 0.3),
        ("soft", 64, 0.9),
    ]
    base = dict(dataset="d", model="m", balance="rmp", scale=0.8, v_init=0.0, encoding="direct")
    base |= dict(activation="relu", top5="", ann_accuracy=0.9, spikes_per_image=1.0)
    base |= dict(synops_per_image=1.0, seconds=1.0)
    df = pd.DataFrame([{**base, "reset": r, "timesteps": t, "accuracy": a} for r, t, a in rows])
    df.to_csv(path, index=False)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_cells_carry_wilson_bounds_worked_by_hand(tmp_path: Path) -> None:
    out = run(str(old_table(tmp_path / "results.csv")), "--images", "10", "--timesteps", "64")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # 9/10: centre (9 + 1.92073) / 13.84146 = 0.78899, half 0.14160 * sqrt(0.9 + 0.96036) = 0.19314
    assert lines[0].startswith("ANN 90.0 (59.6-98.2) on 10 test images")
    assert lines[2] == "| reset | T=64 |"
    # 5/10: 0.5 +- 0.26339
    assert "| hard | 50.0 (23.7-76.3) |" in lines
    assert "| soft | 90.0 (59.6-98.2) |" in lines
    assert not any("T=8" in line for line in lines)


def test_a_table_without_counts_needs_the_image_count(tmp_path: Path) -> None:
    out = run(str(old_table(tmp_path / "results.csv")))
    assert out.returncode == 1
    assert "give --images N" in out.stderr


def test_variants_with_their_own_anns_get_an_ann_column(tmp_path: Path) -> None:
    path = old_table(tmp_path / "results.csv")
    df = pd.read_csv(path)
    df.loc[df["reset"] == "soft", "ann_accuracy"] = 0.5
    df.to_csv(path, index=False)
    lines = run(str(path), "--images", "10", "--timesteps", "64").stdout.splitlines()
    assert lines[0].startswith("On 10 test images")
    assert lines[2] == "| reset | ANN | T=64 |"
    assert "| soft | 50.0 (23.7-76.3) | 90.0 (59.6-98.2) |" in lines


def test_a_missing_table_is_one_line(tmp_path: Path) -> None:
    out = run(str(tmp_path / "results.csv"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"interval_table: no results.csv in {tmp_path}; is it a finished `rmp sweep` run dir?"
    ]
