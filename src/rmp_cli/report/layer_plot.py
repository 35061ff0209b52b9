"""layers.png / .pdf: where a converted net loses information, drawn from layers.csv only.

One column per grid point (points that differ only in the reset side by side): on top the rate
error of every neuron layer against its depth for a few T, below its firing rate with the ANN's
target rate (activation / threshold) dashed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rmp_cli.report.figures import FORMATS, save_figure
from rmp_cli.report.results import AXES, with_implied_keys
from rmp_cli.runs.rundir import make_dir

STEM = "layers"
MAX_CURVES = 4  # time-steps drawn per panel
MAX_COLUMNS = 4  # an even number keeps hard/soft pairs on one row
NAMED_TICKS = 12  # up to this many layers, the x axis shows their names


def pick_timesteps(timesteps: list[int], most: int = MAX_CURVES) -> list[int]:
    """A few T spread over the (log-spaced) sweep, always including the largest. T < 4 is left
    out when enough larger T exist: there nearly every unit is still silent."""
    ts = sorted(set(timesteps))
    larger = [t for t in ts if t >= 4]
    if len(larger) >= 2:
        ts = larger
    if len(ts) <= most:
        return ts
    picks = np.round(np.linspace(0, len(ts) - 1, most)).astype(int)
    return [ts[i] for i in sorted(set(picks.tolist()))]


def _points(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Grid points in order of first appearance, with the reset varying fastest."""
    others = [a for a in AXES if a != "reset"]
    ordered = []
    for _, group in df.groupby(others, sort=False):
        for _, point in group.groupby("reset", sort=True):  # hard before soft
            ordered.append(point)
    return ordered


def _label(point: pd.DataFrame, varying: list[str]) -> str:
    first = point.iloc[0]
    parts = [f"{first[a]}" if a == "reset" else f"{a}={first[a]}" for a in varying]
    return " ".join(parts) or f"{first['reset']} reset"


def draw_layers(df: pd.DataFrame, out_stem: Path) -> list[Path]:
    df = with_implied_keys(df)
    points = _points(df)
    varying = [a for a in AXES if df[a].nunique() > 1]
    ts = pick_timesteps(df["timesteps"].astype(int).tolist())
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(ts), 1)))
    ncols = min(len(points), MAX_COLUMNS)
    blocks = math.ceil(len(points) / ncols)
    fig, axes = plt.subplots(
        2 * blocks,
        ncols,
        figsize=(3.8 * ncols, 5.6 * blocks),
        squeeze=False,
        sharex="col",
        sharey="row",  # the same scale across grid points: hard vs soft compare at a glance
    )
    for index, point in enumerate(points):
        block, col = divmod(index, ncols)
        ax_err, ax_rate = axes[2 * block, col], axes[2 * block + 1, col]
        for t, color in zip(ts, colors, strict=True):
            at_t = point[point["timesteps"] == t].sort_values("depth")
            if at_t.empty:
                continue
            ax_err.plot(at_t["depth"], at_t["rate_error"], marker="o", ms=3, color=color)
            ax_rate.plot(
                at_t["depth"], at_t["firing_rate"], marker="o", ms=3, color=color, label=f"T={t}"
            )
        target = point.sort_values(["timesteps", "depth"]).drop_duplicates("depth")
        ax_rate.plot(target["depth"], target["ann_rate"], ls="--", color="black", lw=1, label="ANN")
        ax_err.set_title(_label(point, varying), fontsize=9)
        ax_err.set_yscale("log", nonpositive="mask")
        ax_rate.set_yscale("log", nonpositive="mask")
        if col == 0:
            ax_err.set_ylabel("rate error (rel. to mean activation)", fontsize=8)
            ax_rate.set_ylabel("firing rate (spikes / neuron / step)", fontsize=8)
        layers = target[["depth", "layer"]]
        ax_rate.set_xlabel("neuron layer (execution order)", fontsize=8)
        if len(layers) <= NAMED_TICKS:
            ax_rate.set_xticks(
                layers["depth"], layers["layer"], rotation=60, ha="right", fontsize=6
            )
        for ax in (ax_err, ax_rate):
            ax.grid(True, which="both", alpha=0.3)
            ax.tick_params(labelsize=7)
        if index == 0:
            ax_rate.legend(fontsize=7)
    for index in range(len(points), blocks * ncols):  # unused panels of the last row
        block, col = divmod(index, ncols)
        axes[2 * block, col].axis("off")
        axes[2 * block + 1, col].axis("off")
    first = df.iloc[0]
    fig.suptitle(
        f"{first['dataset']} / {first['model']}: per-layer rate error and firing rate",
        fontsize=11,
    )
    fig.tight_layout()
    return _save(fig, out_stem)


def _save(fig: plt.Figure, out_stem: Path) -> list[Path]:
    """Atomically, as every result (a full disk is one line and leaves the previous figure)."""
    make_dir(out_stem.parent, exist_ok=True)
    try:
        return [save_figure(fig, out_stem.with_name(f"{out_stem.name}.{ext}")) for ext in FORMATS]
    finally:
        plt.close(fig)


__all__ = ["STEM", "draw_layers", "pick_timesteps"]
