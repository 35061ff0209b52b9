"""The float16 copy of a checkpoint: what the GPU script sends back and converts in every call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmp_cli.config import compose_config
from rmp_cli.errors import RmpError
from rmp_cli.training.checkpoint import (
    build_model,
    config_payload,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from rmp_cli.training.half_checkpoint import half_checkpoint, half_state_dict


def _checkpoint(path: Path, *, kind: str = "model") -> Path:
    cfg = compose_config(["dataset=cifar10", "model=vgg16", "model.width=0.0625"])
    cfg.model.batch_norm = True
    cfg.model.classifier_width = 512
    torch.manual_seed(0)
    model = build_model(cfg, 10, (3, 32, 32))
    model.train()
    model(torch.randn(16, 3, 32, 32))  # running statistics that are not the initial 0 / 1
    payload = {
        "kind": kind,
        "state_dict": model.state_dict(),
        "config": config_payload(cfg),
        "num_classes": 10,
        "input_shape": [3, 32, 32],
        "test_acc": 0.5,
        "epoch": 1,
    }
    return save_checkpoint(path, payload)


def test_half_copy_holds_the_float16_values_and_loads_as_float32(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "model.pt")
    target = half_checkpoint(source, tmp_path / "ann16.pt")
    full, half = load_checkpoint(source), load_checkpoint(target)
    assert half["weights_dtype"] == "float16" and half["test_acc"] == full["test_acc"]
    assert half["config"] == full["config"]
    for name, value in full["state_dict"].items():
        stored = half["state_dict"][name]
        if value.is_floating_point():
            assert stored.dtype == torch.float16
            assert torch.equal(stored, value.to(torch.float16))
        else:
            assert torch.equal(stored, value)  # num_batches_tracked stays an integer
    assert target.stat().st_size < 0.6 * source.stat().st_size
    net_full, net_half = load_model(full), load_model(half)
    assert next(net_half.parameters()).dtype == torch.float32
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        a, b = net_full(x), net_half(x)
    assert not torch.equal(a, b)  # the rounding is real...
    assert torch.allclose(a, b, rtol=2e-2, atol=2e-2)  # ...and small


def test_values_beyond_float16_are_refused() -> None:
    with pytest.raises(RmpError, match="beyond float16's range"):
        half_state_dict({"w": torch.tensor([1.0, 7e4])})
    kept = half_state_dict({"w": torch.tensor([1.0, float("inf")]), "n": torch.tensor(3)})
    assert kept["w"].dtype == torch.float16 and kept["n"].dtype == torch.int64


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rmp_cli.training.half_checkpoint", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    for args, fragment in (
        (("missing.pt", "out.pt"), "not found"),
        ((str(_checkpoint(tmp_path / "last.pt", kind="last")), "out.pt"), "last.pt"),
        ((str(_checkpoint(tmp_path / "m.pt")), str(tmp_path / "m.pt" / "x.pt")), "cannot write"),
    ):
        proc = run(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("rmp: error:") and fragment in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    ok = run(str(tmp_path / "m.pt"), "half.pt")
    assert ok.returncode == 0 and ok.stdout.strip() == "half.pt"
    assert run("only-one").returncode == 2
