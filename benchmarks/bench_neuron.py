"""The IF neuron's chunk loop alone on CPU: the eager loop (the reference), the compiled C loop
(snn/kernels/cpu_if.py) and the same chunk loop compiled by torch.compile (Inductor).

For every neuron layer of the bench nets (bench_simulator.py: batch 32, chunk "auto",
channels_last, soft reset, one threshold per layer) the neuron is fed one chunk of random
currents that make ~10-20% of it fire, and each way is timed on the same chunk, interleaved,
REPEATS times (median and fastest kept). Every way's spikes, membrane and counts are compared
with eager's. Inductor's compilation time (first call per layer shape) is reported apart.

    python benchmarks/bench_neuron.py [--threads 2] [--repeats 9] [--no-inductor]

Writes benchmarks/results/neuron_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from bench_simulator import BATCH, SHAPES, build_net, make_images
from rmp_cli.runs.atomic import atomic_write_text
from rmp_cli.snn import ChunkedRun, IFNeuron, run_batch
from rmp_cli.snn.kernels import cpu_if

RESULTS = Path(__file__).resolve().parent / "results"


def layer_shapes(model: str) -> tuple[int, list[torch.Size]]:
    """The auto chunk and every neuron layer's membrane shape [B, ...] of a bench net."""
    net = build_net(model)
    with torch.inference_mode(), ChunkedRun(net, chunk="auto", count_synops=False) as run:
        run_batch(run, make_images(model, BATCH), [1])
        return run.chunk, [n.v.shape for n in net.neurons]


def inductor_chunk(v: Tensor, x: Tensor, theta: Tensor, steps: int) -> tuple[Tensor, ...]:
    """The eager rule written functionally for torch.compile: x [Tc, B, ...]."""
    outs, counts = [], []
    for t in range(steps):
        v = v + x[t]
        fired = v >= theta
        s = fired.to(v.dtype)
        v = v - s * theta
        outs.append(s * theta)
        counts.append(fired.flatten(1).sum(1))
    return torch.stack(outs), v, torch.stack(counts)


def measure(shape: torch.Size, tc: int, repeats: int, inductor: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if len(shape) == 4 else torch.contiguous_format
    x = (torch.rand(tc * shape[0], *shape[1:], generator=gen) * 0.3).contiguous(memory_format=fmt)
    theta = torch.tensor(1.0)
    ways = {}
    for backend in ("eager", "cpu"):
        neuron = IFNeuron(1.0)
        neuron.backend = backend
        neuron.count_spikes = True
        neuron.configure(tc, shape[0])

        def call(neuron: IFNeuron = neuron) -> tuple[Tensor, Tensor, Tensor]:
            neuron.reset_state()
            out = neuron(x)
            return out.view(tc, *shape), neuron.v, neuron.last_counts

        ways[backend] = call
    compile_s = None
    if inductor:
        compiled = torch.compile(inductor_chunk, dynamic=False)
        steps = x.view(tc, *shape)

        def call_inductor() -> tuple[Tensor, Tensor, Tensor]:
            v = torch.zeros(shape).contiguous(memory_format=fmt)
            out, v, counts = compiled(v, steps, theta, tc)
            return out, v, counts.sum(1)

        tic = time.perf_counter()
        call_inductor()
        compile_s = time.perf_counter() - tic
        ways["inductor"] = call_inductor
    reference = ways["eager"]()
    fired = float((reference[0] != 0).float().mean())
    same = {}
    for name, call in ways.items():
        got = call()
        same[name] = all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, call in ways.items():
            tic = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - tic)
    return {
        "shape": list(shape),
        "chunk": tc,
        "firing_rate": round(fired, 4),
        "median_ms": {k: statistics.median(v) * 1e3 for k, v in seconds.items()},
        "fastest_ms": {k: min(v) * 1e3 for k, v in seconds.items()},
        "identical_to_eager": same,
        "inductor_compile_s": compile_s,
    }


def markdown(rows: list[dict], ways: list[str]) -> str:
    lines = [
        "| net | chunk | neuron layers | "
        + " | ".join(f"{w} ms" for w in ways)
        + " | "
        + " | ".join(f"eager / {w}" for w in ways[1:])
        + " | identical |"
        + (" inductor compile s |" if "inductor" in ways else ""),
        "|---|---:|---:|"
        + "---:|" * (2 * len(ways) - 1)
        + "---|"
        + ("---:|" if "inductor" in ways else ""),
    ]
    for r in rows:
        t = r["median_ms_total"]
        lines.append(
            f"| {r['model']} | {r['chunk']} | {r['layers']} | "
            + " | ".join(f"{t[w]:.2f}" for w in ways)
            + " | "
            + " | ".join(f"{t['eager'] / t[w]:.2f}" for w in ways[1:])
            + f" | {'yes' if r['identical'] else 'NO'} |"
            + (f" {r['inductor_compile_s']:.0f} |" if "inductor" in ways else "")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-inductor", action="store_true")
    args = ap.parse_args()
    load_start = os.getloadavg()
    torch.set_num_threads(args.threads)
    if cpu_if.library() is None:
        raise SystemExit("the CPU kernel could not be built (no C compiler?)")
    ways = ["eager", "cpu"] + ([] if args.no_inductor else ["inductor"])
    rows = []
    with torch.inference_mode():
        for model in SHAPES:
            tc, shapes = layer_shapes(model)
            # layers of the same shape are timed once (Inductor compiles once per shape)
            unique = {s: measure(s, tc, args.repeats, not args.no_inductor) for s in set(shapes)}
            layers = [unique[s] for s in shapes]
            totals = {w: sum(x["median_ms"][w] for x in layers) for w in ways}
            rows.append(
                {
                    "model": model,
                    "chunk": tc,
                    "layers": len(layers),
                    "median_ms_total": totals,
                    "inductor_compile_s": sum(
                        m["inductor_compile_s"] or 0 for m in unique.values()
                    ),
                    "identical": all(all(x["identical_to_eager"].values()) for x in layers),
                    "per_shape": [{"layers": shapes.count(s), **m} for s, m in unique.items()],
                }
            )
            print(f"{model}: " + ", ".join(f"{w} {totals[w]:.2f} ms" for w in ways), flush=True)
    report = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
        },
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "note": "one chunk per neuron layer shape of each bench net (batch 32), median of "
        f"{args.repeats} interleaved runs; totals are the sum over the net's neuron layers",
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "neuron_cpu.json", json.dumps(report, indent=2) + "\n")
    table = markdown(rows, ways)
    atomic_write_text(RESULTS / "neuron_cpu.md", table)
    print(table)


if __name__ == "__main__":
    main()
