"""Compose `conf/` with Hydra's compose API and turn every composition error into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmp_cli.errors import RmpError

GROUPS = ("dataset", "model", "train", "snn", "balance", "sweep", "report", "logger", "experiment")


def config_dir() -> Path:
    """Where conf/ lives: $RMP_CONFIG_DIR, the source checkout, or the installed data files."""
    candidates = []
    if env := os.environ.get("RMP_CONFIG_DIR"):
        candidates.append(Path(env))
    candidates.append(Path(__file__).resolve().parents[2] / "conf")  # src layout / editable install
    candidates.append(Path(sys.prefix) / "share" / "rmp" / "conf")  # wheel install (data_files)
    for path in candidates:
        if (path / "config.yaml").is_file():
            return path
    raise RmpError(
        "cannot find rmp's conf/ directory; set RMP_CONFIG_DIR to the folder holding config.yaml"
    )


def group_choices(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _check_group_choices(overrides: Sequence[str]) -> None:
    """Fail early with the valid choices listed (Hydra's own message spans many lines)."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value in ("", "null"):
            continue
        choices = group_choices(key)
        if value not in choices:
            raise RmpError(f"unknown {key} '{value}'; choose one of: {', '.join(choices)}")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose config.yaml with overrides (no run dir, no logging: callers own those).

    `model=auto` (the default) becomes the dataset's `default_model`: decided on a first
    composition without the model.* overrides (they may name keys only that model has)."""
    overrides = list(overrides)
    _check_group_choices(overrides)
    probe = _compose([o for o in overrides if not _is_model_key(o)])
    if probe.model.get("name") != "auto":
        return _compose(overrides)
    default = probe.dataset.get("default_model")
    if not default:
        raise RmpError(
            f"dataset {probe.dataset.get('name')} names no default_model; choose one with model="
        )
    _check_group_choices([f"model={default}"])
    return _compose([o for o in overrides if o != "model=auto"] + [f"model={default}"])


def resolve_auto_model(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """In place: a config composed by Hydra itself (python -m rmp_cli.app) still says
    model=auto; give it the model group compose_config would have chosen."""
    if cfg.model.get("name") != "auto":
        return
    plain = [o for o in overrides if not o.lstrip("+~").startswith(("task=", "hydra"))]
    cfg.model = compose_config(plain).model


def _is_model_key(override: str) -> bool:
    return override.lstrip("+~").startswith("model.")


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise RmpError(f"invalid overrides {' '.join(overrides)}: {_first_line(exc)}") from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if "\n" in text:
        # Hydra's messages put the useful part first and a help paragraph after.
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return "; ".join(lines[:2])
    return text


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# Top-level keys that say where and how fast a run goes (or where it is tracked), not what it
# computes.
PLACEMENT_KEYS = ("resume", "run_dir", "device", "threads", "logger")


def same_settings(a: DictConfig | dict, b: DictConfig | dict) -> bool:
    """Whether two composed configs describe the same run, apart from PLACEMENT_KEYS."""
    plain = [dict(to_container(c)) if isinstance(c, DictConfig) else dict(c) for c in (a, b)]
    for config in plain:
        for key in PLACEMENT_KEYS:
            config.pop(key, None)
    return plain[0] == plain[1]


def from_container(data: dict) -> DictConfig:
    cfg = OmegaConf.create(data)
    OmegaConf.set_struct(cfg, False)
    return cfg  # type: ignore[return-value]
