"""ANN training throughput on the CPU: float32 vs bfloat16 autocast, contiguous vs channels_last.

    python benchmarks/bench_train_cpu.py [--models resnet20,vgg11:0.25,mnist_cnn:0.5] [--steps 20]
    python benchmarks/bench_train_cpu.py --models resnet20,resnet20+qcfs4 --only bf16-cl

A model is NAME[:WIDTH][+ACTIVATION[LEVELS]] (resnet20+qcfs4: QCFS with L=4, resnet20+clip).

Times `--steps` SGD steps (batch `--batch`, random images of the dataset's shape) after two
warm-up steps, for each model x precision x memory format, the fastest of `--repeats` runs, and
writes benchmarks/results/train_cpu.json. Use it to decide `train.amp` / `train.channels_last` per
net: bf16 needs a CPU with native bfloat16 (avx512_bf16 or AMX), else autocast emulates it slowly.
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
from rmp_cli.training.loop import autocast

RESULTS = Path(__file__).parent / "results"
SHAPES = {"resnet20": (3, 32, 32), "vgg11": (3, 32, 32), "vgg16": (3, 32, 32)}
# (bfloat16 autocast, channels_last) by name
FORMATS = {
    "fp32": (False, False),
    "fp32-cl": (False, True),
    "bf16": (True, False),
    "bf16-cl": (True, True),
}


def parse_model(spec: str) -> tuple[str, float | None, str, int]:
    """NAME[:WIDTH][+ACTIVATION[LEVELS]] -> (name, width, activation, levels)."""
    spec, _, act = spec.partition("+")
    name, _, width = spec.partition(":")
    activation = act.rstrip("0123456789") or "relu"
    levels = int(act[len(activation) :] or 8) if act else 8
    return name, float(width) if width else None, activation, levels


def images_per_second(
    spec: str, *, bf16: bool, channels_last: bool, batch: int, steps: int
) -> float:
    name, width, activation, levels = parse_model(spec)
    shape = SHAPES.get(name, (1, 28, 28))
    torch.manual_seed(0)
    model = create_model(
        name,
        num_classes=10,
        input_shape=shape,
        width=width,
        dropout=0.1,
        pool="avg",
        activation=activation,
        act_levels=levels,
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - tic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg11:0.25,vgg11,mnist_cnn:0.5")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", choices=sorted(FORMATS), help="one precision + memory format")
    ap.add_argument("--out", default=str(RESULTS / "train_cpu.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    formats = [FORMATS[args.only]] if args.only else list(FORMATS.values())
    for spec in args.models.split(","):
        for bf16, channels_last in formats:
            best = max(
                images_per_second(
                    spec,
                    bf16=bf16,
                    channels_last=channels_last,
                    batch=args.batch,
                    steps=args.steps,
                )
                for _ in range(args.repeats)
            )
            row = {
                "model": spec,
                "precision": "bf16" if bf16 else "fp32",
                "channels_last": channels_last,
                "images_per_s": round(best, 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    payload = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "batch": args.batch,
        "steps": args.steps,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
