"""Accuracy-vs-latency figures, drawn from results tables only (never from a simulator)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: clusters and CI have no display
import matplotlib.pyplot as plt
import pandas as pd

from rmp_cli.errors import RmpError
from rmp_cli.report.figures import FORMATS, save_figure
from rmp_cli.report.layer_report import LAYERS_FILE, read_layers
from rmp_cli.report.results import (
    AXES,
    read_results,
    with_intervals,
    with_latency,
)
from rmp_cli.report.stats import CONFIDENCE

STEM = "accuracy_vs_timesteps"


def _label(row: pd.Series, varying: list[str], prefix: str) -> str:
    parts = [f"{row[a]}" if a == "reset" else f"{a}={row[a]}" for a in varying] or ["snn"]
    return (prefix + " " if prefix else "") + " ".join(parts)


def draw(
    runs: list[tuple[str, pd.DataFrame]], out_stem: Path, confidence: float = CONFIDENCE
) -> list[Path]:
    """One line per grid point (per run) with its interval as a band, the ANN dashed; a second
    panel with spikes per image and a third with accuracy against the SNN/ANN energy ratio
    (when the tables have it)."""
    fig, (ax_acc, ax_spk, ax_energy) = plt.subplots(1, 3, figsize=(17, 4.6))
    runs = [(name, with_latency(df)) for name, df in runs]  # x: the latency paid, K + T
    all_df = pd.concat([df for _, df in runs])
    presteps = bool((all_df["presteps"] != 0).any())
    varying = [a for a in AXES if all_df[a].nunique() > 1]
    for name, df in runs:
        prefix = name if len(runs) > 1 else ""
        for _, group in df.groupby(list(AXES), sort=False):
            group = group.sort_values("timesteps")
            label = _label(group.iloc[0], varying, prefix)
            (line,) = ax_acc.plot(
                group["timesteps"], group["accuracy"] * 100, marker="o", ms=3, label=label
            )
            band = group.dropna(subset=["ci_low", "ci_high"]) if "ci_low" in group else group[:0]
            if len(band):  # the interval of each accuracy (report.confidence, Wilson)
                ax_acc.fill_between(
                    band["timesteps"],
                    band["ci_low"] * 100,
                    band["ci_high"] * 100,
                    color=line.get_color(),
                    alpha=0.18,
                    lw=0,
                )
            ax_spk.plot(
                group["timesteps"],
                group["spikes_per_image"],
                marker="o",
                ms=3,
                color=line.get_color(),
                label=label,
            )
            energy = group.dropna(subset=["energy_ratio"]) if "energy_ratio" in group else group[:0]
            if len(energy):
                ax_energy.plot(
                    energy["energy_ratio"],
                    energy["accuracy"] * 100,
                    marker="o",
                    ms=3,
                    color=line.get_color(),
                    label=label,
                )
        # One dashed ANN line per trained network (a sweep over activations holds several).
        for activation, group in df.groupby("activation", sort=False):
            ann = float(group["ann_accuracy"].iloc[0]) * 100
            which = f" ({activation})" if df["activation"].nunique() > 1 else ""
            ax_acc.axhline(
                ann,
                ls="--",
                color="black" if len(runs) == 1 and not which else "gray",
                lw=1,
                label=f"{prefix + ' ' if prefix else ''}ANN{which} {ann:.2f}%",
            )
    first = all_df.iloc[0]
    for ax in (ax_acc, ax_spk):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(
            "time-steps K + T, pre-steps included (log2)" if presteps else "time-steps T (log2)"
        )
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.set_ylabel("top-1 accuracy (%)")
    title = f"{first['dataset']} / {first['model']}: accuracy vs latency"
    if "ci_low" in all_df and all_df["ci_low"].notna().any():
        title += " (bands: 95% CI)" if confidence == 0.95 else f" (bands: {confidence:.0%} CI)"
    ax_acc.set_title(title)
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_spk.set_yscale("log")
    ax_spk.set_ylabel("spikes per image (cumulative)")
    ax_spk.set_title("spiking activity")
    ax_energy.axvline(1.0, ls="--", color="black", lw=1, label="ANN energy")
    ax_energy.set_xscale("log")
    ax_energy.set_xlabel("SNN / ANN energy per image (log)")
    ax_energy.set_ylabel("top-1 accuracy (%)")
    ax_energy.set_title("accuracy vs energy")
    ax_energy.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        return [save_figure(fig, out_stem.with_name(f"{out_stem.name}.{ext}")) for ext in FORMATS]
    finally:
        plt.close(fig)


def recorded_images(run: Path, df: pd.DataFrame) -> int | None:
    """The test image count of a run whose table predates the `images` column: its recorded
    dataset.subset (a full test set's size is not recorded there)."""
    if "images" in df and df["images"].notna().all():
        return None
    import yaml

    try:
        cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    subset = (cfg.get("dataset") or {}).get("subset") if isinstance(cfg, dict) else None
    return subset if isinstance(subset, int) and subset > 0 else None


def plot_runs(run_dirs: list[Path], out: Path | None = None) -> list[Path]:
    runs = []
    for run in run_dirs:
        if not run.is_dir():
            raise RmpError(f"run dir not found: {run}")
        df = read_results(run / "results.csv")
        runs.append((run.name, with_intervals(df, CONFIDENCE, recorded_images(run, df))))
    # A single run's per-layer figure is redrawn too: RUN/layers.*, or STEM_layers.* with -o.
    layers_out = None if out is None else out.with_name(f"{out.name}_layers")
    if out is None:
        out = run_dirs[0] / STEM if len(run_dirs) == 1 else Path("overlay")
    paths = draw(runs, out)
    if len(run_dirs) == 1 and (run_dirs[0] / LAYERS_FILE).is_file():
        from rmp_cli.report.layer_plot import STEM as LAYERS_STEM
        from rmp_cli.report.layer_plot import draw_layers

        layers = read_layers(run_dirs[0] / LAYERS_FILE)
        if len(layers):
            paths += draw_layers(layers, layers_out or run_dirs[0] / LAYERS_STEM)
    return paths
