"""torchvision classification models as a model source: `model=torchvision model.arch=NAME`.

The builder is torchvision's own (`torchvision.models.get_model`), so its pretrained weights load
the torchvision way: from the cache under $TORCH_HOME/hub/checkpoints first, else downloaded where
the network allows. Then the net is fitted to the dataset: the classifier to its classes, the
first convolution to its channels, and optionally a small-image stem. What the converter can and
cannot turn into spikes is decided later, by the converter, from the traced graph.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmp_cli.errors import RmpError

# Extra builder arguments: the auxiliary heads of these two only run in training mode and return
# a tuple there, which a plain classification loss cannot take.
_BUILDER_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": False},
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": False},
}


def torchvision_archs() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))  # classification builders only


def _weights_enum(arch: str, name: str) -> Any:
    from torchvision import models

    enum = models.get_model_weights(arch)
    if name == "DEFAULT":
        return enum.DEFAULT
    choices = [w.name for w in enum] + ["DEFAULT"]
    if name not in choices:
        raise RmpError(
            f"unknown model.weights '{name}' for torchvision {arch}; choose one of: "
            f"{', '.join(choices)}"
        )
    return enum[name]


def _cache_path(weights: Any) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _build(arch: str, weights: Any, num_classes: int) -> nn.Module:
    from torchvision import models

    kwargs = dict(_BUILDER_KWARGS.get(arch, {}))
    if weights is not None:
        kwargs.pop("init_weights", None)
        if arch == "googlenet" or arch == "inception_v3":
            kwargs.pop("aux_logits", None)  # torchvision builds them, loads, then drops them
    else:
        kwargs["num_classes"] = num_classes
    try:
        model = models.get_model(arch, weights=weights, **kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise RmpError(
            f"cannot download torchvision weights {weights} ({_reason(exc)}); place "
            f"{Path(weights.url).name} from {weights.url} at {_cache_path(weights)} "
            "(or set TORCH_HOME to the folder holding hub/checkpoints/)"
        ) from None
    except RmpError:
        raise
    except Exception as exc:
        # With weights, the failure is the cached file's, whatever its parser raised (the read
        # boundary); without, only building can fail, and what it raises otherwise is a bug.
        if weights is None:
            if not isinstance(exc, (RuntimeError, OSError, ValueError)):
                raise
            raise RmpError(f"torchvision {arch} cannot be built: {_reason(exc)}") from None
        raise RmpError(
            f"torchvision weights {weights} at {_cache_path(weights)} cannot be loaded "
            f"({_reason(exc)}); delete the file to download it again"
        ) from None
    if arch in ("googlenet", "inception_v3"):
        model.aux_logits = False
        model.aux1 = model.aux2 = None  # type: ignore[assignment]
        if hasattr(model, "AuxLogits"):
            model.AuxLogits = None  # type: ignore[assignment]
        model.transform_input = False
    return model


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def _modules_of(model: nn.Module, kind: type | tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)


def _fit_classifier(model: nn.Module, num_classes: int, built_for: int) -> None:
    """Swap the output layer (the last Linear, or squeezenet's final 1x1 conv) for a fresh one."""
    layers = _modules_of(model, (nn.Linear, nn.Conv2d))
    path, last = next(
        ((n, m) for n, m in reversed(layers) if _out_features(m) == built_for), (None, None)
    )
    if path is None or last is None:
        raise RmpError(
            f"cannot find the {built_for}-class output layer to fit {num_classes} classes"
        )
    if isinstance(last, nn.Linear):
        new: nn.Module = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    else:
        new = nn.Conv2d(last.in_channels, num_classes, 1, bias=last.bias is not None)
    _replace(model, path, new)


def _out_features(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _fit_input_channels(model: nn.Module, channels: int) -> None:
    """The first convolution takes the dataset's channels; pretrained RGB filters summed over
    colour give a grey image the response the RGB net gave its grey copy."""
    convs = _modules_of(model, nn.Conv2d)
    if not convs or convs[0][1].in_channels == channels:
        return
    path, conv = convs[0]
    new = _conv_like(conv, in_channels=channels)
    if channels == 1 and conv.groups == 1:
        with torch.no_grad():
            new.weight.copy_(conv.weight.sum(1, keepdim=True))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    _replace(model, path, new)


def _conv_like(conv: nn.Conv2d, **changes: Any) -> nn.Conv2d:
    args = {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        **changes,
    }
    return nn.Conv2d(**args)


def _small_input_stem(model: nn.Module) -> bool:
    """CIFAR-style stem: a downsampling first convolution (stride > 1 or kernel > 3) becomes 3x3
    stride 1 (pretrained weights kept when only the stride changes), and the max-pool before the
    second convolution (the stem pool) is removed. Returns whether anything changed (VGG, whose
    first convolution is already 3x3 stride 1, has no stem to change)."""
    convs = _modules_of(model, nn.Conv2d)
    if not convs:
        return False
    path, conv = convs[0]
    if conv.kernel_size[0] <= 3 and conv.stride == (1, 1):
        return False  # no downsampling stem (VGG): nothing to change
    changed = False
    if conv.kernel_size[0] > 3:
        _replace(model, path, _conv_like(conv, kernel_size=3, stride=1, padding=1))
        changed = True
    elif conv.stride != (1, 1):
        conv.stride = (1, 1)
        changed = True
    second = convs[1][1] if len(convs) > 1 else None
    for name, module in model.named_modules():
        if module is second:
            break
        if isinstance(module, nn.MaxPool2d):
            _replace(model, name, nn.Identity())
            changed = True
            break
    return changed


def max_to_avg_pooling(model: nn.Module) -> int:
    """Every max-pooling module replaced by average pooling of the same geometry (padding does
    not count in the average, as it never wins a max). Returns how many were replaced."""
    kinds = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
    replaced = 0
    for name, module in list(model.named_modules()):
        avg = kinds.get(type(module))
        if avg is None:
            continue
        if module.dilation not in (1, (1,), (1, 1), (1, 1, 1)):
            raise RmpError(f"'{name}' is a dilated max-pool; it has no average-pool equivalent")
        _replace(
            model,
            name,
            avg(
                module.kernel_size,
                module.stride,
                module.padding,
                ceil_mode=module.ceil_mode,
                count_include_pad=False,
            ),
        )
        replaced += 1
    return replaced


def build_torchvision(
    arch: str,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    small_input: bool = False,
) -> nn.Module:
    archs = torchvision_archs()
    if arch not in archs:
        raise RmpError(
            f"unknown torchvision model.arch '{arch}'; choose one of: {', '.join(archs)}"
        )
    enum = _weights_enum(arch, str(weights)) if weights else None
    model = _build(arch, enum, num_classes)
    if enum is not None:
        built_for = len(enum.meta.get("categories") or []) or 1000
        if built_for != num_classes:
            _fit_classifier(model, num_classes, built_for)
    _fit_input_channels(model, input_shape[0])
    if small_input:
        _small_input_stem(model)
    return model
