"""Simulation speed of the paper presets' nets (image-steps per second) per precision.

    python benchmarks/bench_presets.py                      # on the GPU: vgg16 + resnet20, 32x32
    python benchmarks/bench_presets.py --device cpu --images 8 --timesteps 16   # smoke run

Random weights with max_act thresholds (scale 0.8) on random calibration images, so every layer
fires; speed does not depend on trained weights beyond their firing rates. The readout of every
precision is compared with fp32's (agreement = share of equal predictions). Writes
benchmarks/results/presets_<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from rmp_cli.atomic import atomic_write_text
from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.models import create_model
from rmp_cli.snn import ChunkedRun, run_batch

RESULTS = Path(__file__).resolve().parent / "results"
# name -> (model, input shape, classes): the nets of the cifar10_vgg16 / cifar10_resnet20 presets
NETS = {
    "cifar10_vgg16": ("vgg16", (3, 32, 32), 10),
    "cifar10_resnet20": ("resnet20", (3, 32, 32), 10),
}
# precision name -> (ChunkedRun precision, allow_tf32)
MODES = {
    "fp32": ("fp32", False),
    "tf32": ("fp32", True),
    "bf16": ("bf16", False),
    "fp16": ("fp16", False),
}


def measure(net, x: torch.Tensor, steps: int, device: str, mode: str) -> tuple[float, torch.Tensor]:
    precision, tf32 = MODES[mode]
    with (
        torch.inference_mode(),
        ChunkedRun(net, device=device, chunk="auto", precision=precision, allow_tf32=tf32) as run,
    ):
        run_batch(run, x[: max(1, x.shape[0] // 8)], [min(steps, 8)])  # warm-up, chunk sizing
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        tic = time.perf_counter()
        trace = run_batch(run, x, [steps])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
    return x.shape[0] * steps / seconds, trace.potentials[-1].argmax(1).cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=500, help="batch (the presets' snn.batch_size)")
    ap.add_argument("--timesteps", type=int, default=256)
    ap.add_argument("--nets", default=",".join(NETS))
    args = ap.parse_args()
    rows = []
    for name in args.nets.split(","):
        model, shape, classes = NETS[name]
        torch.manual_seed(0)
        ann = create_model(model, num_classes=classes, input_shape=shape).eval()
        net = to_spiking(ann)
        balance_thresholds(net, ann, torch.randn(64, *shape), method="max_act", scale=0.8)
        x = torch.randn(args.images, *shape)
        reference = None
        for mode in MODES:
            if mode in ("tf32", "fp16") and not args.device.startswith("cuda"):
                continue  # TF32 is a CUDA setting; CPU autocast is tested with bf16
            rate, predictions = measure(net, x, args.timesteps, args.device, mode)
            reference = predictions if reference is None else reference
            agree = float((predictions == reference).float().mean())
            rows.append(
                {
                    "net": name,
                    "precision": mode,
                    "image_steps_per_s": round(rate),
                    "agreement_with_fp32": round(agree, 4),
                }
            )
            print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "images": args.images,
        "timesteps": args.timesteps,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"presets_{args.device.split(':')[0]}.json"
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"\n{device}, torch {torch.__version__}, batch {args.images}, T={args.timesteps}\n")
    print("| net | precision | image-steps/s | readout agreement with fp32 |\n|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['net']} | {r['precision']} | {r['image_steps_per_s']:,} | "
            f"{r['agreement_with_fp32']:.4f} |"
        )


if __name__ == "__main__":
    main()
