"""Simulation speed of the paper presets' nets (image-steps per second) per precision, neuron
backend, layout and chunk; optionally one whole-test-set grid point to T=2048.

    python benchmarks/bench_presets.py                      # on the GPU: vgg16 + resnet20, 32x32
    python benchmarks/bench_presets.py --backends eager,auto --modes fp32,bf16   # before / after
    python benchmarks/bench_presets.py --device cpu --images 8 --timesteps 16   # smoke run

Random weights with max_act thresholds (scale 0.8) on random calibration images, so every layer
fires; speed does not depend on trained weights beyond their firing rates. The readout of every
configuration is compared with the first one measured for its net (fp32 with the first backend):
agreement = share of equal predictions, and `identical` says whether the accumulated potentials
are bit-identical to the same precision's first backend (the fused kernels must give True).
Writes benchmarks/results/presets_<device>.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import time
from pathlib import Path

import torch

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.models import create_model
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.snn import ChunkedRun, SpikingNet, run_batch, simulate

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
LAYOUTS = {"default": None, "on": True, "off": False}  # channels_last (default: CPU only)
GRID_IMAGES, GRID_T = 10_000, 2048  # one grid point of the CIFAR-10 test set


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_options(mode: str, layout: str, chunk: str) -> dict:
    precision, tf32 = MODES[mode]
    return {
        "chunk": chunk if chunk == "auto" else int(chunk),
        "precision": precision,
        "allow_tf32": tf32,
        "channels_last": LAYOUTS[layout],
    }


def measure(
    net: SpikingNet, x: torch.Tensor, steps: int, device: str, options: dict
) -> tuple[float, torch.Tensor, int]:
    """(image-steps per second, accumulated potentials [B, K], chunk used)."""
    with torch.inference_mode(), ChunkedRun(net, device=device, **options) as run:
        # Warm-up on the whole batch (kernel compilation, cuDNN algorithm choice); an "auto"
        # chunk is sized here, for this batch size.
        run_batch(run, x, [min(steps, 8)])
        sync(device)
        tic = time.perf_counter()
        trace = run_batch(run, x, [steps])
        sync(device)
        seconds = time.perf_counter() - tic
        chunk = run.chunk
    return x.shape[0] * steps / seconds, trace.potentials[-1].cpu(), chunk


def build(name: str) -> tuple[SpikingNet, tuple[int, ...]]:
    model, shape, classes = NETS[name]
    torch.manual_seed(0)
    ann = create_model(model, num_classes=classes, input_shape=shape).eval()
    net = to_spiking(ann)
    balance_thresholds(net, ann, torch.randn(64, *shape), method="max_act", scale=0.8)
    return net, shape


def grid_point(name: str, args: argparse.Namespace) -> dict:
    """One sweep grid point: GRID_IMAGES images to T=GRID_T, every power of two from 32 scored,
    with the fused kernels ("auto") and the first layout and chunk asked for."""
    mode, backend = args.grid_mode, "auto"
    net, shape = build(name)
    net.neuron_backend = backend
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(args.grid_images, *shape, generator=gen)
    batches = [(b, torch.zeros(len(b), dtype=torch.long)) for b in images.split(args.images)]
    t_max = args.grid_timesteps
    wanted = sorted({2**k for k in range(5, t_max.bit_length()) if 2**k <= t_max} | {t_max})
    options = run_options(mode, args.channels_last.split(",")[0], args.chunks.split(",")[0])
    simulate(net, batches[:1], [2], device=args.device, **options)  # warm-up
    sync(args.device)
    tic = time.perf_counter()
    result = simulate(net, batches, wanted, device=args.device, **options)
    sync(args.device)
    seconds = time.perf_counter() - tic
    return {
        "net": name,
        "precision": mode,
        "backend": backend,
        "images": args.grid_images,
        "timesteps": result.timesteps,
        "batch": args.images,
        "seconds": round(seconds, 2),
        "image_steps_per_s": round(args.grid_images * t_max / seconds),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=500, help="batch (the presets' snn.batch_size)")
    ap.add_argument("--timesteps", type=int, default=256)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--modes", default=",".join(MODES), help="fp32,tf32,bf16,fp16")
    ap.add_argument("--backends", default="auto", help="neuron backends: auto,eager,...")
    ap.add_argument("--channels-last", default="default", help="default,on,off")
    ap.add_argument("--chunks", default="auto", help="auto or steps per chunk, comma-separated")
    ap.add_argument("--grid-point", action="store_true", help="also time one grid point")
    ap.add_argument("--grid-images", type=int, default=GRID_IMAGES)
    ap.add_argument("--grid-timesteps", type=int, default=GRID_T)
    ap.add_argument("--grid-mode", default="bf16", choices=list(MODES))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    modes = [m for m in args.modes.split(",") if cuda or m not in ("tf32", "fp16")]
    backends = args.backends.split(",")
    rows = []
    for name in args.nets.split(","):
        net, shape = build(name)
        x = torch.randn(args.images, *shape)
        first: torch.Tensor | None = None
        same_precision: dict[tuple, torch.Tensor] = {}
        combos = itertools.product(
            modes, args.channels_last.split(","), args.chunks.split(","), backends
        )
        for mode, layout, chunk, backend in combos:
            net.neuron_backend = backend
            rate, potentials, used = measure(
                net, x, args.timesteps, args.device, run_options(mode, layout, chunk)
            )
            first = potentials if first is None else first
            reference = same_precision.setdefault((mode, layout, chunk), potentials)
            agree = float((potentials.argmax(1) == first.argmax(1)).float().mean())
            rows.append(
                {
                    "net": name,
                    "precision": mode,
                    "backend": backend,
                    "channels_last": layout,
                    "chunk": used,
                    "image_steps_per_s": round(rate),
                    "agreement_with_first": round(agree, 4),
                    "identical_to_first_backend": bool(torch.equal(potentials, reference)),
                }
            )
            print(rows[-1], flush=True)
    grid = []
    if args.grid_point:
        for name in args.nets.split(","):
            grid.append(grid_point(name, args))
            print(grid[-1], flush=True)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "images": args.images,
        "timesteps": args.timesteps,
        "rows": rows,
        "grid_point": grid,
    }
    path = args.out or RESULTS / f"presets_{args.device.split(':')[0]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=2) + "\n")
    print(f"\n{device}, torch {torch.__version__}, batch {args.images}, T={args.timesteps}\n")
    print(
        "| net | precision | backend | channels_last | chunk | image-steps/s | agreement | "
        "identical |\n|---|---|---|---|---:|---:|---:|---|"
    )
    for r in rows:
        print(
            f"| {r['net']} | {r['precision']} | {r['backend']} | {r['channels_last']} | "
            f"{r['chunk']} | {r['image_steps_per_s']:,} | {r['agreement_with_first']:.4f} | "
            f"{r['identical_to_first_backend']} |"
        )
    for g in grid:
        print(
            f"\ngrid point {g['net']} {g['precision']} ({g['backend']}): {g['images']} images to "
            f"T={g['timesteps'][-1]} in {g['seconds']} s ({g['image_steps_per_s']:,} image-steps/s)"
        )


if __name__ == "__main__":
    main()
