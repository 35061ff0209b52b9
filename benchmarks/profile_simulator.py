"""Where the simulator spends its time: torch.profiler over one simulation of a bench net.

Same nets and images as bench_simulator.py (random weights, max_act thresholds), 2 threads,
after two warm-up runs; prints the operators by self CPU time.

    python benchmarks/profile_simulator.py mnist_cnn --timesteps 64 --images 32
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_simulator import SHAPES, THREADS, build_net, make_images
from rmp_cli.snn import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(SHAPES))
    parser.add_argument("--timesteps", type=int, default=64)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    net, x = build_net(args.model), make_images(args.model, args.images)
    batches = [(b, torch.zeros(len(b), dtype=torch.long)) for b in x.split(32)]
    for _ in range(2):  # warm-up: the heap grows over the first two runs (page faults)
        simulate(net, batches, [args.timesteps], chunk="auto", topk=(1,))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        simulate(net, batches, [args.timesteps], chunk="auto", topk=(1,))
    print(f"{args.model}, T={args.timesteps}, {args.images} images, {THREADS} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
