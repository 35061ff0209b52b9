"""Operation counts and energy: MACs, true fan-out and synaptic operations against hand counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.errors import RmpError
from rmp_cli.report.energy import EnergyCosts
from rmp_cli.snn import simulate
from rmp_cli.snn.opcount import ann_macs_per_image, fan_out_map
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture

# Per output channel, how many outputs of a 3x3, padding 1 convolution on a 4x4 map each input
# position reaches: 4 at a corner, 6 on an edge, 9 inside.
BORDER_4X4 = torch.tensor(
    [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float64
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 5, bias=False),
    ).eval()


def test_ann_macs_are_outputs_times_weights_per_output() -> None:
    # conv1: 2*16 outputs x 9; conv2: 3*16 outputs x 18; linear: 5 x 48
    assert ann_macs_per_image(small_net(), (1, 4, 4)) == 2 * 16 * 9 + 3 * 16 * 18 + 5 * 48


def test_fan_out_map_counts_real_synapses_only() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    fan = fan_out_map(conv, (2, 4, 4)).view(2, 4, 4)
    assert torch.equal(fan[0], 3 * BORDER_4X4) and torch.equal(fan[1], 3 * BORDER_4X4)
    # the old estimate, MACs / input elements = 3 * 9 per element, overcounts by 44%
    assert float(fan.sum()) * 1.44 == pytest.approx(3 * 9 * 32)
    strided = fan_out_map(nn.Conv2d(1, 1, 3, stride=2, padding=1), (1, 4, 4)).view(4, 4)
    rows = torch.tensor([1.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    assert torch.equal(strided, rows[:, None] * rows[None, :])
    assert torch.equal(fan_out_map(nn.Linear(6, 7), (6,)), torch.full((6,), 7.0).double())


def test_synops_are_each_spike_times_its_own_fan_out() -> None:
    ann = small_net()
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    net = to_spiking(ann)
    balance_thresholds(net, ann, x, method="max_act")
    per_position: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            counts = (out != 0).sum(0).double()
            per_position[name] = per_position.get(name, 0) + counts

        return hook

    for name, neuron in net.named_neurons():
        neuron.register_forward_hook(record(name))
    result = simulate(net, [(x, torch.zeros(6, dtype=torch.long))], [40], chunk=8)
    first, second = per_position["1"], per_position["3"]  # [2, 4, 4] and [3, 4, 4]
    expected = float((first * (3 * BORDER_4X4)).sum()) + 5 * float(second.sum())
    assert result.synops == [expected]
    mean_fan_out = float(first.sum()) * 3 * 9 + 5 * float(second.sum())
    assert result.synops[0] != mean_fan_out  # border spikes reach fewer outputs
    assert result.analog_macs_per_image == 2 * 16 * 9  # the first conv, once per image


def test_energy_ratio_and_costs() -> None:
    costs = EnergyCosts.from_config({"ac_pj": 0.9, "mac_pj": 4.6})
    assert costs.snn_pj(synops=1000, analog_macs=10) == pytest.approx(900 + 46)
    assert costs.ratio(1000, 10, ann_macs=100) == pytest.approx(946 / 460)
    assert math.isnan(costs.ratio(1000, 10, ann_macs=0))
    assert EnergyCosts.from_config(None) == EnergyCosts()
    with pytest.raises(RmpError, match=r"energy\.ac_pj must be a positive number"):
        EnergyCosts.from_config({"ac_pj": -1})
    with pytest.raises(RmpError, match=r"energy\.mac_pj must be a positive number"):
        EnergyCosts.from_config({"mac_pj": "x"})
