"""The lossless study scripts, with a stand-in for rmp: their steps run in order, skip once done,
resume an interrupted training, and every sweep's overrides compose into the grid intended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmp_cli.commands.grid import split_grid, sweep_grid
from rmp_cli.config import compose_config

REPO = Path(__file__).resolve().parents[1]

FAKE_RMP = """#!{python}
import json, os, pathlib, sys
with open(os.environ["RMP_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "train":
    for arg in sys.argv[2:]:
        if arg.startswith("run_dir="):
            run = pathlib.Path(arg.split("=", 1)[1])
        if arg.startswith("resume="):
            run = pathlib.Path(arg.split("=", 1)[1]).parent
    run.mkdir(parents=True, exist_ok=True)
    (run / "model.pt").write_text("")
"""


def run_script(name: str, tmp_path: Path, **env: str) -> list[list[str]]:
    fake = tmp_path / "rmp"
    fake.write_text(FAKE_RMP.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / name)],
        cwd=tmp_path,
        env={**os.environ, "RMP": str(fake), "RMP_LOG": str(log), **env},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sweep_points(args: list[str]) -> list[list[str]]:
    """The grid points `rmp sweep ARGS` would run, composed as the sweep composes them."""
    overrides = [a for a in args if "=" in a and not a.startswith("--")]
    base, cli_axes = split_grid(overrides)
    _, points = sweep_grid(compose_config(base), base, cli_axes)
    for point in points:
        compose_config(point)  # every point composes: no unknown key or choice
    return points


@pytest.mark.parametrize(
    ("script", "train_dir", "sweeps"),
    [
        ("study_resnet20_lossless.sh", "outputs/study/resnet20_lossless/ann", [3, 3]),
        ("study_lowlatency_lossless.sh", "outputs/study/lowlatency_lossless/ann_qcfs_l4", [5, 5]),
    ],
)
def test_steps_run_once_and_sweeps_compose(
    tmp_path: Path, script: str, train_dir: str, sweeps: list[int]
) -> None:
    calls = run_script(script, tmp_path)
    assert calls[0][0] == "train" and f"run_dir={train_dir}" in calls[0]
    assert [c[0] for c in calls[1:]] == ["sweep"] * len(sweeps)
    assert [len(sweep_points(c[1:])) for c in calls[1:]] == sweeps
    times = (tmp_path / Path(train_dir).parent / "times.txt").read_text().splitlines()
    assert len(times) == 1 + len(sweeps)
    assert run_script(script, tmp_path) == []  # every step done: nothing runs again


def test_an_interrupted_training_is_resumed(tmp_path: Path) -> None:
    ann = tmp_path / "outputs/study/lowlatency_lossless/ann_qcfs_l4"
    ann.mkdir(parents=True)
    (ann / "last.pt").write_text("")
    calls = run_script("study_lowlatency_lossless.sh", tmp_path, THREADS="1")
    assert calls[0] == ["train", f"resume={ann.relative_to(tmp_path)}/last.pt", "threads=1"]


def test_the_percentile_route_pairs_soft_and_hard_reset(tmp_path: Path) -> None:
    percentile = run_script("study_resnet20_lossless.sh", tmp_path)[2]
    points = sweep_points(percentile[1:])
    resets = [compose_config(p).snn.reset for p in points]
    assert sorted(resets) == ["hard", "soft", "soft"]
    assert {compose_config(p).balance.method for p in points} == {"percentile"}
