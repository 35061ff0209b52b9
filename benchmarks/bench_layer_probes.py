"""Cost of the per-layer diagnostics (report.layers): simulation time with and without them.

On the quick benchmark nets of bench_simulator.py (random weights, max_act thresholds, direct
input, 32 images, chunk "auto"), each configuration is simulated with the probes off and on,
alternately and in one process, REPEATS times; the overhead is the median of the paired ratios
on/off, so a background load that drifts slowly cancels out. Both the process's CPU time (one
thread: robust to other processes on the machine) and the wall time are kept. Two time-step
lists, the defaults of `rmp sweep` (chunks then end at every requested T) and `rmp convert`.

    python benchmarks/bench_layer_probes.py [--repeats N] [--images N] [--models a,b]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_simulator import QUICK_IMAGES, SHAPES, build_net, make_images
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.snn import SpikingNet, simulate

THREADS = 1
REPEATS = 4
RESULTS = Path(__file__).resolve().parent / "results"
TIMESTEP_LISTS = {"sweep": [2**k for k in range(10)], "convert": [256]}  # conf/ defaults


def timed_simulation(
    net: SpikingNet, x: torch.Tensor, timesteps: list[int], layers: bool
) -> tuple[float, float, list]:
    """(CPU seconds, wall seconds, correct counts) of one simulation."""
    labels = torch.zeros(x.shape[0], dtype=torch.long)
    cpu, wall = time.process_time(), time.perf_counter()
    result = simulate(net, [(x, labels)], timesteps, chunk="auto", layer_stats=layers)
    return time.process_time() - cpu, time.perf_counter() - wall, result.correct[1]


def measure(model: str, reset: str, timesteps: list[int], images: int, repeats: int) -> dict:
    net = build_net(model)
    net.reset_mode = reset
    x = make_images(model, images)
    timed_simulation(net, x, timesteps, False)  # warm-up: heap, oneDNN primitives
    timed_simulation(net, x, timesteps, True)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for r in range(repeats):
        correct = {}
        for layers in (False, True) if r % 2 == 0 else (True, False):
            cpu, wall, correct[layers] = timed_simulation(net, x, timesteps, layers)
            runs[layers].append((cpu, wall))
        # Same predictions with and without the probes (results must not depend on them).
        assert correct[False] == correct[True], (model, reset)
    row = {
        "model": model,
        "reset": reset,
        "timesteps": timesteps,
        "images": images,
        "neuron_layers": len(net.neuron_names),
    }
    for k, clock in enumerate(("cpu", "wall")):
        off = [run[k] for run in runs[False]]
        on = [run[k] for run in runs[True]]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        row |= {
            f"{clock}_seconds_off": off,
            f"{clock}_seconds_on": on,
            f"{clock}_median_ratio": statistics.median(ratios),
            f"{clock}_min_ratio": min(ratios),
            f"{clock}_max_ratio": max(ratios),
        }
    return row


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"Per-layer diagnostics overhead ({header['date']}, {header['machine']}, "
        f"{header['threads']} thread(s), torch {header['torch']}, load average "
        f"{header['load_average'][0]:.1f}; {header['note']})",
        "",
        "| model | reset | T | images | CPU s off (min) | CPU on/off median | CPU on/off range "
        "| wall on/off median | wall on/off range |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        ts = r["timesteps"]
        t = str(ts[0]) if len(ts) == 1 else f"{ts[0]}..{ts[-1]} ({len(ts)} T)"
        lines.append(
            f"| {r['model']} | {r['reset']} | {t} | {r['images']} "
            f"| {min(r['cpu_seconds_off']):.2f} | {r['cpu_median_ratio']:.3f} "
            f"| {r['cpu_min_ratio']:.3f}-{r['cpu_max_ratio']:.3f} | {r['wall_median_ratio']:.3f} "
            f"| {r['wall_min_ratio']:.3f}-{r['wall_max_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--images", type=int, default=QUICK_IMAGES)
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--resets", default="soft,hard")
    parser.add_argument("--out", default="layer_probes")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    rows = []
    with torch.inference_mode():
        for model in args.models.split(","):
            for reset in args.resets.split(","):
                for timesteps in TIMESTEP_LISTS.values():
                    row = measure(model, reset, timesteps, args.images, args.repeats)
                    rows.append(row)
                    print(
                        f"{model} {reset} T={timesteps}: CPU on/off median "
                        f"{row['cpu_median_ratio']:.3f} (range {row['cpu_min_ratio']:.3f}-"
                        f"{row['cpu_max_ratio']:.3f}), wall {row['wall_median_ratio']:.3f}",
                        flush=True,
                    )
    header = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": THREADS,
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
        "note": f"off/on alternated {args.repeats} times in one process; ratio = on / off; "
        "the per-run times are in the JSON",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        RESULTS / f"{args.out}.json", json.dumps({**header, "results": rows}, indent=2) + "\n"
    )
    table = markdown(rows, header)
    atomic_write_text(RESULTS / f"{args.out}.md", table)
    print(table)


if __name__ == "__main__":
    main()
