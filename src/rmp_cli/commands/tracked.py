"""What each command gives its trackers (logger=...): the composed config as params, per-epoch
metrics, one child run per grid point with its results.csv numbers by T, headline numbers and
the finished files. The tracking package knows nothing of rmp's tables; this module reads them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rmp_cli.commands.grid import axis_values
from rmp_cli.commands.stopping import complete_files
from rmp_cli.config import to_container
from rmp_cli.report.results import AXES, point_key, summarize
from rmp_cli.tracking import Tracking, build_tracking
from rmp_cli.tracking.session import numbers

# results.csv columns that name a row rather than measure it.
LABELS = ("dataset", "model", *AXES, "timesteps")


def preset_of(overrides: Sequence[str]) -> str | None:
    """The experiment= preset named on the command line (the default experiment name)."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "experiment" and value and value != "null":
            return value
    return None


def tracking_for(cfg: DictConfig, command: str, overrides: Sequence[str]) -> Tracking:
    """The configured trackers, built now: a missing package fails before any work."""
    logger = OmegaConf.select(cfg, "logger", default=None)
    spec = OmegaConf.to_container(logger, resolve=True) if logger is not None else None
    return build_tracking(spec, command=command, preset=preset_of(overrides))  # type: ignore[arg-type]


@contextlib.contextmanager
def tracked(
    tracking: Tracking, run_path: Path, cfg: DictConfig | Mapping[str, Any]
) -> Iterator[Tracking]:
    """The tracker runs open for the block; the run's finished files are logged at its end."""
    config = to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    with tracking.opened(run_path, config):
        yield tracking
        if tracking.active:
            tracking.artifacts(run_files(run_path, tracking.log_checkpoints))


# What a tracker keeps of a run dir: tables, reports and figures (not predictions.npz, which
# can be large, nor the bookkeeping); checkpoints only with logger.log_checkpoints=true.
ARTIFACT_SUFFIXES = (".csv", ".md", ".json", ".png", ".pdf", ".svg")


def run_files(run_path: Path, checkpoints: bool) -> list[Path]:
    """The run's result files to log; never the resume state last.pt."""
    files = [run_path / name for name in complete_files(run_path)]
    wanted = ARTIFACT_SUFFIXES + ((".pt",) if checkpoints else ())
    return [p for p in files if p.suffix in wanted and p.name != "last.pt"]


def sweep_params(
    cfg: DictConfig, steps: Sequence[int], axes: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """A sweep's config as its parent run's params: each grid axis with all its values."""
    config = to_container(cfg)
    config.setdefault("sweep", {})["timesteps"] = list(steps)
    for dotted, values in axes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(values)
    return config


def log_sweep_points(tracking: Tracking, df: pd.DataFrame, steps: Sequence[int] = ()) -> None:
    """Each complete grid point of results.csv (a row at every T of ``steps``) that the
    trackers lack: a child run with every numeric column by T (intervals too) and its summary
    as final numbers. A point kept in part from a cut table waits until it is complete."""
    if not tracking.active or not len(df):
        return
    keyed = df.assign(_key=[point_key(r) for _, r in df.iterrows()])
    summaries = {point_key(r): r for _, r in summarize(df).iterrows()}
    for key, rows in keyed.groupby("_key", sort=False):
        if tracking.logged(str(key)):
            continue
        if not set(steps) <= {int(t) for t in rows["timesteps"]}:
            continue
        rows = rows.sort_values("timesteps")
        first = rows.iloc[0]
        series = [
            (int(r["timesteps"]), numbers(r.drop("_key"), skip=LABELS)) for _, r in rows.iterrows()
        ]
        final = numbers(summaries[str(key)], skip=LABELS) if str(key) in summaries else {}
        tracking.point(str(key), {a: first[a] for a in AXES}, series, final)


def log_sweep_headline(tracking: Tracking, df: pd.DataFrame) -> None:
    """The summary's headline numbers on the parent run: the ANN's accuracy, the best SNN
    accuracy of the grid and the first T that reached it."""
    if not tracking.active or not len(df):
        return
    best = df.loc[df["accuracy"].idxmax()]
    tracking.metrics(
        numbers(
            {
                "ann_accuracy": df["ann_accuracy"].max(),
                "best_accuracy": best["accuracy"],
                "best_accuracy_timesteps": best["timesteps"],
                "points": df.groupby(list(AXES)).ngroups,
            }
        )
    )


def log_convert(tracking: Tracking, cfg: DictConfig, report: dict[str, Any]) -> None:
    """A convert is one grid point at T=snn.timesteps: a child run with the report's numbers,
    and the ANN-vs-SNN headline on the parent."""
    if not tracking.active:
        return
    axes = axis_values(cfg)
    renamed = {"snn_accuracy": "accuracy", "snn_top5": "top5"}
    values = numbers({renamed.get(k, k): v for k, v in report.items()}, skip=LABELS)
    tracking.point(point_key(axes), axes, [(int(report["timesteps"]), values)])
    tracking.metrics(
        numbers(
            {
                "ann_accuracy": report["ann_accuracy"],
                "snn_accuracy": report["snn_accuracy"],
                "loss_vs_ann": report["ann_accuracy"] - report["snn_accuracy"],
                "energy_ratio": report["energy_ratio"],
            }
        )
    )
