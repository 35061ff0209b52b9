"""Can stock PyTorch CPU ops exploit spike sparsity in a convolution? (2 threads)

One 3x3 convolution, 32 -> 32 channels on 28x28 maps, 512 frames (16 time-steps x 32 images),
binary input at a firing rate like the benchmark nets' (9%): the dense oneDNN convolution
against the pieces an event-driven or sparse-matrix version would need.

    python benchmarks/bench_sparse_conv.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

FRAMES, CIN, COUT, SIZE, RATE, REPEATS = 512, 32, 32, 28, 0.09, 5


def best_ms(fn: Callable[[], object]) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1e3 * min(times)


def main() -> None:
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    spikes = (torch.rand(FRAMES, CIN, SIZE, SIZE, generator=gen) < RATE).float()
    weight = torch.randn(COUT, CIN, 3, 3, generator=gen)
    nhwc = spikes.contiguous(memory_format=torch.channels_last)

    def sparse_matmul() -> torch.Tensor:
        cols = F.unfold(spikes, 3, padding=1).transpose(1, 2).reshape(-1, CIN * 9)
        return torch.sparse.mm(cols.to_sparse_csr(), weight.view(COUT, -1).t())

    rows = {
        "dense convolution (oneDNN, channels_last)": lambda: F.conv2d(nhwc, weight, padding=1),
        "find the spikes (torch.nonzero)": lambda: spikes.nonzero(),
        "find the silent frames (amax per frame)": lambda: nhwc.amax(dim=(1, 2, 3)),
        "im2col (F.unfold)": lambda: F.unfold(spikes, 3, padding=1),
        "im2col + CSR + sparse matmul": sparse_matmul,
    }
    dense = None
    print(f"{FRAMES} frames, {CIN}->{COUT} channels, {SIZE}x{SIZE}, firing rate {RATE:.0%}")
    print("| operation | ms (best of 5) | x dense convolution |")
    print("|---|---:|---:|")
    for name, fn in rows.items():
        ms = best_ms(fn)
        dense = dense or ms
        print(f"| {name} | {ms:.1f} | {ms / dense:.2f} |")


if __name__ == "__main__":
    main()
