"""Simulator throughput and peak memory: rmp vs a naive step loop vs SpikingJelly (CPU, 2 threads);
then rmp's peak memory against T at a fixed batch, the cost of a whole sweep to T=2048 against the
dense bound (one ANN forward pass x 2048), and threshold balancing time per method.

`rmp` runs as the simulator does by default (the fused CPU neuron kernel, snn/kernels/), and
`rmp_eager` the same with the eager neuron loop, so one run shows the kernel's effect; the table's
last column is rmp against the faster of SpikingJelly's two modes.

Every configuration runs in its own child process so that peak resident memory (ru_maxrss) is
not mixed between configurations. All runners use the same converted net (random weights,
max_act thresholds on random calibration images), direct input and the accumulated output
potential as readout; predictions are compared against rmp's.

    python benchmarks/bench_simulator.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from rmp_cli.convert import balance_thresholds, to_spiking
from rmp_cli.convert.bn_fold import replace_submodule
from rmp_cli.models import create_model
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.snn import ChunkedRun, SpikingNet, run_batch, simulate

THREADS = 2
BATCH = 32
RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"digits_cnn": (1, 8, 8), "mnist_cnn": (1, 28, 28), "resnet20": (3, 32, 32)}
METHODS = ("rmp", "rmp_eager", "naive", "sj_multistep", "sj_singlestep")
# Images per (model, T), sized for the slowest runner on 2 shared cores (mnist_cnn runs ~100-350
# image-steps/s there, so T=1024 gets a single batch of 4 images).
IMAGES = {
    ("digits_cnn", 64): 128,
    ("digits_cnn", 1024): 16,
    ("mnist_cnn", 64): 32,
    ("mnist_cnn", 1024): 4,
    ("resnet20", 64): 32,
    ("resnet20", 1024): 4,
}
SWEEP_T = 2048
SWEEP_IMAGES = {"digits_cnn": 64, "mnist_cnn": 8, "resnet20": 8}  # the dense-bound comparison
BALANCE_METHODS = ("max_act", "percentile", "mse", "spike_norm", "rmp")
CALIB_IMAGES, CALIB_STEPS = 64, 64  # balancing-time measurement (mse: tuned for T=16)
QUICK_IMAGES = 32
# Every runner is timed REPEATS times in its process and the fastest run is reported (the
# first full-size run also pays for growing the heap; the spread is kept in the JSON).
REPEATS = 3
SJ_CHUNK = 32  # time-steps per multi-step SpikingJelly call (state carries over between calls)


# --- the shared net and data ---------------------------------------------------------------------
def build_ann(model: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(model, num_classes=10, input_shape=SHAPES[model]).eval()


def calibration(model: str, n: int = 64) -> Tensor:
    return torch.rand(n, *SHAPES[model], generator=torch.Generator().manual_seed(1))


def build_net(model: str) -> SpikingNet:
    """Deterministic: every child process rebuilds exactly the same net and thresholds."""
    ann = build_ann(model)
    net = to_spiking(ann, reset="soft")
    balance_thresholds(net, ann, calibration(model), method="max_act")
    return net


def make_images(model: str, n: int) -> Tensor:
    return torch.rand(n, *SHAPES[model], generator=torch.Generator().manual_seed(2))


# --- runners: each returns the predicted class per image after T steps ---------------------------
class PlainIF(nn.Module):
    """Single-step soft-reset IF: m = v + I; s = m >= theta; v = m - s*theta; out = s*theta."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = theta
        self.v: Tensor | None = None

    def forward(self, current: Tensor) -> Tensor:
        m = current if self.v is None else self.v + current
        s = (m >= self.theta).float()
        self.v = m - s * self.theta
        return s * self.theta


class CarryTheta(nn.Module):
    """SpikingJelly emits 0/1 spikes; the converted net's next layer expects spikes of size theta."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = theta

    def forward(self, s: Tensor) -> Tensor:
        return s * self.theta


def stepwise_predictions(module: nn.Module, x: Tensor, steps: int, reset: Callable) -> Tensor:
    """One full forward per time-step, output accumulated; `reset` clears neuron state."""
    preds = []
    for batch in x.split(BATCH):
        reset()
        acc = module(batch)
        for _ in range(steps - 1):
            acc = acc + module(batch)
        preds.append(acc.argmax(1))
    return torch.cat(preds)


def run_rmp_eager(net: SpikingNet, x: Tensor, steps: int) -> tuple[float, Tensor]:
    net.neuron_backend = "eager"
    return run_rmp(net, x, steps)


def run_rmp(net: SpikingNet, x: Tensor, steps: int) -> tuple[float, Tensor]:
    batches = [(b, torch.zeros(len(b), dtype=torch.long)) for b in x.split(BATCH)]
    tic = time.perf_counter()
    simulate(net, batches, [steps], chunk="auto", count_synops=False, topk=(1,))
    seconds = time.perf_counter() - tic
    # Predictions from a second, untimed pass: simulate() reports counts, not per-image classes.
    with torch.inference_mode(), ChunkedRun(net, chunk="auto", count_synops=False) as run:
        preds = [run_batch(run, b, [steps]).potentials[0].argmax(1) for b, _ in batches]
    return seconds, torch.cat(preds)


def run_naive(net: SpikingNet, x: Tensor, steps: int) -> tuple[float, Tensor]:
    module = copy.deepcopy(net.module)
    neurons = []
    for name, n in net.named_neurons():
        neurons.append(PlainIF(float(n.threshold)))
        replace_submodule(module, name, neurons[-1])

    def reset() -> None:
        for n in neurons:
            n.v = None

    return timed(lambda: stepwise_predictions(module, x, steps, reset))


def run_sj_single(net: SpikingNet, x: Tensor, steps: int) -> tuple[float, Tensor]:
    from spikingjelly.activation_based import functional, neuron

    module = copy.deepcopy(net.module)
    for name, n in net.named_neurons():
        theta = float(n.threshold)
        node = neuron.IFNode(v_threshold=theta, v_reset=None, step_mode="s")
        replace_submodule(module, name, nn.Sequential(node, CarryTheta(theta)))
    return timed(
        lambda: stepwise_predictions(module, x, steps, lambda: functional.reset_net(module))
    )


def run_sj_multi(net: SpikingNet, x: Tensor, steps: int) -> tuple[float, Tensor]:
    """Multi-step mode: stateless layers see [T*B, ...] via SeqToANNContainer. Time is fed in
    chunks of SJ_CHUNK steps (the neurons keep their membrane between calls), since a single
    [T, B, ...] call at T=1024 would need gigabytes of activations."""
    from spikingjelly.activation_based import functional, layer, neuron

    module = copy.deepcopy(net.module)
    neuron_names = set(net.neuron_names)
    for name, n in net.named_neurons():
        theta = float(n.threshold)
        node = neuron.IFNode(v_threshold=theta, v_reset=None, step_mode="m")
        replace_submodule(module, name, nn.Sequential(node, CarryTheta(theta)))
    for name, m in list(net.module.named_modules()):
        if name and name not in neuron_names and not list(m.children()):
            replace_submodule(module, name, layer.SeqToANNContainer(copy.deepcopy(m)))

    def predict() -> Tensor:
        preds = []
        for batch in x.split(BATCH):
            functional.reset_net(module)
            acc = torch.zeros(())
            for t0 in range(0, steps, SJ_CHUNK):
                tc = min(SJ_CHUNK, steps - t0)
                acc = acc + module(batch.unsqueeze(0).expand(tc, *batch.shape)).sum(0)
            preds.append(acc.argmax(1))
        return torch.cat(preds)

    return timed(predict)


def timed(fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
    with torch.inference_mode():
        tic = time.perf_counter()
        preds = fn()
        return time.perf_counter() - tic, preds


RUNNERS = {
    "rmp": run_rmp,
    "rmp_eager": run_rmp_eager,
    "naive": run_naive,
    "sj_multistep": run_sj_multi,
    "sj_singlestep": run_sj_single,
}


def sj_available() -> bool:
    try:
        import spikingjelly.activation_based  # noqa: F401
    except ImportError:
        return False
    return True


# --- child: one configuration --------------------------------------------------------------------
def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def child_bound(model: str, n: int) -> dict:
    """A whole sweep (every power of two up to SWEEP_T scored from one run) against SWEEP_T
    dense ANN forward passes over the same images (the time-stepped net's dense bound)."""
    ann, net, x = build_ann(model), build_net(model), make_images(model, n)
    with torch.inference_mode():
        ann(x[:BATCH])  # warm-up
        passes = []  # a pass over 8 images takes milliseconds: the fastest of 20 is the bound
        for _ in range(20):
            tic = time.perf_counter()
            for batch in x.split(BATCH):
                ann(batch)
            passes.append(time.perf_counter() - tic)
        dense = min(passes)
    batches = [(b, torch.zeros(len(b), dtype=torch.long)) for b in x.split(BATCH)]
    simulate(net, batches[:1], [2], chunk="auto", topk=(1,))  # warm-up
    powers = [2**k for k in range(SWEEP_T.bit_length())]
    runs = []
    for _ in range(2):  # the faster of two, as the dense pass is the fastest of its repeats
        tic = time.perf_counter()
        simulate(net, batches, powers, chunk="auto", topk=(1,))
        runs.append(time.perf_counter() - tic)
    sweep = min(runs)
    return {"dense_forward_s": dense, "sweep_s": sweep, "ratio": sweep / (dense * SWEEP_T)}


def child_balance(model: str) -> dict:
    """Seconds per balancing method on the same net and calibration images."""
    ann, calib = build_ann(model), calibration(model, CALIB_IMAGES)
    seconds = {}
    for method in BALANCE_METHODS:
        net = to_spiking(ann, reset="soft")
        steps = 16 if method == "mse" else CALIB_STEPS
        tic = time.perf_counter()
        balance_thresholds(net, ann, calib, method=method, timesteps=steps, chunk="auto")
        seconds[method] = time.perf_counter() - tic
    return seconds


def child(model: str, method: str, steps: int, n: int) -> dict:
    torch.set_num_threads(THREADS)
    if method == "bound":
        return child_bound(model, n)
    if method == "balance":
        return child_balance(model)
    # "memory": one rmp run, so the peak is that of a single simulation (repeated runs in one
    # process add heap fragmentation that differs from process to process, +-10%).
    repeats = 1 if method == "memory" else REPEATS
    method = "rmp" if method == "memory" else method
    net = build_net(model)
    x = make_images(model, n)
    RUNNERS[method](net, x[:BATCH], 2)  # warm-up: first-call allocations, kernel selection
    base = rss_mb()
    runs = [RUNNERS[method](net, x, steps) for _ in range(repeats)]
    seconds, preds = min(runs, key=lambda r: r[0])
    return {
        "seconds": seconds,
        "all_seconds": [r[0] for r in runs],
        "image_steps_per_s": n * steps / seconds,
        "peak_rss_mb": rss_mb(),
        "baseline_rss_mb": base,
        "predictions": preds.tolist(),
    }


# --- parent: every configuration in its own process ----------------------------------------------
def run_config(model: str, method: str, steps: int, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", model, method, str(steps), str(n)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{model}/{method}/T={steps} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extra_markdown(memory: list[dict], bounds: list[dict], balancing: list[dict]) -> str:
    lines = [
        "",
        f"Peak memory of rmp against T (one batch of {BATCH} images, own process):",
        "",
        "| model | peak RSS MB T=64 | peak RSS MB T=1024 | T=1024 / T=64 |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {m['model']} | {m['t64']:.0f} | {m['t1024']:.0f} | {m['t1024'] / m['t64']:.3f} |"
        for m in memory
    ]
    lines += [
        "",
        f"A sweep to T={SWEEP_T} (all powers of two scored from one run) against the dense bound "
        f"(one ANN forward pass x {SWEEP_T}):",
        "",
        "| model | images | dense forward s | sweep s | sweep / dense bound |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {b['model']} | {b['images']} | {b['dense_forward_s']:.4f} | {b['sweep_s']:.2f} | "
        f"{b['ratio']:.2f} |"
        for b in bounds
    ]
    lines += [
        "",
        f"Threshold balancing, seconds ({CALIB_IMAGES} calibration images; spike_norm and rmp "
        f"{CALIB_STEPS} steps, mse tuned for T=16):",
        "",
        "| model | " + " | ".join(BALANCE_METHODS) + " |",
        "|---|" + "---:|" * len(BALANCE_METHODS),
    ]
    lines += [
        f"| {b['model']} | " + " | ".join(f"{b[m]:.2f}" for m in BALANCE_METHODS) + " |"
        for b in balancing
    ]
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], ratios: list[dict]) -> str:
    lines = [
        "| model | T | runner | images | seconds | image-steps/s | peak RSS MB | agreement |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['timesteps']} | {r['runner']} | {r['images']} | "
            f"{r['seconds']:.2f} | {r['image_steps_per_s']:,.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['agreement']:.3f} |"
        )
    if ratios:
        lines += [
            "",
            "Speed ratios (image-steps/s):",
            "",
            "| model | T | rmp / faster SJ | rmp_eager / faster SJ | rmp / rmp_eager |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['model']} | {r['timesteps']} | {r['rmp_vs_faster_sj']:.2f} | "
            f"{r['rmp_eager_vs_faster_sj']:.2f} | {r['rmp_vs_rmp_eager']:.2f} |"
            for r in ratios
        ]
    return "\n".join(lines) + "\n"


def speed_ratios(rows: list[dict]) -> list[dict]:
    """Per (model, T): rmp and rmp_eager against the faster SpikingJelly mode, and each other."""
    out = []
    for model, steps in dict.fromkeys((r["model"], r["timesteps"]) for r in rows):
        speed = {
            r["runner"]: r["image_steps_per_s"]
            for r in rows
            if r["model"] == model and r["timesteps"] == steps
        }
        sj = max((v for k, v in speed.items() if k.startswith("sj_")), default=None)
        if sj is None or "rmp_eager" not in speed:
            continue
        out.append(
            {
                "model": model,
                "timesteps": steps,
                "rmp_vs_faster_sj": speed["rmp"] / sj,
                "rmp_eager_vs_faster_sj": speed["rmp_eager"] / sj,
                "rmp_vs_rmp_eager": speed["rmp"] / speed["rmp_eager"],
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=64 only, tiny sizes (smoke run)")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "RUNNER", "T", "N"), help="internal")
    args = parser.parse_args()
    if args.child:
        model, method, steps, n = args.child
        print(json.dumps(child(model, method, int(steps), int(n))))
        return

    load_start = os.getloadavg()  # how busy the machine was: the figures depend on it
    methods = [m for m in METHODS if sj_available() or not m.startswith("sj_")]
    if len(methods) < len(METHODS):
        print("spikingjelly not importable: skipping its runners", file=sys.stderr)
    timesteps = [64] if args.quick else [64, 1024]
    rows = []
    for model in SHAPES:
        for steps in timesteps:
            n = QUICK_IMAGES if args.quick else IMAGES[(model, steps)]
            results = {m: run_config(model, m, steps, n) for m in methods}
            reference = results["rmp"]["predictions"]
            for method, res in results.items():
                preds = res.pop("predictions")
                agree = sum(a == b for a, b in zip(preds, reference, strict=True)) / n
                rows.append(
                    {"model": model, "timesteps": steps, "runner": method, "images": n}
                    | res
                    | {"agreement": agree}
                )
                print(f"{model} T={steps} {method}: {res['image_steps_per_s']:,.0f} img-steps/s")

    memory, bounds, balancing = [], [], []
    if not args.quick:
        for model in SHAPES:
            peaks = {t: run_config(model, "memory", t, BATCH)["peak_rss_mb"] for t in (64, 1024)}
            memory.append({"model": model, "t64": peaks[64], "t1024": peaks[1024]})
            bound = run_config(model, "bound", SWEEP_T, SWEEP_IMAGES[model])
            bounds.append({"model": model, "images": SWEEP_IMAGES[model]} | bound)
            balancing.append({"model": model} | run_config(model, "balance", 0, 0))
            print(f"{model}: memory {memory[-1]}, bound {bounds[-1]['ratio']:.2f}", flush=True)

    ratios = speed_ratios(rows)
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": THREADS,
        },
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "batch_size": BATCH,
        "quick": args.quick,
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "note": "agreement = fraction of images whose prediction equals rmp's; seconds = fastest "
        f"of {REPEATS} runs in one process (all_seconds: every run)",
        "results": rows,
        "speed_ratios": ratios,
        "memory_vs_t": memory,
        "sweep_vs_dense_bound": bounds,
        "balance_seconds": balancing,
    }
    table = markdown(rows, ratios) + (extra_markdown(memory, bounds, balancing) if memory else "")
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"simulator{suffix}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(RESULTS / f"simulator{suffix}.md", table)
    print(table)


if __name__ == "__main__":
    main()
