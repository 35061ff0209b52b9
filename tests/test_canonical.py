"""Graph coverage: activations written any way, call-site neurons, BN placement, refusals by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.convert.canonical import canonicalize
from rmp_cli.errors import RmpError
from rmp_cli.models.activations import FixedClip
from rmp_cli.snn.simulator import ChunkedRun, run_batch
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture


class ManyRelus(nn.Module):
    """Every way of writing a ReLU or a clipped ReLU, and one module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4 if i else 3, 4, 3, padding=1) for i in range(9))
        self.act = nn.ReLU(inplace=True)
        self.six = nn.ReLU6()
        self.tanh = nn.Hardtanh(0.0, 2.5)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        x = F.relu(c[0](x))
        x = torch.relu(c[1](x))
        x = c[2](x).relu()
        x = self.act(c[3](x))
        x = self.act(c[4](x))  # the same module again: a second neuron layer
        x = c[5](x).clamp(min=0)
        x = F.relu6(self.six(c[6](x)))
        x = F.hardtanh(self.tanh(c[7](x)), 0.0, 1.5)
        x = torch.clamp(c[8](x), 0, 0.75)
        return self.fc(x.flatten(1))


def test_every_way_of_writing_an_activation_becomes_one_neuron_layer() -> None:
    torch.manual_seed(0)
    ann = ManyRelus().eval()
    net = to_spiking(ann)
    assert net.neuron_names == [
        "relu",
        "relu#2",
        "relu#3",
        "act",
        "act#2",
        "relu#4",
        "six",
        "relu6",
        "tanh",
        "hardtanh",
        "clamp",
    ]
    ceilings = [None if n.ceiling is None else float(n.ceiling) for n in net.neurons]
    assert ceilings == [None] * 6 + [6.0, 6.0, 2.5, 1.5, 0.75]


def test_canonical_ann_computes_the_same_function_and_is_stable() -> None:
    torch.manual_seed(0)
    ann = ManyRelus().eval()
    canonical = canonicalize(ann)
    x = snn_nets.images(4)
    with torch.no_grad():
        assert torch.equal(ann(x), canonical(x))
    again = canonicalize(canonical)
    names = [n for n, m in again.named_modules() if isinstance(m, (nn.ReLU, FixedClip))]
    assert names == [n for n, m in canonical.named_modules() if isinstance(m, (nn.ReLU, FixedClip))]
    plain = snn_nets.make("vgg")
    assert canonicalize(plain) is plain  # nothing to change: the model itself


def test_call_sites_get_their_own_thresholds() -> None:
    torch.manual_seed(0)
    ann = ManyRelus().eval()
    net = to_spiking(ann)
    thetas = balance_thresholds(net, ann, snn_nets.images(8), method="max_act")
    first, second = (float(thetas[net.neuron_names.index(n)]) for n in ("act", "act#2"))
    assert first != second  # balanced from each call site's own activations
    trained = balance_thresholds(net, ann, snn_nets.images(8), method="max_act")
    assert len(trained) == len(net.neuron_names)


class Shuffle(nn.Module):
    """Concatenation, chunk/split, channel shuffle, adaptive average pooling, dropout, flatten,
    a scaled residual add, BN over a concatenation and BN feeding the last linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.bn_cat = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.bn_fc = nn.BatchNorm1d(32)
        self.fc = nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_cat(torch.cat([self.a(x), self.b(x)], dim=1)))
        left, right = x.chunk(2, dim=1)
        right = F.relu(self.branch(right)) + 0.5 * right
        x = torch.cat((left, right), 1)
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        x = torch.flatten(self.drop(self.pool(x)), 1)
        return self.fc(self.bn_fc(x))


def test_linear_plumbing_converts_and_batchnorm_folds_around_it() -> None:
    torch.manual_seed(0)
    ann = snn_nets.randomize_bn(Shuffle())
    net = to_spiking(ann)
    assert net.neuron_names == ["relu", "relu#2"]
    modules = dict(net.module.named_modules())
    assert isinstance(modules["bn_cat"], nn.Identity)  # folded into a and b
    assert isinstance(modules["bn_fc"], nn.Identity)  # folded into fc
    assert modules["a"].bias is not None and modules["b"].bias is not None


def test_converted_plumbing_net_matches_the_ann_at_large_t() -> None:
    """Soft reset, max_act thresholds, v_init 0.5: rates approach activations as 1/T."""
    torch.manual_seed(0)
    ann = snn_nets.randomize_bn(Shuffle())
    x = snn_nets.images(6)
    net = to_spiking(ann, reset="soft", v_init=0.5)
    balance_thresholds(net, ann, x, method="max_act")
    with torch.inference_mode(), ChunkedRun(net, chunk=64) as run:
        trace = run_batch(run, x, [64, 1024])
    with torch.no_grad():
        expected = ann(x)
    errors = [
        float((trace.potentials[i] / t - expected).norm() / expected.norm())
        for i, t in enumerate(trace.timesteps)
    ]
    assert errors[1] < 0.01 and errors[1] < errors[0]


def test_unfoldable_batchnorm_is_an_exact_affine_current() -> None:
    torch.manual_seed(0)
    ann = snn_nets.randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(4),  # after an activation: cannot be folded into a conv
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 64, 3),
        )
    )
    x = snn_nets.images(4)
    net = to_spiking(ann, reset="soft", v_init=0.5)
    balance_thresholds(net, ann, x, method="max_act")
    with torch.inference_mode(), ChunkedRun(net, chunk=64) as run:
        trace = run_batch(run, x, [2048])
    with torch.no_grad():
        expected = ann(x)
    assert float((trace.potentials[0] / 2048 - expected).norm() / expected.norm()) < 0.01


class Refused(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(
            {
                "gelu": nn.GELU(),
                "silu": nn.SiLU(),
                "hardswish": nn.Hardswish(),
                "layernorm": nn.LayerNorm([4, 8, 8]),
                "softmax": nn.Softmax(dim=1),
                "leaky": nn.LeakyReLU(),
            }.get(op, nn.Identity())
        )
        self.fc = nn.Linear(4 * 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.conv(x))
        if self.op == "gate":
            x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        elif self.op == "product":
            x = x * x
        elif self.op == "f_silu":
            x = F.silu(x)
        elif self.op == "softmax_fn":
            x = x.softmax(1)
        elif self.op == "clamp_neg":
            x = x.clamp(-1, 1)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        ("gelu", r"layer 'block.0' is GELU: not supported"),
        ("silu", r"layer 'block.0' is SiLU: not supported"),
        ("hardswish", r"layer 'block.0' is Hardswish: not supported"),
        ("layernorm", r"layer 'block.0' is LayerNorm: not supported"),
        ("softmax", r"layer 'block.0' is Softmax: not supported"),
        ("leaky", r"layer 'block.0' is LeakyReLU: not supported"),
        ("gate", r"the model's forward applies sigmoid\(\), which has no exact"),
        ("product", r"the model's forward applies mul\(\), which has no exact"),
        ("f_silu", r"the model's forward applies silu\(\), which has no exact"),
        ("softmax_fn", r"the model's forward applies \.softmax\(\), which has no exact"),
        ("clamp_neg", r"the model's forward applies \.clamp\(\), which has no exact"),
    ],
)
def test_unsupported_ops_are_refused_naming_path_and_op(op: str, expected: str) -> None:
    with pytest.raises(RmpError, match=expected) as info:
        to_spiking(Refused(op))
    assert "\n" not in str(info.value)


def test_attention_is_refused_naming_the_module() -> None:
    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.attn(x, x, x)[0].mean(1))

    with pytest.raises(RmpError, match=r"layer 'attn' is MultiheadAttention: not supported"):
        to_spiking(Attend())


def test_functional_nonlinearity_inside_a_submodule_names_its_path() -> None:
    class Inner(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x)

    ann = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Inner()), nn.Linear(4, 2))
    with pytest.raises(RmpError, match=r"'1\.0' applies tanh\(\)"):
        to_spiking(ann)
