from __future__ import annotations

import pytest

from rmp_cli.config import GROUPS, compose_config, config_dir, group_choices
from rmp_cli.errors import RmpError


def test_default_config_composes() -> None:
    cfg = compose_config()
    assert cfg.dataset.name == "digits"
    assert cfg.snn.reset in ("hard", "soft")
    assert cfg.balance.method == "spike_norm"
    assert list(cfg.sweep.timesteps)[:3] == [1, 2, 4]


def test_every_group_has_choices() -> None:
    for group in GROUPS:
        if group != "experiment":
            assert group_choices(group), group


def test_every_choice_composes() -> None:
    for group in ("dataset", "model", "balance", "experiment"):
        for choice in group_choices(group):
            cfg = compose_config([f"{group}={choice}"])
            assert cfg is not None


def test_overrides_apply() -> None:
    cfg = compose_config(["snn.reset=hard", "balance=rmp", "balance.scale=0.6", "train.epochs=2"])
    assert (cfg.snn.reset, cfg.balance.method, cfg.balance.scale, cfg.train.epochs) == (
        "hard",
        "rmp",
        0.6,
        2,
    )


def test_unknown_choice_lists_valid_ones() -> None:
    with pytest.raises(RmpError, match=r"unknown dataset 'nope'; choose one of: .*digits"):
        compose_config(["dataset=nope"])


def test_unknown_key_is_one_line() -> None:
    with pytest.raises(RmpError) as info:
        compose_config(["snn.nonexistent_key=1"])
    assert "\n" not in str(info.value)


def test_config_dir_env_override(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RMP_CONFIG_DIR", str(tmp_path))
    assert config_dir() != tmp_path  # no config.yaml there: falls back to the real one
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    assert config_dir() == tmp_path


@pytest.mark.parametrize("preset", group_choices("experiment"))
def test_every_preset_sweep_grid_composes_into_valid_points(preset: str) -> None:
    from rmp_cli.commands.grid import config_grid, config_variants, grid_points
    from rmp_cli.commands.pipeline import validate_snn_config

    base = [f"experiment={preset}"]
    cfg = compose_config(base)
    variants = config_variants(cfg.sweep.get("variants"))
    points = grid_points(base, config_grid(list(cfg.sweep.grid)), variants)
    for point in points:
        point_cfg = compose_config(point)
        validate_snn_config(point_cfg)
        if point_cfg.balance.method == "trained":
            assert point_cfg.model.activation in ("clip", "qcfs"), point


def test_lowlatency_preset_runs_every_method_with_both_initial_potentials() -> None:
    from rmp_cli.commands.grid import config_grid, config_variants, grid_points

    base = ["experiment=fashion_mnist_lowlatency"]
    cfg = compose_config(base)
    combos = set()
    for point in grid_points(
        base, config_grid(list(cfg.sweep.grid)), config_variants(cfg.sweep.variants)
    ):
        c = compose_config(point)
        combos.add((c.model.activation, c.balance.method, c.snn.v_init))
    methods = {("relu", "spike_norm"), ("relu", "rmp"), ("relu", "mse"), ("clip", "trained")}
    methods.add(("qcfs", "trained"))
    assert combos == {(a, m, v) for a, m in methods for v in (0.0, 0.5)}
