"""SpikingNet: a converted network plus what the simulator needs to run it chunk by chunk.

The module is traced once with torch.fx; the trace is the dry run that gives the neurons in
EXECUTION order (registration order can differ, e.g. a block that registers its shortcut first).
From the graph an execution plan is split off per input kind:
  - direct input: every node that depends only on the image (the layers before the first neuron)
    forms the *stem*, run once per batch on [B, ...]; the *body* runs once per chunk on [Tc*B, ...].
    A neuron fed by the stem integrates that constant current for all Tc steps without a repeat.
  - spiking (Poisson) input: everything is in the body.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import Tensor, nn

from rmp_cli.errors import RmpError
from rmp_cli.snn.maxpool import MaxPoolGate
from rmp_cli.snn.neurons import (
    IFNeuron,
    check_backend,
    check_max_spikes,
    check_reset,
    check_signed,
    check_v_init,
    default_backend,
)

SYNAPTIC_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Modules that only reshape or pass through: walked over when looking for the output layer.
_PASS_MODULES = (
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)

_STATIC, _CONST, _VARYING = 0, 1, 2


def is_activation(module: nn.Module) -> bool:
    """An ANN activation to replace by IF neurons: nn.ReLU or a trained clipping activation."""
    return isinstance(module, nn.ReLU) or bool(getattr(module, "is_activation", False))


class _LeafTracer(fx.Tracer):
    """Keeps neurons and (possibly untraceable) trained activations as single graph nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (IFNeuron, MaxPoolGate)) or is_activation(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace_graph(module: nn.Module) -> fx.Graph:
    try:
        return _LeafTracer().trace(module)
    except Exception as exc:  # fx raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RmpError(
            f"cannot trace {type(module).__name__} with torch.fx ({first}); the model's "
            f"forward must avoid data-dependent control flow"
        ) from exc


def node_module(module: nn.Module, node: fx.Node) -> nn.Module | None:
    return module.get_submodule(str(node.target)) if node.op == "call_module" else None


class ExpandTime(nn.Module):
    """Repeat a per-batch constant [B, ...] to a flat chunk [Tc*B, ...] (only where a constant
    tensor meets a time-varying one outside a neuron, e.g. an input-fed shortcut)."""

    chunk = 1

    def configure(self, chunk: int, batch: int | None) -> None:
        self.chunk = int(chunk)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or self.chunk == 1:
            return x
        return x.repeat(self.chunk, *([1] * (x.dim() - 1)))


class StepwiseLinear(nn.Module):
    """A time-varying nn.Linear applied one step at a time ([B, F] rows per call).

    BLAS libraries choose GEMM kernels by row count (MKL on Intel rounds [4, F] and [16, F]
    differently), so one [Tc*B, F] call would make the readout depend on the chunk size. Linear
    layers are a small share of the work in conv nets; convolutions stay chunked."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.chunk, self.batch = 1, None

    def configure(self, chunk: int, batch: int | None) -> None:
        self.chunk, self.batch = int(chunk), batch

    def forward(self, x: Tensor) -> Tensor:
        b = self.batch
        if self.chunk == 1 or b is None or x.shape[0] != self.chunk * b:
            return self.linear(x)
        return torch.cat([self.linear(x[t * b : (t + 1) * b]) for t in range(self.chunk)])


@dataclass
class ExecutionPlan:
    stem: fx.GraphModule | None  # image -> tuple of constant currents (direct input only)
    body: fx.GraphModule  # one chunk: (constants or input spikes) -> output currents [Tc*B, K]
    per_step: list[nn.Module]  # ExpandTime / StepwiseLinear modules that need (Tc, B)
    spike_fed: list[tuple[str, nn.Module]]  # synaptic layers whose input is spikes (synops)

    def run_stem(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.stem(x)) if self.stem is not None else (x,)


class SpikingNet(nn.Module):
    """A converted network: IF neurons in place of activations, BN folded, output layer integrates.

    `thresholds` (one tensor per neuron layer, execution order), `reset_mode` and `v_init` can be
    changed after conversion, so one conversion serves hard and soft reset and every balancing.
    `output_threshold` is used only by the spike-count readout (max ANN logit from balancing).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        reset: str = "soft",
        v_init: float = 0.0,
        per_channel: bool = False,
        output_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.per_channel = bool(per_channel)
        self.output_threshold = output_threshold
        self.graph = _simplify(trace_graph(module), module)
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise RmpError(
                f"the network's forward must take one input tensor, it takes {len(placeholders)}"
            )
        nodes = [n for n in self.graph.nodes if isinstance(node_module(module, n), IFNeuron)]
        names = [str(n.target) for n in nodes]
        repeated = sorted({x for x in names if names.count(x) > 1})
        if repeated:
            raise RmpError(
                f"activation '{repeated[0]}' is called {names.count(repeated[0])} times; "
                f"give every activation its own module instance"
            )
        if not nodes:
            raise RmpError("the network has no activation to convert into spiking neurons")
        self.neuron_names: list[str] = names
        self._neurons: list[IFNeuron] = [module.get_submodule(x) for x in names]
        for name, neuron in zip(names, self._neurons, strict=True):
            neuron.name = name
        self.output_layer = _output_layer(self.graph, module)
        # Spike-gated max-pools carry state like the neurons: one instance per call site.
        self.gates: list[MaxPoolGate] = []
        for node in self.graph.nodes:
            gate = node_module(module, node)
            if isinstance(gate, MaxPoolGate):
                if any(g is gate for g in self.gates):
                    raise RmpError(
                        f"max-pool gate '{node.target}' is called more than once; give every "
                        f"call its own gate"
                    )
                gate.name = str(node.target)
                self.gates.append(gate)
        self.reset_mode = reset
        self.v_init = v_init
        self.neuron_backend = default_backend()

    # --- configuration --------------------------------------------------------------------------
    @property
    def neurons(self) -> list[IFNeuron]:
        return list(self._neurons)

    def named_neurons(self) -> Iterator[tuple[str, IFNeuron]]:
        return zip(self.neuron_names, self._neurons, strict=True)

    @property
    def thresholds(self) -> list[Tensor]:
        return [n.threshold.detach().clone() for n in self._neurons]

    @thresholds.setter
    def thresholds(self, values: Sequence[Tensor | float]) -> None:
        values = list(values)
        if len(values) != len(self._neurons):
            raise RmpError(
                f"expected {len(self._neurons)} thresholds (one per neuron layer), "
                f"got {len(values)}"
            )
        for neuron, theta in zip(self._neurons, values, strict=True):
            neuron.set_threshold(theta)

    @property
    def reset_mode(self) -> str:
        return self._reset

    @reset_mode.setter
    def reset_mode(self, reset: str) -> None:
        self._reset = check_reset(reset)
        for n in self._neurons:
            n.reset_mode = reset

    @property
    def v_init(self) -> float:
        return self._v_init

    @v_init.setter
    def v_init(self, value: float) -> None:
        self._v_init = check_v_init(value)
        for n in self._neurons:
            n.v_init = self._v_init

    @property
    def signed(self) -> bool:
        """Signed spikes with memory (neurons.py); needs the soft reset."""
        return any(n.signed for n in self._neurons)

    @signed.setter
    def signed(self, value: bool) -> None:
        check_signed(value, self._reset)
        for n in self._neurons:
            n.signed = value

    @property
    def max_spikes(self) -> int:
        """Spikes per step and neuron at most (a burst when > 1)."""
        return max(n.max_spikes for n in self._neurons)

    @max_spikes.setter
    def max_spikes(self, value: int) -> None:
        check_max_spikes(value)
        for n in self._neurons:
            n.max_spikes = value

    def calibrate(self, offset: str) -> None:
        """After the pre-steps: every neuron applies the offset rule (neurons.py), and the
        network starts afresh (max-pool gates too) for the counted steps."""
        for n in self._neurons:
            n.calibrate(offset)
        for g in self.gates:
            g.reset_state()

    def spike_source(self, layer: str) -> IFNeuron | None:
        """The neuron layer whose spikes feed synaptic layer `layer` (walking back over pools,
        gates and reshapes), None when there is none: it tells a burst's size from its value."""
        node = next((n for n in self.graph.nodes if str(n.target) == layer), None)
        seen = 0
        while isinstance(node, fx.Node) and node.args and seen < 64:
            node = node.args[0]
            if not isinstance(node, fx.Node):
                return None
            m = node_module(self.module, node)
            if isinstance(m, IFNeuron):
                return m
            if isinstance(m, SYNAPTIC_TYPES):
                return None
            seen += 1
        return None

    def clear_offsets(self) -> None:
        for n in self._neurons:
            n.clear_offset()

    @property
    def neuron_backend(self) -> str:
        """How the neurons run a chunk: "auto" (the fused kernel of the device), "eager", "cpu"
        or "triton"."""
        return self._backend

    @neuron_backend.setter
    def neuron_backend(self, backend: str) -> None:
        self._backend = check_backend(backend)
        for n in self._neurons:
            n.backend = backend

    # --- execution ------------------------------------------------------------------------------
    def configure(self, chunk: int, batch: int | None, plan: ExecutionPlan | None = None) -> None:
        for n in (*self._neurons, *self.gates):
            n.configure(chunk, batch)
        if plan is not None:
            for m in plan.per_step:
                m.configure(chunk, batch)

    def reset_state(self) -> None:
        for n in (*self._neurons, *self.gates):
            n.reset_state()

    def release(self) -> None:
        for n in self._neurons:
            n.release()
            n.count_spikes = False
        for g in self.gates:
            g.release()

    def plan(self, *, spiking_input: bool) -> ExecutionPlan:
        """Build the stem/body split (cheap; rebuilt per run so it follows .to(device))."""
        return _build_plan(self.graph, self.module, spiking_input=spiking_input)

    def forward(self, x: Tensor) -> Tensor:
        """One time-step on [B, ...] (state carried between calls; `reset_state()` between images)."""
        self.configure(1, x.shape[0])
        return self.module(x)


def _simplify(graph: fx.Graph, module: nn.Module) -> fx.Graph:
    """Drop pass-through nodes (Identity, Dropout in eval): fewer calls per chunk."""
    for node in list(graph.nodes):
        m = node_module(module, node)
        if isinstance(m, (nn.Identity, nn.Dropout)) and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    graph.lint()
    return graph


def _output_layer(graph: fx.Graph, module: nn.Module) -> str | None:
    """The synaptic layer whose output is the network's output (walks back over reshapes/pools);
    None when the net ends with an activation (its spikes are then what the readout sums)."""
    out = next(n for n in graph.nodes if n.op == "output")
    node = out.args[0]
    while isinstance(node, fx.Node):
        m = node_module(module, node)
        if isinstance(m, IFNeuron):
            return None  # rectified logits: the readout integrates that layer's spikes
        if isinstance(m, SYNAPTIC_TYPES):
            return str(node.target)
        if isinstance(m, _PASS_MODULES) or (
            m is None and node.op in ("call_method", "call_function") and node.args
        ):
            node = node.args[0]
            continue
        return None
    return None


def _node_kinds(graph: fx.Graph, module: nn.Module, spiking_input: bool) -> dict[fx.Node, int]:
    kinds: dict[fx.Node, int] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            kinds[node] = _VARYING if spiking_input else _CONST
        elif node.op == "get_attr":
            kinds[node] = _STATIC
        elif node.op == "output":
            continue
        elif isinstance(node_module(module, node), IFNeuron):
            kinds[node] = _VARYING
        else:
            kinds[node] = max((kinds[a] for a in node.all_input_nodes), default=_STATIC)
    return kinds


def _build_plan(graph: fx.Graph, module: nn.Module, *, spiking_input: bool) -> ExecutionPlan:
    kinds = _node_kinds(graph, module, spiking_input)
    frontier = [
        n
        for n in graph.nodes
        if kinds.get(n) == _CONST
        and any(u.op == "output" or kinds.get(u) == _VARYING for u in n.users)
    ]
    root: dict[str, object] = {}

    def register(node: fx.Node) -> None:
        if node.op in ("call_module", "get_attr"):
            root[str(node.target)] = _resolve(module, node)

    body = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    expanded: dict[fx.Node, fx.Node] = {}
    expand = ExpandTime()
    root["_expand_time"] = expand

    def copy_static(node: fx.Node) -> fx.Node:
        if node not in env:
            register(node)
            env[node] = body.node_copy(node, lambda a: copy_static(a))
        return env[node]

    def fetch(arg: fx.Node, into_neuron: bool) -> fx.Node:
        kind = kinds[arg]
        if kind == _STATIC:
            return copy_static(arg)
        if kind == _CONST and not into_neuron:
            if arg not in expanded:
                expanded[arg] = body.call_module("_expand_time", (env[arg],))
            return expanded[arg]
        return env[arg]

    if spiking_input:
        for node in graph.nodes:
            if node.op == "placeholder":
                env[node] = body.placeholder(node.name)
    else:
        for node in frontier:
            env[node] = body.placeholder(f"const_{node.name}")
    spike_fed: list[tuple[str, nn.Module]] = []
    per_step: list[nn.Module] = [expand]
    for node in graph.nodes:
        if node.op == "placeholder" or (node.op != "output" and kinds[node] != _VARYING):
            continue
        m = node_module(module, node)
        into_neuron = isinstance(m, IFNeuron)
        register(node)
        if isinstance(m, nn.Linear):
            m = root[str(node.target)] = StepwiseLinear(m)
            per_step.append(m)
        env[node] = body.node_copy(node, lambda a, n=into_neuron: fetch(a, n))
        if (
            isinstance(m, (*SYNAPTIC_TYPES, StepwiseLinear))
            and node.args
            and isinstance(node.args[0], fx.Node)
            and kinds[node.args[0]] == _VARYING
        ):
            spike_fed.append((str(node.target), m))
    _add_in_place(body, root)
    body_gm = fx.GraphModule(root, body)

    stem_gm = None
    if not spiking_input:
        stem = fx.Graph()
        stem_env: dict[fx.Node, fx.Node] = {}
        stem_root: dict[str, object] = {}
        for node in graph.nodes:
            if node.op == "output" or kinds[node] == _VARYING:
                continue
            if node.op in ("call_module", "get_attr"):
                target = _resolve(module, node)
                # A max-pool fed by a constant current is exactly the ANN op: no gate needed.
                if isinstance(target, MaxPoolGate):
                    target = target.static_pool()
                stem_root[str(node.target)] = target
            stem_env[node] = stem.node_copy(node, lambda a: stem_env[a])
        stem.output(tuple(stem_env[n] for n in frontier))
        stem_gm = fx.GraphModule(stem_root, stem)
        stem_gm.graph.eliminate_dead_code()
        stem_gm.recompile()
    return ExecutionPlan(stem=stem_gm, body=body_gm, per_step=per_step, spike_fed=spike_fed)


def add_into(a: Tensor, b: Tensor) -> Tensor:
    """a + b, written into a where that gives the same tensor (shape and dtype)."""
    if a.dtype == torch.result_type(a, b) and a.shape == torch.broadcast_shapes(a.shape, b.shape):
        return a.add_(b)
    return a + b


def _add_in_place(body: fx.Graph, root: dict[str, object]) -> None:
    """Residual junctions: add into the fresh output of a synaptic layer used nowhere else. On
    CPU this saves a chunk-sized allocation and its memory traffic (the add is bandwidth-bound)."""
    synaptic = (*SYNAPTIC_TYPES, StepwiseLinear)
    for node in body.nodes:
        if node.op != "call_function" or node.target not in (operator.add, torch.add):
            continue
        if node.kwargs or len(node.args) != 2:
            continue
        first = node.args[0]
        if (
            isinstance(first, fx.Node)
            and first.op == "call_module"
            and len(first.users) == 1
            and isinstance(root.get(str(first.target)), synaptic)
        ):
            node.target = add_into


def _resolve(module: nn.Module, node: fx.Node) -> object:
    """The object a call_module / get_attr node refers to (shared, not copied)."""
    obj: object = module
    for part in str(node.target).split("."):
        obj = getattr(obj, part)
    return obj
