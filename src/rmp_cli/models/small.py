"""Small CNNs for CPU-scale runs: 8x8 digits (seconds) and 28x28 MNIST / Fashion-MNIST (minutes)."""

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

POOL = "pool"  # marks a 2x2 pooling layer in a layer plan


class SmallCNN(nn.Sequential):
    """features -> flatten -> classifier (a single linear layer producing the logits)."""


def _small_cnn(
    name: str,
    plan: tuple[int | str, ...],
    num_classes: int,
    input_shape: tuple[int, int, int],
    options: ModelOptions,
) -> SmallCNN:
    pools = plan.count(POOL)
    check_min_side(name, input_shape, 2**pools, f"it halves the image {pools} times")
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    cin = channels
    for step in plan:
        if step == POOL:
            layers.append(make_pool(options, 2, 2))
        else:
            cout = options.channels(int(step))
            layers += conv_act(options, cin, cout)
            cin = cout
    features = cin * (height >> pools) * (width >> pools)
    model = SmallCNN(
        OrderedDict(
            features=nn.Sequential(*layers),
            flatten=nn.Flatten(),
            classifier=classifier(options, features, (), num_classes),
        )
    )
    init_weights(model)
    return model


@register_model
def digits_cnn(
    *, num_classes: int, input_shape: tuple[int, int, int], options: ModelOptions
) -> SmallCNN:
    """8x8 digits: 16-32-pool-64-pool convs, 64*2*2 -> classes (25,744 parameters, no bias)."""
    return _small_cnn("digits_cnn", (16, 32, POOL, 64, POOL), num_classes, input_shape, options)


@register_model
def mnist_cnn(
    *, num_classes: int, input_shape: tuple[int, int, int], options: ModelOptions
) -> SmallCNN:
    """28x28 VGG-style: 32-32-pool-64-64-pool-128 convs, 128*7*7 -> classes (201,248
    parameters, no bias)."""
    return _small_cnn(
        "mnist_cnn", (32, 32, POOL, 64, 64, POOL, 128), num_classes, input_shape, options
    )
