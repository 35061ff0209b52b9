"""The IF chunk loop as a small C function: one pass per chunk on CPU, the membrane in cache.

Each work item (a run of neurons) keeps its part of the membrane in cache for all Tc steps,
reading every current once and writing every spike once; the eager loop makes five passes per
step over the whole map. The C source is compiled on first use with the system's C
compiler (a fraction of a second) into a per-user cache and loaded with ctypes; no compiler, no
kernel: the neuron falls back to its eager loop.

Exactness: the same float32 operations as the eager rule, compiled with -ffp-contract=off and
without fast-math (and every product is by 0 or 1, hence exact, so even a fused multiply-add
would give the same bits). OpenMP threads come from the libgomp torch has already loaded (the
same soname), so `torch.set_num_threads` governs them too.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# Neurons per work item: its 128 KB of membrane stays in L2 while the Tc steps stream past, and
# each step reads and writes 64 KB runs, long enough for the hardware prefetcher (single thread,
# 2^19 neurons x 32 steps: 8.5 ms with 2^11 per item, 5.6 ms with 2^15; eager 10.6 ms).
BLOCK = 2**15

SOURCE = r"""
#include <stdint.h>

#define PARALLEL_MIN 65536 /* neuron-steps per call; torch's own grain is 32768 per op */

/* One work item: neurons [e0, e1) of the flat step frame [B*F] (whole images or parts of them)
   for all steps, one image segment [s0, s1) at a time so that spikes are counted per image.
   THETA(e) is neuron e's threshold, CURRENT(p) reads current p as float32.
   Soft: v - s*theta; hard: v - v*s. */
#define IF_ITEM(THETA, CURRENT, HARD)                                                        \
    for (int64_t t = 0; t < steps; t++) {                                                    \
        const int64_t in = constant ? 0 : t * n, at = t * n;                                 \
        for (int64_t s0 = e0, s1; s0 < e1; s0 = s1) {                                        \
            const int64_t b = s0 / frame, base = b * frame;                                  \
            s1 = base + frame < e1 ? base + frame : e1;                                      \
            int32_t fired = 0;                                                               \
            for (int64_t e = s0; e < s1; e++) {                                              \
                const float m = v[e] + CURRENT(in + e);                                      \
                const float s = m >= THETA(e) ? 1.0f : 0.0f;                                 \
                v[e] = HARD ? m - m * s : m - s * THETA(e);                                  \
                out[at + e] = s * THETA(e);                                                  \
                fired += m >= THETA(e);                                                      \
            }                                                                                \
            if (counts) {                                                                    \
                _Pragma("omp atomic")                                                        \
                counts[t * batch + b] += fired;                                              \
            }                                                                                \
        }                                                                                    \
    }

/* Bursts and signed spikes (neurons.py's general rule, operation for operation): up to
   max_spikes spikes of either sign per step, n the net count so far (signed only). */
#define IF_ITEM_GENERAL(THETA, CURRENT)                                                      \
    for (int64_t t = 0; t < steps; t++) {                                                    \
        const int64_t in = constant ? 0 : t * n, at = t * n;                                 \
        for (int64_t s0 = e0, s1; s0 < e1; s0 = s1) {                                        \
            const int64_t b = s0 / frame, base = b * frame;                                  \
            s1 = base + frame < e1 ? base + frame : e1;                                      \
            int32_t fired = 0;                                                               \
            for (int64_t e = s0; e < s1; e++) {                                              \
                const float th = THETA(e);                                                   \
                const float m = v[e] + CURRENT(in + e);                                      \
                float r = m, sc = 0.0f, nn = signed_ ? net[e] : 0.0f;                        \
                for (int64_t k = 0; k < max_spikes; k++) {                                   \
                    float d = r >= th ? 1.0f : 0.0f;                                         \
                    if (signed_) {                                                           \
                        const float neg = (r <= -th) && (nn > 0.0f) ? 1.0f : 0.0f;           \
                        d = d - neg;                                                         \
                        nn = nn + d;                                                         \
                    }                                                                        \
                    r = r - d * th;                                                          \
                    sc = sc + d;                                                             \
                }                                                                            \
                if (signed_) net[e] = nn;                                                    \
                v[e] = hard ? m - m * (sc != 0.0f ? 1.0f : 0.0f) : r;                        \
                out[at + e] = sc * th;                                                       \
                fired += (int32_t)(sc < 0.0f ? -sc : sc);                                    \
            }                                                                                \
            if (counts) {                                                                    \
                _Pragma("omp atomic")                                                        \
                counts[t * batch + b] += fired;                                              \
            }                                                                                \
        }                                                                                    \
    }

/* The same rule for the soft reset, pass by pass over an image segment (in cache): one pass
   integrates, each of the max_spikes passes fires at most one spike of either sign, the last
   one counts and scales; every pass vectorises, where the per-neuron loop above does not.
   out holds the spike count s until the last pass. */
#define IF_ITEM_PASSES(THETA, CURRENT, SIGNED)                                               \
    for (int64_t t = 0; t < steps; t++) {                                                    \
        const int64_t in = constant ? 0 : t * n, at = t * n;                                 \
        for (int64_t s0 = e0, s1; s0 < e1; s0 = s1) {                                        \
            const int64_t b = s0 / frame, base = b * frame;                                  \
            s1 = base + frame < e1 ? base + frame : e1;                                      \
            float *restrict o = out + at;                                                    \
            for (int64_t e = s0; e < s1; e++) {                                              \
                v[e] = v[e] + CURRENT(in + e);                                               \
                o[e] = 0.0f;                                                                 \
            }                                                                                \
            for (int64_t k = 0; k < max_spikes; k++) {                                       \
                for (int64_t e = s0; e < s1; e++) {                                          \
                    const float th = THETA(e), r = v[e];                                     \
                    float d = r >= th ? 1.0f : 0.0f;                                         \
                    if (SIGNED) {                                                            \
                        const float neg = (r <= -th) && (net[e] > 0.0f) ? 1.0f : 0.0f;       \
                        d = d - neg;                                                         \
                        net[e] = net[e] + d;                                                 \
                    }                                                                        \
                    v[e] = r - d * th;                                                       \
                    o[e] = o[e] + d;                                                         \
                }                                                                            \
            }                                                                                \
            int32_t fired = 0;                                                               \
            for (int64_t e = s0; e < s1; e++) {                                              \
                const float sc = o[e];                                                       \
                fired += (int32_t)(sc < 0.0f ? -sc : sc);                                    \
                o[e] = sc * THETA(e);                                                        \
            }                                                                                \
            if (counts) {                                                                    \
                _Pragma("omp atomic")                                                        \
                counts[t * batch + b] += fired;                                              \
            }                                                                                \
        }                                                                                    \
    }

/* the layer's threshold in a local: read through a pointer, it blocks vectorisation */
#define LAYER_THETA(e) layer_theta
#define FRAME_THETA(e) theta[(e) - base]
#define F32(p) ((const float *)x)[p]
#define BF16(p) bf16_to_f32(((const uint16_t *)x)[p])

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)h << 16; /* exact: bfloat16 is the top half of a float32 */
    return c.f;
}

void if_chunk(float *restrict v, const void *restrict x, const float *restrict theta,
              float *restrict out, int64_t *restrict counts, float *restrict net,
              int64_t batch, int64_t frame, int64_t steps, int64_t block, int64_t max_spikes,
              int constant, int hard, int per_neuron, int bf16, int signed_)
{
    const int64_t n = batch * frame, items = (n + block - 1) / block;
    const float layer_theta = theta[0];
    /* small chunks stay on the calling thread: waking the pool costs more than they take */
    #pragma omp parallel for schedule(static) if (n * steps >= PARALLEL_MIN)
    for (int64_t w = 0; w < items; w++) {
        const int64_t e0 = w * block, e1 = e0 + block < n ? e0 + block : n;
        /* one specialised loop per case, so the inner loop has no branches to vectorise */
        if (hard && max_spikes > 1) {
            if (bf16) { if (per_neuron) { IF_ITEM_GENERAL(FRAME_THETA, BF16) }
                        else            { IF_ITEM_GENERAL(LAYER_THETA, BF16) } }
            else      { if (per_neuron) { IF_ITEM_GENERAL(FRAME_THETA, F32) }
                        else            { IF_ITEM_GENERAL(LAYER_THETA, F32) } }
        } else if (max_spikes > 1 || signed_) { /* soft reset (signed needs it) */
            if (bf16) {
                if (per_neuron) { if (signed_) { IF_ITEM_PASSES(FRAME_THETA, BF16, 1) }
                                  else         { IF_ITEM_PASSES(FRAME_THETA, BF16, 0) } }
                else            { if (signed_) { IF_ITEM_PASSES(LAYER_THETA, BF16, 1) }
                                  else         { IF_ITEM_PASSES(LAYER_THETA, BF16, 0) } }
            } else {
                if (per_neuron) { if (signed_) { IF_ITEM_PASSES(FRAME_THETA, F32, 1) }
                                  else         { IF_ITEM_PASSES(FRAME_THETA, F32, 0) } }
                else            { if (signed_) { IF_ITEM_PASSES(LAYER_THETA, F32, 1) }
                                  else         { IF_ITEM_PASSES(LAYER_THETA, F32, 0) } }
            }
        } else if (bf16) {
            if (per_neuron) { if (hard) { IF_ITEM(FRAME_THETA, BF16, 1) }
                              else      { IF_ITEM(FRAME_THETA, BF16, 0) } }
            else            { if (hard) { IF_ITEM(LAYER_THETA, BF16, 1) }
                              else      { IF_ITEM(LAYER_THETA, BF16, 0) } }
        } else {
            if (per_neuron) { if (hard) { IF_ITEM(FRAME_THETA, F32, 1) }
                              else      { IF_ITEM(FRAME_THETA, F32, 0) } }
            else            { if (hard) { IF_ITEM(LAYER_THETA, F32, 1) }
                              else      { IF_ITEM(LAYER_THETA, F32, 0) } }
        }
    }
}
"""
# No -ffast-math: the float operations must stay the eager rule's, in its order.
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
NATIVE = ["-march=native"]  # AVX2 / AVX-512 where the machine has them (built on the machine)
OPENMP = ["-fopenmp"]


def cache_dir() -> Path:
    """$RMP_KERNEL_CACHE, else $XDG_CACHE_HOME/rmp/kernels, else ~/.cache/rmp/kernels."""
    if os.environ.get("RMP_KERNEL_CACHE"):
        return Path(os.environ["RMP_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rmp" / "kernels"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _machine() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [x for x in lines if x.startswith(("model name", "flags"))][:2]
        return "\n".join(keep) or platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def _build(cc: str, target: Path) -> bool:
    """Compile SOURCE into target (atomically: concurrent processes may build it too)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "if_chunk.c"
        src.write_text(SOURCE)
        for extra in (NATIVE + OPENMP, OPENMP, NATIVE, []):  # the best the compiler accepts
            lib = Path(tmp) / target.name
            cmd = [cc, *FLAGS, *extra, str(src), "-o", str(lib)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                os.replace(lib, target)
                return True
        log.warning("cannot compile the CPU neuron kernel (%s): %s", cc, proc.stderr.strip())
    return False


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built once per machine and compiler; None when no C compiler works."""
    cc = _compiler()
    if cc is None:
        return None
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, check=False
        ).stdout
        key = hashlib.sha256(
            "\0".join([SOURCE, " ".join(FLAGS), version, _machine()]).encode()
        ).hexdigest()[:16]
        target = cache_dir() / f"if_chunk-{key}.so"
        if not target.exists() and not _build(cc, target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError as exc:  # unwritable cache, unloadable library: run eager
        log.warning("CPU neuron kernel unavailable: %s", exc)
        return None
    fn = lib.if_chunk
    fn.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 5 + [ctypes.c_int] * 5
    fn.restype = None
    return lib


def theta_frame(theta: Tensor, like: Tensor) -> Tensor:
    """Per-channel thresholds laid out as one image's neurons in `like`'s memory order."""
    frame = torch.empty_like(like[0])  # keeps like's (dense) strides
    view = theta.view(-1, *([1] * (like.dim() - 2))) if like.dim() > 1 else theta
    return frame.copy_(view.expand(frame.shape))


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
    max_spikes: int = 1,
    net_count: Tensor | None = None,
) -> None:
    """As triton_if.run_chunk, with counts as [steps, B] int64 zeros; x float32 or bfloat16."""
    lib = library()
    assert lib is not None
    per_neuron = theta.numel() > 1
    thresholds = theta_frame(theta, v) if per_neuron else theta.reshape(1)
    batch = v.shape[0]
    lib.if_chunk(
        v.data_ptr(),
        x.data_ptr(),
        thresholds.data_ptr(),
        out.data_ptr(),
        None if counts is None else counts.data_ptr(),
        None if net_count is None else net_count.data_ptr(),
        batch,
        v.numel() // batch,
        steps,
        BLOCK,
        max_spikes,
        int(constant),
        int(hard),
        int(per_neuron),
        int(x.dtype == torch.bfloat16),
        int(net_count is not None),
    )
