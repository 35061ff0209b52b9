"""Model sources (torchvision, custom factories), weights trained elsewhere, dataset defaults."""

from __future__ import annotations

import sys
import textwrap
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from rmp_cli.config import compose_config
from rmp_cli.errors import RmpError
from rmp_cli.models.sources import build_from_config, describe
from rmp_cli.models.torchvision_source import build_torchvision, max_to_avg_pooling
from rmp_cli.training.checkpoint import load_weights, read_state_dict
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture


# --- torchvision -----------------------------------------------------------------------------------
def test_torchvision_net_is_fitted_to_classes_channels_and_small_images() -> None:
    model = build_torchvision("resnet18", num_classes=7, input_shape=(1, 16, 16), small_input=True)
    assert model.fc.out_features == 7
    assert model.conv1.in_channels == 1
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.eval()(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    plain = build_torchvision("resnet18", num_classes=7, input_shape=(3, 64, 64))
    assert plain.conv1.kernel_size == (7, 7) and isinstance(plain.maxpool, nn.MaxPool2d)


def test_small_input_keeps_a_stemless_vgg_and_strides_mobilenet_once() -> None:
    vgg = build_torchvision("vgg11", num_classes=3, input_shape=(3, 32, 32), small_input=True)
    assert isinstance(vgg.features[2], nn.MaxPool2d)  # after the first conv: not a stem pool
    mobile = build_torchvision(
        "mobilenet_v2", num_classes=3, input_shape=(3, 32, 32), small_input=True
    )
    assert mobile.features[0][0].stride == (1, 1)
    assert mobile.features[2].conv[1][0].stride == (2, 2)  # later strides untouched


def test_unknown_arch_and_weights_list_the_choices() -> None:
    with pytest.raises(RmpError, match=r"unknown torchvision model.arch 'resnet7'.*resnet18"):
        build_torchvision("resnet7", num_classes=10, input_shape=(3, 32, 32))
    with pytest.raises(RmpError, match=r"unknown model.weights 'IMAGENET9'.*IMAGENET1K_V1"):
        build_torchvision("resnet18", num_classes=10, input_shape=(3, 32, 32), weights="IMAGENET9")


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_pretrained_weights_load_from_the_torch_home_cache(torch_home: Path) -> None:
    from torchvision import models

    reference = models.resnet18(num_classes=1000)
    torch_home.mkdir(parents=True)
    url = models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), torch_home / Path(url).name)
    model = build_torchvision(
        "resnet18", num_classes=10, input_shape=(1, 32, 32), weights="IMAGENET1K_V1"
    )
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    # grey input: the RGB filters summed; the 1000-class head replaced by a 10-class one
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert model.fc.out_features == 10
    default = build_torchvision(
        "resnet18", num_classes=1000, input_shape=(3, 32, 32), weights="DEFAULT"
    )
    assert torch.equal(default.fc.weight, reference.fc.weight)


def test_missing_weights_without_network_say_where_to_put_the_file(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*_args: object, **_kw: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RmpError) as info:
        build_torchvision("resnet18", num_classes=10, input_shape=(3, 32, 32), weights="DEFAULT")
    message = str(info.value)
    assert "network is unreachable" in message and "resnet18-" in message
    assert str(torch_home) in message and "\n" not in message


def test_corrupt_cached_weights_are_one_line(torch_home: Path) -> None:
    from torchvision import models

    torch_home.mkdir(parents=True)
    (torch_home / Path(models.ResNet18_Weights.IMAGENET1K_V1.url).name).write_bytes(b"not torch")
    with pytest.raises(RmpError, match="cannot be loaded"):
        build_torchvision("resnet18", num_classes=10, input_shape=(3, 32, 32), weights="DEFAULT")


def test_max_pooling_can_become_average_pooling() -> None:
    model = build_from_config(
        {"name": "torchvision", "arch": "vgg11", "pool": "avg"}, 10, (3, 32, 32)
    )
    pools = [m for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert pools and all(isinstance(p, nn.AvgPool2d) and not p.count_include_pad for p in pools)
    assert max_to_avg_pooling(model) == 0
    with pytest.raises(RmpError, match=r"model\.pool=max is not valid for model=torchvision"):
        build_from_config({"name": "torchvision", "arch": "vgg11", "pool": "max"}, 10, (3, 32, 32))


# --- custom factories ------------------------------------------------------------------------------
@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_nets.py").write_text(
        textwrap.dedent(
            """
            import torch.nn as nn

            def mlp(num_classes, input_shape, hidden=16):
                c, h, w = input_shape
                return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                                     nn.Linear(hidden, num_classes))

            def only_kwargs(**kw):
                return nn.Linear(kw["input_shape"][0], kw["num_classes"])

            def no_shape(depth=2):
                return nn.Sequential(*[nn.Linear(4, 4) for _ in range(depth)])

            def broken(num_classes):
                raise ValueError("depth must be even")

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_nets"
    sys.modules.pop("user_nets", None)


def test_custom_factory_gets_num_classes_input_shape_and_kwargs(factory_module: str) -> None:
    model = build_from_config(
        {"name": "custom", "_target_": f"{factory_module}.mlp", "hidden": 5}, 3, (1, 4, 4)
    )
    assert model[1].out_features == 5 and model[3].out_features == 3
    assert (
        build_from_config(
            {"name": "custom", "_target_": f"{factory_module}.only_kwargs"}, 6, (2, 4, 4)
        ).out_features
        == 6
    )
    deep = build_from_config(
        {"name": "custom", "_target_": f"{factory_module}.no_shape", "depth": 3}, 6, (2, 4, 4)
    )
    assert len(deep) == 3
    assert describe({"name": "custom", "_target_": "a.b"}) == "a.b"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (None, r"model=custom needs model._target_"),
        ("nowhere_pkg.net", r"model._target_ 'nowhere_pkg.net' cannot be imported"),
        ("user_nets.missing", r"model._target_ 'user_nets.missing' cannot be imported"),
        ("user_nets.broken", r"model factory 'user_nets.broken' raised ValueError: depth must"),
        ("user_nets.not_a_module", r"returned int, not a torch.nn.Module"),
    ],
)
def test_bad_custom_factories_are_one_line(
    factory_module: str, target: str | None, message: str
) -> None:
    with pytest.raises(RmpError, match=message) as info:
        build_from_config({"name": "custom", "_target_": target}, 3, (1, 4, 4))
    assert "\n" not in str(info.value)


# --- weights trained elsewhere ---------------------------------------------------------------------
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "rmp", "ddp"])
def test_weights_files_in_every_usual_layout(tmp_path: Path, wrap: str) -> None:
    source = small_net()
    state = source.state_dict()
    payload = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "rmp": {"format": "rmp-ann-v1", "state_dict": state, "config": {}},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(payload, tmp_path / "w.pt")
    target = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))
    load_weights(target, read_state_dict(tmp_path / "w.pt"), tmp_path / "w.pt")
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())


def test_mismatched_weights_list_the_first_keys_and_shapes(tmp_path: Path) -> None:
    state = small_net().state_dict()
    wrong = {k.replace("3.", "fc."): v for k, v in state.items()}
    wrong["0.weight"] = torch.zeros(2, 1, 5, 5)
    with pytest.raises(RmpError) as info:
        load_weights(small_net(), wrong, "w.pt")
    message = str(info.value)
    assert "2 missing: 3.weight, 3.bias" in message
    assert "2 unexpected: fc.weight, fc.bias" in message
    assert "1 shape: 0.weight (2, 1, 5, 5) vs (2, 1, 3, 3)" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "is corrupt or not a torch file"),
        (None, "holds no state_dict"),
    ],
)
def test_unreadable_weights_files_are_one_line(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "w.pt"
    if content is None:
        torch.save({"epoch": 3, "lr": 0.1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(RmpError, match=message):
        read_state_dict(path)
    with pytest.raises(RmpError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.pt")


# --- defaults that follow the dataset --------------------------------------------------------------
@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("digits", "digits_cnn"),
        ("mnist", "mnist_cnn"),
        ("fashion_mnist", "mnist_cnn"),
        ("cifar10", "resnet20"),
        ("cifar100", "resnet20"),
        ("imagenet", "resnet34"),
    ],
)
def test_each_dataset_brings_its_default_model(dataset: str, model: str) -> None:
    assert compose_config([f"dataset={dataset}"]).model.name == model


def test_an_explicit_model_or_preset_wins_and_model_keys_apply() -> None:
    assert compose_config(["dataset=cifar10", "model=vgg11"]).model.name == "vgg11"
    assert compose_config(["experiment=cifar10_vgg11_cpu"]).model.name == "vgg11"
    cfg = compose_config(["dataset=fashion_mnist", "model.width=0.5"])
    assert cfg.model.name == "mnist_cnn" and cfg.model.width == 0.5
    assert compose_config(["dataset=cifar10", "model=auto"]).model.name == "resnet20"
