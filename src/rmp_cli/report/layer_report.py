"""layers.csv: per-layer diagnostics of a sweep or conversion, and the bottleneck they point to.

One row per grid point, neuron layer (execution order, `depth` from 1) and requested T. Columns
(means over the layer's units and the test images; charges and rates relative to the threshold):
  firing_rate         spikes per neuron per step
  silent_fraction     units that never fired by T
  saturated_fraction  units that fired at >= 99% of the steps (every step for T < 100)
  ann_rate            the ANN activation / threshold: the rate the layer should approach
  rate_error          mean |rate x threshold - ANN activation| / mean ANN activation
  pearson_r           correlation of rate x threshold with the ANN activation (SNN Toolbox's plot)
  input_current       input current per neuron per step
  discarded_charge    charge thrown away at hard-reset spikes, per neuron per step (0: soft reset)
  residual_charge     membrane at T (negative where inputs are negative: no floor)
  clipped_fraction    units whose ANN activation exceeds the threshold
  uneven_fraction     units whose membrane at T lies outside [0, threshold) (Bu et al. 2022)
They are tied by the charge balance
  firing_rate = input_current - (residual_charge - v_init) / T - discarded_charge.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from rmp_cli.errors import RmpError, parsing
from rmp_cli.report.results import (
    AXES,
    TEXT_COLUMNS,
    check_table,
    point_key,
    read_text_file,
    split_cut_line,
    summarize,
    with_implied_axes,
    with_implied_keys,
    write_csv,
)

LAYERS_FILE = "layers.csv"
KEYS = ("dataset", "model", *AXES)
# The per-layer statistics above, in the engine's order (tests hold it equal to the probes').
METRICS = (
    *("firing_rate", "silent_fraction", "saturated_fraction", "ann_rate", "rate_error"),
    *("pearson_r", "input_current", "discarded_charge", "residual_charge"),
    *("clipped_fraction", "uneven_fraction"),
)
COLUMNS = (*KEYS, "timesteps", "depth", "layer", "neurons", *METRICS)
LAYER_TEXT = (*TEXT_COLUMNS, "layer")
# The bottleneck: the first layer whose rate error exceeds this multiple of the first layer's.
BOTTLENECK_FACTOR = 2.0


def layer_table(keys: dict[str, Any], rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """layers.csv rows of one grid point: its keys on every row of the simulator's statistics."""
    return with_implied_keys(pd.DataFrame([{**keys, **row} for row in rows], columns=list(COLUMNS)))


def read_layers(path: Path) -> pd.DataFrame:
    """layers.csv, checked like results.csv: its columns, numbers where numbers belong."""
    text = read_text_file(path)
    if split_cut_line(text)[1]:
        raise RmpError(f"{path} ends in a cut line (no newline after it), not a whole table")
    with parsing(path, "not a readable layers table"):
        df = pd.read_csv(io.StringIO(text), dtype=dict.fromkeys(LAYER_TEXT, str))
        df = with_implied_keys(df)
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise RmpError(f"{path} lacks columns {', '.join(missing)}; not an rmp layers table")
        return check_table(df, COLUMNS, LAYER_TEXT, (*KEYS, "timesteps", "depth", "layer"))


def append_layers(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """Add one grid point's rows to layers.csv (rewritten atomically); returns the whole table."""
    if path.is_file():
        table = pd.concat([read_layers(path), table], ignore_index=True)
    write_csv(path, table)
    return table


def keep_points(path: Path, keys: set[str]) -> None:
    """Drop rows of grid points not in `keys` (a sweep resumed after an interruption between
    writing layers.csv and results.csv recomputes such a point)."""
    if not path.is_file():
        return
    df = read_layers(path)
    kept = df[[point_key(r) in keys for _, r in df.iterrows()]] if len(df) else df
    if len(kept) != len(df):
        write_csv(path, kept)


# --- the bottleneck ------------------------------------------------------------------------------
def bottlenecks(results: pd.DataFrame, layers: pd.DataFrame) -> list[dict[str, Any]]:
    """Per grid point: at the lowest T within 1 point of the ANN (else the largest T), the first
    layer whose rate error exceeds BOTTLENECK_FACTOR x the first layer's, and the worst layer."""
    found = []
    layers = with_implied_keys(layers)
    by_point = {point_key(g.iloc[0]): g for _, g in layers.groupby(list(AXES), sort=False)}
    for _, point in summarize(with_implied_axes(results)).iterrows():
        group = by_point.get(point_key(point))
        if group is None:
            continue
        within = point["first_t_within_1pt"]
        reached = within is not None and not (isinstance(within, float) and math.isnan(within))
        t = int(within) if reached else int(point["max_timesteps"])
        t -= int(point["presteps"])  # the summary ranks by K + T, the layers are read at T
        at_t = group[group["timesteps"] == t].sort_values("depth")
        if at_t.empty:
            continue
        errors = at_t["rate_error"].astype(float)
        first = at_t.iloc[0]
        base = float(first["rate_error"])
        later = at_t.iloc[1:]
        over = later[later["rate_error"].astype(float) > BOTTLENECK_FACTOR * base]
        hit = None if over.empty or math.isnan(base) else over.iloc[0]
        worst = at_t.loc[errors.idxmax()] if errors.notna().any() else first
        found.append(
            {
                **{a: point[a] for a in AXES},
                "timesteps": t,
                "within_1pt": reached,
                "first_layer": str(first["layer"]),
                "first_error": base,
                "bottleneck": None if hit is None else str(hit["layer"]),
                "bottleneck_depth": None if hit is None else int(hit["depth"]),
                "bottleneck_error": None if hit is None else float(hit["rate_error"]),
                "worst_layer": str(worst["layer"]),
                "worst_error": float(worst["rate_error"]),
                "layers": len(at_t),
            }
        )
    return found


def bottleneck_markdown(items: list[dict[str, Any]]) -> str:
    """The summary.md section naming each grid point's bottleneck."""
    if not items:
        return ""
    varying = [a for a in AXES if len({str(i[a]) for i in items}) > 1] or ["reset"]
    out = io.StringIO()
    out.write("\n## Where the information is lost (layers.csv)\n\n")
    out.write(
        "At the lowest T within 1 point of the ANN (else the largest T): the first neuron layer "
        f"whose rate error (mean |rate x threshold - ANN activation| / mean activation) exceeds "
        f"{BOTTLENECK_FACTOR:g}x the first layer's, and the worst layer.\n\n"
    )
    for item in items:
        where = ", ".join(f"{a}={item[a]}" for a in varying)
        when = f"T={item['timesteps']}" + ("" if item["within_1pt"] else " (never within 1 pt)")
        first = f"first layer `{item['first_layer']}` {item['first_error']:.3g}"
        worst = f"worst `{item['worst_layer']}` {item['worst_error']:.3g}"
        if item["bottleneck"] is None:
            verdict = f"no layer exceeds {BOTTLENECK_FACTOR:g}x the first layer's error"
        else:
            base = item["first_error"]
            ratio = (
                f"{item['bottleneck_error'] / base:.3g}x the first"
                if base > 0
                else "where the first is exact"
            )
            verdict = (
                f"bottleneck `{item['bottleneck']}` (layer {item['bottleneck_depth']} of "
                f"{item['layers']}): {item['bottleneck_error']:.3g}, {ratio}"
            )
        out.write(f"- {where}, {when}: {verdict}; {first}; {worst}\n")
    return out.getvalue()
