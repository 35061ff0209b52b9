"""Low-latency conversion: QCFS == soft-reset IF at T = L with v_init 0.5, MSE calibration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.convert.balance import MSE_GRID
from rmp_cli.models import QCFS
from rmp_cli.snn.neurons import IFNeuron
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture


def if_rate(current: torch.Tensor, theta: float, steps: int, v_init: float) -> torch.Tensor:
    """theta * spikes / T of soft-reset IF neurons driven by a constant current for T steps."""
    neuron = IFNeuron(theta, reset="soft", v_init=v_init)
    neuron.configure(steps, current.shape[0])
    spikes = neuron(current.repeat(steps, *([1] * (current.dim() - 1))))
    return spikes.view(steps, *current.shape).sum(0) / steps  # each spike carries theta


@pytest.mark.parametrize("levels", [1, 2, 4, 8, 16])
def test_qcfs_with_l_levels_equals_the_soft_if_rate_at_t_equals_l(levels: int) -> None:
    torch.manual_seed(levels)
    ceiling = 1.7
    act = QCFS(levels=levels, ceiling=ceiling)
    x = torch.randn(64, 50) * ceiling  # negatives, in-range values and values above the ceiling
    with torch.no_grad():
        expected = act(x)
    got = if_rate(x, ceiling, steps=levels, v_init=0.5)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # Not a coincidence of rounding: without the half-threshold start they differ.
    assert not torch.allclose(if_rate(x, ceiling, steps=levels, v_init=0.0), expected, atol=1e-5)


def clip_floor_error(values: torch.Tensor, theta: float, steps: int, shift: float) -> float:
    """The MSE objective, written out independently of the implementation."""
    total = 0.0
    for a in values.double().flatten().tolist():
        k = min(max(int(torch.floor(torch.tensor(a * steps / theta + shift))), 0), steps)
        total += (a - k * theta / steps) ** 2
    return total


def two_layer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 3)).eval()


@pytest.mark.parametrize("steps", [1, 4, 16])
@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_mse_never_worse_than_max_act_in_its_own_objective(steps: int, shift: float) -> None:
    ann = two_layer()
    x = torch.randn(30, 6)
    x[0] *= 8  # one outlier image: the max activation is far above the bulk
    net = to_spiking(ann)
    mse = balance_thresholds(net, ann, x, method="mse", timesteps=steps, shift=shift)
    max_act = balance_thresholds(net, ann, x, method="max_act")
    with torch.no_grad():
        hidden = ann[1](ann[0](x))
    err_mse = clip_floor_error(hidden, float(mse[0]), steps, shift)
    err_max = clip_floor_error(hidden, float(max_act[0]), steps, shift)
    assert err_mse <= err_max * (1 + 1e-9)
    assert float(mse[0]) <= float(max_act[0])
    # The outlier makes clipping pay off: the search moves below max_act.
    assert float(mse[0]) < float(max_act[0])


def test_mse_per_channel_searches_each_channel_on_the_max_act_grid() -> None:
    ann = two_layer(1)
    x = torch.randn(25, 6)
    net = to_spiking(ann)
    per_channel = balance_thresholds(
        net, ann, x, method="mse", timesteps=4, per_channel=True, shift=0.5
    )[0]
    maxima = balance_thresholds(net, ann, x, method="max_act", per_channel=True)[0]
    assert per_channel.shape == (40,)
    with torch.no_grad():
        hidden = ann[1](ann[0](x))
    for c in range(0, 40, 7):
        best = float(per_channel[c])
        # the chosen value is one of the grid candidates k/100 * max and the best among them
        k = round(best / float(maxima[c]) * MSE_GRID)
        assert best == pytest.approx(k / MSE_GRID * float(maxima[c]), rel=1e-6)
        column = hidden[:, c]
        errors = [
            clip_floor_error(column, j / MSE_GRID * float(maxima[c]), 4, 0.5)
            for j in range(1, MSE_GRID + 1)
        ]
        assert clip_floor_error(column, best, 4, 0.5) <= min(errors) * (1 + 1e-6) + 1e-12
