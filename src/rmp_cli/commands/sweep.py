"""`rmp sweep`: accuracy vs time-steps over a grid, one simulation per grid point, resumable."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rmp_cli.commands import pipeline, stopping
from rmp_cli.commands.grid import (
    GRID_AXES,
    activation_label,
    axis_values,
    parse_timesteps,
    point_labels,
    split_grid,
    sweep_grid,
    validate_timesteps,
)
from rmp_cli.commands.resume import read_ann_accuracy, read_done, silent, state_check
from rmp_cli.commands.run_state import (
    RunLock,
    _manifest,
    _open_run,
    read_json,
)
from rmp_cli.commands.tracked import (
    log_sweep_headline,
    log_sweep_points,
    sweep_params,
    tracked,
    tracking_for,
)
from rmp_cli.commands.train import load_resumable
from rmp_cli.config import compose_config
from rmp_cli.data.bundle import redraw_calibration
from rmp_cli.errors import RmpError
from rmp_cli.models.sources import describe
from rmp_cli.report import layer_report, predictions, stats
from rmp_cli.report.energy import EnergyCosts
from rmp_cli.report.results import (
    AXES,
    COLUMNS,
    point_key,
    with_intervals,
    write_csv,
    write_summary,
)
from rmp_cli.runs import distributed as dist
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.runs.ranks import discard_if_failed, on_main, torchrun_session
from rmp_cli.runs.rundir import RunDir, log, make_dir
from rmp_cli.runs.runtime import seed_everything
from rmp_cli.snn.opcount import ann_macs_per_image
from rmp_cli.tracking import Tracking
from rmp_cli.training.checkpoint import load_checkpoint

# --- the sweep ----------------------------------------------------------------------------


def _model_groups(cfg: DictConfig, point_cfgs: list[DictConfig]) -> dict[str, list[int]]:
    """Grid points by the ANN they need: 'ann' for the base model, 'ann-<activation>[-L<levels>]'
    for a variant's other model (each trained into its own folder of the run dir)."""
    groups: dict[str, list[int]] = {}
    models: dict[str, str] = {}
    base_model = OmegaConf.to_yaml(cfg.model)
    given = "ckpt=" if cfg.get("ckpt") else "weights=" if cfg.get("weights") else None
    # A seed axis without a given network: each seed trains its own ANN (RUN/ann-seed<N>).
    per_seed = not given and len({int(c.seed) for c in point_cfgs}) > 1
    for index, point_cfg in enumerate(point_cfgs):
        model = OmegaConf.to_yaml(point_cfg.model)
        name = "ann" if model == base_model else f"ann-{activation_label(point_cfg.model)}"
        if per_seed:
            name += f"-seed{int(point_cfg.seed)}"
            model += f"seed: {int(point_cfg.seed)}\n"
        if models.setdefault(name, model) != model:
            raise RmpError(f"sweep.variants give two different models the name {name}")
        groups.setdefault(name, []).append(index)
    if given and set(groups) != {"ann"}:
        raise RmpError(
            f"sweep.variants change the model, so each variant trains its own ANN; drop {given} "
            "or the model.* overrides of sweep.variants"
        )
    return groups


def _as_the_checkpoint_names_them(
    cfg: DictConfig, point_cfgs: list[DictConfig]
) -> list[DictConfig]:
    """With ckpt= the checkpoint decides the model, so its activation (not the one a preset
    composed) names the points: their keys then match the rows written for them."""
    if not cfg.get("ckpt"):
        return point_cfgs
    model = load_checkpoint(cfg.ckpt)["config"].model
    named = [c.copy() for c in point_cfgs]
    for c in named:
        c.model = model
    return named


def _ensure_checkpoint(
    cfg: DictConfig, run: RunDir, name: str = "ann", tracking: Tracking | None = None
) -> str | None:
    """Reuse ckpt= (or None for weights=), else train the ANN into RUN/<name> (resuming a
    half-finished training; its epochs go to the sweep's tracker run as <name>/...)."""
    if cfg.get("ckpt"):
        return str(cfg.ckpt)
    if cfg.get("weights"):
        return None
    from rmp_cli.training.loop import train

    ann_dir = run.path / name
    if (ann_dir / "model.pt").is_file():
        log.info("using the ANN trained earlier in this sweep: %s", ann_dir / "model.pt")
        return str(ann_dir / "model.pt")
    make_dir(ann_dir, exist_ok=True)
    if name.rpartition("-")[2] == f"seed{int(cfg.seed)}":  # its own initialisation too
        seed_everything(int(cfg.seed))
    state = load_resumable(ann_dir / "last.pt") if (ann_dir / "last.pt").is_file() else None
    log.info(
        "no ckpt= given: training the ANN first (%s: %s on %s)",
        name,
        cfg.model.name,
        cfg.dataset.name,
    )
    on_epoch = (lambda row: tracking.epoch(row, prefix=f"{name}/")) if tracking else None
    train(cfg, RunDir(path=ann_dir, created=True), resume_state=state, on_epoch=on_epoch)
    return str(ann_dir / "model.pt")


def run_sweep_command(
    overrides: list[str],
    *,
    timesteps: str | None,
    show_cfg: bool,
    quiet: bool,
    prepare: Callable[..., DictConfig | None],
) -> Path | None:
    base, cli_axes = split_grid(overrides)
    base_cfg = prepare("sweep", base, show_cfg=show_cfg, quiet=quiet)
    if base_cfg is None:
        return None
    steps = (
        parse_timesteps(timesteps)
        if timesteps is not None
        else validate_timesteps(
            list(base_cfg.sweep.timesteps)
            if OmegaConf.is_list(base_cfg.sweep.timesteps)
            else [base_cfg.sweep.timesteps]
        )
    )
    # Compose and validate every grid point before anything is written.
    axes, points = sweep_grid(base_cfg, base, cli_axes)
    point_cfgs = [compose_config(p) for p in points]
    for point_cfg in point_cfgs:
        point_cfg.sweep.timesteps = steps
        pipeline.validate_snn_config(point_cfg)
        EnergyCosts.from_config(point_cfg.get("energy"))
    if not base_cfg.get("ckpt"):
        for point_cfg in point_cfgs:
            if point_cfg.balance.method == "trained" and point_cfg.model.activation == "relu":
                raise RmpError(
                    "balance=trained reads the ceilings of model.activation=clip or qcfs; "
                    "the model uses relu"
                )
    cfg = point_cfgs[0]
    pipeline.check_weight_source(cfg)
    keys = [point_key(axis_values(c)) for c in _as_the_checkpoint_names_them(base_cfg, point_cfgs)]
    if len(set(keys)) != len(keys):
        raise RmpError("the grid repeats a point; check the comma lists")
    tracking = tracking_for(base_cfg, "sweep", overrides)
    # Under torchrun every rank runs the grid on its shard of the test set; rank 0 writes.
    with torchrun_session(point_cfgs):
        manifest = _manifest(cfg, steps, keys)
        run = on_main(lambda: _open_run(cfg, overrides, manifest, check=state_check(steps)))
        # Interrupted, the same command with run_dir=RUN computes only the missing points.
        stopping.run_opened(run.path, lambda path: stopping.with_run_dir(stopping.typed(), path))
        with (
            discard_if_failed(run),
            RunLock(run.path) if dist.is_main() else nullcontext(),
            tracked(tracking, run.path, sweep_params(base_cfg, steps, axes)),
        ):
            sweep_points(cfg, point_cfgs, keys, steps, overrides, run, tracking)
    return run.path


def sweep_points(
    cfg: DictConfig,
    point_cfgs: list[DictConfig],
    keys: list[str],
    steps: list[int],
    overrides: list[str],
    run: RunDir,
    tracking: Tracking | None = None,
) -> None:
    tracking = tracking or Tracking()
    done, partial = read_done(run.path, steps, say=log.warning if dist.is_main() else silent)
    finished = dist.broadcast_object({point_key(r) for _, r in done.iterrows()} - set(partial))
    if dist.is_main():
        layer_report.keep_points(run / layer_report.LAYERS_FILE, finished)
        predictions.keep_points(run / predictions.PREDICTIONS_FILE, finished)
    # Every seed of a sweep is tested on the same images (those of the first seed's network).
    seeds = {int(c.seed) for c in point_cfgs}
    test_seed = int(point_cfgs[0].seed) if len(seeds) > 1 and not cfg.get("ckpt") else None
    for name, indices in _model_groups(cfg, point_cfgs).items():
        todo = [i for i in indices if keys[i] not in finished]
        for i in indices:
            if keys[i] in finished:
                log.info("[%d/%d] %s: already done", i + 1, len(keys), keys[i])
        if todo:
            done = _sweep_model(
                name,
                point_cfgs,
                keys,
                todo,
                steps,
                overrides,
                run,
                done,
                test_seed,
                partial,
                tracking,
            )
    if dist.is_main():
        _finish(run, done, cfg)
        log_sweep_points(tracking, done, steps)  # points done before this process, if not logged
        log_sweep_headline(tracking, done)


def _sweep_model(
    name: str,
    point_cfgs: list[DictConfig],
    keys: list[str],
    todo: list[int],
    steps: list[int],
    overrides: list[str],
    run: RunDir,
    done: pd.DataFrame,
    test_seed: int | None = None,
    partial: dict[str, set[int]] | None = None,
    tracking: Tracking | None = None,
) -> pd.DataFrame:
    """The grid points that share one ANN: train (or reuse) it, then balance and simulate each.
    `partial`: points whose rows at these T were kept from a cut results.csv (only the rest
    are added)."""
    partial = partial or {}
    tracking = tracking or Tracking()
    results_path = run / "results.csv"
    ckpt = _ensure_checkpoint(point_cfgs[todo[0]], run, name, tracking)
    prepared = pipeline.prepare(point_cfgs[todo[0]], overrides, ckpt, test_seed=test_seed)
    log.info("model %s on dataset %s", describe(prepared.cfg.model), prepared.cfg.dataset.name)
    ann_acc, ann = _ann_reference(prepared, run, "ann.json" if name == "ann" else f"{name}.json")
    ann_macs = ann_macs_per_image(prepared.ann, prepared.data.input_shape)
    confidence, _alpha = pipeline.report_levels(prepared.cfg)
    redraw = pipeline.seed_given(overrides)
    nets: dict[bool, Any] = {}
    thresholds_cache: dict[tuple, list] = {}
    for position in todo:
        point_cfg, key = point_cfgs[position], keys[position]
        index = position + 1  # 1-based, for the log
        pipeline.adopt_checkpoint_config(point_cfg, prepared.checkpoint["config"], overrides)
        calib_seed = int(point_cfg.seed) if redraw else -1
        point = pipeline.Prepared(
            cfg=point_cfg,
            data=redraw_calibration(prepared.data, calib_seed) if redraw else prepared.data,
            ann=prepared.ann,
            device=prepared.device,
            checkpoint=prepared.checkpoint,
        )
        per_channel = bool(point_cfg.snn.per_channel)
        net = nets.get(per_channel) or nets.setdefault(per_channel, pipeline.build_snn(point))
        b = point_cfg.balance
        cache_key = (
            str(b.method),
            float(b.scale),
            float(b.get("percentile", 100.0)),
            int(b.get("timesteps", 0) or 0),
            str(b.get("calib_reset", "soft")),
            int(b.num_images),
            per_channel,
            float(point_cfg.snn.v_init) if b.method == "mse" else 0.0,  # mse models the shift
            calib_seed,
        )
        if cache_key not in thresholds_cache:
            tic = time.perf_counter()
            thresholds_cache[cache_key] = pipeline.balance(
                point, net, pipeline.calibration_images(point)
            )
            log.info(
                "balanced thresholds (%s, scale %g) in %.1fs",
                b.method,
                float(b.scale),
                time.perf_counter() - tic,
            )
        net.thresholds = [t.clone() for t in thresholds_cache[cache_key]]
        result = pipeline.simulate_test(point, net, steps, desc=f"[{index}/{len(keys)}] {key}")
        costs = EnergyCosts.from_config(point_cfg.get("energy"))
        snn_classes = result.predictions.numpy() if result.predictions is not None else None
        per_image = (
            stats.ann_columns(snn_classes, ann.predicted.numpy(), ann.label.numpy())
            if ann is not None and snn_classes is not None
            else stats.ann_columns(np.zeros((len(steps), 0)), None, np.zeros(0))
        )
        rows = [
            {
                **point_labels(point_cfg),
                "timesteps": r["timesteps"],
                "accuracy": r["accuracy"],
                "top5": r.get("top5"),
                "ann_accuracy": ann_acc,
                "spikes_per_image": r["spikes_per_image"],
                "synops_per_image": r["synops_per_image"],
                "analog_macs_per_image": r["analog_macs_per_image"],
                "ann_macs_per_image": ann_macs,
                "energy_ratio": costs.ratio(
                    r["synops_per_image"], r["analog_macs_per_image"], ann_macs
                ),
                "seconds": round(result.seconds, 3),
                **stats.interval_columns(result.correct[1][i], result.num_images, confidence),
                **per_image[i],
            }
            for i, r in enumerate(result.rows())
            if r["timesteps"] not in partial.get(key, ())
        ]
        done = (
            pd.concat([done, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
            if len(done)
            else pd.DataFrame(rows, columns=COLUMNS)
        )
        if dist.is_main():
            # Before results.csv, which marks the point done.
            if result.layers is not None:
                _append_layers(run, point_cfg, result.layers.rows())
            if ann is not None and snn_classes is not None:
                predictions.upsert_point(
                    run / predictions.PREDICTIONS_FILE,
                    key,
                    steps,
                    ann.index.numpy(),
                    ann.label.numpy(),
                    snn_classes,
                    ann.predicted.numpy(),
                )
            write_csv(results_path, done)  # atomic: an interrupted sweep keeps every point done
            log_sweep_points(tracking, done, steps)  # after results.csv: never ahead of it
        if not rows:  # every row of this point was kept from the cut table
            continue
        best = max(rows, key=lambda r: r["accuracy"])
        log.info(
            "[%d/%d] %s: T=%d acc %.2f%%  best %.2f%% at T=%d  (%.1fs)",
            index,
            len(keys),
            key,
            steps[-1],
            rows[-1]["accuracy"] * 100,
            best["accuracy"] * 100,
            best["timesteps"],
            result.seconds,
        )
    return done


def _ann_reference(
    p: pipeline.Prepared, run: RunDir, filename: str = "ann.json"
) -> tuple[float, pipeline.AnnPredictions | None]:
    """The ANN's test accuracy (evaluated once and kept in the run dir) and its per-image
    predictions (one ANN pass; again when a sweep resumes). Under torchrun only rank 0 writes
    rows, so the other ranks skip the full-test-set pass (NaN, None)."""
    if not dist.is_main():
        return math.nan, None
    path = run / filename
    ann = pipeline.ann_predictions(p)
    if path.is_file():
        return read_ann_accuracy(path), ann
    metrics = ann.metrics
    report = {"accuracy": metrics["acc"], "top5": metrics["top5"], "loss": metrics["loss"]}
    if p.data.test_note:
        report["test_set"] = p.data.test_note
    if p.ann_before is not None:  # snn.maxpool=avg changed the ANN: keep the ANN as trained too
        before = pipeline.ann_metrics(p, before=True)
        report["accuracy_before_avg"] = before["acc"]
        log.info(
            "snn.maxpool=avg: ANN accuracy %.2f%% with its max-pooling, %.2f%% with average "
            "pooling (the SNN's reference)",
            before["acc"] * 100,
            metrics["acc"] * 100,
        )
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    log.info("ANN test accuracy %.2f%%", metrics["acc"] * 100)
    return float(metrics["acc"]), ann


def _append_layers(run: RunDir, point_cfg: DictConfig, rows: list[dict[str, Any]]) -> None:
    table = layer_report.layer_table(point_labels(point_cfg), rows)
    layer_report.append_layers(run / layer_report.LAYERS_FILE, table)


def _test_notes(run: RunDir) -> list[str]:
    """The short-test-split notes the ANN reports of this run recorded (one per distinct note)."""
    notes = [read_json(path).get("test_set") for path in sorted(run.path.glob("ann*.json"))]
    return sorted({note for note in notes if note})


def _finish(run: RunDir, df: pd.DataFrame, cfg: DictConfig) -> None:
    from rmp_cli.report.layer_plot import STEM as LAYERS_STEM
    from rmp_cli.report.layer_plot import draw_layers
    from rmp_cli.report.plot import STEM, draw

    sections = [f"\n{note[0].upper()}{note[1:]}.\n" for note in _test_notes(run)]
    layers_path = run / layer_report.LAYERS_FILE
    if layers_path.is_file():
        layers = layer_report.read_layers(layers_path)
        if len(layers):
            sections.append(layer_report.bottleneck_markdown(layer_report.bottlenecks(df, layers)))
            draw_layers(layers, run.path / LAYERS_STEM)
    confidence, alpha = pipeline.report_levels(cfg)
    kept = predictions.load_if_present(run.path)
    lines = write_summary(
        run.path, df, sections, predictions=kept, alpha=alpha, confidence=confidence
    )
    draw([(run.path.name, with_intervals(df, confidence))], run.path / STEM, confidence)
    for line in lines:
        log.info(line)
    print((run / "summary.md").read_text())


__all__ = ["AXES", "GRID_AXES", "parse_timesteps", "run_sweep_command", "split_grid"]
