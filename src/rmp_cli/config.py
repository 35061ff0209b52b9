"""Compose `conf/` with Hydra's compose API and turn every composition error into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmp_cli.errors import RmpError, reason_of

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
        if (mark := _yaml_mark(exc)) is None:
            raise RmpError(f"invalid overrides {' '.join(overrides)}: {_first_line(exc)}") from None
        raise _bad_config_file(exc, mark) from None
    except Exception as exc:  # the boundary: a config file Hydra could not read (not YAML)
        mark = _yaml_mark(exc)
        if mark is None:
            raise RmpError(
                f"cannot compose the config in {config_dir()}: {reason_of(exc)}"
            ) from None
        raise _bad_config_file(exc, mark) from None
    finally:
        GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    return _checked(cfg)


# The groups every command reads, and the one top-level key read as a number before any
# command validates its own settings.
REQUIRED_GROUPS = ("dataset", "model", "train", "snn", "balance", "sweep")


def _checked(cfg: DictConfig) -> DictConfig:
    """A composed config with the shape rmp relies on: the config files may say anything."""
    where = config_dir()
    for group in REQUIRED_GROUPS:
        if not isinstance(cfg.get(group), DictConfig):
            raise RmpError(
                f"the config composed from {where} has no {group} group (a mapping); "
                f"check {where / 'config.yaml'} and {where / group}/"
            )
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RmpError(f"seed must be an integer, got {seed!r}")
    return cfg


def _yaml_mark(exc: BaseException) -> Any:
    """Where in which file YAML's parser stopped, if the failure (or its cause) is YAML's."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if (mark := getattr(current, "problem_mark", None)) is not None:
            return mark
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _bad_config_file(exc: BaseException, mark: Any) -> RmpError:
    problem = getattr(exc, "problem", None) or reason_of(exc)
    return RmpError(
        f"config file {mark.name} is not valid YAML at line {mark.line + 1} ({problem}); "
        "fix or remove it"
    )


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
