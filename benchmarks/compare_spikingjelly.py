"""Accuracy against T of rmp's converter and SpikingJelly's on the same checkpoint.

Both sides get the same trained ANN, the same calibration images (the seeded calibration subset,
`balance.num_images` of them) and the same test images, with soft reset, direct input and the
accumulated output as readout:
  - rmp: `balance=max_act` and `balance=percentile` (p = 99.9), simulated by rmp's engine;
  - SpikingJelly: its rate-coding converter (`RateCodingRecipe`) in its `Max` and `99.9%` modes,
    simulated step by step (single-step mode, its faster one on CPU).
SpikingJelly keeps a momentum average (0.1) of per-batch statistics, so with several calibration
batches its `Max` is not the global maximum; `--calib-batch` sets the batch size it is fed.

    python benchmarks/compare_spikingjelly.py ckpt=RUN/ann/model.pt [rmp overrides...] \
        [--timesteps 1,2,4,...] [--calib-batch N] [--out DIR]

Writes DIR/comparison.json, DIR/comparison.md and DIR/accuracy_vs_timesteps.png.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from rmp_cli.commands import pipeline
from rmp_cli.commands.grid import parse_timesteps
from rmp_cli.config import compose_config
from rmp_cli.convert import balance_thresholds
from rmp_cli.data import make_loader
from rmp_cli.errors import RmpError
from rmp_cli.runs.atomic import atomic_write, atomic_write_text
from rmp_cli.runs.runtime import set_quiet, set_threads

SJ_MODES = ("Max", "99.9%")
RMP_METHODS = (("max_act", 100.0), ("percentile", 99.9))


def sj_convert(ann: nn.Module, calib: Tensor, mode: str, calib_batch: int) -> nn.Module:
    """SpikingJelly's rate-coding conversion (soft-reset IF neurons, threshold 1 between scalers)."""
    from spikingjelly.activation_based import ann2snn

    recipe = ann2snn.RateCodingRecipe(dataloader=list(calib.split(calib_batch)), mode=mode)
    return ann2snn.Converter(recipe, device=calib.device).convert(copy.deepcopy(ann).eval())


def sj_thresholds(snn: nn.Module) -> list[float]:
    """The calibrated scale per neuron layer: the scaler in front of each IF node divides by it."""
    from spikingjelly.activation_based.ann2snn.modules import VoltageScaler

    scales = [float(m.scale) for m in snn.modules() if isinstance(m, VoltageScaler)]
    return [1.0 / s for s in scales[0::2]]  # scalers come in (1/theta, theta) pairs


def sj_correct(
    snn: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], timesteps: Sequence[int]
) -> list[int]:
    """Correct top-1 count at each T of one step-by-step run to max(T) per batch."""
    from spikingjelly.activation_based import functional

    wanted = {t: i for i, t in enumerate(timesteps)}
    correct = [0] * len(timesteps)
    with torch.inference_mode():
        for x, y in batches:
            functional.reset_net(snn)
            acc = torch.zeros(())
            for t in range(1, max(timesteps) + 1):
                acc = acc + snn(x)
                if t in wanted:
                    correct[wanted[t]] += int((acc.argmax(1) == y).sum())
    return correct


def plot(rows: dict[str, list[float]], timesteps: Sequence[int], ann: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, acc in rows.items():
        style = "-o" if name.startswith("rmp") else "--s"
        ax.plot(timesteps, [100 * a for a in acc], style, ms=3, label=name)
    ax.axhline(100 * ann, color="gray", ls=":", label="ANN")
    ax.set(xlabel="time-steps T", ylabel="top-1 accuracy (%)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def markdown(result: dict) -> str:
    ts = result["timesteps"]
    lines = [
        f"ANN {100 * result['ann_accuracy']:.2f}% on {result['images']} test images; soft reset, "
        "direct input, v_init 0.",
        "",
        "| converter | " + " | ".join(f"T={t}" for t in ts) + " | seconds |",
        "|---|" + "---:|" * (len(ts) + 1),
    ]
    for name, row in result["curves"].items():
        accs = " | ".join(f"{100 * a:.2f}" for a in row["accuracy"])
        lines.append(f"| {name} | {accs} | {row['seconds']:.1f} |")
    lines += [
        "",
        "Thresholds per neuron layer (rmp: theta; SpikingJelly: its calibrated scale):",
        "",
    ]
    for name, row in result["curves"].items():
        lines.append(f"- {name}: " + ", ".join(f"{t:.4g}" for t in row["thresholds"]))
    return "\n".join(lines) + "\n"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="rmp config overrides; ckpt= is required")
    parser.add_argument("--timesteps", default="2^0..2^10")
    parser.add_argument(
        "--calib-batch", type=positive_int, default=None, help="default: snn.batch_size"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    overrides = [*args.overrides, "snn.reset=soft", "snn.v_init=0.0", "snn.encoding=direct"]
    cfg = compose_config(overrides)
    set_threads(cfg.get("threads"))
    set_quiet(True)
    p = pipeline.prepare(cfg, overrides)
    timesteps = parse_timesteps(args.timesteps)
    calib = pipeline.calibration_images(p).to(p.device)
    calib_batch = args.calib_batch or int(cfg.snn.batch_size)
    ann_acc = pipeline.ann_metrics(p)["acc"]

    curves: dict[str, dict] = {}
    for method, pct in RMP_METHODS:
        net = pipeline.build_snn(p)
        balance_thresholds(net, p.ann, calib, method=method, percentile=pct)
        sim = pipeline.simulate_test(p, net, timesteps, desc=f"rmp {method}")
        name = f"rmp {method}" + (f" {pct:g}" if method == "percentile" else "")
        curves[name] = {
            "accuracy": [sim.accuracy(t) for t in timesteps],
            "seconds": sim.seconds,
            "thresholds": [float(t.max()) for t in net.thresholds],
        }
    loader = make_loader(p.data.test, int(cfg.snn.batch_size), shuffle=False, seed=0)
    batches = [(x.to(p.device), y.to(p.device)) for x, y in loader]
    for mode in SJ_MODES:
        snn = sj_convert(p.ann, calib, mode, calib_batch)
        tic = time.perf_counter()
        correct = sj_correct(snn, batches, timesteps)
        curves[f"SpikingJelly {mode}"] = {
            "accuracy": [c / len(p.data.test) for c in correct],
            "seconds": time.perf_counter() - tic,
            "thresholds": sj_thresholds(snn),
        }

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(p.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "spikingjelly": importlib.metadata.version("spikingjelly"),
        "checkpoint": str(p.checkpoint["path"]),
        "overrides": args.overrides,
        "images": len(p.data.test),
        "calibration_images": len(calib),
        "calib_batch": calib_batch,
        "ann_accuracy": ann_acc,
        "timesteps": timesteps,
        "curves": curves,
    }
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("outputs/compare_spikingjelly") / stamp
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "comparison.md", markdown(result))
    plot(
        {k: v["accuracy"] for k, v in curves.items()},
        timesteps,
        ann_acc,
        out / "accuracy_vs_timesteps.png",
    )
    print(markdown(result))
    print(out)


if __name__ == "__main__":
    try:
        import spikingjelly.activation_based.ann2snn  # noqa: F401
    except ImportError:
        sys.exit("compare_spikingjelly: SpikingJelly is not installed (pip install -e '.[bench]')")
    try:
        main()
    except RmpError as exc:
        sys.exit(f"compare_spikingjelly: error: {exc}")
