"""Threshold balancing: max_act, exact percentile, spike_norm, rmp, trained, scale, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmp_cli.convert import BALANCE_METHODS, balance_thresholds, to_spiking
from rmp_cli.convert.balance import rank_for_percentile
from rmp_cli.errors import RmpError
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)
    ).eval()


def hidden(ann: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The two ReLU outputs of mlp(), computed by hand (F.linear: the same kernel as nn.Linear,
    whose fused multiply-add rounds differently from `x @ W.T + b` on some BLAS builds)."""
    with torch.no_grad():
        h1 = torch.relu(F.linear(x, ann[0].weight, ann[0].bias))
        h2 = torch.relu(F.linear(h1, ann[2].weight, ann[2].bias))
    return [h1, h2]


def test_max_act_equals_the_hand_computed_max_and_sets_the_net() -> None:
    ann, x = mlp(), torch.randn(50, 5)
    net = to_spiking(ann)
    got = balance_thresholds(net, ann, x, method="max_act", batch_size=64)
    expected = [h.max() for h in hidden(ann, x)]
    assert [float(t) for t in got] == [float(e) for e in expected]
    assert [float(t) for t in net.thresholds] == [float(e) for e in expected]
    with torch.no_grad():
        assert net.output_threshold == float(ann(x).max())


def test_max_act_per_channel_and_scale() -> None:
    ann = snn_nets.make("vgg")
    x = snn_nets.images(20)
    net = to_spiking(ann)
    per_channel = balance_thresholds(net, ann, x, method="max_act", per_channel=True)
    with torch.no_grad():
        first = ann.features[2](ann.features[1](ann.features[0](x)))
    assert torch.equal(per_channel[0], first.amax(dim=(0, 2, 3)))
    assert per_channel[2].shape == (32,)  # classifier ReLU: one per feature
    half = balance_thresholds(net, ann, x, method="max_act", per_channel=True, scale=0.5)
    assert all(torch.equal(h, p * 0.5) for h, p in zip(half, per_channel, strict=True))


def test_dead_channels_fall_back_to_the_layer_threshold() -> None:
    ann = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        ann[0].weight.zero_()
        ann[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    net = to_spiking(ann)
    got = balance_thresholds(net, ann, torch.randn(4, 3), method="max_act", per_channel=True)
    assert got[0].tolist() == [0.5, 2.0, 2.0, 2.0]


# --- exact percentile -------------------------------------------------------------------------------
def test_percentile_rank_definition_uses_exact_decimal_p() -> None:
    assert rank_for_percentile(99.9, 1000) == 999  # float 99.9 is slightly above 99.9
    assert rank_for_percentile(50, 5) == 3
    assert rank_for_percentile(100, 7) == 7
    assert rank_for_percentile(1e-9, 7) == 1


@pytest.mark.parametrize("p", [50.0, 90.0, 99.0, 99.9, 100.0])
def test_percentile_equals_the_sorted_value_and_numpy_inverted_cdf(p: float) -> None:
    ann, x = mlp(1), torch.randn(301, 5)
    net = to_spiking(ann)
    got = balance_thresholds(net, ann, x, method="percentile", percentile=p, batch_size=512)
    for theta, act in zip(got, hidden(ann, x), strict=True):
        values = act.flatten().sort().values
        expected = values[rank_for_percentile(p, values.numel()) - 1]
        expected = expected if expected > 0 else values.max()  # zero -> fallback, as documented
        assert float(theta) == float(expected)
        if expected == values[rank_for_percentile(p, values.numel()) - 1] and p < 100:
            assert float(theta) == float(np.percentile(act.numpy(), p, method="inverted_cdf"))


def test_percentile_is_invariant_to_batch_size_and_order() -> None:
    # The first activation sees the images themselves, so its values cannot depend on how the
    # batches are formed (GEMM rounding may, on some BLAS builds): only the selection is tested.
    ann = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = snn_nets.images(40, seed=2)
    net = to_spiking(ann)
    for per_channel in (False, True):
        kw = {"method": "percentile", "percentile": 99.5, "per_channel": per_channel}
        a = balance_thresholds(net, ann, x, batch_size=40, **kw)
        order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
        b = balance_thresholds(net, ann, x[order], batch_size=3, **kw)
        c = balance_thresholds(net, ann, [(x[order][:25], None), (x[order][25:], None)], **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
        values = x.transpose(0, 1).reshape(3, -1) if per_channel else x.reshape(1, -1)
        k = rank_for_percentile(99.5, values.shape[1])
        expected = values.sort(1).values[:, k - 1]
        assert torch.equal(a[0].reshape(-1), expected)
    maxima = balance_thresholds(net, ann, x, method="max_act")
    assert float(a[0].max()) < float(maxima[0])


def test_percentile_100_is_max_act_and_per_channel_works() -> None:
    ann = snn_nets.make("vgg")
    x = snn_nets.images(12)
    net = to_spiking(ann)
    top = balance_thresholds(net, ann, x, method="percentile", percentile=100, per_channel=True)
    maxima = balance_thresholds(net, ann, x, method="max_act", per_channel=True)
    assert all(torch.equal(u, v) for u, v in zip(top, maxima, strict=True))
    median = balance_thresholds(net, ann, x, method="percentile", percentile=50, per_channel=True)
    with torch.no_grad():
        first = ann.features[2](ann.features[1](ann.features[0](x)))
    channel = first.transpose(0, 1).reshape(8, -1)
    k = rank_for_percentile(50, channel.shape[1])
    expected = channel.sort(1).values[:, k - 1]
    assert torch.equal(median[0][expected > 0], expected[expected > 0])


@pytest.mark.parametrize("p", [0.0, -1.0, 100.5, float("nan")])
def test_percentile_outside_0_100_is_rejected(p: float) -> None:
    ann = mlp()
    with pytest.raises(RmpError, match=r"percentile must be in \(0, 100\]"):
        balance_thresholds(
            to_spiking(ann), ann, torch.randn(4, 5), method="percentile", percentile=p
        )


# --- spike_norm and rmp ----------------------------------------------------------------------------
def test_spike_norm_layer_one_equals_max_act_and_later_layers_differ() -> None:
    ann, x = mlp(2), torch.randn(40, 5)
    net = to_spiking(ann)
    maxima = balance_thresholds(net, ann, x, method="max_act", batch_size=16)
    spike_norm = balance_thresholds(net, ann, x, method="spike_norm", timesteps=32, batch_size=16)
    assert float(spike_norm[0]) == float(maxima[0])  # same analog input current
    assert float(spike_norm[1]) != float(maxima[1])


def test_spike_norm_on_a_conv_net_matches_max_act_on_the_first_layer() -> None:
    ann = snn_nets.make("resnet")
    x = snn_nets.images(16)
    net = to_spiking(ann)
    maxima = balance_thresholds(net, ann, x, method="max_act")
    spike_norm = balance_thresholds(net, ann, x, method="spike_norm", timesteps=16)
    # BN folded and NHWC convolutions: equal up to float rounding
    assert math.isclose(float(spike_norm[0]), float(maxima[0]), rel_tol=1e-5)
    assert all(float(s) > 0 for s in spike_norm)
    assert spike_norm[1:] != maxima[1:]


def test_spike_norm_stops_each_pass_after_its_layer() -> None:
    ann = snn_nets.make("vgg")
    net = to_spiking(ann)
    calls: list[int] = []
    handle = net.module.classifier[5].register_forward_hook(lambda *_: calls.append(1))
    balance_thresholds(net, ann, snn_nets.images(8), method="spike_norm", timesteps=8)
    handle.remove()
    assert calls == []  # the output layer comes after the last neuron: never reached


def test_rmp_is_soft_calibrated_spike_norm_times_scale() -> None:
    ann = snn_nets.make("resnet")
    x = snn_nets.images(16)
    net = to_spiking(ann)
    soft = balance_thresholds(net, ann, x, method="spike_norm", calib_reset="soft", timesteps=24)
    hard = balance_thresholds(net, ann, x, method="spike_norm", calib_reset="hard", timesteps=24)
    rmp = balance_thresholds(net, ann, x, method="rmp", scale=0.7, timesteps=24, calib_reset="hard")
    assert all(torch.equal(r, s * 0.7) for r, s in zip(rmp, soft, strict=True))
    assert soft != hard
    assert net.reset_mode == "soft" and net.v_init == 0.0  # calibration state restored


def test_trained_uses_the_ceilings_times_scale() -> None:
    ann = snn_nets.ClipNet().eval()
    net = to_spiking(ann)
    got = balance_thresholds(net, ann, snn_nets.images(4), method="trained", scale=2.0)
    assert [float(t) for t in got] == [1.5, 5.0]
    plain = mlp()
    with pytest.raises(RmpError, match=r"trained clipping activations.*layer '1' was a plain ReLU"):
        balance_thresholds(to_spiking(plain), plain, torch.randn(3, 5), method="trained")


# --- bad input --------------------------------------------------------------------------------------
def test_unknown_method_lists_the_choices() -> None:
    ann = mlp()
    with pytest.raises(
        RmpError,
        match="unknown balance method 'maxact'; choose one of: " + ", ".join(BALANCE_METHODS),
    ):
        balance_thresholds(to_spiking(ann), ann, torch.randn(3, 5), method="maxact")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "spike_norm", "timesteps": 0}, "timesteps must be a positive integer"),
        ({"method": "spike_norm", "calib_reset": "zero"}, "unknown calib_reset"),
        ({"method": "max_act", "scale": 0.0}, "scale must be positive"),
    ],
)
def test_bad_options_are_rejected(kwargs: dict, message: str) -> None:
    ann = mlp()
    with pytest.raises(RmpError, match=message):
        balance_thresholds(to_spiking(ann), ann, torch.randn(3, 5), **kwargs)


def test_non_simulating_methods_ignore_timesteps_and_empty_calibration_is_rejected() -> None:
    ann = mlp()
    net = to_spiking(ann)
    balance_thresholds(net, ann, torch.randn(3, 5), method="max_act", timesteps=0)
    with pytest.raises(RmpError, match="no calibration images"):
        balance_thresholds(net, ann, [], method="max_act")
