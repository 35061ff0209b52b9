"""Max-pooling at conversion, before the neurons are put in: `snn.maxpool=gate|avg|refuse`.

gate    every max-pool (nn.MaxPool{1,2,3}d, nn.AdaptiveMaxPool{1,2,3}d, F.max_pool*d and
        F.adaptive_max_pool*d calls in forward) becomes a spike-gated max-pool (snn/maxpool.py)
        with the same geometry, one per call site (the gate has state). Converts without
        retraining.
avg     every max-pool becomes average pooling with the same window: kernel, stride, padding,
        ceil_mode, and count_include_pad=False, because padding never takes part in a max, so the
        average over the real inputs only is the one that keeps border outputs on the scale of
        the interior ones (with padding 0, the usual case, both counts agree). Adaptive max ->
        adaptive average. Dilation has no average-pooling counterpart and is refused. The ANN
        changes: evaluate it after the change (and fine-tune it with model.pool=avg).
refuse  one error line naming the first max-pool.

Module pools called once are swapped in place; functional calls and modules called at several
places are rewritten in the traced graph (the model becomes an fx.GraphModule with the same
qualified names for everything else; new call sites are named like convert/canonical.py's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from rmp_cli.convert.bn_fold import replace_submodule
from rmp_cli.convert.canonical import module_path, where
from rmp_cli.errors import RmpError
from rmp_cli.snn.maxpool import MAX_POOL_TYPES, MaxPoolGate, PoolGeometry, geometry_of
from rmp_cli.snn.network import node_module, trace_graph

MAXPOOL_MODES = ("gate", "avg", "refuse")

_REGULAR_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_FUNCTIONS: dict[object, tuple[int, bool]] = {
    F.max_pool1d: (1, False),
    F.max_pool2d: (2, False),
    F.max_pool3d: (3, False),
    torch.max_pool1d: (1, False),
    torch.max_pool2d: (2, False),
    torch.max_pool3d: (3, False),
    F.adaptive_max_pool1d: (1, True),
    F.adaptive_max_pool2d: (2, True),
    F.adaptive_max_pool3d: (3, True),
}
# Max-pools that return their indices (for unpooling): no spiking counterpart.
_WITH_INDICES = {
    F.max_pool1d_with_indices,
    F.max_pool2d_with_indices,
    F.max_pool3d_with_indices,
    F.adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d_with_indices,
    torch.adaptive_max_pool1d,
}
_AVG_MODULES = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE_AVG_MODULES = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_AVG_FUNCTIONS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG_FUNCTIONS = {
    1: F.adaptive_avg_pool1d,
    2: F.adaptive_avg_pool2d,
    3: F.adaptive_avg_pool3d,
}


@dataclass
class MaxPoolSite:
    """One place in forward where a max-pool is applied."""

    node: fx.Node
    where: str  # for messages: "layer 'features.2' is MaxPool2d" / "'head' applies max_pool2d()"
    geometry: PoolGeometry
    module: str | None  # qualified name of the pooling module, None for a functional call


def check_maxpool_mode(mode: str) -> str:
    if mode not in MAXPOOL_MODES:
        raise RmpError(f"unknown snn.maxpool '{mode}'; choose one of: {', '.join(MAXPOOL_MODES)}")
    return mode


def _function_site(node: fx.Node, dims: int, adaptive: bool) -> MaxPoolSite:
    name = getattr(node.target, "__name__", str(node.target))
    place = f"{where(node)} applies {name}()"
    names = ("input", "output_size") if adaptive else _REGULAR_ARGS
    args = dict(zip(names, node.args, strict=False))
    args.update(node.kwargs)
    if args.pop("return_indices", False):
        raise RmpError(f"{place} with return_indices=True (unpooling): no spiking equivalent")
    if any(isinstance(v, fx.Node) for k, v in args.items() if k != "input"):
        raise RmpError(f"{place} with pooling parameters computed in forward; use constants")
    args.pop("input", None)
    if adaptive:
        geometry = PoolGeometry.adaptive(dims, args["output_size"])
    else:
        geometry = PoolGeometry.regular(dims, **args)
    return MaxPoolSite(node=node, where=place, geometry=geometry, module=None)


def find_max_pools(model: nn.Module) -> tuple[fx.Graph, list[MaxPoolSite]]:
    """Every max-pool call in the model's traced forward, in execution order."""
    graph = trace_graph(model)
    sites = []
    for node in graph.nodes:
        m = node_module(model, node)
        if isinstance(m, MAX_POOL_TYPES):
            name = str(node.target)
            place = f"layer '{name}' is {type(m).__name__}"
            try:
                geometry = geometry_of(m)
            except RmpError as exc:
                raise RmpError(f"layer '{name}': {exc}") from None
            assert geometry is not None
            sites.append(MaxPoolSite(node=node, where=place, geometry=geometry, module=name))
        elif node.op == "call_function" and node.target in _WITH_INDICES:
            name = getattr(node.target, "__name__", str(node.target))
            raise RmpError(
                f"{where(node)} applies {name}(), which returns indices (unpooling): no spiking "
                f"equivalent"
            )
        elif node.op == "call_function" and node.target in _FUNCTIONS:
            sites.append(_function_site(node, *_FUNCTIONS[node.target]))
    return graph, sites


def _average(site: MaxPoolSite) -> nn.Module:
    g = site.geometry
    if g.output_size is not None:
        return _ADAPTIVE_AVG_MODULES[g.dims](g.output_size)
    if any(d != 1 for d in g.dilation):
        raise RmpError(
            f"{site.where} with dilation {g.dilation}: average pooling has no dilation; "
            f"use snn.maxpool=gate"
        )
    return _AVG_MODULES[g.dims](
        g.kernel, g.stride, g.padding, ceil_mode=g.ceil_mode, count_include_pad=False
    )


def _fresh_path(taken: set[str], base: str) -> str:
    """`base`, or `base#2`, `base#3`, ... (the call-site naming of convert/canonical.py)."""
    path, k = base, 1
    while path in taken:
        k += 1
        path = f"{base}#{k}"
    taken.add(path)
    return path


def replace_max_pools(model: nn.Module, mode: str) -> nn.Module:
    """The model with every max-pool handled per `mode`: modules swapped in place when each is
    called once, else an fx.GraphModule in which every call site has its own module (a shared
    module's second call becomes `path#2`, a functional call `owner.max_pool2d`)."""
    check_maxpool_mode(mode)
    graph, sites = find_max_pools(model)
    if not sites:
        return model
    if mode == "refuse":
        raise RmpError(
            f"{sites[0].where}: max-pooling is refused (snn.maxpool=refuse); snn.maxpool=gate "
            f"converts it to spike-gated max-pooling, snn.maxpool=avg to average pooling "
            f"(best after fine-tuning with model.pool=avg)"
        )
    replacements = [_average(s) if mode == "avg" else MaxPoolGate(s.geometry) for s in sites]
    modules = [s.module for s in sites]
    if None not in modules and (mode == "avg" or len(set(modules)) == len(modules)):
        # A stateless average pool may serve several call sites; a gate may not.
        for name, new in dict(zip(modules, replacements, strict=True)).items():
            replace_submodule(model, str(name), new)
        return model
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    taken = {name for name, _ in gm.named_modules()}
    seen: set[str] = set()
    for site, new in zip(sites, replacements, strict=True):
        node = site.node
        if site.module is not None and site.module not in seen:
            seen.add(site.module)
            gm.delete_submodule(site.module)
            gm.add_submodule(site.module, new)
            continue
        op = getattr(node.target, "__name__", "max_pool")
        owner = module_path(node)
        base = site.module or (f"{owner}.{op}" if owner else op)
        path = _fresh_path(taken, base)
        gm.add_submodule(path, new)
        with gm.graph.inserting_before(node):
            source = node.args[0] if node.args else node.kwargs["input"]
            replacement = gm.graph.call_module(path, (source,))
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm
