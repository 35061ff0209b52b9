"""Training precision and layout: bf16 autocast on CPU only when asked for and supported."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmp_cli.errors import RmpError
from rmp_cli.training import loop as train
from rmp_cli.training.loop import amp_enabled, autocast, check_amp, memory_format

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "amp", "native", "expected"),
    [
        (CPU, "auto", True, False),  # auto: CUDA only, even on a bf16-capable CPU
        (CPU, True, True, True),  # asked for and supported
        (CPU, True, False, False),  # asked for, not supported: float32
        (CPU, False, True, False),
        (CUDA, "auto", False, True),
        (CUDA, True, False, True),
        (CUDA, False, True, False),
    ],
)
def test_amp_is_used_only_when_requested_and_supported(
    monkeypatch: pytest.MonkeyPatch, device: torch.device, amp: object, native: bool, expected: bool
) -> None:
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: native)
    assert amp_enabled(device, amp) is expected


def test_unsupported_cpu_warns_and_trains_in_float32(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="rmp"):
        train.log.propagate = True
        try:
            assert amp_enabled(CPU, True) is False
        finally:
            train.log.propagate = False
    assert "no native bfloat16" in caplog.text


def test_cpu_autocast_really_computes_in_bfloat16() -> None:
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast(CPU, True):
        assert layer(x).dtype == torch.bfloat16
    with autocast(CPU, False):
        assert layer(x).dtype == torch.float32


def test_bad_amp_and_layout_values_are_refused() -> None:
    with pytest.raises(RmpError, match=r"train\.amp must be auto, true or false"):
        check_amp("yes")
    with pytest.raises(RmpError, match=r"train\.channels_last must be auto, true or false"):
        memory_format(CPU, "maybe")
    assert memory_format(CPU, "auto") == torch.channels_last
    assert memory_format(CUDA, "auto") == torch.contiguous_format


def test_channels_last_training_step_matches_contiguous_closely() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    plain = F.cross_entropy(model(x), y)
    nhwc = model.to(memory_format=torch.channels_last)
    fast = F.cross_entropy(nhwc(x.contiguous(memory_format=torch.channels_last)), y)
    assert torch.allclose(plain, fast, atol=1e-5)
