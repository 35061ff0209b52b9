"""Fold eval-mode BatchNorm into the conv/linear layer right before it (weights + bias).

    y = gamma * (W x + b - mean) / sqrt(var + eps) + beta  =  (s W) x + (s (b - mean) + beta)
with s = gamma / sqrt(var + eps). Computed in float64 and rounded once, so the folded layer
matches the ANN to float32 precision. Pairs are found on the fx graph (a BN node whose input is
a conv/linear node used by nothing else), which covers nn.Sequential adjacency and hand-written
forwards alike.
"""

from __future__ import annotations

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


def fold_batchnorm(module: nn.Module, graph: fx.Graph) -> list[str]:
    """Fold every BN in `module` (in place; BN becomes nn.Identity). Returns the folded BN paths.

    A BN that does not directly follow a conv/linear (or follows one whose output is also used
    elsewhere) cannot be folded and is refused rather than silently mis-converted."""
    folded = []
    for node in graph.nodes:
        bn = node_module(module, node)
        if not isinstance(bn, BATCHNORM_TYPES):
            continue
        name = str(node.target)
        src = node.args[0] if node.args else None
        layer = node_module(module, src) if isinstance(src, fx.Node) else None
        if not isinstance(layer, SYNAPTIC_TYPES) or len(src.users) != 1:
            raise RmpError(
                f"layer '{name}' is {type(bn).__name__} but does not directly follow a "
                f"conv/linear layer, so it cannot be folded; place BatchNorm right after "
                f"its conv or linear layer"
            )
        if bn.running_mean is None or bn.running_var is None:
            raise RmpError(
                f"layer '{name}' is {type(bn).__name__} without running statistics "
                f"(track_running_stats=False); it cannot be folded"
            )
        out_features = layer.weight.shape[0]
        if bn.num_features != out_features:
            raise RmpError(
                f"layer '{name}' normalises {bn.num_features} features but "
                f"'{src.target}' outputs {out_features}; cannot fold"
            )
        fold_into(layer, bn)
        replace_submodule(module, name, nn.Identity())
        folded.append(name)
    return folded
