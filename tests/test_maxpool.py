"""Spike-gated max-pooling: a plain step-by-step reference, rates, exactness, conversion, synops."""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.convert.bn_fold import replace_submodule
from rmp_cli.convert.maxpool import find_max_pools, replace_max_pools
from rmp_cli.errors import RmpError
from rmp_cli.snn import ChunkedRun, SpikingNet, run_batch, simulate
from rmp_cli.snn.maxpool import MaxPoolGate, PoolGeometry, StaticMaxPool
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture
from tests.test_simulator import PlainIF


# --- the reference: one step at a time, a Python loop over windows --------------------------------
def reference_windows(geometry: PoolGeometry, spatial: tuple[int, ...]) -> list[list[tuple]]:
    """Input positions of every output window (row-major), from PyTorch's definitions: regular
    windows start at o*s - p and step by the dilation (the output length is the ANN op's);
    adaptive windows span floor(o*L/n) .. ceil((o+1)*L/n)."""
    probe = torch.zeros(1, 1, *spatial)
    out_shape = geometry.max_pool(probe).shape[2:]
    per_axis = []
    for axis, (length, n) in enumerate(zip(spatial, out_shape, strict=True)):
        windows = []
        for o in range(n):
            if geometry.output_size is not None:
                start, end = (o * length) // n, -((-(o + 1) * length) // n)
                windows.append(list(range(start, end)))
            else:
                k, s = geometry.kernel[axis], geometry.stride[axis]
                p, d = geometry.padding[axis], geometry.dilation[axis]
                pos = [o * s - p + j * d for j in range(k)]
                windows.append([e for e in pos if 0 <= e < length])
        per_axis.append(windows)
    return [list(itertools.product(*ws)) for ws in itertools.product(*per_axis)], out_shape


class ReferenceGate(nn.Module):
    """A_i += x_i; per window: the current input of the unit with the largest A (this step
    included); among tied leaders the smallest current input."""

    def __init__(self, geometry: PoolGeometry) -> None:
        super().__init__()
        self.geometry = geometry
        self.total: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.total = x.clone() if self.total is None else self.total + x
        windows, out_shape = reference_windows(self.geometry, tuple(x.shape[2:]))
        out = torch.empty(x.shape[0], x.shape[1], len(windows))
        for b, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
            for w, positions in enumerate(windows):
                held = [float(self.total[(b, c, *q)]) for q in positions]
                top = max(held)
                leaders = [q for q, a in zip(positions, held, strict=True) if a == top]
                out[b, c, w] = min(float(x[(b, c, *q)]) for q in leaders)
        return out.view(x.shape[0], x.shape[1], *out_shape)


def run_gate(gate: MaxPoolGate, steps: Tensor, chunk: int, channels_last: bool = False) -> Tensor:
    """Feed [T, B, C, ...] through the gate in chunks; outputs [T, B, C, ...]."""
    t_total, batch = steps.shape[:2]
    gate.reset_state()
    outs = []
    for t0 in range(0, t_total, chunk):
        part = steps[t0 : t0 + chunk]
        gate.configure(part.shape[0], batch)
        flat = part.reshape(-1, *steps.shape[2:])
        if channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        outs.append(gate(flat).reshape(part.shape[0], batch, *gate_out_shape(gate, steps)))
    return torch.cat(outs)


def gate_out_shape(gate: MaxPoolGate, steps: Tensor) -> tuple[int, ...]:
    return tuple(gate.geometry.max_pool(steps[0]).shape[1:])


def spike_trains(shape: tuple[int, ...], seed: int, theta: Tensor | float = 1.0) -> Tensor:
    """Spikes (0 or theta per channel) from IF neurons driven by currents that vary in time."""
    gen = torch.Generator().manual_seed(seed)
    t_total, batch, channels = shape[:3]
    rate = torch.rand(batch, channels, *shape[3:], generator=gen)
    drift = torch.randn(t_total, 1, 1, *([1] * (len(shape) - 3)), generator=gen).cumsum(0) * 0.05
    current = (rate + drift).clamp(0, 1)  # rates that wander over time, shared drift
    v, spikes = torch.zeros(batch, channels, *shape[3:]), []
    for t in range(t_total):
        v = v + current[t]
        s = (v >= 1).float()
        v = v - s
        spikes.append(s)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    theta = theta.view(1, -1, *([1] * (len(shape) - 3))) if theta.dim() else theta
    return torch.stack(spikes) * theta


GEOMETRIES = [
    PoolGeometry.regular(2, 2),
    PoolGeometry.regular(2, 3, 2, 1),  # overlapping windows, padding (ResNet stem)
    PoolGeometry.regular(2, (2, 3), (1, 2), (1, 0), (2, 1), ceil_mode=True),
    PoolGeometry.regular(2, 3, 2, 0, 1, ceil_mode=True),  # a partial last window
    PoolGeometry.regular(1, 3, 2, 1),
    PoolGeometry.regular(3, 2, (1, 2, 2), 0, 1, ceil_mode=True),
    PoolGeometry.adaptive(2, (2, 3)),  # unequal windows on 5x7
    PoolGeometry.adaptive(1, 4),
]
SPATIAL = {1: (7,), 2: (5, 7), 3: (3, 4, 5)}


# --- geometry: a constant input gives the ANN op at every step ------------------------------------
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_constant_input_is_the_ann_max_pool_for_every_geometry(dims: int) -> None:
    gen = torch.Generator().manual_seed(dims)
    checked = 0
    for k, s, p, d, ceil in itertools.product((1, 2, 3), (None, 1, 2, 3), (0, 1), (1, 2), (0, 1)):
        if 2 * p > d * (k - 1) + 1:
            continue  # PyTorch refuses padding above half the window
        x = torch.randn(2, 3, *SPATIAL[dims], generator=gen)
        geometry = PoolGeometry.regular(dims, k, s, p, d, bool(ceil))
        try:
            expected = geometry.max_pool(x)
        except RuntimeError:  # the window does not fit: the gate refuses it too
            with pytest.raises(RmpError, match="does not fit"):
                run_gate(MaxPoolGate(geometry), x.expand(1, *x.shape), chunk=1)
            continue
        out = run_gate(MaxPoolGate(geometry), x.expand(4, *x.shape), chunk=3)
        assert out.shape[1:] == expected.shape
        assert torch.equal(out, expected.expand_as(out)), geometry
        checked += 1
    for n in (1, 2, 3, 4, 5):
        x = torch.randn(2, 3, *SPATIAL[dims], generator=gen)
        geometry = PoolGeometry.adaptive(dims, (n,) + (None,) * (dims - 1))
        out = run_gate(MaxPoolGate(geometry), x.expand(3, *x.shape), chunk=2)
        assert torch.equal(out, geometry.max_pool(x).expand_as(out)), geometry
        checked += 1
    assert checked > 40


# --- chunked == step-by-step reference, bit for bit -----------------------------------------------
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.describe())
@pytest.mark.parametrize("kind", ["spikes", "currents"])
def test_chunked_gate_equals_step_by_step_reference(geometry: PoolGeometry, kind: str) -> None:
    shape = (11, 2, 3, *SPATIAL[geometry.dims])
    if kind == "spikes":
        steps = spike_trains(shape, seed=1, theta=torch.tensor([0.3, 1.0, 2.5]))
    else:  # analog, signed currents (a max-pool between a conv and its activation)
        steps = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    reference = ReferenceGate(geometry)
    expected = torch.stack([reference(steps[t]) for t in range(shape[0])])
    layouts = [False, True] if geometry.dims == 2 else [False]
    for chunk, channels_last in itertools.product([1, 4, 11], layouts):
        out = run_gate(MaxPoolGate(geometry), steps, chunk, channels_last)
        assert torch.equal(out, expected), (chunk, channels_last)


def test_state_is_reset_per_batch_and_follows_the_batch_size() -> None:
    gate = MaxPoolGate(PoolGeometry.regular(2, 2))
    a = spike_trains((6, 2, 1, 4, 4), seed=3)
    b = spike_trains((6, 3, 1, 4, 4), seed=4)
    first = run_gate(gate, a, 4)
    run_gate(gate, b, 4)  # another batch, another size
    assert torch.equal(run_gate(gate, a, 4), first)
    gate.release()
    assert gate.total is None


# --- rates -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("theta", [1.0, 0.37])
def test_output_spike_count_is_the_largest_input_count_at_every_step(theta: float) -> None:
    """Spike inputs whose rates vary in time: after every step, each window has passed exactly as
    many spikes as its busiest input unit has fired (output rate == largest input rate)."""
    steps = spike_trains((300, 4, 2, 6, 6), seed=5, theta=theta)
    out = run_gate(MaxPoolGate(PoolGeometry.regular(2, 2)), steps, chunk=32)
    assert set(out.unique().tolist()) <= {0.0, float(torch.tensor(theta))}  # spikes carry theta
    counts_in = (steps != 0).cumsum(0).float()
    counts_out = (out != 0).cumsum(0).float()
    largest = F.max_pool2d(counts_in.flatten(0, 1), 2).view_as(counts_out)
    assert torch.equal(counts_out, largest)
    assert counts_out[-1].max() > 100  # the test saw real traffic


def test_constant_rate_spike_inputs_pass_the_largest_rate() -> None:
    """Regular spike trains at fixed rates, out of phase: the window passes max rate * T."""
    t_total = 240
    rates = torch.tensor([0.5, 1 / 3, 0.25, 0.1])  # one window, four units
    phase = torch.tensor([0.25, 0.9, 0.6, 0.0])
    t = torch.arange(1, t_total + 1, dtype=torch.float32)[:, None]
    counts = torch.floor(t * rates + phase)
    steps = torch.diff(counts, dim=0, prepend=torch.floor(phase)[None]).view(t_total, 1, 1, 2, 2)
    out = run_gate(MaxPoolGate(PoolGeometry.regular(2, 2)), steps, chunk=16)
    assert float(out.sum()) == float(steps.sum(0).max())
    assert float(out.sum()) / t_total == pytest.approx(0.5, abs=1 / t_total)


def test_varying_analog_input_rate_tends_to_the_largest_mean() -> None:
    """Non-spike currents with noise: the window's mean output approaches the largest mean input
    as T grows (the gate picks a unit by its accumulated input; it settles on the largest)."""
    gen = torch.Generator().manual_seed(6)
    means = torch.tensor([0.2, 0.5, 0.45, -0.1]).view(1, 1, 2, 2)
    t_total = 4096
    steps = means + 0.8 * torch.randn(t_total, 64, 1, 2, 2, generator=gen)  # 64 trials
    out = run_gate(MaxPoolGate(PoolGeometry.regular(2, 2)), steps, chunk=256)[:, :, 0, 0, 0]
    errors = [float((out[:t].mean(0) - 0.5).abs().mean()) for t in (64, 512, 4096)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.02


# --- in a network ----------------------------------------------------------------------------------
class PoolNet(nn.Module):
    """Max-pool in the stem (before the first neuron) and after neurons, 2x2 and 3x3/s2/p1,
    a functional call and a module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_pool = nn.MaxPool2d(2, stride=1)
        self.conv1, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv2, self.act2 = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.conv3, self.act3 = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(6 * 2 * 2, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act1(self.conv1(self.stem_pool(x))))  # 9x9 -> 8x8 -> 4x4
        x = self.act2(self.conv2(x))
        x = self.pool(self.act3(self.conv3(x)))  # the same module again: 4x4 -> 2x2
        x = F.max_pool2d(x, 1)  # functional (a 1x1 window)
        return self.fc(x.flatten(1))


def pool_net(seed: int = 0, scale: float = 0.7) -> tuple[nn.Module, SpikingNet, Tensor]:
    ann = snn_nets.kaiming(PoolNet(), seed)
    x = snn_nets.images(6, seed=seed + 1, size=9)
    net = to_spiking(ann)
    balance_thresholds(net, ann, x, method="max_act", scale=scale)
    return ann, net, x


def reference_run(net: SpikingNet, x: Tensor, steps: int) -> tuple[list[Tensor], Tensor]:
    """A plain step-by-step simulation: full forward per step, reference neurons and gates."""
    module = copy.deepcopy(net.module)
    neurons = []
    for name, n in net.named_neurons():
        neurons.append(PlainIF(n.threshold, net.reset_mode, net.v_init))
        replace_submodule(module, name, neurons[-1])
    for gate in net.gates:
        replace_submodule(module, gate.name, ReferenceGate(gate.geometry))
    acc, potentials = None, []
    with torch.no_grad():
        for _ in range(steps):
            out = module(x)
            acc = out.clone() if acc is None else acc + out
            potentials.append(acc.clone())
    return potentials, torch.tensor([n.spikes for n in neurons])


def test_converter_gates_every_call_site_and_leaves_the_stem_pool_exact() -> None:
    _, net, _ = pool_net()
    assert [g.name for g in net.gates] == ["stem_pool", "pool", "pool#2", "max_pool2d"]
    assert len({id(g) for g in net.gates}) == 4  # one state per call site
    plan = net.plan(spiking_input=False)
    assert any(isinstance(m, StaticMaxPool) for m in plan.stem.modules())
    assert not any(isinstance(m, MaxPoolGate) for m in plan.stem.modules())
    # With spiking input the first pool sees spikes: it is gated in the body.
    assert not any(
        isinstance(m, StaticMaxPool) for m in net.plan(spiking_input=True).body.modules()
    )


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_chunked_network_with_gates_equals_step_by_step_reference(reset: str) -> None:
    _, net, x = pool_net()
    net.reset_mode = reset
    steps = 19
    potentials, spikes = reference_run(net, x, steps)
    assert int(spikes[-1].sum()) > 0
    wanted = [1, 5, 8, steps]
    for chunk in [1, 6, steps]:
        with torch.inference_mode(), ChunkedRun(net, chunk=chunk, channels_last=False) as run:
            trace = run_batch(run, x, wanted)
        for i, t in enumerate(wanted):
            assert torch.equal(trace.potentials[i], potentials[t - 1]), (chunk, t)
        assert torch.equal(trace.layer_spikes, spikes), chunk


def test_gated_network_results_do_not_depend_on_chunk_or_layout() -> None:
    _, net, x = pool_net(seed=3)
    data = [(x, torch.arange(6) % 10)] * 2
    runs = [
        simulate(net, data, [3, 17, 40], chunk=chunk, channels_last=layout)
        for chunk, layout in [(1, False), (7, False), (40, False), (7, True), ("auto", True)]
    ]
    for r in runs[1:3]:
        assert r.correct == runs[0].correct and r.synops == runs[0].synops
        assert r.spikes_per_layer == runs[0].spikes_per_layer
    assert runs[4].correct == runs[3].correct and runs[4].synops == runs[3].synops


def test_soft_reset_snn_with_gates_approaches_the_ann() -> None:
    """Max-activation thresholds (no clipping): the rate-coded logits of the gated SNN converge
    to the ANN's max-pool logits, error ~1/T."""
    ann, net, x = pool_net(seed=4, scale=1.0)
    with torch.no_grad():
        logits = ann(x)
    wanted = [16, 128, 1024]
    with torch.inference_mode(), ChunkedRun(net, chunk=64) as run:
        trace = run_batch(run, x, wanted)
    errors = [
        float((p / t - logits).abs().max()) for p, t in zip(trace.potentials, wanted, strict=True)
    ]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.01 * float(logits.abs().max())


def test_spikes_and_synops_after_a_gate_by_hand() -> None:
    """2x2 image, identity 1x1 conv, IF neurons (threshold 1, soft reset), a 2x2 gate, a linear
    layer with 3 outputs. Currents 0.5, 0.25, 1.0, 0.0 fire 4, 2, 8, 0 spikes in 8 steps; the
    gate passes the busiest unit's 8 spikes; each reaches 3 synapses: 24 synaptic operations."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act = nn.Conv2d(1, 1, 1, bias=False), nn.ReLU()
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(1, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.pool(self.act(self.conv(x))).flatten(1))

    ann = Tiny().eval()
    with torch.no_grad():
        ann.conv.weight.fill_(1.0)
    net = to_spiking(ann)  # thresholds 1.0
    x = torch.tensor([[0.5, 0.25], [1.0, 0.0]]).view(1, 1, 2, 2)
    result = simulate(net, [(x, torch.zeros(1, dtype=torch.long))], [4, 8], chunk=3)
    assert result.spikes_per_layer == {"act": [2 + 1 + 4, 4 + 2 + 8]}
    assert result.synops == [4 * 3.0, 8 * 3.0]


# --- conversion: modes, geometry, refusals ---------------------------------------------------------
def test_avg_mode_replaces_max_by_average_pooling_of_the_same_window() -> None:
    ann = snn_nets.kaiming(PoolNet(), 0)
    avg = replace_max_pools(copy.deepcopy(ann), "avg")
    assert not find_max_pools(avg)[1]
    pools = [m for m in avg.modules() if isinstance(m, nn.AvgPool2d)]
    assert {(p.kernel_size, p.stride, p.padding, p.count_include_pad) for p in pools} == {
        ((2, 2), (1, 1), (0, 0), False),
        ((3, 3), (2, 2), (1, 1), False),
        ((1, 1), (1, 1), (0, 0), False),
    }
    x = snn_nets.images(3, size=9)
    expected = F.avg_pool2d(x, 2, 1)  # the stem pool, as average pooling
    probe = []
    avg.get_submodule("conv1").register_forward_pre_hook(lambda _m, i: probe.append(i[0]))
    avg(x)
    assert torch.equal(probe[0], expected)
    net = to_spiking(ann, maxpool="avg")
    assert not net.gates


def test_adaptive_max_pool_is_gated_or_averaged() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten(), nn.Linear(24, 5)
    ).eval()
    assert [g.geometry.output_size for g in to_spiking(model).gates] == [(2, 3)]
    avg = to_spiking(model, maxpool="avg").module
    assert isinstance(avg[2], nn.AdaptiveAvgPool2d) and avg[2].output_size == (2, 3)


def test_refuse_mode_names_the_max_pool() -> None:
    with pytest.raises(RmpError, match=r"layer 'features.2' is MaxPool2d: max-pooling is refused"):
        to_spiking(snn_nets.MaxPoolNet(), maxpool="refuse")

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Linear(18, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(F.max_pool2d(self.act(self.conv(x)), 2).flatten(1))

    with pytest.raises(RmpError, match=r"applies max_pool2d\(\): max-pooling is refused"):
        to_spiking(Functional(), maxpool="refuse")
    to_spiking(snn_nets.make("vgg"), maxpool="refuse")  # no max-pool: nothing to refuse


@pytest.mark.parametrize(
    ("pool", "mode", "fragment"),
    [
        (nn.MaxPool2d(2, return_indices=True), "gate", "return_indices=True"),
        (nn.MaxPool2d(2, dilation=2), "avg", "average pooling has no dilation"),
        (nn.MaxPool2d(2), "max", "unknown snn.maxpool 'max'; choose one of: gate, avg, refuse"),
    ],
)
def test_unconvertible_pools_and_bad_modes_are_one_clear_error(
    pool: nn.Module, mode: str, fragment: str
) -> None:
    # Refused while converting, before any input runs: the linear layer's size does not matter.
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), pool, nn.Flatten(), nn.Linear(1, 2))
    with pytest.raises(RmpError, match=re.escape(fragment)):
        to_spiking(model, maxpool=mode)


class PoolThenFunctional(nn.Module):
    """A module max-pool, then a functional one that also returns indices."""

    def __init__(self, with_indices: bool) -> None:
        super().__init__()
        self.conv, self.act, self.pool = nn.Conv2d(3, 2, 1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc, self.with_indices = nn.Linear(8, 2), with_indices

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.act(self.conv(x)))
        if self.with_indices:
            x = F.max_pool2d_with_indices(x, 1)[0]
        else:
            x = F.max_pool2d(x, 1, return_indices=True)[0]
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("with_indices", [True, False])
def test_functional_max_pool_with_indices_is_refused_by_place(with_indices: bool) -> None:
    with pytest.raises(RmpError, match=r"the model's forward applies max_pool2d.*unpooling"):
        to_spiking(PoolThenFunctional(with_indices))


def test_dilated_max_pool_is_gated() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 2, 1), nn.ReLU(), nn.MaxPool2d(2, dilation=2), nn.Flatten(), nn.Linear(18, 2)
    ).eval()
    net = to_spiking(model)
    assert net.gates[0].geometry.dilation == (2, 2)
    x = snn_nets.images(2)
    assert simulate(net, [(x, torch.zeros(2, dtype=torch.long))], [5]).num_images == 2


def test_gate_refuses_wrong_shapes_loudly() -> None:
    gate = MaxPoolGate(PoolGeometry.regular(2, 2))
    gate.configure(3, 2)
    with pytest.raises(RuntimeError, match="not Tc\\*B=6"):
        gate(torch.zeros(4, 1, 4, 4))
    with pytest.raises(RuntimeError, match="spatial dims"):
        gate(torch.zeros(6, 1, 4))
