"""Bring your own network, end to end through the CLI: custom factories, plain state_dicts,
torchvision models, and every bad input as one line with no run dir left behind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from tests.conftest import assert_clean_error, last_line
from tests.test_data import CIFAR10_CLASSES, write_jpeg_folders

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_module() -> str:
    """The README's example module (example 2 of "Bring your own network"), verbatim."""
    text = README.read_text()
    section = text[text.index("## Bring your own network") :]
    start = section.index("```python\n# 2.") + len("```python\n")
    return section[start : section.index("```", start)]


EXTRA = textwrap.dedent(
    """

    def gelu_net(num_classes, input_shape):
        c, h, w = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.GELU(),
                             nn.Linear(16, num_classes))


    def broken(num_classes):
        raise ValueError("width must be even")
    """
)
NETS = readme_module() + EXTRA


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "mynets.py").write_text(NETS)
    return tmp_path


def run_dirs(tmp_path: Path) -> list[Path]:
    outputs = tmp_path / "outputs"
    return [p for p in outputs.glob("*/*") if p.is_dir()] if outputs.exists() else []


FAST_SWEEP = ["threads=1", "balance=max_act", "dataset.subset=60", "snn.batch_size=60"]


@pytest.mark.slow
def test_custom_module_trained_then_swept(rmp, nets: Path) -> None:
    def path(proc) -> Path:
        return nets / last_line(proc)

    train = rmp(
        "train",
        "model=custom",
        "model._target_=mynets.SmallCNN",
        "+model.width=6",
        "train.epochs=2",
        "threads=1",
    )
    ckpt = path(train) / "model.pt"
    assert ckpt.is_file()
    sweep = rmp("sweep", f"ckpt={ckpt}", "--timesteps", "4,32", "snn.reset=hard,soft", *FAST_SWEEP)
    run = path(sweep)
    df = pd.read_csv(run / "results.csv")
    assert set(df["model"]) == {"mynets.SmallCNN"} and len(df) == 4
    assert (df["energy_ratio"] > 0).all() and (df["ann_macs_per_image"] > 0).all()
    log = (run / "run.log").read_text()
    assert "model mynets.SmallCNN on dataset digits" in log


@pytest.mark.slow
def test_plain_pytorch_state_dict_converted_with_weights(rmp, nets: Path, tmp_path: Path) -> None:
    # weights from the user's own training code: a plain nn.Sequential state_dict
    import sys

    sys.path.insert(0, str(nets))
    try:
        import mynets

        torch.manual_seed(0)
        model = mynets.SmallCNN(10, (1, 8, 8), 4)
    finally:
        sys.path.remove(str(nets))
        sys.modules.pop("mynets", None)
    torch.save(model.state_dict(), tmp_path / "mine.pth")
    proc = rmp(
        "convert",
        "model=custom",
        "model._target_=mynets.SmallCNN",
        "+model.width=4",
        f"weights={tmp_path / 'mine.pth'}",
        "snn.timesteps=16",
        *FAST_SWEEP,
    )
    run = tmp_path / last_line(proc)
    report = json.loads((run / "convert.json").read_text())
    assert report["ckpt"].endswith("mine.pth") and 0 <= report["snn_accuracy"] <= 1
    assert report["energy_ratio"] > 0 and report["ann_macs_per_image"] > 0
    assert "ANN accuracy" in proc.stderr  # printed before converting
    names = pd.read_csv(run / "thresholds.csv")["layer"].tolist()
    assert names == ["relu", "act"]


@pytest.mark.slow
def test_torchvision_resnet_through_sweep(rmp, tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    write_jpeg_folders(root, CIFAR10_CLASSES, per_class=3)
    proc = rmp(
        "sweep",
        "dataset=cifar10",
        f"dataset.root={root}",
        "dataset.calib_size=20",
        "balance.num_images=20",
        "model=torchvision",
        "model.arch=resnet18",
        "model.small_input=true",
        "train.epochs=1",
        "--timesteps",
        "2,8",
        "snn.reset=soft",
        "balance=max_act",
        "threads=1",
    )
    run = tmp_path / last_line(proc)
    df = pd.read_csv(run / "results.csv")
    assert set(df["model"]) == {"torchvision.resnet18"} and list(df["timesteps"]) == [2, 8]
    assert (run / "ann" / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["model=custom", "model._target_=nowhere.net"], "model._target_ 'nowhere.net' cannot be"),
        (["model=custom", "model._target_=mynets.broken"], "raised ValueError: width must be even"),
        (["model=custom", "model._target_=mynets.gelu_net"], "layer '2' is GELU: not supported"),
        (["model=torchvision", "model.arch=resnet7"], "unknown torchvision model.arch 'resnet7'"),
    ],
)
def test_bad_model_sources_are_one_line(
    rmp, nets: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    weights = [] if "arch" in " ".join(args) else [f"weights={tmp_path / 'w.pt'}"]
    if "gelu" in " ".join(args):
        torch.save(
            nn.Sequential(
                nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10)
            ).state_dict(),
            tmp_path / "w.pt",
        )
    command = "convert" if weights else "train"
    proc = rmp(command, *args, *weights, "threads=1", check=False)
    assert proc.returncode == 2
    assert_clean_error(proc, fragment)
    assert run_dirs(tmp_path) == []


@pytest.mark.slow
def test_bad_weights_are_one_line(rmp, tmp_path: Path) -> None:
    base = ["model=digits_cnn", "threads=1"]
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "keys.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00not a torch file")
    cases = [
        ([f"weights={tmp_path / 'keys.pt'}"], "do not fit the model"),
        ([f"weights={tmp_path / 'corrupt.pt'}"], "is corrupt or not a torch file"),
        ([f"weights={tmp_path / 'absent.pt'}"], "weights file not found"),
        ([f"weights={tmp_path / 'keys.pt'}", f"ckpt={tmp_path / 'keys.pt'}"], "not both"),
    ]
    for extra, fragment in cases:
        for command in ("convert", "sweep"):
            proc = rmp(command, *base, *extra, check=False)
            assert proc.returncode == 2, (command, extra)
            assert_clean_error(proc, fragment)
    assert run_dirs(tmp_path) == []
