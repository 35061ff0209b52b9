"""Signed spikes, bursts and pre-step offset calibration: closed forms, a step-by-step reference,
operation counts, diagnostics, shards, and the one-line refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from rmp_cli.convert import to_spiking
from rmp_cli.convert.bn_fold import replace_submodule
from rmp_cli.errors import RmpError
from rmp_cli.snn import ChunkedRun, IFNeuron, LayerProbe, SpikingNet, run_batch, simulate
from rmp_cli.snn.opcount import fan_out_map
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture
from tests.test_simulator import calibrated, labelled


def drive(currents: list[float] | Tensor, theta: float | Tensor = 1.0, **options: object):
    """One neuron per column through the steps of `currents` [T, N]: (spikes [T, N] as whole
    numbers, final membrane, spike counts per step)."""
    x = torch.as_tensor(currents, dtype=torch.float32).contiguous()
    x = x.view(x.shape[0], 1, -1) if x.dim() <= 2 else x
    neuron = IFNeuron(theta, reset=str(options.pop("reset", "soft")))
    neuron.v_init = float(options.pop("v_init", 0.0))
    neuron.signed = bool(options.pop("signed", False))
    neuron.max_spikes = int(options.pop("max_spikes", 1))
    neuron.backend = str(options.pop("backend", "eager"))
    neuron.count_spikes = True
    steps = x.shape[0]
    neuron.configure(steps, x.shape[1])
    out = neuron(x.flatten(0, 1)).view(x.shape)
    theta_t = torch.as_tensor(theta)
    theta_b = theta_t.view(-1) if theta_t.dim() else theta_t
    return torch.round(out / theta_b), neuron.v.clone(), neuron.last_counts


# --- closed forms --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_a_signed_neuron_returns_the_extra_charge_of_a_falling_current(backend: str) -> None:
    # The running input rises to +2 theta and falls back to 0: a plain IF neuron keeps the two
    # spikes it fired (and ends at -2 theta); the signed one takes both back, ending where its
    # input ended: net count 0 = floor(0 / theta), membrane 0.
    theta = 0.75
    currents = [[2 * theta], [0.0], [-2 * theta], [0.0], [0.0]]
    plain, v_plain, _ = drive(currents, theta, backend=backend)
    signed, v_signed, counts = drive(currents, theta, signed=True, backend=backend)
    assert plain.flatten().tolist() == [1, 1, 0, 0, 0] and v_plain.item() == -2 * theta
    assert signed.flatten().tolist() == [1, 1, -1, -1, 0] and v_signed.item() == 0.0
    assert counts.tolist() == [1, 1, 1, 1, 0]  # a negative spike is a spike too
    # With bursts of two the net count is the quantised running input at every step.
    burst, v_burst, _ = drive(currents, theta, signed=True, max_spikes=2, backend=backend)
    running = torch.tensor(currents).flatten().cumsum(0)
    assert torch.equal(burst.flatten().cumsum(0), torch.floor(running / theta))
    assert burst.flatten().tolist() == [2, 0, -2, 0, 0] and v_burst.item() == 0.0


def test_signed_spikes_never_take_back_more_than_was_fired() -> None:
    spikes, v, _ = drive([[-3.0], [0.0], [1.0]], 1.0, signed=True)
    assert spikes.flatten().tolist() == [0, 0, 0] and v.item() == -2.0


@pytest.mark.parametrize("backend", ["eager", "cpu"])
@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_burst_rate_is_min_of_g_and_input_over_theta(backend: str, reset: str) -> None:
    theta, steps = 0.5, 64
    ratios = torch.tensor([0.0, 0.375, 1.0, 1.625, 2.5, 3.25, 5.0])  # I / theta, dyadic: exact
    for g in (1, 2, 3):
        currents = (ratios * theta).expand(steps, -1)
        spikes, _, counts = drive(currents, theta, max_spikes=g, reset=reset, backend=backend)
        rate = spikes.sum(0).flatten() / steps
        ideal = torch.clamp(ratios, max=g)
        if reset == "soft":  # the residual carries over: within one spike of T * min(G, I/theta)
            assert bool(((ideal - rate).abs() <= 1 / steps).all()), (g, rate, ideal)
            assert torch.equal(spikes.sum(0).flatten(), torch.floor(steps * ideal))
        else:  # to zero after the burst: whole multiples of I / theta are still exact
            whole = ratios == ratios.round()
            assert torch.equal(rate[whole], ideal[whole])
        assert int(spikes.max()) <= g and int(counts.sum()) == int(spikes.sum())


def net_of_identity_neurons(n: int, theta: float) -> SpikingNet:
    """Constant input x straight into one neuron layer whose spikes are read out unweighted."""
    ann = nn.Sequential(nn.Linear(n, n, bias=False), nn.ReLU(), nn.Linear(n, n, bias=False))
    with torch.no_grad():
        ann[0].weight.copy_(torch.eye(n))
        ann[2].weight.copy_(torch.eye(n))
    net = to_spiking(ann.eval())
    net.thresholds = [torch.tensor(theta)]
    return net


@pytest.mark.parametrize("offset", ["cos", "srp"])
@pytest.mark.parametrize("v_init", [0.0, 0.5])
def test_presteps_leave_the_counted_rates_within_theta_over_t_of_the_ideal(
    offset: str, v_init: float
) -> None:
    theta = 0.8
    inputs = torch.linspace(-1.5, 1.5, 25) * theta  # below zero, inside [0, theta], above
    net = net_of_identity_neurons(25, theta)
    net.v_init = v_init
    ideal = inputs.clamp(0, theta)
    for steps in (1, 2, 4, 8, 16):
        with torch.inference_mode(), ChunkedRun(net, chunk=3, presteps=4, offset=offset) as run:
            trace = run_batch(run, inputs[None], [steps])
        rate = trace.potentials[0, 0] / steps  # spikes x theta per step
        assert bool(((rate - ideal).abs() <= theta / steps + 1e-6).all()), (steps, rate)


def test_cos_shifts_the_start_by_one_theta_to_remove_or_add_one_spike() -> None:
    # Over the same K steps: one spike too many (fired, then the input went negative: v(K) < 0)
    # is removed; one too few (v(K) >= theta: the charge came late) is added.
    theta = 1.0
    currents = torch.tensor([[1.0, 0.0], [-0.5, 0.0], [0.0, 0.0], [0.0, 2.5]]).view(4, 1, 2)
    neuron = IFNeuron(theta)
    neuron.count_spikes = True
    neuron.configure(4, 1)
    neuron.tally_presteps = True
    before = torch.round(neuron(currents.flatten(0, 1)).view(4, 2) / theta).sum(0)
    neuron.tally_presteps = False
    neuron.calibrate("cos")
    assert neuron.start.flatten().tolist() == [-1.0, 1.0]
    after = torch.round(neuron(currents.flatten(0, 1)).view(4, 2) / theta).sum(0)
    assert before.tolist() == [1, 1] and after.tolist() == [0, 2]


def test_srp_silences_the_neurons_whose_membrane_ends_negative() -> None:
    neuron = IFNeuron(1.0)
    neuron.configure(3, 1)
    x = torch.tensor([[2.0, 0.3, 0.2], [-1.6, 0.3, -0.4], [0.0, 0.3, 0.0]])
    neuron(x)  # membranes: -0.6, 0.9 (after one spike... no: 0.9 < 1), -0.2
    neuron.calibrate("srp")
    assert neuron.keep.flatten().tolist() == [0.0, 1.0, 0.0]
    out = neuron(torch.full((3, 3), 0.6))
    assert out[:, 0].abs().sum() == 0 and out[:, 2].abs().sum() == 0 and out[:, 1].sum() > 0


# --- chunked == step by step, with a reference of its own ---------------------------------------
class ReferenceIF(nn.Module):
    """The rule of neurons.py written out plainly, one step per forward: up to G spikes of
    either sign, the net count n as memory, soft or hard reset."""

    def __init__(self, theta: Tensor, reset: str, v_init: float, signed: bool, g: int) -> None:
        super().__init__()
        self.theta, self.reset, self.v_init, self.signed, self.g = theta, reset, v_init, signed, g
        self.v: Tensor | None = None
        self.n: Tensor | None = None
        self.spikes: list[int] = []

    def forward(self, current: Tensor) -> Tensor:
        theta = (
            self.theta.view(-1, *([1] * (current.dim() - 2))) if self.theta.dim() else self.theta
        )
        if self.v is None:
            self.v = torch.zeros_like(current) + self.v_init * theta
            self.n = torch.zeros_like(current)
        m = self.v + current
        r, s = m.clone(), torch.zeros_like(m)
        for _ in range(self.g):
            d = (r >= theta).float()
            if self.signed:
                d = d - ((r <= -theta) & (self.n > 0)).float()
                self.n = self.n + d
            r = r - d * theta
            s = s + d
        self.v = r if self.reset == "soft" else m - m * (s != 0).float()
        self.spikes.append(int(s.abs().sum()))
        return s * theta


def reference_run(net: SpikingNet, x: Tensor, steps: int, signed: bool, g: int):
    module = copy.deepcopy(net.module).to(memory_format=torch.channels_last)
    neurons = []
    for name, n in net.named_neurons():
        neurons.append(ReferenceIF(n.threshold, net.reset_mode, net.v_init, signed, g))
        replace_submodule(module, name, neurons[-1])
    x = x.contiguous(memory_format=torch.channels_last)
    potentials, acc = [], None
    with torch.no_grad():
        for _ in range(steps):
            out = module(x)
            acc = out.clone() if acc is None else acc + out
            potentials.append(acc.clone())
    return potentials, torch.tensor([n.spikes for n in neurons])


@pytest.mark.parametrize(
    ("name", "reset", "signed", "g"),
    [
        ("resnet", "soft", True, 1),  # residual junctions
        ("resnet", "hard", False, 3),
        ("vgg", "soft", True, 2),  # per-channel thresholds
        ("vgg", "soft", False, 2),
    ],
)
def test_chunked_simulation_equals_the_step_by_step_reference(
    name: str, reset: str, signed: bool, g: int
) -> None:
    steps = 17
    net = calibrated(name, per_channel=name == "vgg", scale=0.5)  # low thresholds: bursts
    net.reset_mode = reset
    net.signed, net.max_spikes = signed, g
    net.neuron_backend = "eager"
    x = snn_nets.images(4, seed=1)
    potentials, spikes = reference_run(net, x, steps, signed, g)
    assert int(spikes.sum()) > 0
    wanted = [1, 5, 6, steps]
    for backend in ("eager", "auto"):
        net.neuron_backend = backend
        for chunk in (1, 4, steps):
            with torch.inference_mode(), ChunkedRun(net, chunk=chunk, channels_last=True) as run:
                trace = run_batch(run, x, wanted)
            for i, t in enumerate(wanted):
                assert torch.equal(trace.potentials[i], potentials[t - 1]), (backend, chunk, t)
            assert torch.equal(trace.layer_spikes, spikes), (backend, chunk)


def test_the_gated_max_pool_takes_bursts_and_signed_spikes_chunk_invariantly() -> None:
    ann = snn_nets.kaiming(snn_nets.MaxPoolNet(), seed=0)
    net = to_spiking(ann)
    net.thresholds = [torch.tensor(0.05)]
    net.signed, net.max_spikes = True, 3
    data = labelled(8)
    results = [simulate(net, data, [3, 10], chunk=c) for c in (1, 4, 10)]
    assert max(max(v) for v in results[0].spikes_per_layer.values()) > 0
    for other in results[1:]:
        assert other.correct == results[0].correct
        assert other.spikes_per_layer == results[0].spikes_per_layer
        assert other.synops == results[0].synops


@pytest.mark.parametrize("offset", ["cos", "srp"])
def test_presteps_are_chunk_invariant_and_t_max_invariant(offset: str) -> None:
    net = calibrated("resnet")
    net.v_init = 0.5
    data = labelled()
    together = simulate(net, data, [1, 6, 13], chunk=4, presteps=3, offset=offset)
    for chunk in (1, 5):
        again = simulate(net, data, [1, 6, 13], chunk=chunk, presteps=3, offset=offset)
        assert again.correct == together.correct and again.synops == together.synops
    alone = simulate(net, data, [6], chunk=4, presteps=3, offset=offset)
    assert alone.correct[1] == [together.correct[1][1]]
    assert alone.synops == [together.synops[1]]
    assert together.rows()[0]["presteps"] == 3


def test_presteps_spend_operations_at_every_t() -> None:
    net = calibrated("vgg")
    data = labelled()
    plain = simulate(net, data, [1, 4], chunk=4)
    with_pre = simulate(net, data, [1, 4], chunk=4, presteps=4, offset="srp")
    # the first step of a run with pre-steps has already paid for four
    pre = with_pre.synops[0] - plain.synops[0]
    assert pre > 0 and with_pre.synops[0] >= plain.synops[1] * 0.5


def test_shards_merge_to_one_run_with_every_option() -> None:
    net = calibrated("vgg", per_channel=True)
    net.signed, net.max_spikes = True, 2
    data = labelled()
    kw = dict(chunk=4, presteps=2, offset="cos", layer_stats=True)
    whole = simulate(net, data, [3, 9], **kw)
    merged = simulate(net, data[:1], [3, 9], **kw).merge(simulate(net, data[1:], [3, 9], **kw))
    assert merged.correct == whole.correct and merged.synops == whole.synops
    assert merged.spikes_per_layer == whole.spikes_per_layer
    assert torch.allclose(merged.layers.sums, whole.layers.sums, rtol=1e-9)
    with pytest.raises(RmpError, match="cannot merge"):
        whole.merge(simulate(net, data, [3, 9], chunk=4, layer_stats=True))


# --- counts: a burst of k is k operations, a negative spike one ----------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
def test_synops_count_every_spike_of_a_burst_and_every_negative_spike(channels_last: bool) -> None:
    torch.manual_seed(0)
    ann = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU()
    )
    ann = nn.Sequential(*ann, nn.Flatten(), nn.Linear(5 * 8 * 8, 10)).eval()
    net = to_spiking(ann)
    net.thresholds = [torch.tensor(0.3), torch.tensor([0.05, 0.1, 0.15, 0.2, 0.25])]
    net.signed, net.max_spikes = True, 3
    x = snn_nets.images(3, seed=2)
    seen: dict[str, list[Tensor]] = {"2": [], "5": []}
    hooks = [
        net.module.get_submodule(k).register_forward_hook(
            lambda m, i, o, k=k: seen[k].append(i[0].detach().clone())
        )
        for k in seen
    ]
    thetas = {"2": net.neurons[0].threshold, "5": net.neurons[1].threshold}
    with torch.inference_mode(), ChunkedRun(net, chunk=4, channels_last=channels_last) as run:
        trace = run_batch(run, x, [12])
    for h in hooks:
        h.remove()
    expected = 0.0
    for name, chunks in seen.items():
        layer = net.module.get_submodule(name)
        for spikes in chunks:
            theta = thetas[name]
            frame = spikes.shape[1:]
            if name == "5":  # flattened [N, C*H*W]: channel-major
                theta = theta.repeat_interleave(64)
            sizes = torch.round(spikes.abs() / theta)
            fan = fan_out_map(layer, frame)
            expected += float((sizes.reshape(sizes.shape[0], -1).double() * fan).sum())
    assert int(trace.layer_events.sum()) == round(expected)
    assert bool((torch.cat(seen["5"]) < 0).any())  # negative spikes were there to count
    assert int(torch.round(torch.cat(seen["2"]) / 0.3).max()) > 1  # and bursts


@pytest.mark.parametrize("offset", [None, "cos", "srp"])
def test_probes_keep_the_charge_balance_with_signed_bursts_and_presteps(offset: str | None) -> None:
    net = calibrated("resnet", scale=0.5)
    net.v_init = 0.5
    net.signed, net.max_spikes = True, 2
    probe = LayerProbe(net, [3, 8], input_sums=True)
    pre = {"presteps": 2, "offset": offset} if offset else {}
    with torch.inference_mode(), ChunkedRun(net, chunk=3, probe=probe, **pre) as run:
        run_batch(run, snn_nets.images(4, seed=5), [3, 8])
    rows = probe.stats().rows()
    assert max(r["firing_rate"] for r in rows) > 0
    # soft reset: input = spikes x theta + (v(T) - v(0)), nothing discarded
    assert max(abs(r["discarded_charge"]) for r in rows) < 1e-5, rows


# --- refusals, one line each ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(presteps=-1), "presteps must be a non-negative integer, got -1"),
        (dict(offset="cos"), "offset=cos calibrates on pre-steps; set presteps to 1 or more"),
        (dict(presteps=2), "presteps=2 needs an offset rule to apply after them: cos or srp"),
        (dict(presteps=2, offset="bias"), "unknown offset 'bias'; choose one of: cos, srp"),
    ],
)
def test_bad_presteps_are_refused_before_anything_runs(kwargs: dict, message: str) -> None:
    with pytest.raises(RmpError, match=f"^{message}$"):
        ChunkedRun(calibrated("vgg"), **kwargs)


def test_bad_neuron_options_are_refused() -> None:
    net = calibrated("vgg")
    with pytest.raises(RmpError, match=r"max_spikes .* must be an integer in 1\.\.16, got 0"):
        net.max_spikes = 0
    net.reset_mode = "hard"
    with pytest.raises(RmpError, match="signed spikes need the soft reset"):
        net.signed = True
    neuron = IFNeuron(1.0, reset="hard")
    neuron.signed = True  # set directly: refused when it runs
    neuron.configure(1, 1)
    with pytest.raises(RmpError, match="signed spikes need the soft reset"):
        neuron(torch.ones(1, 2))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_presteps_and_bursts_run_under_half_precision(precision: str) -> None:
    net = calibrated("vgg")
    net.max_spikes = 2
    data = labelled()
    for offset in ("cos", "srp"):
        result = simulate(
            net, data, [2, 5], chunk=3, precision=precision, presteps=2, offset=offset
        )
        assert result.num_images == 12 and sum(result.synops) > 0


# --- reporting: the latency paid is K + T ----------------------------------------------------------
def test_summaries_headlines_and_plot_rank_by_presteps_plus_t(tmp_path) -> None:
    from rmp_cli.report.plot import draw
    from rmp_cli.report.results import headline, point_key, read_results, summarize, write_csv
    from tests.test_results import TS, table

    df = table(
        {"hard": [0.1, 0.2, 0.5, 0.7, 0.8, 0.8], "soft": [0.2, 0.6, 0.8, 0.89, 0.9, 0.9]}, TS
    )
    soft = df["reset"] == "soft"
    df["neuron"] = "if"
    df["presteps"] = 0
    df.loc[soft, "neuron"], df.loc[soft, "presteps"] = "if+cos", 4
    s = summarize(df).set_index("reset")
    assert s.loc["soft", "first_t_best"] == 16 + 4 and s.loc["soft", "max_timesteps"] == 36
    assert s.loc["hard", "first_t_best"] == 16
    write_csv(tmp_path / "results.csv", df)
    back = read_results(tmp_path / "results.csv")
    assert list(back["presteps"]) == list(df["presteps"]) and back["timesteps"].max() == 32
    assert point_key(back.iloc[-1]).endswith("neuron=if+cos,presteps=4,seed=0")
    old = df.drop(columns=["neuron", "presteps"])  # a table written before the columns
    assert point_key(old.iloc[0]) == point_key(back.iloc[0])
    # soft and hard are no longer like for like (neuron differs): no soft-vs-hard line for them
    assert headline(df) == []
    both = df.assign(neuron="if+cos", presteps=4)
    (line,) = headline(both)  # test_results' curves, four steps later: T=4 vs 16 -> 8 vs 20
    assert "at T=8" in line and "T=20" in line and "2.5x fewer time-steps" in line
    assert [p.suffix for p in draw([("run", df)], tmp_path / "plot")] == [".png", ".pdf"]


def test_average_pooled_signed_spikes_count_like_plain_spikes_where_they_are_plain() -> None:
    # At T = 1 no neuron can have fired a negative spike yet: the signed net is the plain net,
    # and an averaged spike (theta / 4 in a 2x2 window) is still one event.
    torch.manual_seed(1)
    ann = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 10),
    ).eval()
    net = to_spiking(ann)
    x = snn_nets.images(6, seed=3)
    with torch.no_grad():
        first = ann[0](x).abs().max()
    net.thresholds = [first * 0.6, torch.full((6,), 0.05)]
    data = [(x, torch.zeros(6, dtype=torch.long))]
    plain = simulate(net, data, [1, 6], chunk=2)
    net.signed = True
    options = simulate(net, data, [1, 6], chunk=2)
    assert plain.synops[0] > 0 and options.synops[0] == plain.synops[0]
    assert options.spikes_per_layer != plain.spikes_per_layer  # later steps do differ
