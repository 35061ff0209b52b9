"""The sweep's grid: time-step lists, comma-list grid axes, sweep.variants, and the labels that
name a grid point in results.csv and layers.csv."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from rmp_cli.errors import RmpError
from rmp_cli.models.sources import describe

# Override keys whose comma lists make a grid; anything else with a comma is refused.
GRID_AXES = ("snn.reset", "balance", "balance.scale", "snn.v_init", "snn.encoding", "seed")
# sweep.variants may set these config groups (model.* selects another ANN, trained per variant).
VARIANT_GROUPS = ("model", "balance", "snn")
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


def sweep_grid(
    base_cfg: DictConfig, base: list[str], cli_axes: dict[str, list[str]]
) -> tuple[dict[str, list[str]], list[list[str]]]:
    """The sweep's axes and the overrides of each grid point: the config's grid (e.g. a preset's
    reset=hard,soft) unless the command line fixes that axis, crossed with sweep.variants."""
    config_axes = config_grid(list(base_cfg.sweep.get("grid") or []))
    fixed = {o.partition("=")[0] for o in base}
    axes = {**{k: v for k, v in config_axes.items() if k not in fixed}, **cli_axes}
    variants = config_variants(base_cfg.sweep.get("variants"))
    return axes, grid_points(base, axes, variants)


def neuron_label(snn: DictConfig) -> str:
    """The spike options as one results.csv value: if (plain), signed, burst2, signed+burst2,
    each with +cos or +srp when pre-steps calibrate it."""
    max_spikes, offset = int(snn.get("max_spikes", 1)), snn.get("offset")
    parts = ["signed"] if snn.get("signed", False) else []
    parts += [f"burst{max_spikes}"] if max_spikes > 1 else []
    label = "+".join(parts) or "if"
    return f"{label}+{offset}" if offset else label


def activation_label(model: DictConfig) -> str:
    """relu, clip, or qcfs-L<levels>: nets of other quantization levels are other grid points."""
    activation = str(model.get("activation", "relu"))
    return f"qcfs-L{int(model.act_levels)}" if activation == "qcfs" else activation


def axis_values(cfg: DictConfig) -> dict[str, Any]:
    return {
        "reset": str(cfg.snn.reset),
        "balance": str(cfg.balance.method),
        "scale": float(cfg.balance.scale),
        "v_init": float(cfg.snn.v_init),
        "encoding": str(cfg.snn.encoding),
        "activation": activation_label(cfg.model),
        "neuron": neuron_label(cfg.snn),
        "presteps": int(cfg.snn.get("presteps", 0)),
        "seed": int(cfg.seed),
    }


def point_labels(cfg: DictConfig) -> dict[str, Any]:
    """What names a grid point in results.csv and layers.csv: dataset, model and the axes."""
    return {
        "dataset": str(cfg.dataset.name),
        "model": describe(cfg.model),
        **axis_values(cfg),
    }
