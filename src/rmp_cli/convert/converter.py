"""ANN -> SpikingNet: fold BN, drop dropout, replace every activation by an IF neuron.

Everything else must be exactly linear so that rates stay proportional to activations: conv,
linear, average pooling, flatten, identity and residual additions. Max-pooling is replaced first,
per `maxpool` (convert/maxpool.py: spike-gated, average, or refused). Anything else (functional
nonlinearities, unknown layers) is refused with the layer's path, never silently mis-converted.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from rmp_cli.convert.bn_fold import BATCHNORM_TYPES, fold_batchnorm, replace_submodule
from rmp_cli.convert.maxpool import replace_max_pools
from rmp_cli.errors import RmpError
from rmp_cli.snn.maxpool import MaxPoolGate
from rmp_cli.snn.network import SYNAPTIC_TYPES, SpikingNet, is_activation, node_module, trace_graph
from rmp_cli.snn.neurons import IFNeuron, check_reset, check_v_init

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
LINEAR_PASS_TYPES = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
MAX_POOL_TYPES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
# Functions and tensor methods that are linear (or only reshape / read shapes).
LINEAR_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.neg,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.cat,
    torch.flatten,
    torch.reshape,
    torch.mean,
    torch.sum,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.dropout,
    F.linear,
    getattr,
}
SCALING_FUNCTIONS = {operator.mul, operator.truediv, torch.mul}  # linear only by a constant
LINEAR_METHODS = {
    "view",
    "reshape",
    "flatten",
    "size",
    "mean",
    "sum",
    "contiguous",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "add",
    "sub",
    "dim",
    "unflatten",
}
SUPPORTED = (
    "Conv/Linear, BatchNorm right after a conv/linear, ReLU or trained clipping "
    "activations, AvgPool, Flatten, Dropout, Identity"
)


def to_spiking(
    ann: nn.Module,
    *,
    reset: str = "soft",
    v_init: float = 0.0,
    per_channel: bool = False,
    maxpool: str = "gate",
) -> SpikingNet:
    """Convert a trained ANN (left untouched) into a SpikingNet with thresholds 1.0.
    `maxpool`: gate | avg | refuse, what becomes of max-pooling (convert/maxpool.py)."""
    check_reset(reset)
    check_v_init(v_init)
    model = copy.deepcopy(ann).eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    model = replace_max_pools(model, maxpool)
    graph = trace_graph(model)
    check_supported(graph, model)
    fold_batchnorm(model, graph)
    for node in graph.nodes:
        m = node_module(model, node)
        if isinstance(m, DROPOUT_TYPES):
            replace_submodule(model, str(node.target), nn.Identity())
        elif m is not None and is_activation(m):
            ceiling = getattr(m, "ceiling", None)
            neuron = IFNeuron(
                reset=reset,
                v_init=v_init,
                ceiling=ceiling if isinstance(ceiling, torch.Tensor) else None,
            )
            replace_submodule(model, str(node.target), neuron.to(_device_of(model)))
    return SpikingNet(model, reset=reset, v_init=v_init, per_channel=per_channel)


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return f"'{path}'" if path else "the model's forward"


def check_supported(graph: fx.Graph, model: nn.Module) -> None:
    """Refuse anything without an exact spiking equivalent, naming the layer."""
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            name = str(node.target)
            m = model.get_submodule(name)
            kind = type(m).__name__
            if isinstance(m, MAX_POOL_TYPES):
                raise RmpError(
                    f"layer '{name}' is {kind}: max-pooling has no exact spiking "
                    f"equivalent; retrain with model.pool=avg"
                )
            if is_activation(m):
                calls[name] = calls.get(name, 0) + 1
                if calls[name] > 1:
                    raise RmpError(
                        f"activation '{name}' is used more than once in forward; give "
                        f"every activation its own module instance"
                    )
                continue
            if not isinstance(
                m,
                (
                    *SYNAPTIC_TYPES,
                    *BATCHNORM_TYPES,
                    *DROPOUT_TYPES,
                    *LINEAR_PASS_TYPES,
                    MaxPoolGate,
                ),
            ):
                raise RmpError(
                    f"layer '{name}' is {kind}: not supported by the ANN-to-SNN "
                    f"converter (supported: {SUPPORTED})"
                )
        elif node.op == "call_function":
            target = node.target
            if target in LINEAR_FUNCTIONS:
                continue
            if target in SCALING_FUNCTIONS and sum(isinstance(a, fx.Node) for a in node.args) <= 1:
                continue
            name = getattr(target, "__name__", str(target))
            raise RmpError(
                f"{_where(node)} applies {name}(), which has no exact spiking "
                f"equivalent; use one nn.ReLU module per nonlinearity and AvgPool "
                f"(supported: {SUPPORTED})"
            )
        elif node.op == "call_method":
            if node.target in LINEAR_METHODS:
                continue
            if node.target in ("mul", "div") and not isinstance(node.args[1], fx.Node):
                continue
            raise RmpError(
                f"{_where(node)} applies .{node.target}(), which has no exact spiking "
                f"equivalent; use one nn.ReLU module per nonlinearity and AvgPool "
                f"(supported: {SUPPORTED})"
            )
