"""Residual networks of BasicBlocks (He et al. 2016), in conversion-friendly form.

Each block computes `act_out(conv_path(x) + shortcut(x))`: the junction activation sees the SUM,
so after conversion one IF neuron integrates both paths into a single membrane. Shortcuts are
the identity, or (option B) a strided 1x1 conv [+ BN] where the shape changes: plain convs
convert exactly, unlike option A's channel zero-padding.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from rmp_cli.models.blocks import (
    ModelOptions,
    check_min_side,
    classifier,
    conv_bn,
    dropout,
    init_weights,
    make_pool,
)
from rmp_cli.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3 [BN] act [dropout] conv3x3 [BN], plus the shortcut, then the junction activation."""

    def __init__(self, cin: int, cout: int, stride: int, options: ModelOptions) -> None:
        super().__init__()
        # conv_path registered before shortcut: parameter order then matches torchvision's
        # (conv1, bn1, conv2, bn2, downsample), so its weights copy over in order.
        self.conv_path = nn.Sequential(
            *conv_bn(options, cin, cout, 3, stride),
            options.activation_module(),
            *dropout(options.dropout),
            *conv_bn(options, cout, cout, 3, 1),
        )
        needs_projection = stride != 1 or cin != cout
        self.shortcut = (
            nn.Sequential(*conv_bn(options, cin, cout, 1, stride))
            if needs_projection
            else nn.Identity()
        )
        self.act_out = options.activation_module()

    def forward(self, x: Tensor) -> Tensor:
        return self.act_out(self.conv_path(x) + self.shortcut(x))


class ResNet(nn.Sequential):
    """stem -> layers (stages of BasicBlocks) -> avgpool -> flatten -> classifier."""


def _resnet(
    stem: list[nn.Module],
    stem_width: int,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    num_classes: int,
    options: ModelOptions,
) -> ResNet:
    stages: list[nn.Module] = []
    cin = stem_width
    for index, (reference, depth) in enumerate(zip(widths, depths, strict=True)):
        cout = options.channels(reference)
        blocks = [
            BasicBlock(cin if i == 0 else cout, cout, 2 if index > 0 and i == 0 else 1, options)
            for i in range(depth)
        ]
        stages.append(nn.Sequential(*blocks))
        cin = cout
    model = ResNet(
        OrderedDict(
            stem=nn.Sequential(*stem),
            layers=nn.Sequential(*stages),
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=classifier(options, cin, (), num_classes),
        )
    )
    init_weights(model)
    if not options.batch_norm:
        _damp_residual_paths(model, num_blocks=sum(depths))
    return model


@torch.no_grad()
def _damp_residual_paths(model: nn.Module, num_blocks: int) -> None:
    # Without BN each junction roughly doubles the signal's second moment (2^blocks overall);
    # scaling each residual path's last conv by 1/sqrt(blocks) keeps the sum near unit scale
    # (the Fixup idea, Zhang et al. 2019, without zeroing so untrained nets still compute).
    for block in model.modules():
        if isinstance(block, BasicBlock):
            last_conv = [m for m in block.conv_path if isinstance(m, nn.Conv2d)][-1]
            last_conv.weight.mul_(num_blocks**-0.5)


@register_model
def resnet20(
    *, num_classes: int, input_shape: tuple[int, int, int], options: ModelOptions
) -> ResNet:
    """CIFAR ResNet-20: conv3x3 16, 3 stages x 3 blocks of 16/32/64 channels (no pooling layers:
    strided convs downsample, so `pool` has nothing to act on), global average pool, linear."""
    check_min_side("resnet20", input_shape, 8, "it halves the image twice")
    stem_width = options.channels(16)
    stem = [*conv_bn(options, input_shape[0], stem_width, 3, 1), options.activation_module()]
    return _resnet(stem, stem_width, (16, 32, 64), (3, 3, 3), num_classes, options)


@register_model
def resnet34(
    *, num_classes: int, input_shape: tuple[int, int, int], options: ModelOptions
) -> ResNet:
    """ImageNet ResNet-34 (torchvision layout): conv7x7/2 64, 3x3/2 pool, stages of 3/4/6/3
    blocks of 64/128/256/512 channels, global average pool, linear."""
    check_min_side("resnet34", input_shape, 32, "it halves the image 5 times")
    stem_width = options.channels(64)
    stem = [
        *conv_bn(options, input_shape[0], stem_width, 7, 2),
        options.activation_module(),
        make_pool(options, 3, 2, padding=1),
    ]
    return _resnet(stem, stem_width, (64, 128, 256, 512), (3, 4, 6, 3), num_classes, options)
