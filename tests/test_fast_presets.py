"""The fast VGG-16 presets: what they train, what they sweep, and that their net fits a GPU call."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rmp_cli.commands.grid import config_variants
from rmp_cli.config import compose_config
from rmp_cli.training.checkpoint import build_model

FAST, NOBN = "cifar10_vgg16_fast", "cifar10_vgg16_fast_nobn"
# What a device call returns: 64 MiB in all, 16 MiB a file, 8 files; the GPU script sends the
# float16 checkpoint in at most 3 parts of 15 MiB and keeps the rest for the log and the run.
CHECKPOINT_BUDGET = 3 * 15 * 2**20


def flat(preset: str) -> dict[str, object]:
    cfg = OmegaConf.to_container(compose_config([f"experiment={preset}"]))
    out: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(cfg, "")
    return out


def float16_bytes(preset: str) -> int:
    cfg = compose_config([f"experiment={preset}"])
    with torch.device("meta"):
        model = build_model(cfg, 10, (3, 32, 32))
    return 2 * sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())


def test_the_fast_recipe() -> None:
    cfg = compose_config([f"experiment={FAST}"])
    assert (cfg.dataset.name, cfg.dataset.format, cfg.dataset.on_device) == (
        "cifar10",
        "folder",
        "auto",
    )
    assert cfg.dataset.subset is None  # all 10,000 test images
    assert (cfg.model.name, cfg.model.batch_norm, cfg.model.bias, cfg.model.pool) == (
        "vgg16",
        True,
        False,
        "avg",
    )
    t = cfg.train
    assert (t.schedule, t.nesterov, t.amp, t.channels_last) == ("onecycle", True, "auto", True)
    assert t.label_smoothing > 0 and cfg.dataset.batch_size >= 512
    assert list(cfg.sweep.timesteps) == [2**k for k in range(5, 12)]
    assert config_variants(cfg.sweep.variants) == [
        ["snn.reset=soft", "balance=rmp"],
        ["snn.reset=hard", "balance=spike_norm"],
    ]


def test_the_no_bn_twin_differs_only_where_batch_norm_forces_it() -> None:
    fast, nobn = flat(FAST), flat(NOBN)
    assert fast.keys() == nobn.keys()
    changed = {key for key in fast if fast[key] != nobn[key]}
    assert changed == {"model.batch_norm", "model.dropout", "train.lr", "train.grad_clip"}
    assert nobn["model.batch_norm"] is False and nobn["model.bias"] is False
    # the same time budget: epochs, batches, schedule shape and data path are shared
    for key in ("train.epochs", "train.warmup_epochs", "dataset.batch_size", "train.amp"):
        assert fast[key] == nobn[key]


@pytest.mark.parametrize("preset", [FAST, NOBN])
def test_the_float16_checkpoint_fits_what_a_gpu_call_returns(preset: str) -> None:
    size = float16_bytes(preset)
    assert 25 * 2**20 < size < CHECKPOINT_BUDGET  # VGG-16's 14.7M conv weights dominate


def test_the_papers_4096_wide_classifier_would_not_fit() -> None:
    # why the fast presets set model.classifier_width=512: the reference head alone is 25M weights
    cfg = compose_config([f"experiment={FAST}", "model.classifier_width=null"])
    with torch.device("meta"):
        model = build_model(cfg, 10, (3, 32, 32))
    assert 2 * sum(p.numel() for p in model.parameters()) > CHECKPOINT_BUDGET
