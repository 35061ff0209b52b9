"""Where a network comes from: rmp's registry, torchvision, or a user's factory (`model.name`).

`build_from_config(model_cfg, ...)` is the one entry point for training, conversion and
checkpoint loading; every source returns a plain nn.Module that knows nothing of spikes.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from rmp_cli.errors import RmpError
from rmp_cli.models.custom_source import build_custom
from rmp_cli.models.registry import create_model
from rmp_cli.models.torchvision_source import build_torchvision, max_to_avg_pooling

# The registry's knobs are create_model's keyword arguments, so a new knob needs no edit here.
REGISTRY_KEYS = tuple(
    p
    for p in inspect.signature(create_model).parameters
    if p not in {"name", "num_classes", "input_shape"}
)
EXTERNAL_POOLS = (None, "avg")  # external nets: keep their pooling, or max -> avg (fine-tuning)


def _plain(model_cfg: Any) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(model_cfg):
            return OmegaConf.to_container(model_cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(model_cfg)


def build_from_config(
    model_cfg: Mapping[str, Any], num_classes: int, input_shape: tuple[int, int, int]
) -> nn.Module:
    cfg = _plain(model_cfg)
    name = cfg.get("name")
    shape = tuple(int(d) for d in input_shape)
    if name == "torchvision":
        model = build_torchvision(
            str(cfg.get("arch") or ""),
            num_classes=num_classes,
            input_shape=shape,  # type: ignore[arg-type]
            weights=cfg.get("weights"),
            small_input=bool(cfg.get("small_input", False)),
        )
    elif name == "custom":
        model = build_custom(cfg, num_classes=num_classes, input_shape=shape)  # type: ignore[arg-type]
    else:
        knobs = {k: cfg[k] for k in REGISTRY_KEYS if k in cfg}
        return create_model(str(name), num_classes=num_classes, input_shape=shape, **knobs)  # type: ignore[arg-type]
    pool = cfg.get("pool")
    if pool not in EXTERNAL_POOLS:
        raise RmpError(
            f"model.pool={pool} is not valid for model={name}; use null (the net's own pooling) "
            "or avg (max-pooling replaced by average pooling)"
        )
    if pool == "avg":
        max_to_avg_pooling(model)
    return model


def describe(model_cfg: Mapping[str, Any]) -> str:
    """A short model label for tables and logs: 'resnet20', 'torchvision.resnet18', 'pkg.f'."""
    name = str(model_cfg.get("name"))
    if name == "torchvision":
        return f"torchvision.{model_cfg.get('arch')}"
    if name == "custom":
        return str(model_cfg.get("_target_"))
    return name
