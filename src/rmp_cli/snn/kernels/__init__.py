"""Fused integrate-and-fire kernels behind `IFNeuron`: one pass over a chunk of Tc steps.

  triton  triton_if.py: a Triton kernel, used on CUDA (and, for the tests, on CPU under
          Triton's interpreter)
  cpu     cpu_if.py: a C loop compiled on first use, used on CPU

The neuron's eager loop stays the reference and the fallback; the tests hold both kernels
bit-identical to it (spikes, membranes, counts), bursts and signed spikes included (both
kernels take every neuron option; SRP's silencing masks the currents before the kernel). A kernel module is imported only when it runs,
so installs without Triton or without a C compiler never touch it.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import Tensor

from rmp_cli.snn.layout import memory_format_of

KERNELS = ("triton", "cpu")
CURRENT_DTYPES = {
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "cpu": (torch.float32, torch.bfloat16),
}


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def default_kernel(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpu"


def refusal(kernel: str, x: Tensor, v: Tensor | None, theta: Tensor) -> str | None:
    """Why `kernel` cannot take this chunk, or None when it can."""
    if x.requires_grad and torch.is_grad_enabled():
        return "currents require grad (the kernels write raw memory, autograd cannot follow)"
    if x.numel() == 0:
        return "an empty batch"
    if x.dtype not in CURRENT_DTYPES[kernel]:
        names = ", ".join(str(d).removeprefix("torch.") for d in CURRENT_DTYPES[kernel])
        return f"currents of dtype {x.dtype} (it takes {names})"
    fmt = memory_format_of(x)
    if not x.is_contiguous(memory_format=fmt):
        return "currents are neither contiguous nor channels_last"
    if v is None or v.dtype != torch.float32 or not v.is_contiguous(memory_format=fmt):
        return "the membrane is not a float32 tensor in the currents' memory format"
    if theta.dtype != torch.float32 or theta.device != x.device:
        return "thresholds are not float32 on the currents' device"
    if kernel == "cpu":
        if x.device.type != "cpu":
            return f"currents on {x.device}, not on the CPU"
        from rmp_cli.snn.kernels import cpu_if

        if cpu_if.library() is None:
            return "no C compiler could build it"
        return None
    if not triton_available():
        return "Triton is not installed"
    if v.numel() >= 2**31:
        return "more than 2^31 neurons per step"
    from rmp_cli.snn.kernels import triton_if

    if not triton_if.fits(v.numel() // max(v.shape[0], 1)):
        return "frame too large for the kernel's grid"
    return None


def channel_layout(v: Tensor, theta: Tensor) -> tuple[int, int]:
    """(channels, inner): element f of an image's frame, in memory order, is in channel
    (f // inner) % channels; one threshold per layer is one channel."""
    if theta.numel() <= 1:
        return 1, 1
    if memory_format_of(v) == torch.channels_last:
        return theta.numel(), 1
    return theta.numel(), v[0, 0].numel()


def fused_chunk(
    kernel: str,
    x: Tensor,
    v: Tensor,
    theta: Tensor,
    out: Tensor,
    *,
    steps: int,
    hard: bool,
    constant: bool,
    count: bool,
    max_spikes: int = 1,
    net_count: Tensor | None = None,
) -> Tensor | None:
    """Run Tc = `steps` steps of currents x (flat [Tc*B, ...], or [B, ...] when `constant`)
    through membrane v in place, spikes x theta into out ([Tc, B, ...]); returns the spikes per
    step [Tc] (int64) when `count` (of |spikes|: a burst of 3 counts 3). Bursts of up to
    `max_spikes` spikes, and signed spikes with `net_count` (n, float32 like v, updated in place),
    follow neurons.py's general rule. `refusal(kernel, ...)` must have said yes."""
    batch = v.shape[0]
    if kernel == "cpu":
        from rmp_cli.snn.kernels import cpu_if

        counts = torch.zeros(steps, batch, dtype=torch.int64) if count else None
        cpu_if.run_chunk(
            x,
            v,
            theta,
            out,
            counts,
            steps=steps,
            hard=hard,
            constant=constant,
            max_spikes=max_spikes,
            net_count=net_count,
        )
    else:
        from rmp_cli.snn.kernels import triton_if

        counts = torch.zeros(steps, batch, dtype=torch.int32, device=x.device) if count else None
        channels, inner = channel_layout(v, theta)
        triton_if.run_chunk(
            x,
            v,
            theta.reshape(-1),
            out,
            counts,
            steps=steps,
            hard=hard,
            constant=constant,
            channels=channels,
            inner=inner,
            max_spikes=max_spikes,
            net_count=net_count,
        )
    return None if counts is None else counts.sum(1)
