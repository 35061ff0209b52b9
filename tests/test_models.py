"""Model registry: shapes, reference parameter counts, and the conversion contract."""

from __future__ import annotations

import itertools
import operator
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torchvision
from omegaconf import OmegaConf
from torch import nn

from rmp_cli.errors import RmpError
from rmp_cli.models import (
    ACTIVATIONS,
    MODELS,
    QCFS,
    ClipReLU,
    create_model,
    list_models,
    make_activation,
    register_model,
)

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"

# Each model on its dataset's images.
REFERENCE_SHAPES = {
    "digits_cnn": (1, 8, 8),
    "mnist_cnn": (1, 28, 28),
    "vgg16": (3, 32, 32),
    "vgg11": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "resnet34": (3, 224, 224),
}
# Narrow, small-image variants with the same structure: the contract tests stay fast.
SMALL = {
    "digits_cnn": ((1, 8, 8), None),
    "mnist_cnn": ((1, 28, 28), 0.25),
    "vgg16": ((3, 32, 32), 0.0625),
    "vgg16-imagenet": ((3, 112, 112), 0.0625),
    "vgg11": ((3, 32, 32), 0.0625),
    "resnet20": ((3, 16, 16), 0.5),
    "resnet34": ((3, 32, 32), 0.0625),
}
ACTIVATION_COUNT = {
    "digits_cnn": 3,
    "mnist_cnn": 5,
    "vgg16": 15,
    "vgg11": 10,
    "resnet20": 19,
    "resnet34": 33,
}
ACTIVATION_TYPES = (nn.ReLU, ClipReLU, QCFS)
LINEAR_PASS = (
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.BatchNorm2d,
)


def small_model(key: str, **knobs: object) -> nn.Module:
    shape, width = SMALL[key]
    knobs.setdefault("width", width)
    return create_model(key.split("-")[0], num_classes=7, input_shape=shape, **knobs)


def small_input(key: str, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, *SMALL[key][0])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def modules_of(model: nn.Module, types: type | tuple[type, ...]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, types)]


class _ActivationLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, ACTIVATION_TYPES) or super().is_leaf_module(m, qualified_name)


def test_every_registered_model_is_tested_and_has_a_config() -> None:
    assert set(list_models()) == set(REFERENCE_SHAPES) == set(ACTIVATION_COUNT)
    assert {key.split("-")[0] for key in SMALL} == set(list_models())
    sources = {"auto", "custom", "torchvision"}  # model sources beside the registry
    assert (
        sorted(p.stem for p in CONF_MODEL.glob("*.yaml") if p.stem not in sources) == list_models()
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_model_config_builds_its_model(name: str) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_MODEL / f"{name}.yaml"))
    reference = OmegaConf.to_container(OmegaConf.load(CONF_MODEL / "digits_cnn.yaml"))
    # Flat keys, identical across files; the VGG files add the width of their hidden classifier
    # (no other net has one, so there the key does not exist and setting it is refused).
    assert [k for k in cfg if k != "classifier_width"] == list(reference)
    assert ("classifier_width" in cfg) == name.startswith("vgg")
    assert cfg.pop("name") == name
    with torch.device("meta"):  # structure only, no memory or init time
        model = create_model(name, num_classes=10, input_shape=REFERENCE_SHAPES[name], **cfg)
    assert n_params(model) > 0


@pytest.mark.parametrize(
    "name",
    [
        "digits_cnn",
        "mnist_cnn",
        "vgg16",
        "resnet20",
        pytest.param("resnet34", marks=pytest.mark.slow),
    ],
)
def test_forward_on_reference_shape(name: str) -> None:
    shape = REFERENCE_SHAPES[name]
    batch = 1 if shape[1] >= 224 else 2
    classes = 1000 if shape[1] >= 224 else 10
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, *shape))
    assert out.shape == (batch, classes)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a dead network


@pytest.mark.slow
def test_vgg16_imagenet_forward() -> None:
    model = create_model("vgg16", num_classes=1000, input_shape=(3, 224, 224)).eval()
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_vgg16_head_follows_input_size() -> None:
    with torch.device("meta"):
        cifar = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32))
        imagenet = create_model("vgg16", num_classes=10, input_shape=(3, 224, 224))
    # CIFAR: 4 pools, 512 x 2 x 2 features (the RMP-SNN authors' layout); ImageNet: 5 + 7x7 grid.
    assert len(modules_of(cifar.features, nn.AvgPool2d)) == 4
    assert cifar.classifier[0].in_features == 512 * 2 * 2
    assert len(modules_of(imagenet.features, nn.AvgPool2d)) == 5
    assert imagenet.classifier[0].in_features == 512 * 7 * 7
    assert len(modules_of(cifar, nn.Conv2d)) == 13 and len(modules_of(cifar, nn.Linear)) == 3


# Exact counts with the default knobs (no bias, no BN). resnet20 uses option-B shortcuts
# (1x1 convs); the option-A reference (He et al. 2016) is 0.27M = 269,722 with BN and an fc
# bias; with BN ours is 272,474 = 269,722 + the 2,560 projection weights + their 192 BN params.
EXPECTED_PARAMS = {
    ("digits_cnn", False): 25_744,
    ("mnist_cnn", False): 201_248,
    ("vgg16", False): 39_917_248,
    # 9,217,728 conv + 2048*4096 + 4096*4096 + 4096*10 classifier weights
    ("vgg11", False): 34_424_512,
    ("resnet20", False): 270_896,
    ("resnet20", True): 272_474,
    ("resnet34", False): 21_779_648,
}


@pytest.mark.parametrize(("name", "batch_norm"), sorted(EXPECTED_PARAMS))
def test_param_counts(name: str, batch_norm: bool) -> None:
    with torch.device("meta"):
        model = create_model(
            name,
            num_classes=10 if name != "resnet34" else 1000,
            input_shape=REFERENCE_SHAPES[name],
            batch_norm=batch_norm,
        )
    assert n_params(model) == EXPECTED_PARAMS[(name, batch_norm)]


@pytest.mark.parametrize(
    ("name", "reference", "knobs", "expected"),
    [
        ("vgg16", torchvision.models.vgg16, {"bias": True, "pool": "max"}, 138_357_544),
        (
            "vgg16",
            torchvision.models.vgg16_bn,
            {"bias": True, "batch_norm": True, "pool": "max"},
            138_365_992,
        ),
        ("resnet34", torchvision.models.resnet34, {"batch_norm": True, "pool": "max"}, 21_797_672),
    ],
)
def test_param_counts_match_torchvision(name: str, reference, knobs: dict, expected: int) -> None:
    with torch.device("meta"):
        ours = create_model(name, num_classes=1000, input_shape=(3, 224, 224), **knobs)
        theirs = reference(num_classes=1000)
    assert n_params(theirs) == expected
    assert n_params(ours) == expected
    # Same layers, not just the same total: parameter shapes in registration order.
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]


def test_resnet34_computes_what_torchvision_computes() -> None:
    torch.manual_seed(0)
    theirs = torchvision.models.resnet34(num_classes=10).eval()
    ours = create_model(
        "resnet34", num_classes=10, input_shape=(3, 32, 32), batch_norm=True, pool="max"
    ).eval()
    with torch.no_grad():
        for mine, ref in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            mine.copy_(ref)
        x = torch.rand(2, 3, 32, 32)
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("key", sorted(SMALL))
def test_every_activation_is_its_own_module_used_once(key: str, activation: str) -> None:
    model = small_model(key, activation=activation, batch_norm=True, dropout=0.1)
    with_duplicates = [
        m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, ACTIVATION_TYPES)
    ]
    acts = modules_of(model, ACTIVATION_TYPES)
    assert len(acts) == len(with_duplicates) == ACTIVATION_COUNT[key.split("-")[0]]
    expected_type = {"relu": nn.ReLU, "clip": ClipReLU, "qcfs": QCFS}[activation]
    assert all(type(m) is expected_type for m in acts)
    calls = {id(m): 0 for m in acts}

    def count(m: nn.Module, _inputs: object, _output: object) -> None:
        calls[id(m)] += 1

    handles = [m.register_forward_hook(count) for m in acts]
    model(small_input(key))
    for h in handles:
        h.remove()
    assert set(calls.values()) == {1}


@pytest.mark.parametrize("key", sorted(SMALL))
def test_fx_traceable_and_made_of_convertible_ops(key: str) -> None:
    model = small_model(key, activation="qcfs", batch_norm=True, bias=True).eval()
    graph = _ActivationLeafTracer().trace(model)
    for node in graph.nodes:
        if node.op == "call_module":
            m = model.get_submodule(str(node.target))
            assert isinstance(m, (*ACTIVATION_TYPES, nn.Conv2d, nn.Linear, *LINEAR_PASS)), node
        elif node.op == "call_function":
            assert node.target is operator.add, node  # only residual junctions
        else:
            assert node.op in ("placeholder", "output"), node
    # The logits come straight from an nn.Linear: no activation after the classifier.
    last = next(iter(graph.output_node().all_input_nodes))
    assert isinstance(model.get_submodule(str(last.target)), nn.Linear)
    traced = fx.symbolic_trace(model)
    x = small_input(key)
    torch.testing.assert_close(traced(x), model(x))


def test_residual_junction_applies_activation_to_the_sum() -> None:
    model = small_model("resnet20")
    block = model.layers[1][0]  # first block of stage 2: strided, with a projection
    assert isinstance(block.shortcut, nn.Sequential)
    assert isinstance(block.shortcut[0], nn.Conv2d) and block.shortcut[0].kernel_size == (1, 1)
    assert isinstance(model.layers[0][1].shortcut, nn.Identity)
    x = torch.rand(2, block.conv_path[0].in_channels, 8, 8)
    expected = torch.relu(block.conv_path(x) + block.shortcut(x))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_bias_knob(key: str) -> None:
    for bias in (False, True):
        layers = modules_of(small_model(key, bias=bias), (nn.Conv2d, nn.Linear))
        assert all((m.bias is not None) == bias for m in layers)
    # BN: convs still follow `bias`; linear layers get the shift that BN gives every conv.
    model = small_model(key, bias=False, batch_norm=True)
    assert all(m.bias is None for m in modules_of(model, nn.Conv2d))
    assert all(m.bias is not None for m in modules_of(model, nn.Linear))


@pytest.mark.parametrize("key", sorted(SMALL))
def test_batch_norm_knob_puts_bn_right_after_each_conv(key: str) -> None:
    assert not modules_of(small_model(key), nn.BatchNorm2d)
    model = small_model(key, batch_norm=True)
    convs, norms = modules_of(model, nn.Conv2d), modules_of(model, nn.BatchNorm2d)
    assert len(norms) == len(convs) > 0
    followed = 0
    for seq in modules_of(model, nn.Sequential):
        children = list(seq)
        for before, after in itertools.pairwise(children):
            if isinstance(after, nn.BatchNorm2d):
                assert isinstance(before, nn.Conv2d) and before.out_channels == after.num_features
                followed += 1
    assert followed == len(norms)
    assert not modules_of(model, nn.BatchNorm1d)  # never after the classifier


@pytest.mark.parametrize("key", sorted(SMALL))
def test_pool_knob(key: str) -> None:
    avg, mx = small_model(key, pool="avg"), small_model(key, pool="max")
    assert not modules_of(avg, nn.MaxPool2d)
    if key == "resnet20":  # strided convs downsample: no pooling layer for the knob to pick
        assert not modules_of(mx, nn.MaxPool2d)
        return
    n_avg = len(modules_of(avg, nn.AvgPool2d))
    assert n_avg > 0 and len(modules_of(mx, nn.MaxPool2d)) == n_avg
    assert not modules_of(mx, nn.AvgPool2d)


@pytest.mark.parametrize("key", sorted(SMALL))
def test_dropout_knob(key: str) -> None:
    assert not modules_of(small_model(key), nn.Dropout)
    model = small_model(key, dropout=0.1)
    rates = sorted({m.p for m in modules_of(model, nn.Dropout)})
    assert rates == [0.1, 0.25]  # convs p, classifier min(2.5 p, 0.5)
    assert isinstance(model.classifier[-2], nn.Dropout)  # right before the logits layer
    high = small_model(key, dropout=0.3)
    assert max(m.p for m in modules_of(high, nn.Dropout)) == 0.5


def test_width_knob_scales_channels() -> None:
    with torch.device("meta"):
        full = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32))
        narrow = create_model("vgg16", num_classes=10, input_shape=(3, 32, 32), width=0.25)
        wide = create_model("digits_cnn", num_classes=10, input_shape=(1, 8, 8), width=2)
    assert [c.out_channels for c in modules_of(narrow, nn.Conv2d)] == [
        c.out_channels // 4 for c in modules_of(full, nn.Conv2d)
    ]
    assert narrow.classifier[0].out_features == 1024
    assert modules_of(wide, nn.Conv2d)[0].out_channels == 32


def test_classifier_width_knob_sets_the_vgg_hidden_units() -> None:
    with torch.device("meta"):
        narrow = create_model(
            "vgg16", num_classes=10, input_shape=(3, 32, 32), classifier_width=512
        )
        scaled = create_model(
            "vgg16", num_classes=10, input_shape=(3, 32, 32), classifier_width=512, width=0.25
        )
    hidden = [m.out_features for m in narrow.classifier if isinstance(m, nn.Linear)]
    assert hidden == [512, 512, 10]
    # 14,710,464 conv weights (the 39,917,248 above less the 4096-wide head) + 2048*512 + 512*512
    # + 512*10: what the CIFAR VGG-16 recipes with a 512-wide classifier train.
    assert n_params(narrow) == 14_710_464 + 2048 * 512 + 512 * 512 + 512 * 10
    assert [m.out_features for m in scaled.classifier if isinstance(m, nn.Linear)] == [128, 128, 10]


def test_models_accept_other_channel_counts_and_odd_sizes() -> None:
    model = create_model("mnist_cnn", num_classes=3, input_shape=(3, 30, 26), width=0.25)
    assert model(torch.rand(2, 3, 30, 26)).shape == (2, 3)


def test_qcfs_levels_range_and_straight_through_gradient() -> None:
    levels = 4
    act = QCFS(levels=levels, ceiling=2.0)
    x = torch.linspace(-3, 5, 2001, requires_grad=True)
    y = act(x)
    values = torch.unique(y.detach())
    assert len(values) == levels + 1
    torch.testing.assert_close(values, torch.arange(levels + 1) * 2.0 / levels)
    # floor(x * L / c + 1/2): 0.2 rounds down to 0, 0.3 up to the first level 0.5.
    torch.testing.assert_close(
        act(torch.tensor([0.2, 0.3, 1.74, 1.76, 9.0])), torch.tensor([0.0, 0.5, 1.5, 2.0, 2.0])
    )
    y.sum().backward()
    # Straight-through: gradient 1 where x * L / c + 1/2 lies inside (0, L), i.e. x in
    # (-c / 2L, c - c / 2L) = (-0.25, 1.75), and 0 where the output is clipped.
    inside = (x > -0.24) & (x < 1.74)
    assert torch.all(x.grad[inside] == 1)
    assert torch.all(x.grad[(x < -0.26) | (x > 1.76)] == 0)
    assert act.ceiling.grad is not None and act.ceiling.grad != 0


def _qcfs_by_autograd(x: torch.Tensor, ceiling: torch.Tensor, levels: int) -> torch.Tensor:
    """QCFS composed from autograd ops: the definition the hand-written backward must match."""
    shifted = x * (levels / ceiling) + 0.5
    window = torch.where((shifted > 0) & (shifted < levels), shifted, shifted.detach())
    steps = torch.floor(shifted.clamp(0, levels)).detach() + (window - window.detach())
    return steps / levels * ceiling


@pytest.mark.parametrize("levels", [1, 4, 8])
def test_qcfs_backward_matches_the_straight_through_composition(levels: int) -> None:
    torch.manual_seed(levels)
    ceiling = 1.7
    # Random inputs plus every window edge and level boundary exactly: x = c (j - 1/2) / L.
    act = QCFS(levels=levels, ceiling=ceiling).double()
    edges = float(act.ceiling) * (torch.arange(-1, levels + 2, dtype=torch.float64) - 0.5) / levels
    x = torch.cat([torch.randn(4000, dtype=torch.float64) * 1.5 + 0.8, edges])
    grad = torch.randn_like(x)
    x1 = x.clone().requires_grad_()
    act(x1).backward(grad)
    c2 = act.ceiling.detach().clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y2 = _qcfs_by_autograd(x2, c2, levels)
    y2.backward(grad)
    assert torch.equal(act(x).detach(), y2.detach())
    # The composition multiplies by (L / c) (c / L); the hand-written one passes grad unrounded.
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-14, atol=0)
    shifted = x * (levels / act.ceiling.detach()) + 0.5
    assert torch.equal(x1.grad, torch.where((shifted > 0) & (shifted < levels), grad, 0.0))
    torch.testing.assert_close(act.ceiling.grad, c2.grad, rtol=1e-12, atol=1e-9)


def test_qcfs_trains_in_bfloat16_with_a_float32_ceiling_gradient() -> None:
    act = QCFS(levels=4, ceiling=2.0)
    x = torch.linspace(-1, 3, 4096).to(torch.bfloat16).requires_grad_()
    y = act(x)
    assert y.dtype == torch.bfloat16 and len(torch.unique(y.detach())) == 5
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and act.ceiling.grad.dtype == torch.float32
    # sum dy/dc = sum(y - [inside] x) / c over the float32 copy of the same bfloat16 inputs
    xf, yf = x.detach().float(), y.detach().float()
    inside = ((xf * 2 + 0.5) > 0) & ((xf * 2 + 0.5) < 4)
    expected = (yf.sum() - xf[inside].sum()) / 2.0
    torch.testing.assert_close(act.ceiling.grad, expected, rtol=1e-4, atol=1e-3)


def test_clip_relu_clamps_at_trainable_ceiling() -> None:
    act = ClipReLU(ceiling=1.5)
    x = torch.tensor([-1.0, 0.5, 1.0, 2.0, 3.0], requires_grad=True)
    y = act(x)
    torch.testing.assert_close(y, torch.tensor([0.0, 0.5, 1.0, 1.5, 1.5]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))
    assert float(act.ceiling.grad) == 2.0  # one per clipped element


def test_make_activation_returns_fresh_modules_with_scalar_ceilings() -> None:
    assert make_activation("relu") is not make_activation("relu")
    assert isinstance(make_activation("relu"), nn.ReLU)
    qcfs = make_activation("qcfs", levels=16)
    assert isinstance(qcfs, QCFS) and qcfs.levels == 16
    for act in (make_activation("clip"), qcfs):
        assert isinstance(act.ceiling, nn.Parameter) and act.ceiling.dim() == 0
        assert act.is_activation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"name": "vgg19"},
            "choose one of: digits_cnn, mnist_cnn, resnet20, resnet34, vgg11, vgg16",
        ),
        ({"pool": "median"}, "choose one of: avg, max"),
        ({"activation": "gelu"}, "choose one of: relu, clip, qcfs"),
        ({"name": "vgg16"}, "at least 16x16"),
        ({"name": "resnet34"}, "at least 32x32"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"width": 0}, "model.width"),
        ({"name": "vgg16", "input_shape": (3, 32, 32), "classifier_width": 0}, "classifier_width"),
        ({"classifier_width": 51.2}, "classifier_width"),
        ({"act_levels": 0}, "model.act_levels"),
        ({"bias": "no"}, "model.bias"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": (8, 8)}, "input_shape"),
    ],
)
def test_bad_input_is_one_clear_error(kwargs: dict, message: str) -> None:
    args = {"name": "digits_cnn", "num_classes": 10, "input_shape": (1, 8, 8), **kwargs}
    with pytest.raises(RmpError, match=message) as info:
        create_model(args.pop("name"), **args)
    assert "\n" not in str(info.value)


def _tiny_builder() -> object:
    def tiny_test_net(
        *, num_classes: int, input_shape: tuple[int, int, int], options: object
    ) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[1] * input_shape[2], num_classes))

    return tiny_test_net


def test_register_model_uses_the_function_name() -> None:
    register_model(_tiny_builder())
    try:
        assert "tiny_test_net" in list_models()
        out = create_model("tiny_test_net", num_classes=2, input_shape=(1, 2, 2))(
            torch.rand(3, 1, 2, 2)
        )
        assert out.shape == (3, 2)
        with pytest.raises(ValueError, match="already registered"):
            register_model(_tiny_builder())  # another function under a taken name
    finally:
        MODELS.pop("tiny_test_net")
