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
    ("script", "steps"),
    [
        (
            "study_resnet20_lossless.sh",
            [("train", "outputs/study/resnet20_lossless/ann"), ("sweep", 3), ("sweep", 3)],
        ),
        (
            "study_lowlatency_lossless.sh",
            [
                ("train", "outputs/study/lowlatency_lossless/ann_qcfs_l4"),
                ("sweep", 6),
                ("train", "outputs/study/lowlatency_lossless/ann_relu"),
                ("sweep", 6),
            ],
        ),
    ],
)
def test_steps_run_once_and_sweeps_compose(
    tmp_path: Path, script: str, steps: list[tuple[str, str | int]]
) -> None:
    calls = run_script(script, tmp_path)
    assert [c[0] for c in calls] == [kind for kind, _ in steps]
    for call, (kind, expected) in zip(calls, steps, strict=True):
        if kind == "train":
            assert f"run_dir={expected}" in call
        else:
            assert len(sweep_points(call[1:])) == expected
    study = Path(str(steps[0][1])).parent
    assert len((tmp_path / study / "times.txt").read_text().splitlines()) == len(steps)
    assert run_script(script, tmp_path) == []  # every step done: nothing runs again


def test_the_relu_net_is_trained_with_the_qcfs_recipe_unless_given(tmp_path: Path) -> None:
    calls = run_script("study_lowlatency_lossless.sh", tmp_path)
    qcfs, relu = (compose_config(c[1:]) for c in calls if c[0] == "train")
    assert (qcfs.model.activation, relu.model.activation) == ("qcfs", "relu")
    assert qcfs.train == relu.train and qcfs.dataset == relu.dataset
    relu_sweep = calls[-1]
    assert "ckpt=outputs/study/lowlatency_lossless/ann_relu/model.pt" in relu_sweep
    assert compose_config(relu_sweep[1:]).balance.method == "mse"

    (tmp_path / "given").mkdir()
    given = run_script("study_lowlatency_lossless.sh", tmp_path / "given", RELU_CKPT="relu.pt")
    assert [c[0] for c in given] == ["train", "sweep", "sweep"]
    assert "ckpt=relu.pt" in given[-1]


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
