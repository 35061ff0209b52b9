"""The canonical ANN: every activation a module of its own, one per call site, checked op by op.

torch.fx traces the net (activation modules stay single nodes). This pass rewrites the graph so
that the converter and the threshold balancer see one activation module for every place an
activation acts, whatever way the model's code wrote it:
  - F.relu, torch.relu, Tensor.relu(_), clamp(min=0)      -> nn.ReLU
  - nn.ReLU6, F.relu6, hardtanh(x, 0, c), clamp(x, 0, c)  -> FixedClip(c) (c is a threshold
                                                             for balance=trained)
  - an activation module called at k places               -> k modules: `path`, `path#2`, ...
Everything else must be linear (conv, linear, pooling by averaging, reshapes, concatenation,
splits, residual additions, scaling by constants), a BatchNorm (folded at conversion, or kept as a
per-channel affine current) or a max-pooling (`snn.maxpool`); anything nonlinear is refused
before any simulation, naming the module path and the op.
The result computes the same function with the same parameters; canonicalising it again changes
nothing, so names are stable.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from rmp_cli.convert.bn_fold import BATCHNORM_TYPES
from rmp_cli.errors import RmpError
from rmp_cli.models.activations import FixedClip
from rmp_cli.snn.network import SYNAPTIC_TYPES, is_activation, trace_graph

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
LINEAR_PASS_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.ChannelShuffle,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
MAX_POOL_TYPES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
MAX_POOL_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    torch.max_pool1d,
    torch.max_pool2d,
    torch.max_pool3d,
}
# Functions and tensor methods that are linear in their tensor inputs (or only reshape/select).
LINEAR_FUNCTIONS = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.neg,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.neg,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.chunk,
    torch.split,
    torch.flatten,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.mean,
    torch.sum,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.linear,
    F.pad,
    torch.channel_shuffle,
    getattr,
}
SCALING_FUNCTIONS = {operator.mul, operator.truediv, torch.mul, torch.div}  # by a constant only
LINEAR_METHODS = {
    "view",
    "reshape",
    "flatten",
    "mean",
    "sum",
    "contiguous",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "add",
    "sub",
    "neg",
    "unflatten",
    "chunk",
    "split",
    "expand",
    "expand_as",
    "repeat",
    "clone",
    "float",
    "to",
}
SCALING_METHODS = {"mul", "div"}  # by a constant only
SHAPE_METHODS = {"size", "dim", "numel"}  # read shapes: fine whatever follows from them
RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
RELU_METHODS = {"relu", "relu_"}
CLAMP_FUNCTIONS = {torch.clamp, torch.clip, torch.clamp_min}
CLAMP_METHODS = {"clamp", "clip", "clamp_min", "clamp_", "clip_", "clamp_min_"}
SUPPORTED = (
    "conv/linear, BatchNorm, ReLU and clipped ReLU (ReLU6, hardtanh(0, c), clamp(0, c)) as "
    "modules or functions, average and max pooling, flatten/reshape/cat/split/channel shuffle, "
    "dropout, residual additions, scaling by constants"
)


def module_path(node: fx.Node) -> str:
    """The path of the module a node was traced in ("" for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(next(reversed(stack.values()))[0]) if stack else ""


def where(node: fx.Node) -> str:
    """The module path a node was traced in, for error messages."""
    path = module_path(node)
    return f"'{path}'" if path else "the model's forward"


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _constant(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _op_name(node: fx.Node) -> str:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "op")
    return str(name).rstrip("_")


def _clip_of(node: fx.Node) -> tuple[str, float | None] | None:
    """('relu', None) or ('clip', c) when the call is a ReLU or a clip to [0, c]; else None."""
    target = node.target
    if node.op == "call_function" and target in RELU_FUNCTIONS:
        return ("relu", None)
    if node.op == "call_method" and target in RELU_METHODS:
        return ("relu", None)
    if node.op == "call_function" and target in (F.relu6,):
        return ("clip", 6.0)
    if node.op == "call_function" and target in (F.hardtanh, F.hardtanh_):
        lo, hi = _constant(_arg(node, 1, "min_val", -1.0)), _constant(_arg(node, 2, "max_val", 1.0))
        return ("clip", hi) if lo == 0.0 and hi is not None and hi > 0 else None
    is_clamp = (node.op == "call_function" and target in CLAMP_FUNCTIONS) or (
        node.op == "call_method" and target in CLAMP_METHODS
    )
    if not is_clamp:
        return None
    only_min = str(getattr(target, "__name__", target)).startswith("clamp_min")
    lo = _constant(_arg(node, 1, "min", None))
    hi = None if only_min else _arg(node, 2, "max", None)
    if lo != 0.0:
        return None
    if hi is None:
        return ("relu", None)
    hi = _constant(hi)
    return ("clip", hi) if hi is not None and hi > 0 else None


def _clip_of_module(module: nn.Module) -> float | None:
    """The ceiling of a ReLU6 / Hardtanh(0, c) module (None if it is not such a clip)."""
    if isinstance(module, nn.ReLU6):
        return 6.0
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val > 0:
        return float(module.max_val)
    return None


class _Names:
    """Fresh module paths next to existing ones: `parent.relu`, then `parent.relu#2`, ..."""

    def __init__(self, root: nn.Module) -> None:
        self.taken = {name for name, _ in root.named_modules()}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}#{k}"
        self.taken.add(name)
        return name


def canonicalize(model: nn.Module) -> nn.Module:
    """The canonical form of `model` (see the module docstring): `model` itself when it already
    is, else an fx.GraphModule sharing its parameters. Raises RmpError for anything that cannot
    be traced; unsupported ops are reported by `check_supported`."""
    graph = trace_graph(model)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    names = _Names(gm)
    calls: dict[str, int] = {}
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            ceiling = _clip_of_module(module)
            if ceiling is not None:
                gm.delete_submodule(str(node.target))
                gm.add_submodule(str(node.target), FixedClip(ceiling))
                module = gm.get_submodule(str(node.target))
                changed = True
            if not is_activation(module):
                continue
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
            if calls[str(node.target)] > 1:  # one neuron layer per call site
                copy_path = names.fresh(str(node.target))
                gm.add_submodule(copy_path, _fresh_copy(module))
                node.target = copy_path
                changed = True
            continue
        kind = _clip_of(node) if node.op in ("call_function", "call_method") else None
        if kind is None:
            continue
        op, ceiling = kind
        label = "relu" if op == "relu" else _op_name(node)
        path = module_path(node)
        base = f"{path}.{label}" if path else label
        new_path = names.fresh(base)
        gm.add_submodule(new_path, nn.ReLU() if op == "relu" else FixedClip(float(ceiling)))
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(new_path, (node.args[0],))
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        changed = True
    if not changed:
        return model  # already canonical: keep its own module structure and state_dict keys
    gm.graph.lint()
    gm.recompile()
    return gm


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A copy for another call site: the same ceiling (shared parameter values), own state."""
    return copy.deepcopy(module)


def _shape_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that compute only shapes (x.size(), x.shape, and arithmetic on them)."""
    shape: set[fx.Node] = set()
    for node in graph.nodes:
        reads_shape = (node.op == "call_method" and node.target in SHAPE_METHODS) or (
            node.op == "call_function" and node.target is getattr and node.args[1] == "shape"
        )
        derived = (
            node.op == "call_function"
            and bool(node.all_input_nodes)
            and all(a in shape for a in node.all_input_nodes)
        )
        if reads_shape or derived:
            shape.add(node)
    return shape


def _dynamic_nodes(graph: fx.Graph, shape: set[fx.Node]) -> set[fx.Node]:
    """Nodes whose value depends on the input image (shape-only nodes excluded)."""
    dynamic: set[fx.Node] = set()
    for node in graph.nodes:
        depends = node.op == "placeholder" or any(a in dynamic for a in node.all_input_nodes)
        if depends and node not in shape:
            dynamic.add(node)
    return dynamic


def check_supported(
    model: nn.Module,
    graph: fx.Graph | None = None,
    *,
    allow_max_pool: bool = False,
    extra_modules: tuple[type[nn.Module], ...] = (),
) -> None:
    """Refuse anything without an exact spiking equivalent, naming the module path and the op."""
    graph = graph if graph is not None else trace_graph(model)
    shape = _shape_nodes(graph)
    dynamic = _dynamic_nodes(graph, shape)

    def by_constant(node: fx.Node) -> bool:  # x * c: linear; x * y (or x * x): not
        args = [*node.args, *node.kwargs.values()]
        return sum(1 for a in args if isinstance(a, fx.Node) and a in dynamic) <= 1

    for node in graph.nodes:
        if node.op == "call_module":
            name = str(node.target)
            m = model.get_submodule(name)
            kind = type(m).__name__
            if isinstance(m, MAX_POOL_TYPES) and not allow_max_pool:
                raise RmpError(
                    f"layer '{name}' is {kind}: max-pooling has no exact spiking equivalent; "
                    "convert with snn.maxpool=gate or avg, or retrain with average pooling"
                )
            if isinstance(
                m,
                (
                    *SYNAPTIC_TYPES,
                    *BATCHNORM_TYPES,
                    *DROPOUT_TYPES,
                    *LINEAR_PASS_TYPES,
                    *MAX_POOL_TYPES,
                    *extra_modules,
                ),
            ) or is_activation(m):
                continue
            raise RmpError(
                f"layer '{name}' is {kind}: not supported by the ANN-to-SNN converter "
                f"(supported: {SUPPORTED})"
            )
        if node.op not in ("call_function", "call_method") or node in shape:
            continue
        target = node.target
        op = (
            f".{target}()"
            if node.op == "call_method"
            else f"{getattr(target, '__name__', str(target))}()"
        )
        if node.op == "call_function":
            if target in LINEAR_FUNCTIONS:
                continue
            if target in MAX_POOL_FUNCTIONS and allow_max_pool:
                continue
            if target in SCALING_FUNCTIONS and by_constant(node):
                continue
            if target in MAX_POOL_FUNCTIONS:
                raise RmpError(
                    f"{where(node)} applies {op}: max-pooling has no exact spiking equivalent; "
                    "convert with snn.maxpool=gate, or use average pooling"
                )
        else:
            if target in LINEAR_METHODS:
                continue
            if target in SCALING_METHODS and by_constant(node):
                continue
        raise RmpError(
            f"{where(node)} applies {op}, which has no exact spiking equivalent "
            f"(supported: {SUPPORTED})"
        )
