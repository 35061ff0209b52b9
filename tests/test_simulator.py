"""Simulator: exact against a plain step-by-step reference, SpikingJelly, prefix property, counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.convert.bn_fold import replace_submodule
from rmp_cli.errors import RmpError
from rmp_cli.snn import ChunkedRun, SimResult, SpikingNet, run_batch, simulate
from rmp_cli.snn.simulator import AUTO_CHUNK_BYTES, AUTO_CHUNK_MAX, label_rank
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture


# --- a plain reference: one full forward per time-step, its own neurons ---------------------------
class PlainIF(nn.Module):
    """m = v + I; s = m >= theta; soft: v = m - s*theta; hard: v = m*(1-s); out = s*theta."""

    def __init__(self, theta: Tensor, reset: str, v_init: float) -> None:
        super().__init__()
        self.theta, self.reset, self.v_init = theta.clone(), reset, v_init
        self.v: Tensor | None = None
        self.spikes: list[int] = []

    def forward(self, current: Tensor) -> Tensor:
        theta = (
            self.theta.view(-1, *([1] * (current.dim() - 2))) if self.theta.dim() else self.theta
        )
        if self.v is None:
            self.v = torch.zeros_like(current) + self.v_init * theta
        m = self.v + current
        s = (m >= theta).float()
        self.v = m - s * theta if self.reset == "soft" else m * (1 - s)
        self.spikes.append(int(s.sum()))
        return s * theta


def reference_run(
    net: SpikingNet, x: Tensor, steps: int, channels_last: bool
) -> tuple[list[Tensor], Tensor]:
    """Accumulated output potential after every step, and spikes [layer, step]."""
    module = copy.deepcopy(net.module)
    neurons = []
    for name, n in net.named_neurons():
        neurons.append(PlainIF(n.threshold, net.reset_mode, net.v_init))
        replace_submodule(module, name, neurons[-1])
    if channels_last:  # same conv numerics as the simulator's layout
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    potentials, acc = [], None
    with torch.no_grad():
        for _ in range(steps):
            out = module(x)
            acc = out.clone() if acc is None else acc + out
            potentials.append(acc.clone())
    return potentials, torch.tensor([n.spikes for n in neurons])


def calibrated(name: str, *, per_channel: bool = False, scale: float = 0.8) -> SpikingNet:
    ann = snn_nets.make(name)
    net = to_spiking(ann)
    balance_thresholds(
        net,
        ann,
        snn_nets.images(16, seed=3),
        method="max_act",
        scale=scale,
        per_channel=per_channel,
    )
    return net


# --- 2. chunked == plain step-by-step, exactly -----------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_chunked_simulation_equals_plain_reference_exactly(
    name: str, reset: str, channels_last: bool
) -> None:
    steps = 23
    net = calibrated(name, per_channel=name == "vgg")
    net.reset_mode = reset
    net.v_init = 0.5 if reset == "soft" else 0.0
    x = snn_nets.images(5, seed=1)
    potentials, spikes = reference_run(net, x, steps, channels_last)
    assert int(spikes.sum()) > 0
    wanted = [1, 6, 7, 8, steps]
    for chunk in [1, 7, steps, "auto"]:
        with (
            torch.inference_mode(),
            ChunkedRun(net, chunk=chunk, channels_last=channels_last) as run,
        ):
            trace = run_batch(run, x, wanted)
        for i, t in enumerate(wanted):
            assert torch.equal(trace.potentials[i], potentials[t - 1]), (chunk, t)
        assert torch.equal(trace.layer_spikes, spikes), chunk


def test_input_fed_shortcut_around_the_first_neuron_is_simulated_exactly() -> None:
    class InputShortcut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
            self.conv2, self.shortcut = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(3, 4, 1)
            self.act_out, self.flatten, self.fc = nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5)

        def forward(self, x: Tensor) -> Tensor:
            out = self.act_out(self.conv2(self.act1(self.conv1(x))) + self.shortcut(x))
            return self.fc(self.flatten(out))

    torch.manual_seed(0)
    ann = InputShortcut().eval()
    net = to_spiking(ann)
    x = snn_nets.images(4)
    balance_thresholds(net, ann, x, method="max_act")
    potentials, spikes = reference_run(net, x, 9, channels_last=False)
    with torch.inference_mode(), ChunkedRun(net, chunk=4, channels_last=False) as run:
        trace = run_batch(run, x, [9])
    assert torch.equal(trace.potentials[0], potentials[-1])
    assert torch.equal(trace.layer_spikes, spikes)


def test_direct_input_layers_before_the_first_neuron_run_once_per_batch() -> None:
    net = calibrated("vgg")
    calls = []
    first_conv = net.module.features[0]
    handle = first_conv.register_forward_hook(lambda *_: calls.append(1))
    x = snn_nets.images(4)
    simulate(net, [(x, torch.zeros(4, dtype=torch.long))] * 3, [40], chunk=8)
    handle.remove()
    assert len(calls) == 3


# --- 3. cross-check with SpikingJelly --------------------------------------------------------------
class CarryTheta(nn.Module):
    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, s: Tensor) -> Tensor:
        return s * self.theta


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_same_readout_and_spike_counts_as_spikingjelly(reset: str) -> None:
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, neuron

    net = calibrated("resnet")
    net.reset_mode = reset
    module = copy.deepcopy(net.module)
    counts = []
    for name, n in net.named_neurons():
        node = neuron.IFNode(
            v_threshold=float(n.threshold), v_reset=None if reset == "soft" else 0.0, step_mode="s"
        )
        node.register_forward_hook(lambda _m, _i, s: counts.append(int(s.sum())))
        replace_submodule(module, name, nn.Sequential(node, CarryTheta(float(n.threshold))))
    x = snn_nets.images(6, seed=2)
    steps = 40
    functional.reset_net(module)
    acc = 0
    with torch.no_grad():
        for _ in range(steps):
            acc = acc + module(x)
    sj_spikes = torch.tensor(counts).view(steps, -1).sum(0)
    with torch.inference_mode(), ChunkedRun(net, chunk=16, channels_last=False) as run:
        trace = run_batch(run, x, [steps])
    assert torch.equal(trace.potentials[0].argmax(1), acc.argmax(1))
    assert torch.equal(trace.layer_spikes.sum(1), sj_spikes)
    assert torch.allclose(trace.potentials[0], acc, rtol=0, atol=1e-5)


# --- one pass scores every T -----------------------------------------------------------------------
def labelled(n: int = 12, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    x = snn_nets.images(n, seed=seed)
    y = torch.arange(n) % 10
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_score_at_t_equals_a_separate_run_to_exactly_t(encoding: str) -> None:
    net = calibrated("resnet")
    data = labelled()
    wanted = [1, 5, 17, 40]
    together = simulate(net, data, wanted, chunk=8, encoding=encoding, poisson_scale=2.5, seed=4)
    for i, t in enumerate(wanted):
        alone = simulate(net, data, [t], chunk=8, encoding=encoding, poisson_scale=2.5, seed=4)
        assert alone.correct[1] == [together.correct[1][i]]
        assert {k: v[0] for k, v in alone.spikes_per_layer.items()} == {
            k: v[i] for k, v in together.spikes_per_layer.items()
        }
        assert alone.synops == [together.synops[i]]


def test_single_image_batches_also_score_every_t_exactly() -> None:
    net = calibrated("vgg")
    x, y = snn_nets.images(3, seed=6), torch.tensor([1, 2, 3])
    data = [(x[i : i + 1], y[i : i + 1]) for i in range(3)]
    together = simulate(net, data, [1, 9, 13], chunk=4)
    for i, t in enumerate([1, 9, 13]):
        alone = simulate(net, data, [t], chunk=4)
        assert alone.spikes_per_layer == {k: [v[i]] for k, v in together.spikes_per_layer.items()}


def test_poisson_input_is_seeded_chunk_invariant_and_unbiased() -> None:
    net = calibrated("vgg")
    data = labelled()
    a = simulate(net, data, [30], chunk=1, encoding="poisson", poisson_scale=3.0, seed=7)
    b = simulate(net, data, [30], chunk=16, encoding="poisson", poisson_scale=3.0, seed=7)
    c = simulate(net, data, [30], chunk=16, encoding="poisson", poisson_scale=3.0, seed=8)
    assert a.spikes_per_layer == b.spikes_per_layer and a.synops == b.synops
    assert a.spikes_per_layer != c.spikes_per_layer
    from rmp_cli.snn.encoding import poisson_spikes

    x = torch.tensor([[0.5, -1.5, 0.0, 3.0]])
    spikes = poisson_spikes(x, 20000, 3.0, torch.Generator().manual_seed(0))
    assert set(spikes.unique().tolist()) <= {-3.0, 0.0, 3.0}
    assert torch.allclose(spikes.mean(0), x[0], atol=0.06)


def test_merge_of_shards_equals_one_run() -> None:
    net = calibrated("vgg")
    data = labelled()
    whole = simulate(net, data, [3, 20], chunk=8)
    merged = simulate(net, data[:1], [3, 20], chunk=8).merge(
        simulate(net, data[1:], [3, 20], chunk=8)
    )
    assert merged.num_images == whole.num_images == 12
    assert merged.correct == whole.correct
    assert merged.spikes_per_layer == whole.spikes_per_layer
    assert merged.synops == whole.synops
    with pytest.raises(RmpError, match="cannot merge"):
        whole.merge(simulate(net, data, [3], chunk=8))


def test_rows_accuracy_and_top5_only_above_ten_classes() -> None:
    net = calibrated("vgg")
    result = simulate(net, labelled(), [4, 8], chunk=4)
    rows = result.rows()
    assert [r["timesteps"] for r in rows] == [4, 8]
    assert rows[0]["top5"] is None and 5 not in result.correct
    assert rows[1]["accuracy"] == result.accuracy(8) == result.correct[1][1] / 12
    spikes = sum(v[1] for v in result.spikes_per_layer.values())
    assert rows[1]["spikes_per_image"] == spikes / 12 > 0
    many = to_spiking(snn_nets.make("vgg", num_classes=20))
    r20 = simulate(many, labelled(), [4], chunk=4)
    assert r20.rows()[0]["top5"] is not None and 5 in r20.correct
    assert r20.correct[5][0] >= r20.correct[1][0]


def test_synops_are_spikes_times_fan_out() -> None:
    torch.manual_seed(0)
    ann = nn.Sequential(
        nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
    ).eval()
    net = to_spiking(ann)
    x = torch.randn(8, 6)
    balance_thresholds(net, ann, x, method="max_act")
    result = simulate(net, [(x, torch.zeros(8, dtype=torch.long))], [5, 30], chunk=4)
    s1, s2 = result.spikes_per_layer["1"], result.spikes_per_layer["3"]
    # first Linear: analog input, not counted; the others fan out to 4 and 3 targets
    assert result.synops == [4.0 * a + 3.0 * b for a, b in zip(s1, s2, strict=True)]


def test_conv_fan_out_is_uniform_only_without_border_effects() -> None:
    net = calibrated("vgg")
    with torch.inference_mode(), ChunkedRun(net, chunk=4) as run:
        run_batch(run, snn_nets.images(2), [4])
        fan = dict(zip([name for name, _ in run.synaptic], run.fan_outs, strict=True))
    # conv 8->16, 3x3, pad 1 on 4x4: 16 x (4, 6 or 9) by position; linear layers: uniform
    assert not fan["features.5"].uniform and fan["features.5"].f_max == 16 * 9
    assert sorted(set(fan["features.5"].map.tolist())) == [16 * 4, 16 * 6, 16 * 9]
    assert fan["classifier.1"].uniform and fan["classifier.1"].f_max == 32
    assert fan["classifier.5"].f_max == 10
    assert "features.0" not in fan  # analog first layer


def test_spike_count_readout_breaks_ties_by_potential() -> None:
    net = calibrated("vgg")
    net.output_threshold = 0.05
    data = labelled()
    result = simulate(net, data, [64], chunk=16, readout="spikes")
    assert "readout" in result.spikes_per_layer and result.spikes_per_layer["readout"][0] > 0
    scores = torch.tensor([[[2.0, 5.0, 5.0, 1.0], [3.0, 3.0, 0.0, 3.0]]])
    tiebreak = torch.tensor([[[0.0, 0.1, 0.2, 0.0], [1.0, 1.0, 0.0, 1.0]]])
    labels = torch.tensor([2, 3])
    assert label_rank(scores, labels).tolist() == [[1, 2]]  # ties -> lower index (argmax rule)
    assert label_rank(scores, labels, tiebreak).tolist() == [[0, 2]]


def test_progress_is_called_per_batch_and_nothing_is_printed(capsys: pytest.CaptureFixture) -> None:
    seen = []
    simulate(calibrated("vgg"), labelled(), [2], chunk=2, progress=seen.append)
    assert seen == [6, 12]
    assert capsys.readouterr().out == ""


def test_auto_chunk_is_sized_once_from_the_largest_activation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = calibrated("vgg")
    with torch.inference_mode(), ChunkedRun(net, chunk="auto") as run:
        run_batch(run, snn_nets.images(5), [3])
        # 8 channels x 8 x 8 floats per image: tiny, so the CPU cap applies
        assert run.chunk == AUTO_CHUNK_MAX["cpu"] and not run.auto_chunk
    monkeypatch.setitem(AUTO_CHUNK_BYTES, "cpu", 8 * 8 * 8 * 4 * 11)  # 11 images' first layer
    with torch.inference_mode(), ChunkedRun(net, chunk="auto") as run:
        run_batch(run, snn_nets.images(5), [3])
        assert run.chunk == 2


def test_net_is_left_in_contiguous_layout_and_reusable() -> None:
    net = calibrated("resnet")
    simulate(net, labelled(), [3], chunk=2)
    assert net.module.stem[0].weight.is_contiguous()
    assert isinstance(simulate(net, labelled(), [3], chunk=2), SimResult)


# --- 7. sanity: soft reset approaches the ANN, hard reset lags -------------------------------------
def test_soft_reset_agrees_with_the_ann_at_large_t_and_hard_reset_less() -> None:
    ann = snn_nets.kaiming(snn_nets.TinyVGG(bn=False), seed=4)
    x = snn_nets.images(160, seed=11)
    with torch.no_grad():
        ann.classifier[-1].bias.sub_(ann(x).mean(0))  # centred logits: every class predicted
        ann_pred = ann(x).argmax(1)
    assert len(ann_pred.unique()) == 10
    net = to_spiking(ann)
    balance_thresholds(net, ann, x[:64], method="max_act")
    data = [(x[:80], ann_pred[:80]), (x[80:], ann_pred[80:])]
    soft = simulate(net, data, [32, 512], chunk=32)
    net.reset_mode = "hard"
    hard = simulate(net, data, [32, 512], chunk=32)
    assert soft.accuracy(512) >= 0.95
    assert soft.accuracy(512) >= soft.accuracy(32)
    assert hard.accuracy(512) < soft.accuracy(512)


# --- 6. bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "timesteps, message",
    [
        ([0], "positive integers"),
        ([-3, 4], "positive integers"),
        ([], "empty"),
        ([2.5], "positive integers"),
        ([True], "positive integers"),
        (8, "list of positive"),
    ],
)
def test_invalid_timesteps_are_rejected(timesteps: object, message: str) -> None:
    with pytest.raises(RmpError, match=message):
        simulate(calibrated("vgg"), labelled(), timesteps)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk": 0}, "chunk must be a positive integer"),
        ({"readout": "max"}, "unknown readout"),
        ({"encoding": "rate"}, "unknown encoding"),
        ({"encoding": "poisson", "poisson_scale": 0.0}, "poisson scale"),
        ({"topk": (0,)}, "top-k"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(RmpError, match=message):
        simulate(calibrated("vgg"), labelled(), [4], **kwargs)


# --- half-precision currents ------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_rounds_currents_only_and_keeps_membranes_float32(precision: str) -> None:
    net = calibrated("vgg")
    x = snn_nets.images(16, seed=5)
    with ChunkedRun(net, chunk=8) as run:
        exact = run_batch(run, x, [4, 32])
    with ChunkedRun(net, chunk=8, precision=precision) as run:
        half = run_batch(run, x, [4, 32])
        assert all(n.v is not None and n.v.dtype == torch.float32 for n in net.neurons)
    assert half.potentials.dtype == torch.float32
    assert not torch.equal(half.potentials, exact.potentials)  # the currents were rounded
    # ...by a half-precision step, not a different network: readouts agree closely.
    scale = exact.potentials.abs().amax()
    assert (half.potentials - exact.potentials).abs().amax() < 0.1 * scale
    agree = (half.potentials[-1].argmax(1) == exact.potentials[-1].argmax(1)).float().mean()
    assert agree >= 0.8


def test_unknown_precision_lists_the_choices() -> None:
    with pytest.raises(RmpError, match="unknown precision 'fp8'; choose one of: fp32, bf16, fp16"):
        ChunkedRun(calibrated("vgg"), precision="fp8")


def test_residual_adds_write_into_the_synaptic_output_only_when_that_is_the_same_tensor() -> None:
    from rmp_cli.snn.network import add_into

    plan = calibrated("resnet").plan(spiking_input=False)
    assert any(n.target is add_into for n in plan.body.graph.nodes)

    a, b = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert add_into(a, b) is a and torch.equal(a, torch.full((2, 3), 3.0))
    small = torch.ones(1, 3)  # would need broadcasting into a larger result
    out = add_into(small, b)
    assert out is not small and torch.equal(small, torch.ones(1, 3)) and out.shape == (2, 3)
    half = torch.ones(2, 3, dtype=torch.bfloat16)  # the sum is float32, not bfloat16
    out = add_into(half, b)
    assert out.dtype == torch.float32 and torch.equal(half, torch.ones(2, 3, dtype=torch.bfloat16))
