"""Per-layer diagnostics: closed forms on one IF layer, the charge balance on real nets, the
analog ANN activations, and independence from the chunk size."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.errors import RmpError
from rmp_cli.snn import ChunkedRun, LayerProbe, SpikingNet, run_batch, simulate
from rmp_cli.snn.probes import COLUMNS, analog_network, saturation_count
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture
from tests.test_simulator import calibrated, labelled


# --- one IF layer driven by constant currents ------------------------------------------------------
def one_layer(theta: float, reset: str, v_init: float = 0.0, units: int = 8) -> SpikingNet:
    """input [B, units] -> identity Linear (the current is the input, exactly) -> IF -> readout."""
    ann = nn.Sequential(nn.Linear(units, units, bias=False), nn.ReLU(), nn.Linear(units, 2))
    with torch.no_grad():
        ann[0].weight.copy_(torch.eye(units))
    net = to_spiking(ann.eval(), reset=reset, v_init=v_init)
    net.thresholds = [theta]
    return net


def layer_rows(net: SpikingNet, currents: Tensor, timesteps: list[int], **kw: object) -> dict:
    """{T: row} of the single neuron layer."""
    data = [(currents, torch.zeros(currents.shape[0], dtype=torch.long))]
    result = simulate(net, data, timesteps, layer_stats=True, **kw)
    assert result.layers is not None
    return {row["timesteps"]: row for row in result.layers.rows()}


def soft_count(c: float, t: int, theta: float, v_init: float) -> int:
    """Soft reset, constant c in [0, theta): the membrane never exceeds 2 theta, one spike per
    crossing, so n = floor((t c + v0) / theta)."""
    return math.floor((t * c + v_init * theta) / theta)


def hard_closed_form(c: float, t: int, theta: float, v_init: float) -> tuple[int, float, float]:
    """Hard reset, constant c in (0, theta): (spikes, discarded charge, final membrane). The first
    spike comes after k1 = ceil((theta - v0) / c) steps, then one every k2 = ceil(theta / c) steps;
    each spike throws away what the membrane held above theta."""
    v0 = v_init * theta
    k1, k2 = math.ceil((theta - v0) / c), math.ceil(theta / c)
    if t < k1:
        return 0, 0.0, v0 + t * c
    n = 1 + (t - k1) // k2
    discarded = (v0 + k1 * c - theta) + (n - 1) * (k2 * c - theta)
    return n, discarded, (t - k1 - (n - 1) * k2) * c


DYADIC = [0.125, 0.375, 0.5, 0.625, 0.75, 0.875]  # exact in float32: sums are exact
STEPS = [1, 3, 7, 10, 64, 100, 257]


@pytest.mark.parametrize("v_init", [0.0, 0.5])
@pytest.mark.parametrize("chunk", [1, 16])
def test_soft_reset_rate_times_theta_approaches_the_current_within_theta_over_t(
    v_init: float, chunk: int
) -> None:
    theta = 1.0
    currents = torch.tensor([[*DYADIC, 0.3, 0.71]])  # two non-dyadic ones: rounding allowed
    net = one_layer(theta, "soft", v_init, units=currents.shape[1])
    rows = layer_rows(net, currents, STEPS, chunk=chunk)
    c = currents[0].double()
    for t in STEPS:
        row = rows[t]
        # Per unit |n theta / T - c| = |v(T) - v0| / T <= theta / T, so on average too.
        assert row["rate_error"] * c.mean() <= theta / t + 1e-12, t
        exact = [soft_count(x, t, theta, v_init) for x in DYADIC]
        rate = row["firing_rate"] * len(c) * t  # total spikes over the 8 units
        others = rate - sum(exact)
        bounds = [soft_count(x, t, theta, v_init) for x in (0.3, 0.71)]
        assert abs(others - sum(bounds)) <= 2, t  # the two rounded currents, one count each
        assert row["discarded_charge"] == 0.0


@pytest.mark.parametrize("v_init", [0.0, 0.5])
@pytest.mark.parametrize("theta", [1.0, 0.75])
def test_hard_reset_discards_exactly_the_closed_form_charge(v_init: float, theta: float) -> None:
    values = [x * theta for x in DYADIC[:-1]]  # c < theta, dyadic multiples of theta
    currents = torch.tensor([values, values[::-1]])
    net = one_layer(theta, "hard", v_init, units=len(values))
    rows = layer_rows(net, currents, STEPS, chunk=5)
    for t in STEPS:
        forms = [hard_closed_form(c, t, theta, v_init) for c in values]
        spikes = sum(n for n, _, _ in forms)
        discarded = sum(d for _, d, _ in forms)
        residual = sum(v for _, _, v in forms)
        units = len(values)
        row = rows[t]
        assert row["firing_rate"] == pytest.approx(spikes / (units * t), abs=1e-12), t
        assert row["discarded_charge"] == pytest.approx(discarded / (theta * units * t), abs=1e-7)
        assert row["residual_charge"] == pytest.approx(residual / (theta * units), abs=1e-6)
        assert row["input_current"] == pytest.approx(sum(values) / (theta * units), abs=1e-6)
        if t >= 10:
            assert row["discarded_charge"] > 0


def test_hard_reset_discarded_charge_per_unit_from_the_probe() -> None:
    theta, v_init, t = 1.0, 0.5, 100
    values = [0.375, 0.3, 0.7, 0.45]
    net = one_layer(theta, "hard", v_init, units=len(values))
    probe = LayerProbe(net, [t])
    with torch.inference_mode(), ChunkedRun(net, chunk=7, probe=probe) as run:
        run_batch(run, torch.tensor([values]), [t])
        state = probe.unit_state(0)
        for k, c in enumerate(values):
            n, discarded, v = hard_closed_form(c, t, theta, v_init)
            assert int(state.spikes[0, k]) == n
            assert float(state.discarded()[0, k]) == pytest.approx(discarded, abs=1e-4)
            assert float(state.v[0, k]) == pytest.approx(v, abs=1e-4)


def test_silent_saturated_clipped_and_uneven_fractions_on_constructed_currents() -> None:
    # theta = 1, soft reset, v0 = 0: c <= 0 never fires (silent); 0.996 fires 199 times in 200
    # steps (saturated at T=200, where 99% suffice, not at T=50, where every step is needed);
    # 1.0 and 1.5 fire every step; 1.5 is clipped (activation > theta) and its membrane grows
    # past theta; negative currents leave a negative membrane: both are "uneven".
    values = [-0.5, -0.1, 0.0, 0.25, 0.5, 0.996, 1.0, 1.5]
    currents = torch.tensor([values, values])
    net = one_layer(1.0, "soft", units=len(values))
    rows = layer_rows(net, currents, [50, 200], chunk=16)
    assert saturation_count(50) == 50 and saturation_count(200) == 198
    assert rows[200]["silent_fraction"] == 3 / 8 and rows[50]["silent_fraction"] == 3 / 8
    assert rows[200]["saturated_fraction"] == 3 / 8
    assert rows[50]["saturated_fraction"] == 2 / 8
    assert rows[200]["clipped_fraction"] == 1 / 8
    assert rows[200]["uneven_fraction"] == 3 / 8
    relu = [max(v, 0.0) for v in values]
    assert rows[200]["ann_rate"] == pytest.approx(sum(relu) / 8)


def test_pearson_r_is_one_for_rates_proportional_to_activations() -> None:
    values = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75]  # T=8: every rate x theta equals c exactly
    net = one_layer(1.0, "soft", units=len(values))
    row = layer_rows(net, torch.tensor([values]), [8])[8]
    assert row["rate_error"] == 0.0
    assert row["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    silent = layer_rows(net, torch.tensor([values]), [1])[1]
    assert math.isnan(silent["pearson_r"])  # no unit fired: no variance, no correlation


# --- the charge balance on real nets -------------------------------------------------------------
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_charge_balance_holds_per_unit_and_in_the_columns(name: str, reset: str) -> None:
    net = calibrated(name, per_channel=name == "vgg")
    net.reset_mode, net.v_init = reset, 0.5
    x, t = snn_nets.images(6, seed=4), 37
    probe = LayerProbe(net, [5, t], input_sums=True)
    with torch.inference_mode(), ChunkedRun(net, chunk=8, probe=probe) as run:
        run_batch(run, x, [5, t])
        for i in range(len(net.neuron_names)):
            state = probe.unit_state(i)
            discarded = state.discarded()
            scale = state.input.double().abs() + state.theta.double()
            if reset == "soft":  # the identity: nothing is discarded, up to float32 rounding
                assert (discarded.abs() <= 1e-5 * scale).all(), net.neuron_names[i]
            else:  # the charge above theta at each spike: never negative
                assert (discarded >= -1e-5 * scale).all()
                assert float(discarded.sum()) > 0
        stats = probe.stats()
    for row in stats.rows():
        lhs = row["firing_rate"]
        rhs = (
            row["input_current"]
            - (row["residual_charge"] - 0.5) / row["timesteps"]
            - row["discarded_charge"]
        )
        assert lhs == pytest.approx(rhs, abs=1e-6), row["layer"]


def test_soft_reset_input_current_from_the_balance_matches_the_measured_sum() -> None:
    net = calibrated("resnet")
    net.reset_mode = "soft"
    measured = simulate(net, labelled(), [3, 40], chunk=8, layer_stats=True)
    probe_rows = []
    for input_sums in (True, False):
        probe = LayerProbe(net, [3, 40], input_sums=input_sums)
        with torch.inference_mode(), ChunkedRun(net, chunk=8, probe=probe) as run:
            for x, _ in labelled():
                run_batch(run, x, [3, 40])
        probe_rows.append(probe.stats().rows())
    for a, b in zip(*probe_rows, strict=True):
        assert a["input_current"] == pytest.approx(b["input_current"], rel=1e-5, abs=1e-7)
    assert measured.layers is not None and measured.layers.rows() == probe_rows[1]


def test_hard_reset_loses_rate_where_soft_reset_keeps_it() -> None:
    """RMP-SNN's argument, measured: at large T soft reset tracks the ANN in every layer, hard
    reset under-fires (positive discarded charge) and its rate error stays larger."""
    data = labelled(12, seed=5)
    rows = {}
    for reset in ("soft", "hard"):
        net = calibrated("vgg")
        net.reset_mode = reset
        result = simulate(net, data, [256], chunk=32, layer_stats=True)
        rows[reset] = result.layers.rows()
    for soft, hard in zip(rows["soft"], rows["hard"], strict=True):
        assert hard["discarded_charge"] > 0 and soft["discarded_charge"] == 0
        assert hard["rate_error"] > soft["rate_error"]
        assert hard["firing_rate"] < soft["firing_rate"]
        assert soft["pearson_r"] > 0.99


# --- the ANN activations -------------------------------------------------------------------------
def ann_activations(ann: nn.Module, names: list[str], x: Tensor) -> list[Tensor]:
    seen: dict[str, Tensor] = {}
    handles = [
        ann.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: seen.__setitem__(n, out)
        )
        for n in names
    ]
    with torch.no_grad():
        ann(x)
    for h in handles:
        h.remove()
    return [seen[n] for n in names]


@pytest.mark.parametrize("name", ["resnet", "vgg", "clip"])
def test_analog_network_gives_the_original_anns_activations(name: str) -> None:
    ann = snn_nets.ClipNet().eval() if name == "clip" else snn_nets.make(name)
    net = to_spiking(ann)  # BN folded, dropout gone, activations replaced by neurons
    balance_thresholds(net, ann, snn_nets.images(8, seed=3), method="max_act", scale=0.5)
    x = snn_nets.images(5, seed=6)
    with torch.no_grad():
        analog = analog_network(net)(x)
    expected = ann_activations(ann, net.neuron_names, x)
    assert len(analog) == len(expected) == len(net.neuron_names)
    for a, e in zip(analog, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    if name == "clip":  # the clip ceilings, not the (halved) thresholds, bound the activations
        assert float(analog[0].max()) <= 0.75 and float(analog[1].max()) <= 2.5


# --- independent of where chunks end; results untouched --------------------------------------------
def layers_csv(result: object) -> str:
    return pd.DataFrame(result.layers.rows()).to_csv(index=False, float_format="%.10g")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("name", "reset", "v_init"), [("resnet", "hard", 0.0), ("vgg", "soft", 0.5)]
)
def test_chunked_and_step_by_step_give_the_same_layers_csv(
    name: str, reset: str, v_init: float, channels_last: bool
) -> None:
    net = calibrated(name, per_channel=name == "vgg")
    net.reset_mode, net.v_init = reset, v_init
    wanted = [1, 6, 7, 8, 23]
    kw = {"channels_last": channels_last, "topk": (1,)}
    plain = simulate(net, labelled(), wanted, chunk=1, **kw)
    csvs, results = [], []
    for chunk in [1, 7, 23, "auto"]:
        result = simulate(net, labelled(), wanted, chunk=chunk, layer_stats=True, **kw)
        csvs.append(layers_csv(result))
        results.append(result)
    assert all(c == csvs[0] for c in csvs[1:])
    for result in results:  # the probes change nothing the simulator reports
        assert result.correct == plain.correct
        assert result.spikes_per_layer == plain.spikes_per_layer
        assert result.synops == plain.synops


def test_poisson_input_and_merged_shards() -> None:
    net = calibrated("resnet")
    data = labelled()
    kw = {"chunk": 8, "encoding": "poisson", "poisson_scale": 2.5, "seed": 4, "layer_stats": True}
    whole = simulate(net, data, [4, 30], **kw)
    merged = simulate(net, data[:1], [4, 30], **kw).merge(
        simulate(net, data[1:], [4, 30], **{**kw, "seed": 4})
    )
    assert whole.layers is not None and merged.layers is not None
    assert merged.layers.num_images == 12
    # Shard 2 draws its Poisson input from batch index 0, the whole run from index 1: compare
    # only what does not depend on the input spikes.
    for a, b in zip(whole.layers.rows(), merged.layers.rows(), strict=True):
        assert a["ann_rate"] == pytest.approx(b["ann_rate"])
        assert a["clipped_fraction"] == b["clipped_fraction"]
    direct = {**kw, "encoding": "direct"}
    whole = simulate(net, data, [4, 30], **direct)
    merged = simulate(net, data[:1], [4, 30], **direct).merge(
        simulate(net, data[1:], [4, 30], **direct)
    )
    assert whole.layers.rows() == merged.layers.rows()
    with pytest.raises(RmpError, match="cannot merge"):
        whole.merge(simulate(net, data, [4, 30], chunk=8))


def test_rows_have_the_columns_layers_csv_expects() -> None:
    result = simulate(calibrated("vgg"), labelled(), [2, 9], chunk=4, layer_stats=True)
    rows = result.layers.rows()
    assert len(rows) == 2 * len(result.spikes_per_layer)
    assert list(rows[0]) == ["layer", "depth", "neurons", "timesteps", *COLUMNS]
    assert [r["depth"] for r in rows[::2]] == list(range(1, len(rows) // 2 + 1))
    assert rows[0]["neurons"] == 8 * 8 * 8  # vgg: 8 channels of 8x8 after the first conv


def test_no_statistics_unless_asked_and_hooks_are_removed() -> None:
    net = calibrated("vgg")
    assert simulate(net, labelled(), [3], chunk=2).layers is None
    simulate(net, labelled(), [3], chunk=2, layer_stats=True)
    for neuron in net.neurons:
        assert not neuron._forward_hooks and not neuron._forward_pre_hooks
