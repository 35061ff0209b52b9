"""layers.csv reporting: the bottleneck named in summary.md, resuming, the figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rmp_cli.errors import RmpError
from rmp_cli.report.layer_plot import draw_layers, pick_timesteps
from rmp_cli.report.layer_report import (
    COLUMNS,
    METRICS,
    append_layers,
    bottleneck_markdown,
    bottlenecks,
    keep_points,
    layer_table,
    read_layers,
)
from rmp_cli.report.results import COLUMNS as RESULT_COLUMNS
from rmp_cli.report.results import point_key, write_summary
from rmp_cli.snn.probes import COLUMNS as ENGINE_COLUMNS

KEYS = {
    "dataset": "digits",
    "model": "digits_cnn",
    "balance": "spike_norm",
    "scale": 1.0,
    "v_init": 0.0,
    "encoding": "direct",
    "activation": "relu",
}


def results_table(reset: str, accuracies: dict[int, float], ann: float = 0.9) -> pd.DataFrame:
    rows = [
        {
            **KEYS,
            "reset": reset,
            "timesteps": t,
            "accuracy": acc,
            "top5": None,
            "ann_accuracy": ann,
            "spikes_per_image": 10.0 * t,
            "synops_per_image": 100.0 * t,
            "seconds": 1.0,
        }
        for t, acc in accuracies.items()
    ]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def layers_of(reset: str, errors: dict[int, list[float]]) -> pd.DataFrame:
    """A layers table whose rate error per T and depth is given."""
    rows = []
    for t, per_layer in errors.items():
        for depth, err in enumerate(per_layer, start=1):
            rows.append(
                {
                    "layer": f"features.{depth}",
                    "depth": depth,
                    "neurons": 64,
                    "timesteps": t,
                    "firing_rate": 0.1 / depth,
                    "silent_fraction": 0.1,
                    "saturated_fraction": 0.0,
                    "ann_rate": 0.12 / depth,
                    "rate_error": err,
                    "pearson_r": 0.9,
                    "input_current": 0.1,
                    "discarded_charge": 0.01 if reset == "hard" else 0.0,
                    "residual_charge": 0.2,
                    "clipped_fraction": 0.0,
                    "uneven_fraction": 0.3,
                }
            )
    return layer_table({**KEYS, "reset": reset}, rows)


def test_bottleneck_is_the_first_layer_past_twice_the_first_layers_error() -> None:
    results = pd.concat(
        [
            results_table("hard", {4: 0.5, 16: 0.85, 64: 0.895}),  # within 1 pt first at 64
            results_table("soft", {4: 0.6, 16: 0.893, 64: 0.9}),  # ... at 16
        ]
    )
    layers = pd.concat(
        [
            layers_of("hard", {4: [0.5, 0.9, 1.0, 1.0], 64: [0.1, 0.15, 0.25, 0.4]}),
            layers_of("soft", {4: [0.4, 0.8, 0.9, 0.9], 16: [0.05, 0.09, 0.08, 0.11]}),
        ]
    )
    items = {i["reset"]: i for i in bottlenecks(results, layers)}
    hard, soft = items["hard"], items["soft"]
    assert hard["timesteps"] == 64 and hard["within_1pt"]
    assert hard["bottleneck"] == "features.3" and hard["bottleneck_depth"] == 3
    assert hard["worst_layer"] == "features.4"
    assert soft["timesteps"] == 16 and soft["bottleneck"] == "features.4"
    text = bottleneck_markdown(list(items.values()))
    assert "reset=hard, T=64: bottleneck `features.3` (layer 3 of 4): 0.25, 2.5x the first" in text
    assert "reset=soft, T=16: bottleneck `features.4`" in text


def test_a_point_never_within_one_point_uses_its_largest_t() -> None:
    results = results_table("hard", {4: 0.3, 16: 0.5})
    layers = layers_of("hard", {4: [0.5, 0.6], 16: [0.2, 0.3]})
    (item,) = bottlenecks(results, layers)
    assert item["timesteps"] == 16 and not item["within_1pt"]
    assert item["bottleneck"] is None
    text = bottleneck_markdown([item])
    assert "T=16 (never within 1 pt)" in text
    assert "no layer exceeds 2x the first layer's error" in text


def test_summary_md_carries_the_layer_section(tmp_path: Path) -> None:
    results = results_table("soft", {4: 0.6, 16: 0.9})
    layers = layers_of("soft", {4: [0.4, 0.9], 16: [0.05, 0.2]})
    section = bottleneck_markdown(bottlenecks(results, layers))
    write_summary(tmp_path, results, [section])
    text = (tmp_path / "summary.md").read_text()
    assert "## Where the information is lost" in text and "`features.2`" in text


def test_append_and_keep_points_for_resumed_sweeps(tmp_path: Path) -> None:
    path = tmp_path / "layers.csv"
    hard = layers_of("hard", {4: [0.5, 0.6]})
    soft = layers_of("soft", {4: [0.4, 0.5]})
    append_layers(path, hard)
    whole = append_layers(path, soft)
    assert len(whole) == 4 and list(read_layers(path).columns) == list(COLUMNS)
    keep_points(path, {point_key(hard.iloc[0])})
    kept = read_layers(path)
    assert set(kept["reset"]) == {"hard"} and len(kept) == 2


def test_the_table_has_the_engines_columns() -> None:
    assert tuple(METRICS) == tuple(ENGINE_COLUMNS)
    assert list(COLUMNS[-len(METRICS) - 4 : -len(METRICS)]) == [
        "timesteps",
        "depth",
        "layer",
        "neurons",
    ]


def test_unreadable_layers_table_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "layers.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(RmpError, match="not an rmp layers table"):
        read_layers(bad)


def test_pick_timesteps_spreads_over_the_sweep() -> None:
    assert pick_timesteps([1, 2, 4, 8, 16, 32, 64, 128, 256, 512]) == [4, 16, 128, 512]
    assert pick_timesteps([1, 2]) == [1, 2]
    assert pick_timesteps([64]) == [64]


@pytest.mark.parametrize("points", [1, 6])
def test_layers_figure_for_one_or_many_grid_points(tmp_path: Path, points: int) -> None:
    tables = []
    for k in range(points):
        reset = "hard" if k % 2 == 0 else "soft"
        table = layers_of(reset, {4: [0.5, 0.7, 0.9], 64: [0.1, 0.2, 0.4]})
        tables.append(table.assign(scale=1.0 - 0.1 * (k // 2)))
    paths = draw_layers(pd.concat(tables), tmp_path / "layers")
    assert [p.name for p in paths] == ["layers.png", "layers.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
