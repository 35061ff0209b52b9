"""Layer builders shared by every architecture; they are where the conversion contract lives.

- conv -> BatchNorm adjacency inside one list/Sequential (the BN folder looks for that pair);
- a fresh activation module per use (`options.activation_module()`);
- pooling, dropout and biases decided by the user's knobs in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from torch import nn

from rmp_cli.errors import RmpError
from rmp_cli.models.activations import check_activation, check_levels, make_activation

POOLS = ("avg", "max")
# Classifier dropout as a function of the conv dropout p: the paper's recipe pairs 0.2 after
# convs with 0.5 in the classifier, hence 2.5 * p, capped at that 0.5.
CLASSIFIER_DROPOUT_FACTOR = 2.5
CLASSIFIER_DROPOUT_MAX = 0.5


@dataclass(frozen=True)
class ModelOptions:
    """The user's architecture knobs, validated once (every bad value is one RmpError line)."""

    bias: bool = False
    batch_norm: bool = False
    pool: str = "avg"
    dropout: float = 0.0
    activation: str = "relu"
    act_levels: int = 8
    width: float | None = None
    classifier_width: int | None = None  # hidden units of a VGG classifier; None = 4096

    def __post_init__(self) -> None:
        for key in ("bias", "batch_norm"):
            value = getattr(self, key)
            if not isinstance(value, bool):
                raise RmpError(f"model.{key} must be true or false, got {value!r}")
        if self.pool not in POOLS:
            raise RmpError(f"unknown model.pool {self.pool!r}; choose one of: {', '.join(POOLS)}")
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, Real) or not 0.0 <= p < 1.0:
            raise RmpError(f"model.dropout must be a probability in [0, 1), got {p!r}")
        check_activation(self.activation)
        check_levels(self.act_levels)
        w = self.width
        if w is not None and (
            isinstance(w, bool) or not isinstance(w, Real) or not w > 0 or not math.isfinite(w)
        ):
            raise RmpError(
                f"model.width must be a positive channel multiplier (e.g. 0.25) or "
                f"null for the reference widths, got {w!r}"
            )
        c = self.classifier_width
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise RmpError(
                f"model.classifier_width must be a positive integer (hidden units) or null "
                f"for the reference 4096, got {c!r}"
            )

    def channels(self, reference: int) -> int:
        """`reference` channels (or hidden units) scaled by `width`, at least 1."""
        return reference if self.width is None else max(1, round(reference * float(self.width)))

    @property
    def classifier_dropout(self) -> float:
        return min(CLASSIFIER_DROPOUT_FACTOR * float(self.dropout), CLASSIFIER_DROPOUT_MAX)

    @property
    def linear_bias(self) -> bool:
        # With batch-norm every conv already carries a shift (BN's beta, a bias once folded), so
        # the linear layers, which have no BN after them, get theirs too (torchvision's layout).
        return self.bias or self.batch_norm

    def activation_module(self) -> nn.Module:
        return make_activation(self.activation, self.act_levels)


def conv_bn(
    options: ModelOptions, cin: int, cout: int, kernel: int = 3, stride: int = 1
) -> list[nn.Module]:
    """Conv (same padding) followed directly by its BatchNorm when batch_norm is on."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=options.bias)
    return [conv, nn.BatchNorm2d(cout)] if options.batch_norm else [conv]


def dropout(p: float) -> list[nn.Module]:
    """An nn.Dropout only when it does something (the converter drops them anyway)."""
    return [nn.Dropout(p)] if p > 0 else []


def conv_act(
    options: ModelOptions, cin: int, cout: int, kernel: int = 3, stride: int = 1
) -> list[nn.Module]:
    """One VGG-style unit: conv [-> BN] -> activation [-> dropout]."""
    return [
        *conv_bn(options, cin, cout, kernel, stride),
        options.activation_module(),
        *dropout(options.dropout),
    ]


def make_pool(
    options: ModelOptions, kernel: int, stride: int | None = None, padding: int = 0
) -> nn.Module:
    if options.pool == "max":
        return nn.MaxPool2d(kernel, stride=stride, padding=padding)
    return nn.AvgPool2d(kernel, stride=stride, padding=padding)


def classifier(
    options: ModelOptions, in_features: int, hidden: tuple[int, ...], num_classes: int
) -> nn.Sequential:
    """Linear -> act -> dropout for each hidden width, then the logits layer (no activation).
    Dropout sits before every linear layer that follows a hidden one (torchvision's layout)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [
            nn.Linear(in_features, width, bias=options.linear_bias),
            options.activation_module(),
            *dropout(options.classifier_dropout),
        ]
        in_features = width
    if not hidden:
        layers += dropout(options.classifier_dropout)
    layers.append(nn.Linear(in_features, num_classes, bias=options.linear_bias))
    return nn.Sequential(*layers)


def check_min_side(model: str, input_shape: tuple[int, int, int], min_side: int, why: str) -> None:
    _, height, width = input_shape
    if min(height, width) < min_side:
        shape = "x".join(map(str, input_shape))
        raise RmpError(
            f"model {model} needs images of at least {min_side}x{min_side} pixels "
            f"({why}), got input shape {shape}; choose a dataset with larger images "
            f"or a smaller model (digits_cnn takes 8x8)"
        )


def init_weights(model: nn.Module) -> None:
    """He init for convs, BN = identity, conv biases 0; linear layers keep PyTorch's default.
    fan_in (not torchvision's fan_out): without BN it is what keeps the forward signal at unit
    scale where the channel count grows (fan_out left VGG-16's features ~9x smaller)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
