"""ANN checkpoints: weights + the composed config that made them, validated on load."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from rmp_cli.atomic import atomic_torch_save
from rmp_cli.config import from_container, to_container
from rmp_cli.errors import RmpError
from rmp_cli.models import create_model

FORMAT = "rmp-ann-v1"
MODEL_KEYS = (
    "name",
    "bias",
    "batch_norm",
    "pool",
    "dropout",
    "activation",
    "act_levels",
    "width",
    "classifier_width",  # vgg only; absent from older checkpoints (= the reference 4096)
)


def build_model(cfg: DictConfig, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    m = cfg.model
    knobs = {k: m[k] for k in MODEL_KEYS[1:] if k in m}
    return create_model(
        str(m.name), num_classes=num_classes, input_shape=tuple(input_shape), **knobs
    )


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    return atomic_torch_save(path, {"format": FORMAT, **payload})


def load_checkpoint(path: str | Path | None, *, kind: str = "model") -> dict[str, Any]:
    """Load and validate; every failure is one clear RmpError line."""
    if not path:
        raise RmpError(f"no checkpoint given; pass ckpt=PATH to a {kind}.pt written by `rmp train`")
    path = Path(str(path))
    if not path.is_file():
        raise RmpError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        ValueError,
        OSError,
    ) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RmpError(
            f"checkpoint {path} is corrupt or not a torch file ({reason[:120]})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "state_dict" not in data:
        raise RmpError(
            f"{path} is not an rmp checkpoint (expected a {kind}.pt written by `rmp train`)"
        )
    data["config"] = from_container(data["config"])
    data["path"] = path
    return data


def check_same_model(
    ckpt_cfg: DictConfig, cfg: DictConfig, overrides: list[str], path: Path
) -> None:
    """Refuse a checkpoint whose architecture or dataset differs from what the overrides ask for."""
    asked = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    # Only what defines the trained net counts: dataset.subset=... asks nothing of the checkpoint.
    checked = [("dataset", "name")] + [("model", key) for key in MODEL_KEYS]
    for group, key in checked:
        if group in asked or f"{group}.{key}" in asked:
            want, have = cfg[group].get(key), ckpt_cfg[group].get(key)
            if want != have:
                raise RmpError(
                    f"checkpoint {path} was trained with {group}.{key}={have}, but the overrides ask "
                    f"for {group}.{key}={want}; drop that override or use a matching checkpoint"
                )


def load_model(data: dict[str, Any]) -> nn.Module:
    """Rebuild the ANN from a loaded checkpoint (its own config decides the architecture)."""
    cfg = data["config"]
    model = build_model(cfg, int(data["num_classes"]), tuple(data["input_shape"]))
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RmpError(
            f"checkpoint {data['path']} does not fit model {cfg.model.name}: {first}"
        ) from None
    return model.eval()


def config_payload(cfg: DictConfig) -> dict[str, Any]:
    return to_container(cfg)
