"""Fold eval-mode BatchNorm into the conv/linear layers around it (weights + bias).

    y = gamma * (W x + b - mean) / sqrt(var + eps) + beta  =  (s W) x + (s (b - mean) + beta)
with s = gamma / sqrt(var + eps). Computed in float64 and rounded once, so the folded layer
matches the ANN to float32 precision. Pairs are found on the fx graph (a BN node whose input is
a conv/linear node used by nothing else, or a channel concatenation of such nodes, or a
BatchNorm1d feeding an nn.Linear), which covers nn.Sequential adjacency and hand-written
forwards alike. Any other BN is left in place: in eval mode it is a per-channel affine map,
which a spiking network computes exactly (its shift is a constant current every step).
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from rmp_cli.errors import RmpError
from rmp_cli.snn.network import SYNAPTIC_TYPES, node_module

BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def replace_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Rewrite `layer`'s weight and bias so that layer(x) == bn(old_layer(x)) in eval mode."""
    weight = layer.weight
    mean = bn.running_mean.double()
    var = bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    new_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - mean) * scale + beta
    layer.weight = nn.Parameter(new_weight.to(weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=False)


def _fold_into_next_linear(linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Rewrite `linear` so that linear(x) == old_linear(bn(x)) (BN over the linear's inputs)."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * scale
    weight = linear.weight.double()
    bias = (
        linear.bias.double() if linear.bias is not None else torch.zeros(weight.shape[0]).double()
    )
    dtype = linear.weight.dtype
    linear.weight = nn.Parameter((weight * scale[None, :]).to(dtype), requires_grad=False)
    linear.bias = nn.Parameter((bias + weight @ shift).to(dtype), requires_grad=False)


def _feeding_layer(module: nn.Module, src: object) -> nn.Module | None:
    """The conv/linear whose output is `src` and nothing else's input."""
    if not isinstance(src, fx.Node) or len(src.users) != 1:
        return None
    layer = node_module(module, src)
    return layer if isinstance(layer, SYNAPTIC_TYPES) else None


def _cat_parts(module: nn.Module, src: object) -> list[nn.Module] | None:
    """The conv/linear layers whose outputs a channel concatenation joins, if all of them are
    such layers used nowhere else (BN over the concatenation then folds into each part)."""
    if not (
        isinstance(src, fx.Node)
        and src.op == "call_function"
        and src.target in (torch.cat, torch.concat)
        and len(src.users) == 1
    ):
        return None
    tensors = src.args[0] if src.args else src.kwargs.get("tensors")
    dim = src.args[1] if len(src.args) > 1 else src.kwargs.get("dim", 0)
    if dim != 1 or not isinstance(tensors, (list, tuple)):
        return None
    parts = [_feeding_layer(module, t) for t in tensors]
    return parts if all(p is not None for p in parts) else None  # type: ignore[return-value]


def _next_linear(module: nn.Module, node: fx.Node) -> nn.Linear | None:
    """The nn.Linear that alone consumes a BatchNorm1d's output."""
    if len(node.users) != 1:
        return None
    (user,) = node.users
    layer = node_module(module, user)
    return layer if isinstance(layer, nn.Linear) and user.args[0] is node else None


def _slice_bn(bn: nn.modules.batchnorm._BatchNorm, start: int, stop: int) -> nn.Module:
    part = copy.deepcopy(bn)
    for name in ("running_mean", "running_var"):
        setattr(part, name, getattr(bn, name)[start:stop].clone())
    for name in ("weight", "bias"):
        if getattr(bn, name) is not None:
            setattr(part, name, nn.Parameter(getattr(bn, name)[start:stop].detach().clone()))
    part.num_features = stop - start
    return part


def fold_batchnorm(module: nn.Module, graph: fx.Graph) -> list[str]:
    """Fold every BN in `module` that can be folded exactly (in place; BN becomes nn.Identity):
    into the conv/linear right before it, into each conv/linear of a channel concatenation, or
    (BatchNorm1d) into the nn.Linear right after it. A BN that fits none of these stays, in eval
    mode, as what it then is: a per-channel affine current (scale and shift), exact in an SNN.
    Returns the folded BN paths."""
    folded = []
    for node in graph.nodes:
        bn = node_module(module, node)
        if not isinstance(bn, BATCHNORM_TYPES):
            continue
        name = str(node.target)
        if bn.running_mean is None or bn.running_var is None:
            raise RmpError(
                f"layer '{name}' is {type(bn).__name__} without running statistics "
                f"(track_running_stats=False); it cannot be converted"
            )
        src = node.args[0] if node.args else None
        layer = _feeding_layer(module, src)
        parts = _cat_parts(module, src) if layer is None else None
        after = _next_linear(module, node) if layer is None and parts is None else None
        if layer is not None:
            if bn.num_features != layer.weight.shape[0]:
                raise RmpError(
                    f"layer '{name}' normalises {bn.num_features} features but "
                    f"'{src.target}' outputs {layer.weight.shape[0]}; cannot fold"
                )
            fold_into(layer, bn)
        elif parts is not None and sum(p.weight.shape[0] for p in parts) == bn.num_features:
            start = 0
            for part in parts:
                stop = start + part.weight.shape[0]
                fold_into(part, _slice_bn(bn, start, stop))
                start = stop
        elif after is not None and after.in_features == bn.num_features:
            _fold_into_next_linear(after, bn)
        else:
            continue  # kept: an exact per-channel affine current
        replace_submodule(module, name, nn.Identity())
        folded.append(name)
    return folded
