"""Model registry (timm / torchvision style): `@register_model` builders, `create_model(name)`.

A builder is `fn(*, num_classes, input_shape, options) -> nn.Module`, registered under its
function name; `create_model` validates every knob first, so builders only check whether the
architecture can take the input shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from torch import nn

from rmp_cli.errors import RmpError
from rmp_cli.models.blocks import ModelOptions

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Builder) -> Builder:
    """Decorator: register `fn` under `fn.__name__` (the name used by model=... and create_model)."""
    name = fn.__name__
    if name in MODELS and MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    bias: bool = False,
    batch_norm: bool = False,
    pool: str = "avg",
    dropout: float = 0.0,
    activation: str = "relu",
    act_levels: int = 8,
    width: float | int | None = None,
    classifier_width: int | None = None,
) -> nn.Module:
    """Build model `name` for `input_shape` = (channels, height, width) images."""
    builder = MODELS.get(name)
    if builder is None:
        raise RmpError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    options = ModelOptions(
        bias=bias,
        batch_norm=batch_norm,
        pool=pool,
        dropout=dropout,
        activation=activation,
        act_levels=act_levels,
        width=width,
        classifier_width=classifier_width,
    )
    return builder(
        num_classes=_check_num_classes(num_classes),
        input_shape=_check_input_shape(input_shape),
        options=options,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_num_classes(num_classes: object) -> int:
    if not _is_int(num_classes) or num_classes < 1:
        raise RmpError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_input_shape(shape: object) -> tuple[int, int, int]:
    dims = tuple(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else ()
    if len(dims) != 3 or not all(_is_int(d) and d > 0 for d in dims):
        raise RmpError(
            f"input_shape must be (channels, height, width) positive integers, got {shape!r}"
        )
    return (int(dims[0]), int(dims[1]), int(dims[2]))
