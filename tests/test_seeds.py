"""Seeds as a sweep axis: parsing, one ANN per seed without ckpt=, calibration redrawn with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rmp_cli.commands.grid import axis_values, grid_points, split_grid
from rmp_cli.commands.pipeline import seed_given
from rmp_cli.commands.run_state import _manifest, _open_run
from rmp_cli.commands.sweep import _model_groups
from rmp_cli.config import compose_config
from rmp_cli.data import build_data
from rmp_cli.data.bundle import redraw_calibration
from rmp_cli.errors import RmpError
from rmp_cli.report.results import point_key


def test_seed_is_a_grid_axis_and_part_of_the_point_key() -> None:
    base, axes = split_grid(["seed=0,1,2", "snn.reset=hard"])
    assert axes == {"seed": ["0", "1", "2"]} and base == ["snn.reset=hard"]
    cfgs = [compose_config(p) for p in grid_points(base, axes)]
    assert [axis_values(c)["seed"] for c in cfgs] == [0, 1, 2]
    keys = [point_key(axis_values(c)) for c in cfgs]
    assert keys[1].endswith(",activation=relu,neuron=if,presteps=0,seed=1") and len(set(keys)) == 3
    # Read back from CSV as 1.0 or "1": the same point.
    assert point_key({**axis_values(cfgs[1]), "seed": 1.0}) == keys[1]
    assert seed_given(["seed=0,1"]) and seed_given(["+seed=3"]) and not seed_given(["x.seed=1"])


def test_without_ckpt_each_seed_trains_its_own_ann() -> None:
    cfgs = [
        compose_config([f"seed={s}", f"snn.reset={r}"]) for s in (0, 1) for r in ("hard", "soft")
    ]
    assert _model_groups(cfgs[0], cfgs) == {"ann-seed0": [0, 1], "ann-seed1": [2, 3]}
    one_seed = [compose_config([f"snn.reset={r}"]) for r in ("hard", "soft")]
    assert _model_groups(one_seed[0], one_seed) == {"ann": [0, 1]}  # as before
    with_ckpt = [OmegaConf.merge(c, {"ckpt": "model.pt"}) for c in cfgs]
    assert _model_groups(with_ckpt[0], with_ckpt) == {"ann": [0, 1, 2, 3]}


def test_a_seed_redraws_the_calibration_images_only() -> None:
    data = build_data(compose_config([]).dataset, seed=0)
    same, other = redraw_calibration(data, 0), redraw_calibration(data, 1)
    assert list(same.calib.indices) == list(data.calib.indices)
    assert list(other.calib.indices) != list(data.calib.indices)
    assert len(other.calib) == len(data.calib) and other.test is data.test


def test_sweeps_written_before_the_later_axes_still_resume(tmp_path: Path) -> None:
    """Grid keys of sweeps written before neuron, presteps and seed were axes."""
    cfg = compose_config([f"run_dir={tmp_path / 'run'}"])
    keys = [point_key(axis_values(cfg))]
    manifest = _manifest(cfg, [1, 2], keys)
    old = {**manifest, "grid": [k.rpartition(",neuron=")[0] for k in keys]}
    assert old["grid"][0].endswith(",activation=relu")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "sweep.json").write_text(json.dumps(old))
    assert _open_run(cfg, [], manifest).path == tmp_path / "run"
    (tmp_path / "run" / "sweep.json").write_text(json.dumps({**old, "timesteps": [4]}))
    with pytest.raises(RmpError, match="other settings"):
        _open_run(cfg, [], manifest)
