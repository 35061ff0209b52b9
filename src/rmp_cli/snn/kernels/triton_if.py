"""One Triton program per (image, block of neurons) runs a whole chunk of Tc steps.

The membrane stays in registers for the chunk: each current is read once, each spike written
once, and the per-image spike count of every step is summed in the same pass. The arithmetic is
the eager rule's, operation for operation (see `IFNeuron._eager_chunk`):

    v = v + I;  fired = v >= theta;  s = 1.0 or 0.0
    soft: v = v - s*theta      hard: v = v - v*s      output: s*theta

s is 0 or 1, so every product here is exact and the only rounding is that of the adds, the same
as eager's `add_` and `addcmul_(value=-1)`: contracting a product and an add into one fused
multiply-add could not change a bit either. Still, the kernel is compiled with fp fusion off, so
its PTX holds the same separate add.rn / mul.rn / sub.rn as the eager rule (checked for sm_90:
with fusion on, Triton emits fma.rn.f32 for the reset) and as the interpreter, which rounds each
numpy operation on its own.

Tensors are read in their memory order (contiguous or channels_last), so image b's frame is
elements [b*F, (b+1)*F) of every step. The channel of element f is (f // inner) % channels:
inner = H*W for NCHW, 1 for NHWC and for [B, C] features.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

# Blocks of at most this many neurons; smaller frames get the next power of two above them.
MAX_BLOCK = 1024
# CUDA caps the second grid dimension (blocks per image) at 65535.
MAX_BLOCKS_PER_IMAGE = 65535


@triton.jit
def if_chunk_kernel(
    x_ptr,  # currents: [Tc, B, F] in memory order, or [B, F] when CONSTANT
    v_ptr,  # membrane [B, F], float32, read at the start and written at the end
    theta_ptr,  # [1] or [channels], float32
    out_ptr,  # spikes x theta [Tc, B, F], float32
    counts_ptr,  # spikes per (step, image) [Tc, B], int32, zeroed by the caller
    net_ptr,  # net spike count n [B, F], float32 (SIGNED only)
    frame,  # F: neurons per image
    batch,  # B
    steps,  # Tc
    channels,
    inner,
    HARD: tl.constexpr,
    CONSTANT: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
    COUNT: tl.constexpr,
    BLOCK: tl.constexpr,
    MAX_SPIKES: tl.constexpr,
    SIGNED: tl.constexpr,
):
    image = tl.program_id(0).to(tl.int64)
    f = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = f < frame
    index = image * frame + f  # int64; pointers then advance by one step (B*F < 2^31) per step
    step_size = batch * frame
    if PER_CHANNEL:
        theta = tl.load(theta_ptr + (f // inner) % channels, mask=inside, other=1.0)
    else:
        theta = tl.load(theta_ptr)
    v = tl.load(v_ptr + index, mask=inside, other=0.0)
    x_at = x_ptr + index
    out_at = out_ptr + index
    count_at = counts_ptr + image
    if SIGNED:
        net = tl.load(net_ptr + index, mask=inside, other=0.0)
    if CONSTANT:
        current = tl.load(x_at, mask=inside, other=0.0).to(tl.float32)
    for _ in range(steps):
        if not CONSTANT:
            current = tl.load(x_at, mask=inside, other=0.0).to(tl.float32)
            x_at += step_size
        v = v + current
        if MAX_SPIKES == 1 and not SIGNED:
            fired = (v >= theta) & inside
            s = fired.to(tl.float32)
            v = v - v * s if HARD else v - s * theta
            tl.store(out_at, s * theta, mask=inside)
            if COUNT:
                tl.atomic_add(count_at, tl.sum(fired.to(tl.int32), axis=0))
        else:
            # Bursts and signed spikes: neurons.py's general rule, operation for operation.
            r = v
            s = tl.zeros_like(v)
            for _k in tl.static_range(MAX_SPIKES):
                d = (r >= theta).to(tl.float32)
                if SIGNED:
                    neg = ((r <= -theta) & (net > 0.0)).to(tl.float32)
                    d = d - neg
                    net = net + d
                r = r - d * theta
                s = s + d
            v = v - v * (s != 0.0).to(tl.float32) if HARD else r
            tl.store(out_at, s * theta, mask=inside)
            if COUNT:
                size = tl.where(inside, tl.abs(s), 0.0).to(tl.int32)
                tl.atomic_add(count_at, tl.sum(size, axis=0))
        out_at += step_size
        if COUNT:
            count_at += batch
    tl.store(v_ptr + index, v, mask=inside)
    if SIGNED:
        tl.store(net_ptr + index, net, mask=inside)


def block_size(frame: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(max(frame, 16)))


def fits(frame: int) -> bool:
    """Whether a frame of this many neurons fits the kernel's grid."""
    return triton.cdiv(frame, block_size(frame)) <= MAX_BLOCKS_PER_IMAGE


def run_chunk(
    x: Tensor,
    v: Tensor,
    theta: Tensor,
    out: Tensor,
    counts: Tensor | None,
    *,
    steps: int,
    hard: bool,
    constant: bool,
    channels: int,
    inner: int,
    max_spikes: int = 1,
    net_count: Tensor | None = None,
) -> None:
    """Integrate `steps` steps of x into v in place, writing spikes x theta into out and, when
    `counts` ([steps, B] int32 zeros) is given, the spikes of every (step, image) into it.
    All tensors dense in one memory order. The kernel is looked up at call time, so tests can
    swap in a copy jitted under TRITON_INTERPRET=1."""
    batch = v.shape[0]
    frame = v.numel() // batch
    block = block_size(frame)
    grid = (batch, triton.cdiv(frame, block))
    if_chunk_kernel[grid](
        x,
        v,
        theta,
        out,
        out if counts is None else counts,  # any pointer: never read without COUNT
        v if net_count is None else net_count,  # never read without SIGNED
        frame,
        batch,
        steps,
        channels,
        inner,
        HARD=hard,
        CONSTANT=constant,
        PER_CHANNEL=theta.numel() > 1,
        COUNT=counts is not None,
        BLOCK=block,
        MAX_SPIKES=max_spikes,
        SIGNED=net_count is not None,
        num_warps=4 if block >= 512 else 2 if block >= 128 else 1,
        enable_fp_fusion=False,  # separate IEEE add and multiply (add.rn / mul.rn in PTX)
    )
