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
