"""ANN -> SpikingNet: canonicalise, fold BN, drop dropout, replace every activation by an IF neuron.

Everything else must be exactly linear so that rates stay proportional to activations: conv,
linear, average pooling, reshapes, concatenation, residual additions, per-channel affine maps
(BN that cannot be folded). Max-pooling is replaced first, per `maxpool` (convert/maxpool.py:
spike-gated, average, or refused). Anything else is refused with the layer's path and the op
(convert/canonical.py), never silently mis-converted.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rmp_cli.convert.bn_fold import fold_batchnorm, replace_submodule
from rmp_cli.convert.canonical import DROPOUT_TYPES, canonicalize, check_supported
from rmp_cli.convert.maxpool import replace_max_pools
from rmp_cli.snn.maxpool import MaxPoolGate
from rmp_cli.snn.network import SpikingNet, is_activation, node_module, trace_graph
from rmp_cli.snn.neurons import IFNeuron, check_reset, check_v_init


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
    model = canonicalize(copy.deepcopy(ann).eval().float())
    for p in model.parameters():
        p.requires_grad_(False)
    model = replace_max_pools(model, maxpool)
    graph = trace_graph(model)
    check_supported(model, graph, extra_modules=(MaxPoolGate,))
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
