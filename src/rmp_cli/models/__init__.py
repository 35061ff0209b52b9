"""Model registry and the conversion-friendly architectures (VGG-16, ResNet-20/34, small CNNs).

from rmp_cli.models import create_model, list_models
net = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32), width=0.25)
"""

from __future__ import annotations

from rmp_cli.models import resnet, small, vgg  # noqa: F401  (import = register the models)
from rmp_cli.models.activations import ACTIVATIONS, QCFS, ClipReLU, make_activation
from rmp_cli.models.blocks import POOLS, ModelOptions
from rmp_cli.models.registry import MODELS, create_model, list_models, register_model

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "POOLS",
    "QCFS",
    "ClipReLU",
    "ModelOptions",
    "create_model",
    "list_models",
    "make_activation",
    "register_model",
]
