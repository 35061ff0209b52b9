"""`rmp sweep`: accuracy vs time-steps over a grid, one simulation per grid point, resumable."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from rmp_cli import distributed as dist
from rmp_cli import layer_report, pipeline, stopping
from rmp_cli.atomic import atomic_write_text
from rmp_cli.checkpoint import load_checkpoint
from rmp_cli.config import compose_config
from rmp_cli.energy import EnergyCosts, ann_macs_per_image
from rmp_cli.errors import FileFault, RmpError
from rmp_cli.models.sources import describe
from rmp_cli.ranks import discard_if_failed, on_main, torchrun_session
from rmp_cli.results import AXES, COLUMNS, point_key, read_results, write_csv, write_summary
from rmp_cli.rundir import RunDir, create_run_dir, log, make_dir

# Override keys whose comma lists make a grid; anything else with a comma is refused.
GRID_AXES = ("snn.reset", "balance", "balance.scale", "snn.v_init", "snn.encoding")
# sweep.variants may set these config groups (model.* selects another ANN, trained per variant).
VARIANT_GROUPS = ("model", "balance", "snn")
MANIFEST = "sweep.json"
MAX_TIMESTEPS = 1 << 20
_POW2_RANGE = re.compile(r"^2\^(\d+)\.\.2\^(\d+)$")


def parse_timesteps(text: str) -> list[int]:
    """'32,64,128' or '2^5..2^11' (or both, comma-joined) -> sorted ints; bad values are refused."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise RmpError("no time-steps given; e.g. --timesteps 32,64,128 or --timesteps 2^5..2^11")
    values: list[int] = []
    for item in items:
        if match := _POW2_RANGE.match(item):
            lo, hi = int(match[1]), int(match[2])
            if lo > hi or hi > 20:
                raise RmpError(f"invalid time-step range '{item}'; need 2^a..2^b with a <= b <= 20")
            values += [2**k for k in range(lo, hi + 1)]
        elif re.fullmatch(r"[+-]?\d+", item):
            values.append(int(item))
        else:
            raise RmpError(
                f"invalid time-step '{item}'; use integers (32,64,128) or a power-of-two "
                "range (2^5..2^11)"
            )
    return validate_timesteps(values)


def validate_timesteps(values: Sequence[Any]) -> list[int]:
    if len(values) == 0:
        raise RmpError("no time-steps given; e.g. --timesteps 32,64,128")
    ints = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise RmpError(f"invalid time-step {v!r}; time-steps are positive integers")
        if v < 1:
            raise RmpError(f"time-steps must be >= 1, got {v}")
        if v > MAX_TIMESTEPS:
            raise RmpError(f"time-step {v} is beyond the supported maximum {MAX_TIMESTEPS}")
        ints.append(v)
    duplicates = sorted({v for v in ints if ints.count(v) > 1})
    if duplicates:
        raise RmpError(
            f"duplicate time-steps {', '.join(map(str, duplicates))}; list each value once"
        )
    return sorted(ints)


def _top_level_comma(value: str) -> bool:
    depth = 0
    for ch in value:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            return True
    return False


def split_grid(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate grid axes (comma lists on GRID_AXES) from ordinary overrides."""
    base: list[str] = []
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and _top_level_comma(value):
            if key not in GRID_AXES:
                raise RmpError(
                    f"'{override}': comma lists make a grid only on {', '.join(GRID_AXES)}; "
                    f"give {key} a single value"
                )
            values = [v.strip() for v in value.split(",")]
            if any(v == "" for v in values) or len(set(values)) != len(values):
                raise RmpError(f"'{override}': empty or repeated grid values")
            axes[key] = values
        else:
            base.append(override)
    return base, axes


def config_grid(entries: Sequence[str]) -> dict[str, list[str]]:
    """sweep.grid entries like 'snn.reset=hard,soft' (a single value is a one-point axis)."""
    axes = {}
    for entry in entries:
        key, sep, value = str(entry).partition("=")
        if not sep or key not in GRID_AXES:
            raise RmpError(
                f"sweep.grid entry '{entry}' must be AXIS=V1,V2 with AXIS in {', '.join(GRID_AXES)}"
            )
        axes[key] = [v.strip() for v in value.split(",")]
    return axes


def config_variants(entries: Any) -> list[list[str]]:
    """sweep.variants: a list of override lists, each crossed with the grid (e.g. the trained
    activations, which need their own ANN and balance=trained). Empty = one plain variant."""
    if not entries:
        return [[]]
    variants = []
    for entry in entries:
        overrides = [str(entry)] if isinstance(entry, str) else [str(o) for o in entry]
        for override in overrides:
            key, sep, value = override.partition("=")
            if not sep or _top_level_comma(value) or key.split(".")[0] not in VARIANT_GROUPS:
                raise RmpError(
                    f"sweep.variants entry '{override}' must be KEY=VALUE (one value) with KEY "
                    f"under {', '.join(VARIANT_GROUPS)}"
                )
        variants.append(overrides)
    return variants


def grid_points(
    base: list[str], axes: dict[str, list[str]], variants: Sequence[list[str]] = ((),)
) -> list[list[str]]:
    keys = list(axes)
    combos = [
        [f"{k}={v}" for k, v in zip(keys, combo, strict=True)]
        for combo in itertools.product(*(axes[k] for k in keys))
    ] or [[]]
    return [base + list(variant) + combo for variant in variants for combo in combos]


def axis_values(cfg: DictConfig) -> dict[str, Any]:
    return {
        "reset": str(cfg.snn.reset),
        "balance": str(cfg.balance.method),
        "scale": float(cfg.balance.scale),
        "v_init": float(cfg.snn.v_init),
        "encoding": str(cfg.snn.encoding),
        "activation": str(cfg.model.get("activation", "relu")),
    }


def point_labels(cfg: DictConfig) -> dict[str, Any]:
    """What names a grid point in results.csv and layers.csv: dataset, model and the axes."""
    return {
        "dataset": str(cfg.dataset.name),
        "model": describe(cfg.model),
        **axis_values(cfg),
    }


# --- run dir, manifest and lock ------------------------------------------------------------


def _manifest(cfg: DictConfig, timesteps: list[int], keys: list[str]) -> dict[str, Any]:
    base = OmegaConf.to_container(cfg, resolve=True)
    for volatile in ("run_dir", "device", "threads"):
        base.pop(volatile, None)  # type: ignore[union-attr]
    return {"timesteps": timesteps, "grid": keys, "config": base}


def _open_run(cfg: DictConfig, overrides: list[str], manifest: dict[str, Any]) -> RunDir:
    explicit = cfg.get("run_dir")
    if explicit and (Path(str(explicit)) / MANIFEST).is_file():
        old = read_json(Path(str(explicit)) / MANIFEST)
        if old != manifest:
            raise RmpError(
                f"run dir {explicit} holds a sweep with other settings; resume it with the "
                "same overrides and time-steps, or choose another run_dir="
            )
        run = create_run_dir("sweep", cfg, overrides, reuse=True)
        log.info("resuming the sweep in %s", run.path)
        return run
    run = create_run_dir("sweep", cfg, overrides)
    atomic_write_text(run / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return run


def read_json(path: Path) -> Any:
    """A JSON file this sweep wrote (atomically); a read fault is one clear line."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise FileFault("cannot read", path, exc) from None
    except ValueError:
        raise RmpError(f"{path} is not valid JSON; was it edited by hand?") from None


class RunLock:
    """Refuse a second live process in the same run dir (a stale lock from a killed run is taken over)."""

    def __init__(self, path: Path) -> None:
        self.path = path / ".lock"

    def __enter__(self) -> RunLock:
        for _ in range(2):
            try:
                self._create()
                return self
            except FileExistsError:
                try:
                    pid = int(self.path.read_text() or 0)
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                except PermissionError:
                    pass
                raise RmpError(
                    f"another rmp process (pid {pid}) is using {self.path.parent}"
                ) from None
            except OSError as exc:
                raise FileFault("cannot write", self.path, exc) from None
        raise RmpError(f"cannot lock {self.path.parent}")

    def _create(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            os.write(fd, str(os.getpid()).encode())
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):  # a stale lock is taken over by the next run
            self.path.unlink(missing_ok=True)


# --- the sweep ----------------------------------------------------------------------------


def _model_groups(cfg: DictConfig, point_cfgs: list[DictConfig]) -> dict[str, list[int]]:
    """Grid points by the ANN they need: 'ann' for the base model, 'ann-<activation>[-L<levels>]'
    for a variant's other model (each trained into its own folder of the run dir)."""
    groups: dict[str, list[int]] = {}
    models: dict[str, str] = {}
    base_model = OmegaConf.to_yaml(cfg.model)
    for index, point_cfg in enumerate(point_cfgs):
        model = OmegaConf.to_yaml(point_cfg.model)
        if model == base_model:
            name = "ann"
        else:
            m = point_cfg.model
            name = f"ann-{m.activation}" + (f"-L{m.act_levels}" if m.activation == "qcfs" else "")
        if models.setdefault(name, model) != model:
            raise RmpError(f"sweep.variants give two different models the name {name}")
        groups.setdefault(name, []).append(index)
    given = "ckpt=" if cfg.get("ckpt") else "weights=" if cfg.get("weights") else None
    if given and set(groups) != {"ann"}:
        raise RmpError(
            f"sweep.variants change the model, so each variant trains its own ANN; drop {given} "
            "or the model.* overrides of sweep.variants"
        )
    return groups


def _ensure_checkpoint(cfg: DictConfig, run: RunDir, name: str = "ann") -> str | None:
    """Reuse ckpt= (or None for weights=), else train the ANN into RUN/<name> (resuming a
    half-finished training)."""
    if cfg.get("ckpt"):
        return str(cfg.ckpt)
    if cfg.get("weights"):
        return None
    from rmp_cli.train import train

    ann_dir = run.path / name
    if (ann_dir / "model.pt").is_file():
        log.info("using the ANN trained earlier in this sweep: %s", ann_dir / "model.pt")
        return str(ann_dir / "model.pt")
    make_dir(ann_dir, exist_ok=True)
    state = (
        load_checkpoint(ann_dir / "last.pt", kind="last")
        if (ann_dir / "last.pt").is_file()
        else None
    )
    log.info("no ckpt= given: training the ANN first (%s on %s)", cfg.model.name, cfg.dataset.name)
    train(cfg, RunDir(path=ann_dir, created=True), resume_state=state)
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
    # The config's grid (e.g. a preset's reset=hard,soft) unless the command line fixes that axis.
    config_axes = config_grid(list(base_cfg.sweep.get("grid") or []))
    fixed = {o.partition("=")[0] for o in base}
    axes = {**{k: v for k, v in config_axes.items() if k not in fixed}, **cli_axes}
    # Compose and validate every grid point before anything is written.
    variants = config_variants(base_cfg.sweep.get("variants"))
    point_cfgs = [compose_config(p) for p in grid_points(base, axes, variants)]
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
    keys = [point_key(axis_values(c)) for c in point_cfgs]
    if len(set(keys)) != len(keys):
        raise RmpError("the grid repeats a point; check the comma lists")
    # Under torchrun every rank runs the grid on its shard of the test set; rank 0 writes.
    with torchrun_session(point_cfgs):
        manifest = _manifest(cfg, steps, keys)
        run = on_main(lambda: _open_run(cfg, overrides, manifest))
        # Interrupted, the same command with run_dir=RUN computes only the missing points.
        stopping.run_opened(run.path, lambda path: stopping.with_run_dir(stopping.typed(), path))
        with discard_if_failed(run), RunLock(run.path) if dist.is_main() else nullcontext():
            sweep_points(cfg, point_cfgs, keys, steps, overrides, run)
    return run.path


def sweep_points(
    cfg: DictConfig,
    point_cfgs: list[DictConfig],
    keys: list[str],
    steps: list[int],
    overrides: list[str],
    run: RunDir,
) -> None:
    results_path = run / "results.csv"
    done = read_results(results_path) if results_path.is_file() else pd.DataFrame(columns=COLUMNS)
    finished = dist.broadcast_object({point_key(r) for _, r in done.iterrows()})
    if dist.is_main():
        layer_report.keep_points(run / layer_report.LAYERS_FILE, finished)
    for name, indices in _model_groups(cfg, point_cfgs).items():
        todo = [i for i in indices if keys[i] not in finished]
        for i in indices:
            if keys[i] in finished:
                log.info("[%d/%d] %s: already done", i + 1, len(keys), keys[i])
        if todo:
            done = _sweep_model(name, point_cfgs, keys, todo, steps, overrides, run, done)
    if dist.is_main():
        _finish(run, done)


def _sweep_model(
    name: str,
    point_cfgs: list[DictConfig],
    keys: list[str],
    todo: list[int],
    steps: list[int],
    overrides: list[str],
    run: RunDir,
    done: pd.DataFrame,
) -> pd.DataFrame:
    """The grid points that share one ANN: train (or reuse) it, then balance and simulate each."""
    results_path = run / "results.csv"
    ckpt = _ensure_checkpoint(point_cfgs[todo[0]], run, name)
    prepared = pipeline.prepare(point_cfgs[todo[0]], overrides, ckpt)
    log.info("model %s on dataset %s", describe(prepared.cfg.model), prepared.cfg.dataset.name)
    ann_acc = _ann_accuracy(prepared, run, "ann.json" if name == "ann" else f"{name}.json")
    ann_macs = ann_macs_per_image(prepared.ann, prepared.data.input_shape)
    nets: dict[bool, Any] = {}
    thresholds_cache: dict[tuple, list] = {}
    for position in todo:
        point_cfg, key = point_cfgs[position], keys[position]
        index = position + 1  # 1-based, for the log
        pipeline.adopt_checkpoint_config(point_cfg, prepared.checkpoint["config"], overrides)
        point = pipeline.Prepared(
            cfg=point_cfg,
            data=prepared.data,
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
            }
            for r in result.rows()
        ]
        done = (
            pd.concat([done, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
            if len(done)
            else pd.DataFrame(rows, columns=COLUMNS)
        )
        if dist.is_main():
            if result.layers is not None:  # before results.csv, which marks the point done
                _append_layers(run, point_cfg, result.layers.rows())
            write_csv(results_path, done)  # atomic: an interrupted sweep keeps every point done
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


def _ann_accuracy(p: pipeline.Prepared, run: RunDir, filename: str = "ann.json") -> float:
    """The ANN's test accuracy, evaluated once and kept in the run dir. Under torchrun only
    rank 0 writes rows, so the other ranks skip the full-test-set pass (NaN)."""
    if not dist.is_main():
        return math.nan
    path = run / filename
    if path.is_file():
        return float(read_json(path)["accuracy"])
    metrics = pipeline.ann_metrics(p)
    report = {"accuracy": metrics["acc"], "top5": metrics["top5"], "loss": metrics["loss"]}
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
    return float(metrics["acc"])


def _append_layers(run: RunDir, point_cfg: DictConfig, rows: list[dict[str, Any]]) -> None:
    table = layer_report.layer_table(point_labels(point_cfg), rows)
    layer_report.append_layers(run / layer_report.LAYERS_FILE, table)


def _finish(run: RunDir, df: pd.DataFrame) -> None:
    from rmp_cli.layer_plot import STEM as LAYERS_STEM
    from rmp_cli.layer_plot import draw_layers
    from rmp_cli.plot import STEM, draw

    sections = []
    layers_path = run / layer_report.LAYERS_FILE
    if layers_path.is_file():
        layers = layer_report.read_layers(layers_path)
        if len(layers):
            sections.append(layer_report.bottleneck_markdown(layer_report.bottlenecks(df, layers)))
            draw_layers(layers, run.path / LAYERS_STEM)
    lines = write_summary(run.path, df, sections)
    draw([(run.path.name, df)], run.path / STEM)
    for line in lines:
        log.info(line)
    print((run / "summary.md").read_text())


__all__ = ["AXES", "GRID_AXES", "parse_timesteps", "run_sweep_command", "split_grid"]
