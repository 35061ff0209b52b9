"""Conversion: BN folding, execution order, what is replaced, what is refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmp_cli.convert import fold_batchnorm, to_spiking
from rmp_cli.errors import RmpError
from rmp_cli.snn import IFNeuron
from rmp_cli.snn.network import trace_graph
from tests import snn_nets
from tests.snn_nets import single_thread  # noqa: F401 - autouse fixture


def folded_copy(ann: nn.Module) -> nn.Module:
    model = copy.deepcopy(ann)
    fold_batchnorm(model, trace_graph(model))
    return model


# --- 4. BN folding keeps the ANN's outputs ---------------------------------------------------------
@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_bn_folding_keeps_ann_outputs_within_1e_5(name: str) -> None:
    ann = snn_nets.make(name, seed=3)
    model = folded_copy(ann)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = snn_nets.images(32, seed=5)
    with torch.no_grad():
        expected, got = ann(x), model(x)
    assert (expected - got).abs().max() <= 1e-5
    first = "features.0" if name == "vgg" else "stem.0"
    # the weights really changed (BN stats are far from identity)
    assert not torch.allclose(ann.get_submodule(first).weight, model.get_submodule(first).weight)


def test_linear_bn1d_and_projection_shortcut_bn_are_folded() -> None:
    resnet = folded_copy(snn_nets.make("resnet"))
    assert isinstance(resnet.layer2.shortcut[1], nn.Identity)
    assert resnet.layer2.shortcut[0].bias is not None  # bias created by folding
    vgg = folded_copy(snn_nets.make("vgg"))
    assert isinstance(vgg.classifier[2], nn.Identity)
    assert vgg.classifier[1].bias is not None


def test_folding_without_conv_bias_uses_a_fresh_bias() -> None:
    torch.manual_seed(0)
    ann = snn_nets.randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 36, 2),
        )
    )
    model = folded_copy(ann)
    x = snn_nets.images(4)
    assert torch.allclose(ann(x), model(x), atol=1e-5, rtol=0)


def test_the_ann_is_left_untouched() -> None:
    ann = snn_nets.make("resnet")
    before = copy.deepcopy(ann.state_dict())
    net = to_spiking(ann)
    after = ann.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(ann.stem[2], nn.ReLU) and isinstance(net.module.stem[2], IFNeuron)


# --- the converted net ------------------------------------------------------------------------------
def test_neurons_are_in_execution_order_not_registration_order() -> None:
    net = to_spiking(snn_nets.make("resnet"))
    registered = [n for n, m in net.module.named_modules() if isinstance(m, IFNeuron)]
    assert net.neuron_names == [
        "stem.2",
        "layer1.conv_path.1",
        "layer1.act_out",
        "layer2.conv_path.1",
        "layer2.act_out",
    ]
    assert registered != net.neuron_names  # act_out is registered before conv_path
    assert [n.name for n in net.neurons] == net.neuron_names
    assert net.output_layer == "fc"


def test_dropout_becomes_identity_and_reset_v_init_are_settable() -> None:
    net = to_spiking(snn_nets.make("vgg"), reset="hard", v_init=0.5)
    assert not any(isinstance(m, nn.Dropout) for m in net.module.modules())
    assert all(n.reset_mode == "hard" and n.v_init == 0.5 for n in net.neurons)
    net.reset_mode, net.v_init = "soft", 0.0
    assert all(n.reset_mode == "soft" and n.v_init == 0.0 for n in net.neurons)
    with pytest.raises(RmpError, match="unknown reset"):
        net.reset_mode = "zero"


def test_thresholds_get_and_set() -> None:
    net = to_spiking(snn_nets.make("vgg"))
    assert [float(t) for t in net.thresholds] == [1.0, 1.0, 1.0]
    net.thresholds = [torch.tensor(2.0), torch.full((16,), 0.5), 3.0]
    assert float(net.neurons[0].threshold) == 2.0 and net.neurons[1].threshold.shape == (16,)
    with pytest.raises(RmpError, match="expected 3 thresholds"):
        net.thresholds = [1.0]
    with pytest.raises(RmpError, match="finite and positive"):
        net.thresholds = [1.0, 0.0, 1.0]


def test_trained_clipping_activations_are_replaced_and_keep_their_ceiling() -> None:
    net = to_spiking(snn_nets.ClipNet())
    assert net.neuron_names == ["body.1", "body.4"]
    assert [float(n.ceiling) for n in net.neurons] == [0.75, 2.5]


def test_single_step_forward_runs_the_converted_module() -> None:
    net = to_spiking(snn_nets.make("vgg"))
    net.reset_state()
    out = net(snn_nets.images(3))
    assert out.shape == (3, 10)


# --- 6. refused with the layer's name --------------------------------------------------------------
def test_max_pooling_is_refused_naming_the_layer_when_asked() -> None:
    with pytest.raises(
        RmpError,
        match=r"layer 'features.2' is MaxPool2d: max-pooling is refused \(snn.maxpool=refuse\); "
        r"snn.maxpool=gate converts it",
    ):
        to_spiking(snn_nets.MaxPoolNet(), maxpool="refuse")


def test_unsupported_layer_is_named() -> None:
    with pytest.raises(RmpError, match=r"layer 'head\.2' is Sigmoid: not supported"):
        to_spiking(snn_nets.SigmoidNet())


def test_functional_relu_becomes_a_neuron_layer() -> None:
    net = to_spiking(snn_nets.FunctionalReluNet())
    assert net.neuron_names == ["relu"]


def test_shared_activation_module_gets_one_neuron_layer_per_call_site() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(self.b(self.act(self.a(x)))))

    net = to_spiking(Shared())
    assert net.neuron_names == ["act", "act#2"]
    assert net.neurons[0] is not net.neurons[1]


def test_batchnorm_after_an_activation_stays_an_exact_affine_current() -> None:
    torch.manual_seed(0)
    ann = snn_nets.randomize_bn(
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 36, 2)
        )
    )
    net = to_spiking(ann)
    assert isinstance(net.module.get_submodule("2"), nn.BatchNorm2d)
    assert not net.module.get_submodule("2").training


def test_net_ending_with_an_activation_reads_out_its_spikes() -> None:
    ann = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU())
    net = to_spiking(ann)
    assert net.output_layer is None and net.neuron_names == ["2"]


def test_untraceable_model_gives_one_line() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act = nn.Linear(3, 3), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(x)) if x.sum() > 0 else self.fc(x)

    with pytest.raises(RmpError, match="cannot trace DataDependent") as info:
        to_spiking(DataDependent())
    assert "\n" not in str(info.value)
