"""Which settings a checkpoint decides and which the current command decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rmp_cli.commands.pipeline import adopt_checkpoint_config
from rmp_cli.errors import RmpError
from rmp_cli.training.checkpoint import check_same_model

CKPT = OmegaConf.create(
    {
        "dataset": {"name": "fashion_mnist", "subset": 2000, "root": "/train/machine"},
        "model": {"name": "mnist_cnn", "width": 0.5},
    }
)


def current(dataset: str = "digits", subset: int | None = None) -> OmegaConf:
    return OmegaConf.create(
        {
            "dataset": {"name": dataset, "subset": subset, "root": None},
            "model": {"name": "digits_cnn", "width": 1.0},
        }
    )


def test_evaluation_overrides_ask_nothing_of_the_checkpoint() -> None:
    check_same_model(CKPT, current(), ["dataset.subset=50", "dataset.root=/x"], Path("c.pt"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset=digits"], "dataset.name"),
        (["model.width=1.0"], "model.width"),
        (["model=digits_cnn"], "model.name"),
    ],
)
def test_overrides_that_change_the_net_are_refused(overrides: list[str], key: str) -> None:
    with pytest.raises(RmpError, match=key):
        check_same_model(CKPT, current(), overrides, Path("c.pt"))


def test_same_dataset_keeps_the_composed_evaluation_settings() -> None:
    cfg = current("fashion_mnist", subset=500)
    adopt_checkpoint_config(cfg, CKPT, [])
    assert cfg.dataset.subset == 500 and cfg.dataset.root is None
    assert cfg.model.name == "mnist_cnn"


def test_other_dataset_takes_the_checkpoints_plus_user_overrides() -> None:
    cfg = current("digits")
    adopt_checkpoint_config(cfg, CKPT, ["dataset.subset=50"])
    assert cfg.dataset.name == "fashion_mnist"
    assert cfg.dataset.subset == 50 and cfg.dataset.root == "/train/machine"
