from __future__ import annotations

import pytest

from rmp_cli.commands.grid import (
    axis_values,
    config_variants,
    grid_points,
    parse_timesteps,
    split_grid,
    validate_timesteps,
)
from rmp_cli.config import compose_config
from rmp_cli.errors import RmpError
from rmp_cli.report.results import point_key


def test_comma_list_sorted() -> None:
    assert parse_timesteps("64,32,128") == [32, 64, 128]


def test_power_of_two_range() -> None:
    assert parse_timesteps("2^5..2^11") == [32, 64, 128, 256, 512, 1024, 2048]
    assert parse_timesteps("1,2^1..2^3") == [1, 2, 4, 8]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", ">= 1"),
        ("-4", ">= 1"),
        ("abc", "invalid time-step 'abc'"),
        ("", "no time-steps"),
        ("4,8,4", "duplicate time-steps 4"),
        ("2^9..2^3", "invalid time-step range"),
        ("1.5", "invalid time-step"),
    ],
)
def test_bad_timesteps(text: str, message: str) -> None:
    with pytest.raises(RmpError, match=message):
        parse_timesteps(text)


def test_config_list_validated() -> None:
    assert validate_timesteps([8, 1]) == [1, 8]
    with pytest.raises(RmpError):
        validate_timesteps([])
    with pytest.raises(RmpError):
        validate_timesteps([True])


def test_grid_split_and_product() -> None:
    base, axes = split_grid(
        ["snn.reset=hard,soft", "balance.scale=1.0,0.8", "train.epochs=2", "sweep.timesteps=[1,2]"]
    )
    assert base == ["train.epochs=2", "sweep.timesteps=[1,2]"]
    assert axes == {"snn.reset": ["hard", "soft"], "balance.scale": ["1.0", "0.8"]}
    points = grid_points(base, axes)
    assert len(points) == 4
    assert points[0][-2:] == ["snn.reset=hard", "balance.scale=1.0"]


def test_comma_on_non_axis_refused() -> None:
    with pytest.raises(RmpError, match="comma lists make a grid only on"):
        split_grid(["train.epochs=1,2"])


def test_repeated_grid_value_refused() -> None:
    with pytest.raises(RmpError, match="repeated"):
        split_grid(["snn.reset=soft,soft"])


def test_variants_cross_the_grid_variant_major() -> None:
    variants = config_variants(
        [["balance=mse", "balance.timesteps=16"], ["model.activation=qcfs", "balance=trained"]]
    )
    points = grid_points(["seed=1"], {"snn.v_init": ["0.0", "0.5"]}, variants)
    assert points == [
        ["seed=1", "balance=mse", "balance.timesteps=16", "snn.v_init=0.0"],
        ["seed=1", "balance=mse", "balance.timesteps=16", "snn.v_init=0.5"],
        ["seed=1", "model.activation=qcfs", "balance=trained", "snn.v_init=0.0"],
        ["seed=1", "model.activation=qcfs", "balance=trained", "snn.v_init=0.5"],
    ]
    assert config_variants([]) == [[]] and config_variants(None) == [[]]
    assert config_variants(["balance=rmp"]) == [["balance=rmp"]]


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        (["train.epochs=3"], "under model, balance, snn"),
        (["balance=rmp,mse"], "one value"),
        (["balance"], "KEY=VALUE"),
    ],
)
def test_bad_variants_refused(entry: list[str], fragment: str) -> None:
    with pytest.raises(RmpError, match=fragment):
        config_variants([entry])


def test_qcfs_levels_are_separate_grid_points() -> None:
    """Variants that differ only in model.act_levels name different points (and ANNs)."""
    variants = config_variants(
        [
            [f"model.activation={a}", "balance=trained", f"model.act_levels={n}"]
            for a, n in (("qcfs", 4), ("qcfs", 8), ("clip", 4), ("clip", 8))
        ]
    )
    cfgs = [compose_config(p) for p in grid_points([], {}, variants)]
    labels = [axis_values(c)["activation"] for c in cfgs]
    assert labels == ["qcfs-L4", "qcfs-L8", "clip", "clip"]  # clip has no levels to tell apart
    assert len({point_key(axis_values(c)) for c in cfgs}) == 3
