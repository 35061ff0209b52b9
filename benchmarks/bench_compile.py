"""Does torch.compile speed up ANN training steps? Eager vs compiled on the same model and device.

    python benchmarks/bench_compile.py [--model vgg11 --width 0.25 --shape 3,32,32 --device cpu]

Times `--steps` SGD steps (batch `--batch`) after warm-up (compilation excluded, reported apart)
and writes benchmarks/results/compile.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rmp_cli.models import create_model

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, step_model, x, y, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first step incl. compilation, seconds per step after warm-up)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if amp is not None:
            with amp:
                loss = F.cross_entropy(step_model(x).float(), y)
        else:
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()

    tic = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - tic
    for _ in range(2):
        step()
    sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return first, (time.perf_counter() - tic) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vgg11")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--shape", default="3,32,32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    shape = tuple(int(v) for v in args.shape.split(","))
    rows = []
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = create_model(
            args.model, num_classes=10, input_shape=shape, width=args.width, dropout=0.1
        ).to(device)
        step_model = torch.compile(model) if mode == "compiled" else model
        x = torch.randn(args.batch, *shape, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        first, per_step = time_steps(model, step_model, x, y, args.steps, device)
        rows.append(
            {
                "mode": mode,
                "first_step_s": round(first, 2),
                "images_per_s": round(args.batch / per_step, 1),
            }
        )
        print(rows[-1], flush=True)
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    out = {
        "model": args.model,
        "width": args.width,
        "shape": shape,
        "batch": args.batch,
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
        "compiled_over_eager": round(speedup, 3),
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"compile_{device.type}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"compiled / eager = {speedup:.2f}x  -> {RESULTS / name}")


if __name__ == "__main__":
    main()
