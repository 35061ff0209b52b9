"""ANN checkpoints: weights + the composed config that made them, validated on load."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from rmp_cli.config import from_container, to_container
from rmp_cli.errors import RmpError, parsing, reason_of
from rmp_cli.models.sources import build_from_config
from rmp_cli.runs.atomic import atomic_torch_save

FORMAT = "rmp-ann-v1"
# model.* keys that only say how to initialise a net, not which net it is.
INIT_ONLY_KEYS = ("weights",)
MAX_INPUT_ELEMENTS = 3 * 4096 * 4096  # a bound on an image's values, far beyond any dataset's
EXPECTED = {
    "checkpoint": "expected a model.pt or last.pt written by `rmp train`",
    "weights file": "expected a state_dict saved with torch.save",
}


def build_model(cfg: DictConfig, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return build_from_config(cfg.model, num_classes, tuple(input_shape))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    return atomic_torch_save(path, {"format": FORMAT, **payload})


def model_from_last(last: dict[str, Any]) -> dict[str, Any]:
    """model.pt's payload from the last.pt of a run whose every epoch is done: the same weights,
    config and scores, without the optimizer state (for a run stopped before writing model.pt)."""
    config = last["config"]
    dropped = {"format", "kind", "optimizer", "metrics", "path"}
    return {
        **{k: v for k, v in last.items() if k not in dropped},
        "config": to_container(config) if isinstance(config, DictConfig) else config,
        "kind": "model",
    }


def _torch_load(path: Path, what: str) -> Any:
    """torch.load with weights_only=True; any failure to parse is one line naming the file."""
    if not path.is_file():
        raise RmpError(f"{what} not found: {path}")
    expected = EXPECTED.get(what, "")
    with parsing(path, "corrupt or not a torch file", expected, label=what):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_payload(data: Any, path: Path, kind: str) -> None:
    """What the rest of rmp reads from a checkpoint is there, of its type and of a size the
    weights agree with."""
    expected = f"expected a {kind}.pt written by `rmp train`"
    if not isinstance(data, dict) or data.get("format") != FORMAT or "state_dict" not in data:
        raise RmpError(f"{path} is not an rmp checkpoint ({expected})")
    state, config = data["state_dict"], data.get("config")
    classes, shape = data.get("num_classes"), data.get("input_shape")
    problems = []
    if not _is_state_dict(state):
        problems.append("its state_dict is not parameter names mapped to tensors")
    if not isinstance(config, dict) or not all(
        isinstance(config.get(g), dict) for g in ("model", "dataset")
    ):
        problems.append("its config is not a mapping with model and dataset groups")
    if not _count(classes):
        problems.append("num_classes is not a positive integer")
    elif _is_state_dict(state) and not any(classes in t.shape for t in state.values()):
        # The classifier's weights have a dimension of num_classes: a damaged count is refused
        # here, before a net with 2**40 outputs is allocated to find out.
        problems.append(f"no weight has a dimension of num_classes={classes}")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(map(_count, shape)):
        problems.append("input_shape is not three positive integers")
    elif math.prod(shape) > MAX_INPUT_ELEMENTS:
        problems.append(f"input_shape {list(shape)} is larger than any image rmp reads")
    if (data.get("kind") == "last" or kind == "last") and not isinstance(data.get("epoch"), int):
        problems.append("its epoch is not an integer")
    if problems:
        raise RmpError(f"{path} is a damaged rmp checkpoint: {'; '.join(problems)} ({expected})")


def load_checkpoint(path: str | Path | None, *, kind: str = "model") -> dict[str, Any]:
    """Load and validate; every failure is one clear RmpError line."""
    if not path:
        raise RmpError(f"no checkpoint given; pass ckpt=PATH to a {kind}.pt written by `rmp train`")
    path = Path(str(path))
    data = _torch_load(path, "checkpoint")
    _check_payload(data, path, kind)
    with parsing(path, "a damaged rmp checkpoint: its config cannot be read", label="checkpoint"):
        data["config"] = from_container(data["config"])
    data["path"] = path
    return data


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights trained elsewhere: a plain state_dict, a dict holding one under `state_dict` or
    `model`, or an rmp checkpoint. DistributedDataParallel's `module.` prefix is dropped."""
    path = Path(str(path))
    data = _torch_load(path, "weights file")
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not _is_state_dict(data):
        raise RmpError(
            f"weights file {path} holds no state_dict (expected parameter names mapped to "
            "tensors, or a dict with one under 'state_dict' or 'model')"
        )
    if all(k.startswith("module.") for k in data):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model` strictly; mismatches are one line listing the first few."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    # torch would cast these with a warning (a complex weight loses its imaginary part)
    kinds = [
        f"{k} {state[k].dtype}"
        for k, v in own.items()
        if k in state
        and isinstance(state[k], torch.Tensor)
        and (state[k].is_complex() or (v.is_floating_point() and state[k].dtype == torch.bool))
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape", shapes),
        ("dtype", kinds),
    ):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise RmpError(f"weights {source} do not fit the model: {'; '.join(problems)}")
    try:  # names, shapes and kinds fit; what is left to refuse is the file's
        model.load_state_dict(state)
    except Exception as exc:
        raise RmpError(f"weights {source} do not fit the model ({reason_of(exc)})") from None


def check_same_model(
    ckpt_cfg: DictConfig, cfg: DictConfig, overrides: list[str], path: Path
) -> None:
    """Refuse a checkpoint whose architecture or dataset differs from what the overrides ask for."""
    asked = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    # Only what defines the trained net counts: dataset.subset=... asks nothing of the checkpoint.
    checked = {("dataset", "name")} if asked & {"dataset", "dataset.name"} else set()
    if "model" in asked:
        checked |= {("model", key) for key in set(cfg.model) | set(ckpt_cfg.model)}
    checked |= {("model", a.split(".", 1)[1]) for a in asked if a.startswith("model.")}
    # The dataset and the architecture's name first: the most telling difference is named.
    for group, key in sorted(checked, key=lambda gk: (gk[0] != "dataset", gk[1] != "name", gk)):
        if group == "model" and key in INIT_ONLY_KEYS:
            continue
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
    load_weights(model, data["state_dict"], f"in checkpoint {data['path']}")
    return model.eval()


def config_payload(cfg: DictConfig) -> dict[str, Any]:
    return to_container(cfg)
