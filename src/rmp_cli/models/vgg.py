"""VGG-16 and VGG-11 (Simonyan & Zisserman 2015): 3x3 convs in 5 stages + a 3-layer classifier.

The head follows the input size:
- ImageNet (>= 112 px): 5 pools, 7x7 adaptive average pool, 512*7*7 -> 4096 -> 4096 -> classes
  (torchvision's layout: bias=True, pool=max gives its 138,357,544 parameters exactly);
- CIFAR (< 112 px): the conversion literature's variant (Sengupta et al. 2019, the RMP-SNN
  authors' code): no pool after the last stage, 512*2*2 -> 4096 -> 4096 -> classes on 32x32.
`classifier_width` replaces the 4096 hidden units (e.g. 512, the width of common CIFAR VGG
recipes: VGG-16 then holds 16.0M parameters instead of 39.9M on 32x32).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from rmp_cli.models.blocks import (
    ModelOptions,
    check_min_side,
    classifier,
    conv_act,
    init_weights,
    make_pool,
)
from rmp_cli.models.registry import register_model

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# VGG-11 ("A"): the same stages with 8 convs; with width 0.25 it is the CPU-scale CIFAR net.
VGG11_STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))
CLASSIFIER_WIDTH = 4096
# Below this the 5th pool and the 7x7 grid would mostly repeat a 1x1-3x3 feature map.
IMAGENET_HEAD_MIN_SIDE = 112
IMAGENET_GRID = 7


class VGG(nn.Sequential):
    """features -> avgpool -> flatten -> classifier (torchvision's names)."""


@register_model
def vgg16(*, num_classes: int, input_shape: tuple[int, int, int], options: ModelOptions) -> VGG:
    return _vgg("vgg16", VGG16_STAGES, num_classes, input_shape, options)


@register_model
def vgg11(*, num_classes: int, input_shape: tuple[int, int, int], options: ModelOptions) -> VGG:
    return _vgg("vgg11", VGG11_STAGES, num_classes, input_shape, options)


def _vgg(
    name: str,
    stages: tuple[tuple[int, ...], ...],
    num_classes: int,
    input_shape: tuple[int, int, int],
    options: ModelOptions,
) -> VGG:
    channels, height, width = input_shape
    imagenet = min(height, width) >= IMAGENET_HEAD_MIN_SIDE
    pools = len(stages) if imagenet else len(stages) - 1
    check_min_side(name, input_shape, 2**pools, f"it halves the image {pools} times")
    layers: list[nn.Module] = []
    cin = channels
    for stage, widths in enumerate(stages):
        for reference in widths:
            cout = options.channels(reference)
            layers += conv_act(options, cin, cout)
            cin = cout
        if stage < pools:
            layers.append(make_pool(options, 2, 2))
    if imagenet:
        avgpool: nn.Module = nn.AdaptiveAvgPool2d((IMAGENET_GRID, IMAGENET_GRID))
        cells = IMAGENET_GRID * IMAGENET_GRID
    else:
        avgpool = nn.Identity()
        cells = (height >> pools) * (width >> pools)
    hidden = options.channels(options.classifier_width or CLASSIFIER_WIDTH)
    model = VGG(
        OrderedDict(
            features=nn.Sequential(*layers),
            avgpool=avgpool,
            flatten=nn.Flatten(),
            classifier=classifier(options, cin * cells, (hidden, hidden), num_classes),
        )
    )
    init_weights(model)
    return model
