"""`rmp convert`: checkpoint -> balanced SNN -> accuracy at snn.timesteps, with an ANN-vs-SNN table."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import click
from omegaconf import DictConfig, OmegaConf

from rmp_cli.commands import pipeline, stopping
from rmp_cli.commands.grid import neuron_label
from rmp_cli.commands.tracked import log_convert, tracked, tracking_for
from rmp_cli.config import same_settings, to_container
from rmp_cli.errors import RmpError, parsing, read_bytes
from rmp_cli.models.sources import describe
from rmp_cli.report import layer_report, predictions, stats
from rmp_cli.report.energy import EnergyCosts
from rmp_cli.report.results import write_csv
from rmp_cli.runs import distributed as dist
from rmp_cli.runs.atomic import atomic_torch_save, atomic_write_text
from rmp_cli.runs.ranks import discard_if_failed, on_main, torchrun_session
from rmp_cli.runs.rundir import RunDir, create_run_dir, log
from rmp_cli.snn.opcount import ann_macs_per_image
from rmp_cli.tracking import Tracking

REPORT = "convert.json"  # written last: a run dir without it holds an unfinished convert


def threshold_rows(names: list[str], thresholds: list, method: str) -> list[dict]:
    rows = []
    for name, theta in zip(names, thresholds, strict=True):
        values = theta.flatten().tolist()
        rows.append(
            {
                "layer": name,
                "method": method,
                "threshold": round(sum(values) / len(values), 6),
                "channels": len(values),
            }
        )
    return rows


def write_thresholds_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["layer", "method", "threshold", "channels"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_convert(cfg: DictConfig, overrides: list[str]) -> Path:
    timesteps = cfg.snn.timesteps
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise RmpError(f"snn.timesteps must be a positive integer, got {timesteps}")
    tracking = tracking_for(cfg, "convert", overrides)
    # Under torchrun each rank simulates its shard of the test set; rank 0 writes.
    with torchrun_session([cfg]):
        prepared = pipeline.prepare(cfg, overrides)  # validates before any run dir exists
        run = on_main(lambda: _open_run(cfg, overrides))
        stopping.run_opened(run.path, lambda path: stopping.with_run_dir(stopping.typed(), path))
        with discard_if_failed(run), tracked(tracking, run.path, prepared.cfg):
            return _convert(prepared, run.path, timesteps, tracking)


def _open_run(cfg: DictConfig, overrides: list[str]) -> RunDir:
    """A new run dir, or the run_dir= of a convert that was stopped before its report with the
    same settings: rerunning the command finishes it there."""
    explicit = cfg.get("run_dir")
    if explicit and unfinished_convert(Path(str(explicit)), cfg):
        log.info("finishing the interrupted convert in %s", explicit)
        return create_run_dir("convert", cfg, overrides, reuse=True)
    return create_run_dir("convert", cfg, overrides)


def unfinished_convert(path: Path, cfg: DictConfig) -> bool:
    recorded = path / ".hydra" / "config.yaml"
    if (path / REPORT).exists() or not recorded.is_file():
        return False
    raw = read_bytes(recorded)
    with parsing(
        recorded,
        "not the record of a run",
        f"nothing in {path} was changed: restore it, or choose another run_dir=",
    ):
        old = OmegaConf.to_container(OmegaConf.create(raw.decode("utf-8")), resolve=True)
        if not isinstance(old, dict):
            raise ValueError(f"it holds a {type(old).__name__}, not a config")
    return same_settings(old, cfg)


def _convert(
    p: pipeline.Prepared, run_path: Path, timesteps: int, tracking: Tracking | None = None
) -> Path:
    cfg = p.cfg
    # Under torchrun only rank 0 reports: the other ranks skip the full-test-set ANN pass.
    log.info("model %s on dataset %s", describe(cfg.model), cfg.dataset.name)
    reference = pipeline.ann_predictions(p) if dist.is_main() else None
    ann = reference.metrics if reference is not None else None
    if ann is not None:  # before converting: do the weights and the preprocessing match?
        log.info("ANN accuracy %.2f%% on %d test images", ann["acc"] * 100, len(p.data.test))
    # snn.maxpool=avg changed the ANN: report it as trained too, so the change is visible.
    before = (
        pipeline.ann_metrics(p, before=True)
        if p.ann_before is not None and dist.is_main()
        else None
    )
    if ann is not None and before is not None:
        log.info(
            "snn.maxpool=avg: ANN accuracy %.2f%% with its max-pooling, %.2f%% with average "
            "pooling",
            before["acc"] * 100,
            ann["acc"] * 100,
        )
    net = pipeline.build_snn(p)
    tic = time.perf_counter()
    thresholds = pipeline.balance(p, net, pipeline.calibration_images(p))
    balance_seconds = time.perf_counter() - tic
    if dist.is_main():
        rows = threshold_rows(net.neuron_names, thresholds, str(cfg.balance.method))
        write_thresholds_csv(run_path / "thresholds.csv", rows)
        atomic_torch_save(
            run_path / "snn.pt",
            {
                "format": "rmp-snn-v1",
                "thresholds": [t.cpu() for t in thresholds],
                "neuron_names": net.neuron_names,
                "config": to_container(cfg),
                "ckpt": str(p.checkpoint["path"]),
            },
        )
    result = pipeline.simulate_test(p, net, [timesteps], desc=f"simulate T={timesteps}")
    if not dist.is_main():
        return run_path
    assert ann is not None and reference is not None
    confidence, _alpha = pipeline.report_levels(cfg)
    snn_row = result.rows()[-1]
    low, high = stats.wilson(result.correct[1][-1], result.num_images, confidence)
    if result.predictions is not None:
        from rmp_cli.commands.grid import axis_values
        from rmp_cli.report.results import point_key

        # Before convert.json, which marks the convert finished.
        predictions.upsert_point(
            run_path / predictions.PREDICTIONS_FILE,
            point_key(axis_values(cfg)),
            [timesteps],
            reference.index.numpy(),
            reference.label.numpy(),
            result.predictions.numpy(),
            reference.predicted.numpy(),
        )
        versus = stats.ann_columns(
            result.predictions.numpy(), reference.predicted.numpy(), reference.label.numpy()
        )[-1]
    else:
        versus = {"agreement": None, "p_vs_ann": None}
    costs = EnergyCosts.from_config(cfg.get("energy"))
    ann_macs = ann_macs_per_image(p.ann, p.data.input_shape)
    report = {
        "ann_accuracy": ann["acc"],
        "ann_top5": ann["top5"] if p.data.num_classes > 10 else None,
        "ann_accuracy_before_avg": before["acc"] if before is not None else None,
        "snn_accuracy": snn_row["accuracy"],
        "snn_top5": snn_row.get("top5"),
        "timesteps": timesteps,
        "reset": str(cfg.snn.reset),
        "balance": str(cfg.balance.method),
        "scale": float(cfg.balance.scale),
        "v_init": float(cfg.snn.v_init),
        "encoding": str(cfg.snn.encoding),
        "maxpool": str(cfg.snn.get("maxpool", "gate")),
        "neuron": neuron_label(cfg.snn),
        "presteps": result.presteps,  # run before the counted T: latency paid is presteps + T
        "spikes_per_image": snn_row["spikes_per_image"],
        "synops_per_image": snn_row["synops_per_image"],
        "analog_macs_per_image": snn_row["analog_macs_per_image"],
        "ann_macs_per_image": ann_macs,
        "snn_energy_uj": costs.snn_pj(snn_row["synops_per_image"], snn_row["analog_macs_per_image"])
        / 1e6,
        "ann_energy_uj": costs.ann_pj(ann_macs) / 1e6,
        "energy_ratio": costs.ratio(
            snn_row["synops_per_image"], snn_row["analog_macs_per_image"], ann_macs
        ),
        "energy_costs_pj": {"ac": costs.ac_pj, "mac": costs.mac_pj},
        "num_images": result.num_images,
        "snn_correct": result.correct[1][-1],
        "snn_ci_low": low,
        "snn_ci_high": high,
        "confidence": confidence,
        "agreement": versus["agreement"],
        "p_vs_ann": versus["p_vs_ann"],
        "balance_seconds": round(balance_seconds, 3),
        "simulate_seconds": round(result.seconds, 3),
        "ckpt": str(p.checkpoint["path"]),
    }
    if p.data.test_note:
        report["test_set"] = p.data.test_note
    if result.layers is not None:
        _write_layers(cfg, run_path, result.layers.rows())
    atomic_write_text(run_path / REPORT, json.dumps(report, indent=2) + "\n")
    log_convert(tracking or Tracking(), cfg, report)
    log.info(
        "converted %s: %d neuron layers, balance=%s in %.1fs, simulation %.1fs",
        describe(cfg.model),
        len(net.neuron_names),
        cfg.balance.method,
        balance_seconds,
        result.seconds,
    )
    click.echo(format_table(report))
    return run_path


def _write_layers(cfg: DictConfig, run_path: Path, rows: list[dict]) -> None:
    """layers.csv and layers.png: per-layer diagnostics at snn.timesteps."""
    from rmp_cli.commands.grid import point_labels
    from rmp_cli.report.layer_plot import STEM, draw_layers

    table = layer_report.layer_table(point_labels(cfg), rows)
    write_csv(run_path / layer_report.LAYERS_FILE, table)
    draw_layers(table, run_path / STEM)


def latency(r: dict) -> str:
    """T, or K+T with pre-steps."""
    k = r.get("presteps") or 0
    return f"{k}+{r['timesteps']}" if k else str(r["timesteps"])


def format_table(r: dict) -> str:
    gap = (r["ann_accuracy"] - r["snn_accuracy"]) * 100
    before = r.get("ann_accuracy_before_avg")
    lines = [f"{'':<28}{'accuracy':>10}"]
    if before is not None:  # snn.maxpool=avg: the ANN as trained, then as converted
        lines += [
            f"{'ANN as trained (max-pool)':<28}{before * 100:>9.2f}%",
            f"{'ANN with avg pooling':<28}{r['ann_accuracy'] * 100:>9.2f}%",
        ]
    else:
        lines.append(f"{'ANN':<28}{r['ann_accuracy'] * 100:>9.2f}%")
    lines += [
        f"{'SNN ' + r['reset'] + ' reset, T=' + latency(r):<28}{r['snn_accuracy'] * 100:>9.2f}%",
        f"{'loss vs ANN':<28}{gap:>9.2f} pt",
        *(
            [
                f"{'SNN ' + format(r['confidence'], '.0%') + ' interval':<28}"
                f"[{r['snn_ci_low'] * 100:.2f}, {r['snn_ci_high'] * 100:.2f}]% on "
                f"{r['num_images']} images",
                f"{'agreement with ANN':<28}{r['agreement'] * 100:>9.2f}%  "
                f"(exact McNemar p={r['p_vs_ann']:.3g})",
            ]
            if r.get("snn_ci_low") is not None and r.get("agreement") is not None
            else []
        ),
        f"balance={r['balance']} scale={r['scale']} v_init={r['v_init']} encoding={r['encoding']}",
        f"spikes/image {r['spikes_per_image']:.4g}  synops/image {r['synops_per_image']:.4g}",
        f"energy/image SNN {r['snn_energy_uj']:.4g} uJ vs ANN {r['ann_energy_uj']:.4g} uJ "
        f"({r['energy_ratio']:.3g}x; AC {r['energy_costs_pj']['ac']:g} pJ, "
        f"MAC {r['energy_costs_pj']['mac']:g} pJ)",
    ]
    return "\n".join(lines)
