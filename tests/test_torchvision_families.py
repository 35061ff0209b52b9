"""Every torchvision family the README claims converts, and every refused one says why.

Random weights at a small input (He-initialised convolutions, BatchNorm at its initial statistics),
converted with soft reset, v_init = theta/2 and max_act thresholds on the test images themselves:
the SNN's mean output current must come within 6% (relative L2) of the ANN's logits at T = 512,
shrink roughly as 1/T (at least 2.5x from T = 128), and pick the same class. Why 6%: a soft-reset
neuron started at theta/2 represents its rate to within theta / (2T), and these residuals add up
through 17 to 121 neuron layers; measured here the error at T = 512 is 0.8-4.4%.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.errors import RmpError
from rmp_cli.models.torchvision_source import build_torchvision
from rmp_cli.snn.simulator import ChunkedRun, run_batch
from tests.snn_nets import kaiming, single_thread  # noqa: F401 - autouse fixture

pytestmark = pytest.mark.slow

CONVERTS = [
    ("resnet18", 8),  # BasicBlock: one self.relu called twice per block
    ("resnet34", 8),
    ("resnet50", 8),  # Bottleneck: three times
    ("mobilenet_v2", 8),  # ReLU6, depthwise convolutions
    ("mnasnet0_5", 8),
    ("regnet_x_400mf", 8),  # grouped convolutions
    ("shufflenet_v2_x0_5", 8),  # chunk, concatenation, channel shuffle
    ("densenet121", 8),  # F.relu, concatenation, BatchNorm after concatenation
    ("vgg11_bn", 32),  # max-pools (spike-gated), adaptive average pool, dropout
    ("squeezenet1_1", 48),  # Fire modules: concatenation; ceil_mode max-pools
    ("alexnet", 64),  # overlapping 3x3 / stride 2 max-pools
]
REFUSED = [
    ("efficientnet_b0", 32, r"layer 'features\.0\.2' is SiLU: not supported"),
    ("mobilenet_v3_small", 32, r"layer 'features\.0\.2' is Hardswish: not supported"),
    ("regnet_y_400mf", 32, r"'trunk_output\.block1\.block1-0\.f\.se\.scale_activation' is Sigmoid"),
    ("convnext_tiny", 32, r"'features\.0\.1' applies layer_norm\(\)"),
    ("swin_t", 64, r"layer 'features\.0\.2' is LayerNorm: not supported"),
    ("maxvit_t", 224, r"layer 'stem\.0\.2' is GELU: not supported"),
]


def he_initialised(arch: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_torchvision(arch, num_classes=10, input_shape=(3, size, size), small_input=True)
    return kaiming(model, seed=None)


def relative_errors(model: nn.Module, size: int, **convert: object) -> tuple[list[float], bool]:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    net = to_spiking(model, reset="soft", v_init=0.5, **convert)
    balance_thresholds(net, model, x, method="max_act")
    with torch.inference_mode(), ChunkedRun(net, chunk=64) as run:
        trace = run_batch(run, x, [128, 512])
    errors = [
        float((trace.potentials[i] / t - expected).norm() / expected.norm())
        for i, t in enumerate(trace.timesteps)
    ]
    same_class = bool((trace.potentials[-1].argmax(1) == expected.argmax(1)).all())
    return errors, same_class


@pytest.mark.parametrize(("arch", "size"), CONVERTS)
def test_family_converts_and_matches_its_ann(arch: str, size: int) -> None:
    model = he_initialised(arch, size)
    (err_128, err_512), same_class = relative_errors(model, size)
    assert err_512 <= 0.06, (err_128, err_512)
    assert err_512 <= err_128 / 2.5, (err_128, err_512)
    assert same_class


@pytest.mark.parametrize(("arch", "size", "message"), REFUSED)
def test_refused_family_names_the_op(arch: str, size: int, message: str) -> None:
    model = build_torchvision(arch, num_classes=10, input_shape=(3, size, size)).eval()
    with pytest.raises(RmpError, match=message) as info:
        to_spiking(model)
    assert "\n" not in str(info.value)
