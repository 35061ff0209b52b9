"""Tiny networks that follow the model contract (own nn.ReLU per use, BN right after its conv,
residual junction `act_out(conv_path(x) + shortcut(x))`, final nn.Linear, fx traceable)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=bias), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        # Shortcut registered first on purpose: registration order != execution order.
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.act_out = nn.ReLU()
        self.conv_path = nn.Sequential(conv_bn(cin, cout, stride), nn.ReLU(), conv_bn(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(self.conv_path(x) + self.shortcut(x))


class TinyResNet(nn.Module):
    """8x8 inputs: stem, identity block, projection block, global average pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=True), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layer2(self.layer1(self.stem(x))))))


class TinyVGG(nn.Module):
    """8x8 inputs: conv-BN-ReLU-avgpool x2, dropout, linear-BN1d-ReLU, linear."""

    def __init__(self, num_classes: int = 10, width: int = 8, bn: bool = True) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(cout)] if bn else []
            return [
                nn.Conv2d(cin, cout, 3, 1, 1, bias=not bn),
                *norm,
                nn.ReLU(),
                nn.AvgPool2d(2),
                nn.Dropout(0.2),
            ]

        self.features = nn.Sequential(*block(3, width), *block(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 4, 32),
            *([nn.BatchNorm1d(32)] if bn else []),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ClipReLU(nn.Module):
    """A trained clipping activation: min(relu(x), ceiling)."""

    is_activation = True

    def __init__(self, ceiling: float = 1.0) -> None:
        super().__init__()
        self.ceiling = nn.Parameter(torch.tensor(float(ceiling)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(F.relu(x), self.ceiling)


class ClipNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            ClipReLU(0.75),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 6),
            ClipReLU(2.5),
            nn.Linear(6, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MaxPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class FunctionalReluNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


class SigmoidNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * 8 * 8, 8), nn.Sigmoid(), nn.Linear(8, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)
    return model.eval()


def kaiming(model: nn.Module, seed: int | None) -> nn.Module:
    """He-initialised weights and zero biases: random nets whose predictions vary with the input.
    seed None draws on from the current random state."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    m.bias.zero_()
    return model.eval()


def make(name: str, seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    model = {"resnet": TinyResNet, "vgg": TinyVGG}[name](**kwargs)
    return randomize_bn(model, seed)


def images(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from 2 threads, and when the other core is busy two OpenMP
    threads wait on each other for whole scheduler slices (50x slower tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
