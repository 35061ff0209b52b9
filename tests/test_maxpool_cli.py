"""End to end: max-pool networks through `rmp convert` / `rmp sweep` (snn.maxpool=gate|avg|refuse)
and torchvision's max-pool families through the converter."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from rmp_cli.models.torchvision_source import build_torchvision
from tests.conftest import FAST_TRAIN, assert_clean_error, last_line, run_rmp
from tests.snn_nets import kaiming

pytestmark = pytest.mark.slow

QUICK = ["threads=1", "balance=max_act", "balance.num_images=64", "dataset.subset=120"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ann")
    run = cwd / last_line(run_rmp(cwd, "train", *FAST_TRAIN, "model.pool=max"))
    return run / "model.pt"


def _convert(rmp, tmp_path: Path, ckpt: Path, mode: str) -> tuple[dict, str]:
    proc = rmp("convert", f"ckpt={ckpt}", f"snn.maxpool={mode}", "snn.timesteps=64", *QUICK)
    report = json.loads((tmp_path / last_line(proc) / "convert.json").read_text())
    return report, proc.stdout


def test_gate_and_avg_convert_a_max_pool_network(rmp, tmp_path: Path, ckpt: Path) -> None:
    gate, gate_table = _convert(rmp, tmp_path, ckpt, "gate")
    assert gate["maxpool"] == "gate" and gate["ann_accuracy_before_avg"] is None
    assert gate["snn_accuracy"] > 0.5 and gate["synops_per_image"] > 0
    assert "ANN as trained" not in gate_table

    avg, avg_table = _convert(rmp, tmp_path, ckpt, "avg")
    # The ANN as trained is the one the gate run converted; the changed ANN is reported apart.
    assert avg["ann_accuracy_before_avg"] == gate["ann_accuracy"]
    assert "ANN as trained (max-pool)" in avg_table and "ANN with avg pooling" in avg_table
    before = f"{avg['ann_accuracy_before_avg'] * 100:.2f}%"
    assert before in avg_table.split("ANN as trained (max-pool)")[1].splitlines()[0]


def test_refused_max_pool_and_bad_mode_are_one_line_errors(rmp, tmp_path: Path, ckpt: Path) -> None:
    proc = rmp("convert", f"ckpt={ckpt}", "snn.maxpool=refuse", *QUICK, check=False)
    assert proc.returncode == 2
    assert_clean_error(proc, "is MaxPool2d: max-pooling is refused", "snn.maxpool=gate")
    proc = rmp("sweep", f"ckpt={ckpt}", "snn.maxpool=maybe", *QUICK, check=False)
    assert proc.returncode == 2
    assert_clean_error(proc, "unknown snn.maxpool 'maybe'; choose one of: gate, avg, refuse")
    assert not (tmp_path / "outputs").exists()


def test_sweep_with_avg_keeps_both_ann_accuracies(rmp, tmp_path: Path, ckpt: Path) -> None:
    run = tmp_path / last_line(
        rmp(
            "sweep",
            "--timesteps",
            "8,32",
            f"ckpt={ckpt}",
            "snn.maxpool=avg",
            "snn.reset=soft",
            *QUICK,
        )
    )
    ann = json.loads((run / "ann.json").read_text())
    assert 0 < ann["accuracy_before_avg"] <= 1
    df = pd.read_csv(run / "results.csv")
    assert (df["ann_accuracy"] == ann["accuracy"]).all()  # the SNN's reference: the changed ANN
    assert "snn.maxpool=avg: ANN accuracy" in (run / "run.log").read_text()


def test_fine_tuned_with_average_pooling_then_converted(rmp, tmp_path: Path, ckpt: Path) -> None:
    """The avg recipe: fine-tune the max-pool net's weights with model.pool=avg, convert that."""
    tuned = tmp_path / last_line(
        rmp("train", *FAST_TRAIN, "train.epochs=1", f"weights={ckpt}", "model.pool=avg")
    )
    assert f"initialised from {ckpt}" in (tuned / "run.log").read_text()
    report, table = _convert(rmp, tmp_path, tuned / "model.pt", "refuse")  # nothing to refuse
    assert report["ann_accuracy_before_avg"] is None and "ANN as trained" not in table
    assert 0 < report["snn_accuracy"] <= 1


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("resnet18", 32),  # the stem's 3x3 / stride 2 / padding 1 max-pool, after a neuron
        ("squeezenet1_1", 48),  # three 3x3 / stride 2 max-pools with ceil_mode
    ],
)
def test_torchvision_max_pool_families_converge_to_their_ann(arch: str, size: int) -> None:
    """Gated, the max-pool families converge as the others do (the criteria of
    test_torchvision_families: within 6% relative L2 at T=512, 2.5x closer than at T=128)."""
    from tests.test_torchvision_families import relative_errors

    torch.manual_seed(0)
    model = kaiming(build_torchvision(arch, num_classes=10, input_shape=(3, size, size)), None)
    assert any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    (err_128, err_512), same_class = relative_errors(model, size)
    assert err_512 <= 0.06 and err_512 <= err_128 / 2.5, (err_128, err_512)
    assert same_class
