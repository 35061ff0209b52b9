"""A float16 copy of an ANN checkpoint: half the bytes, for moving a trained net between machines.

    python -m rmp_cli.training.half_checkpoint MODEL.pt OUT.pt

rounds every floating-point tensor of the state dict to float16 (integer buffers such as
BatchNorm's num_batches_tracked stay as they are) and marks the copy (`weights_dtype`). Loading
casts the values back to float32, so the copy is an ordinary checkpoint whose weights are float16
numbers. The GPU script converts and sweeps this copy in every call, and evaluates the ANN from it,
so every number of a run comes from the same weights however many calls it takes. A value beyond
float16's range is refused rather than turned into infinity. `test_acc` stays the float32 net's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from rmp_cli.errors import RmpError
from rmp_cli.training.checkpoint import config_payload, load_checkpoint, save_checkpoint

HALF = torch.float16
HALF_MAX = torch.finfo(HALF).max


def half_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    half = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            half[name] = tensor
            continue
        finite = tensor[torch.isfinite(tensor)]
        if finite.numel() and finite.abs().max().item() > HALF_MAX:
            raise RmpError(
                f"{name} holds {finite.abs().max().item():.4g}, beyond float16's range "
                f"({HALF_MAX:g}); this checkpoint cannot be halved"
            )
        half[name] = tensor.to(HALF)
    return half


def half_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write the float16 copy of `source` (a model.pt of `rmp train`) to `target`, atomically."""
    data = load_checkpoint(source)
    if data.get("kind") == "last":
        raise RmpError(f"{source} is a last.pt (training state); pass the run's model.pt")
    payload: dict[str, Any] = {k: v for k, v in data.items() if k not in ("format", "path")}
    payload["config"] = config_payload(data["config"])
    payload["state_dict"] = half_state_dict(data["state_dict"])
    payload["weights_dtype"] = "float16"
    try:
        return save_checkpoint(target, payload)
    except OSError as exc:
        raise RmpError(f"cannot write {target} ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m rmp_cli.training.half_checkpoint MODEL.pt OUT.pt", file=sys.stderr)
        return 2
    try:
        print(half_checkpoint(args[0], args[1]))
    except RmpError as exc:
        print(f"rmp: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
