"""User-defined models: `model=custom model._target_=package.module.factory +model.depth=4`.

The factory (a function or an nn.Module class) is built with Hydra's `instantiate`; every model.*
key except the reserved ones is a keyword argument, and rmp adds `num_classes` and `input_shape`
(C, H, W) when the factory accepts them. The module must be importable from the current directory
or PYTHONPATH.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

from torch import nn

from rmp_cli.errors import RmpError

# model.* keys that configure rmp, not the factory.
RESERVED = ("name", "_target_", "pool")


def factory_kwargs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model_cfg.items() if k not in RESERVED}


def _locate(target: str) -> Any:
    from hydra.utils import get_object

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `rmp` as a console script does not put it there
    try:
        return get_object(target)
    except Exception as exc:  # Hydra wraps import errors in several types
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise RmpError(
            f"model._target_ '{target}' cannot be imported ({reason}); it must name a function "
            "or class importable from the current directory or PYTHONPATH"
        ) from None


def _accepts(factory: Any, name: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_custom(
    model_cfg: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, int, int]
) -> nn.Module:
    from hydra.utils import instantiate

    target = model_cfg.get("_target_")
    if not target or not isinstance(target, str):
        raise RmpError(
            "model=custom needs model._target_=package.module.factory (a function or nn.Module "
            "class returning the network)"
        )
    factory = _locate(target)
    if not callable(factory):
        raise RmpError(f"model._target_ '{target}' is not callable")
    extra: dict[str, Any] = {}
    if _accepts(factory, "num_classes"):
        extra["num_classes"] = num_classes
    if _accepts(factory, "input_shape"):
        extra["input_shape"] = tuple(input_shape)
    try:
        model = instantiate({"_target_": target, **factory_kwargs(model_cfg)}, **extra)
    except Exception as exc:  # the factory's own errors, wrapped by Hydra
        cause = exc.__cause__ or exc
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise RmpError(
            f"model factory '{target}' raised {type(cause).__name__}"
            + (f": {reason[:200]}" if reason else "")
        ) from None
    if not isinstance(model, nn.Module):
        raise RmpError(
            f"model factory '{target}' returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
