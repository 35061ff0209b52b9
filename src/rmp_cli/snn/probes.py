"""Per-layer diagnostics from the simulation itself: where a converted SNN loses information.

A LayerProbe watches every IF neuron layer from outside (a forward pre-hook and a forward hook per
layer, nothing inside the neuron's time loop) and keeps, per unit and for the current batch only:
  input   the input current summed over the steps so far,
  spikes  the spikes emitted so far,
  ann     the ANN activation of the same unit on the same images: the converted net run once per
          batch in analog mode (each neuron acting as ReLU, or as clamp(0, ceiling) for a trained
          clipping activation; BN is already folded), so any net the converter accepts works.
The simulator ends a chunk at every requested T; there the probe reads the membrane v(T) and adds
per-layer sums (float64) to its statistics. Nothing of size [T, B, ...] is ever kept.

Charge balance of one unit over T steps (no leak, spikes carry theta):
    sum_t I(t) = n * theta + (v(T) - v(0)) + D
where D is the charge a hard reset discards (the membrane above theta at each spike); a soft reset
keeps it, D = 0. Divided by T * theta and averaged over units, per layer:
    firing_rate = input_current - (residual_charge - v_init) / T - discarded_charge.

Exactness: input sums are accumulated one step at a time in float32 and spike counts are exact
integers, so the statistics do not depend on the chunk size (as the simulator's results do not).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from rmp_cli.errors import RmpError
from rmp_cli.snn.network import SpikingNet, _resolve, node_module
from rmp_cli.snn.neurons import IFNeuron

# "Saturated": fired at no fewer than this share of the steps (every step below T = 100).
SATURATED_SHARE = 0.99
# Spike charge (spikes x theta) is summed in float32 for at most this many steps before it is
# turned into an exact count: the sum's rounding error then stays far below theta / 2.
_FOLD_STEPS = 256

# Per-layer, per-T sums kept by the probe (float64), in this order.
SUMS = (
    "units",  # neuron-images
    "spikes",
    "silent",  # units that never fired
    "saturated",
    "ann",  # sum of ANN activations a
    "ann_rel",  # sum of a / theta
    "abs_error",  # sum of |n * theta / T - a|
    "rate_sum",  # sum of y = n * theta / T
    "rate_sq",
    "ann_sq",
    "rate_ann",
    "input_rel",  # sum of (summed input current) / theta
    "residual_rel",  # sum of v(T) / theta
    "discarded_rel",  # sum of D / theta (0 for soft reset)
    "clipped",  # units with a > theta
    "uneven",  # units with v(T) outside [0, theta)
)
_K = {name: k for k, name in enumerate(SUMS)}

# The columns of LayerStats.rows(), after layer, depth, neurons and timesteps.
COLUMNS = (
    "firing_rate",
    "silent_fraction",
    "saturated_fraction",
    "ann_rate",
    "rate_error",
    "pearson_r",
    "input_current",
    "discarded_charge",
    "residual_charge",
    "clipped_fraction",
    "uneven_fraction",
)


def saturation_count(t: int) -> int:
    """Spikes from which a unit counts as saturated after t steps."""
    return t - math.floor(t * (1.0 - SATURATED_SHARE) + 1e-9)


# --- the statistics ------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """Per-layer sums at every requested T, over all images seen; shards merge by addition."""

    timesteps: list[int]
    layers: list[str]
    neurons: list[int]  # units per image, per layer
    num_images: int = 0
    sums: Tensor = field(default_factory=lambda: torch.zeros(0))  # [L, nT, len(SUMS)] float64

    def merge(self, other: LayerStats) -> LayerStats:
        if other.timesteps != self.timesteps or other.layers != self.layers:
            raise RmpError("cannot merge layer statistics of different time-steps or layers")
        neurons = [max(a, b) for a, b in zip(self.neurons, other.neurons, strict=True)]
        return LayerStats(
            timesteps=list(self.timesteps),
            layers=list(self.layers),
            neurons=neurons,
            num_images=self.num_images + other.num_images,
            sums=self.sums + other.sums,
        )

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer and T (execution order, T ascending); NaN where undefined."""
        rows = []
        for i, name in enumerate(self.layers):
            for j, t in enumerate(self.timesteps):
                s = {k: float(self.sums[i, j, _K[k]]) for k in SUMS}
                rows.append(
                    {
                        "layer": name,
                        "depth": i + 1,
                        "neurons": self.neurons[i],
                        "timesteps": t,
                        **_columns(s, t),
                    }
                )
        return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _columns(s: dict[str, float], t: int) -> dict[str, float]:
    n = s["units"]
    return {
        "firing_rate": _ratio(s["spikes"], n * t),
        "silent_fraction": _ratio(s["silent"], n),
        "saturated_fraction": _ratio(s["saturated"], n),
        "ann_rate": _ratio(s["ann_rel"], n),
        "rate_error": _ratio(s["abs_error"], s["ann"]) if n > 0 else math.nan,
        "pearson_r": _pearson(s),
        "input_current": _ratio(s["input_rel"], n * t),
        "discarded_charge": _ratio(s["discarded_rel"], n * t),
        "residual_charge": _ratio(s["residual_rel"], n),
        "clipped_fraction": _ratio(s["clipped"], n),
        "uneven_fraction": _ratio(s["uneven"], n),
    }


def _pearson(s: dict[str, float]) -> float:
    n = s["units"]
    if n <= 0:
        return math.nan
    mean_y, mean_a = s["rate_sum"] / n, s["ann"] / n
    var_y = s["rate_sq"] / n - mean_y * mean_y
    var_a = s["ann_sq"] / n - mean_a * mean_a
    cov = s["rate_ann"] / n - mean_y * mean_a
    # Raw float64 moments: a variance below this share of the squared mean is rounding noise.
    tiny = 1e-12
    if var_y <= tiny * max(mean_y * mean_y, 1e-300) or var_a <= tiny * max(mean_a * mean_a, 1e-300):
        return math.nan
    return max(-1.0, min(1.0, cov / math.sqrt(var_y * var_a)))


# --- the ANN activations, from the converted net itself ------------------------------------------
class AnalogActivation(nn.Module):
    """What an IF neuron's rate approximates: ReLU, or min(ReLU, ceiling) for a trained clip."""

    def __init__(self, ceiling: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("ceiling", None if ceiling is None else ceiling.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(x)
        if self.ceiling is None:
            return y
        c = self.ceiling
        if c.dim() == 1 and x.dim() > 2:  # one ceiling per channel (dim 1)
            c = c.view(-1, *([1] * (x.dim() - 2)))
        return torch.minimum(y, c.to(y.dtype))


def analog_network(net: SpikingNet) -> fx.GraphModule:
    """The converted net with every neuron replaced by its analog activation, returning the
    activations of all neuron layers (execution order, one per `net.neuron_names`)."""
    index = {name: i for i, name in enumerate(net.neuron_names)}
    graph = fx.Graph()
    root: dict[str, Any] = {}
    env: dict[fx.Node, fx.Node] = {}
    outputs: list[fx.Node | None] = [None] * len(index)
    for node in net.graph.nodes:
        if node.op == "output":
            continue
        module = node_module(net.module, node)
        new = graph.node_copy(node, lambda a: env[a])
        if isinstance(module, IFNeuron) and str(node.target) in index:
            i = index[str(node.target)]
            target = f"_analog_{i}"
            ceiling = module.ceiling
            if ceiling is not None:
                ceiling = ceiling.to(module.threshold.device)
            root[target] = AnalogActivation(ceiling)
            new.target = target
            outputs[i] = new
        elif node.op in ("call_module", "get_attr"):
            root[str(node.target)] = _resolve(net.module, node)
        env[node] = new
    missing = [name for name, i in index.items() if outputs[i] is None]
    if missing:
        raise RmpError(f"neuron layer '{missing[0]}' is not called in the network's forward")
    graph.output(tuple(outputs))
    gm = fx.GraphModule(root, graph)
    gm.graph.eliminate_dead_code()  # the classifier after the last neuron
    gm.recompile()
    return gm


# --- the probe -----------------------------------------------------------------------------------
def _sum_over_theta(x: Tensor, theta: Tensor) -> Tensor:
    """sum(x / theta) in float64, per channel where theta is (one division per channel)."""
    if theta.dim() == 0:
        return x.sum(dtype=torch.float64) / theta.double()
    others = [d for d in range(x.dim()) if d != 1]
    return (x.sum(dim=others, dtype=torch.float64) / theta.double().view(-1)).sum()


def _theta_like(neuron: IFNeuron, x: Tensor) -> Tensor:
    """The neuron's threshold, broadcastable against a [B, ...] map (per channel on dim 1)."""
    theta = neuron.threshold
    if theta.dim() == 0 or x.dim() <= 2:
        return theta
    return theta.view(-1, *([1] * (x.dim() - 2)))


@dataclass
class UnitState:
    """One layer's per-unit state for the current batch ([B, ...] tensors)."""

    input: Tensor | None  # input current summed over the steps so far (None: not measured)
    spikes: Tensor  # spikes so far (exact integers, float32)
    v: Tensor  # membrane now
    v0: Tensor  # initial membrane v_init * theta (broadcastable)
    v_init: float  # v0 as a fraction of theta
    theta: Tensor  # threshold (broadcastable)
    ann: Tensor  # ANN activation
    start: Tensor | None = None  # per-unit initial membrane set by offset calibration (COS)

    def discarded(self) -> Tensor:
        """Charge balance: what neither the spikes nor the membrane hold (float64)."""
        if self.input is None:
            raise RmpError("the input current was not measured (LayerProbe(input_sums=True))")
        return (
            self.input.double()
            - self.spikes.double() * self.theta.double()
            - (self.v.double() - self.v0.double())
        )


# Comparisons are counted by writing 1.0/0.0 into a float buffer and summing it: on CPU several
# times faster than summing a boolean tensor. Float32 sums, except the three terms of the charge
# balance (float64), whose difference is the discarded charge.
def _ann_sums(a: Tensor, theta: Tensor) -> dict[str, Tensor]:
    """The terms that depend on the ANN activation alone: once per batch, not per T."""
    buf = torch.empty_like(a)
    return {
        "ann": a.sum(),
        "ann_rel": _sum_over_theta(a, theta),
        "ann_sq": torch.mul(a, a, out=buf).sum(),
        "clipped": torch.gt(a, theta, out=buf).sum(),
    }


def _state_sums(u: UnitState, t: int, reset: str) -> dict[str, Tensor | float]:
    """The terms that change with T."""
    n, a, theta, v = u.spikes, u.ann, u.theta, u.v
    units = float(n.numel())
    buf, buf2 = torch.empty_like(n), torch.empty_like(n)
    spikes = n.sum(dtype=torch.float64)
    residual_rel = _sum_over_theta(v, theta)
    start_rel = units * u.v_init if u.start is None else _sum_over_theta(u.start, theta)
    balance = spikes + residual_rel - start_rel  # the input charge when nothing is lost
    if u.input is not None:
        input_rel = _sum_over_theta(u.input, theta)
    elif reset == "soft":  # soft reset: the charge balance holds with nothing discarded
        input_rel = balance
    else:
        raise RmpError("a hard-reset layer needs its input current measured")
    values: dict[str, Tensor | float] = {
        "units": units,
        "spikes": spikes,
        "silent": units - torch.clamp(n, max=1, out=buf).sum(),  # n: non-negative integers
        "saturated": torch.ge(n, saturation_count(t), out=buf).sum(),
        "input_rel": input_rel,
        "residual_rel": residual_rel,
        "discarded_rel": input_rel - balance if reset == "hard" else 0.0,
        "uneven": torch.lt(v, 0, out=buf).sum() + torch.ge(v, theta, out=buf2).sum(),
    }
    y = torch.mul(n, theta / t, out=buf)  # the rate's estimate of the activation
    values["rate_sum"] = y.sum()
    values["rate_sq"] = torch.mul(y, y, out=buf2).sum()
    values["rate_ann"] = torch.mul(y, a, out=buf2).sum()
    values["abs_error"] = y.sub_(a).abs_().sum()
    return values


class LayerProbe:
    """Observes the neuron layers of a SpikingNet during a ChunkedRun (which ends chunks at
    `timesteps` and calls begin/record); `stats()` gives the sums over every batch so far.

    input_sums: also sum the input current of soft-reset layers (hard-reset layers always need it
    for the discarded charge; for soft reset the charge balance gives it, so by default the cost
    of one more add per step is saved)."""

    def __init__(
        self, net: SpikingNet, timesteps: Sequence[int], *, input_sums: bool = False
    ) -> None:
        self.net = net
        self.timesteps = sorted({int(t) for t in timesteps})
        self.input_sums = input_sums
        self.names = list(net.neuron_names)
        self.neurons = [n for _, n in net.named_neurons()]
        self._analog: fx.GraphModule | None = None
        self._hooks: list[Any] = []
        self._active = False
        self._batch = 0
        self._input: list[Tensor | None] = []
        self._spikes: list[Tensor | None] = []
        self._charge: list[Tensor | None] = []
        self._since_fold: list[int] = []
        self._ann: list[Tensor] = []
        self._ann_sums: list[dict[str, Tensor]] = []
        self._sums: Tensor | None = None
        self._neurons_per_image = [0] * len(self.names)
        self.num_images = 0

    # --- lifecycle (driven by ChunkedRun) -------------------------------------------------------
    def attach(self) -> None:
        """Hooks on every neuron layer; the analog net is built for the net's current device."""
        self.detach()
        self._analog = analog_network(self.net)
        for i, neuron in enumerate(self.neurons):
            self._hooks.append(neuron.register_forward_pre_hook(self._input_hook(i)))
            self._hooks.append(neuron.register_forward_hook(self._spike_hook(i)))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._active = False

    def begin(self, x: Tensor) -> None:
        """A new batch (already on the device, in the simulator's layout): ANN activations once."""
        if self._analog is None:
            raise RuntimeError("LayerProbe.begin() before attach()")
        self._batch = x.shape[0]
        self._ann = [a.float() for a in self._analog(x)]
        self._ann_sums = [
            _ann_sums(a, _theta_like(n, a)) for a, n in zip(self._ann, self.neurons, strict=True)
        ]
        n = len(self.neurons)
        self._input, self._spikes, self._charge = [None] * n, [None] * n, [None] * n
        self._since_fold = [0] * n
        self._active = True

    def end(self) -> None:
        self._active = False
        self.num_images += self._batch

    # --- hooks ----------------------------------------------------------------------------------
    def _input_hook(self, i: int) -> Callable[..., None]:
        def hook(neuron: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if not self._active or not (self.input_sums or neuron.reset_mode == "hard"):
                return
            x, b = inputs[0], self._batch
            tc = max(getattr(neuron, "chunk", 1), 1)
            acc = self._input[i]
            if acc is None:
                acc = self._input[i] = torch.zeros_like(x[:b], dtype=torch.float32)
            keep = neuron.keep  # SRP: a silenced unit's input never reaches its membrane
            # One add per step, as the membrane integrates: the same float32 sum for any chunking.
            if tc > 1 and x.shape[0] == b:  # a constant current for all tc steps
                x = x if keep is None else x * keep
                for _ in range(tc):
                    acc.add_(x)
            else:
                for t in range(tc):
                    step = x[t * b : (t + 1) * b]
                    acc.add_(step if keep is None else step * keep)

        return hook

    def _spike_hook(self, i: int) -> Callable[..., None]:
        def hook(neuron: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            if not self._active:
                return
            b = self._batch
            tc = out.shape[0] // b
            charge = self._charge[i]
            if charge is None:
                charge = self._charge[i] = torch.zeros_like(out[:b], dtype=torch.float32)
                self._spikes[i] = torch.zeros_like(charge)
            for t in range(tc):
                charge.add_(out[t * b : (t + 1) * b])  # spikes x theta
                self._since_fold[i] += 1
                if self._since_fold[i] >= _FOLD_STEPS:
                    self._fold(i)
            self._fold(i)

        return hook

    def _fold(self, i: int) -> None:
        """Turn the spike charge summed since the last fold into an exact count."""
        charge, spikes = self._charge[i], self._spikes[i]
        if charge is None or spikes is None or self._since_fold[i] == 0:
            return
        theta = _theta_like(self.neurons[i], charge)
        spikes.add_(torch.round(charge / theta))
        charge.zero_()
        self._since_fold[i] = 0

    # --- per-unit state and the statistics ------------------------------------------------------
    def unit_state(self, i: int) -> UnitState:
        """Layer i's per-unit state now (after the last chunk of the current batch)."""
        neuron = self.neurons[i]
        v = neuron.v
        if v is None or self._spikes[i] is None:
            raise RmpError(f"layer '{self.names[i]}' has not run in this batch")
        theta = _theta_like(neuron, v)
        return UnitState(
            input=self._input[i],
            spikes=self._spikes[i],
            v=v,
            v0=theta * neuron.v_init if neuron.start is None else neuron.start,
            v_init=float(neuron.v_init),
            theta=theta,
            ann=self._ann[i],
            start=neuron.start,
        )

    def record(self, t: int) -> None:
        """Add every layer's sums at T = t (the simulator calls this at the end of step t)."""
        if not self._active or t not in self.timesteps:
            return
        j = self.timesteps.index(t)
        for i, neuron in enumerate(self.neurons):
            u = self.unit_state(i)
            values = {**self._ann_sums[i], **_state_sums(u, t, neuron.reset_mode)}
            device = u.v.device
            sums = torch.stack(
                [torch.as_tensor(values[k], dtype=torch.float64, device=device) for k in SUMS]
            )
            if self._sums is None:  # stays on the device: no synchronisation until stats()
                shape = (len(self.neurons), len(self.timesteps), len(SUMS))
                self._sums = torch.zeros(shape, dtype=torch.float64, device=device)
            self._sums[i, j] += sums
            self._neurons_per_image[i] = u.v[0].numel()

    def stats(self) -> LayerStats:
        shape = (len(self.neurons), len(self.timesteps), len(SUMS))
        sums = self._sums if self._sums is not None else torch.zeros(shape, dtype=torch.float64)
        return LayerStats(
            timesteps=list(self.timesteps),
            layers=list(self.names),
            neurons=list(self._neurons_per_image),
            num_images=self.num_images,
            sums=sums.detach().to("cpu", copy=True),
        )
