"""Integrate-and-fire neuron (no leak, discrete time) with soft (RMP) or hard reset.

Per step:  m = v + I;  s = m >= theta;  soft: v = m - s*theta;  hard: v = m*(1 - s).
The output is s*theta, so the next layer keeps the ANN's weights. Multi-step: the neuron receives a
chunk of Tc steps as a flat time-major batch [Tc*B, ...] and loops over time itself; membrane state
is carried from chunk to chunk until `reset_state()`. A chunk runs as one pass of a fused kernel
where one can take it (kernels/: Triton on CUDA, a compiled C loop on CPU); the eager loop here
is the reference they are tested against, bit for bit, and the fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rmp_cli.errors import RmpError
from rmp_cli.snn.layout import memory_format_of

RESETS = ("soft", "hard")
BACKENDS = ("auto", "eager", "triton", "cpu")


# --- reset rules: the one line in which hard and soft differ --------------------------------------
def soft_reset(m: Tensor, s: Tensor, theta: Tensor) -> Tensor:
    """RMP: subtract the threshold, keep the residual charge."""
    return m - s * theta


def hard_reset(m: Tensor, s: Tensor, theta: Tensor) -> Tensor:
    """Sengupta: membrane back to zero after a spike; charge above threshold is lost."""
    return m * (1 - s)


# In-place equivalents for the hot loop, bit-identical to the rules above. `s` is the float
# spike map (1.0 / 0.0): s*theta is theta or exactly 0, and m - m*s is +0.0 or m.
def _soft_reset_(v: Tensor, s: Tensor, theta: Tensor) -> None:
    v.addcmul_(s, theta, value=-1)


def _hard_reset_(v: Tensor, s: Tensor, theta: Tensor) -> None:
    v.addcmul_(v, s, value=-1)


_RESET_IN_PLACE: dict[str, Callable[[Tensor, Tensor, Tensor], None]] = {
    "soft": _soft_reset_,
    "hard": _hard_reset_,
}

# A float32 sum of 0/1 values is exact while it stays below 2^24.
_EXACT_FLOAT_COUNT = 2**24
# Elements per step [B, ...] from which a neuron counts and scales each step right away.
_PER_STEP_MIN = 2**17


def check_reset(reset: str) -> str:
    if reset not in RESETS:
        raise RmpError(f"unknown reset '{reset}'; choose one of: {', '.join(RESETS)}")
    return reset


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise RmpError(f"unknown neuron backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    return backend


def default_backend() -> str:
    """$RMP_NEURON_BACKEND (e.g. "eager" to rule the kernels out of a run), else "auto"."""
    return check_backend(os.environ.get("RMP_NEURON_BACKEND") or "auto")


def check_v_init(v_init: float) -> float:
    v_init = float(v_init)
    if not 0.0 <= v_init < 1.0:
        raise RmpError(f"v_init is a fraction of the threshold in [0, 1), got {v_init}")
    return v_init


class IFNeuron(nn.Module):
    """A layer of IF neurons with one threshold per layer (0-d) or per channel ([C], dim 1)."""

    def __init__(
        self,
        threshold: float | Tensor = 1.0,
        reset: str = "soft",
        v_init: float = 0.0,
        ceiling: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).clone())
        self.reset_mode = check_reset(reset)
        self.v_init = check_v_init(v_init)
        # Trained clipping ceiling of the activation this neuron replaced (threshold = ceiling).
        self.ceiling = None if ceiling is None else ceiling.detach().clone().float()
        self.name = ""  # qualified path, set by SpikingNet (for error messages)
        self.chunk, self.batch = 1, None
        self.count_spikes = False
        self.last_counts: Tensor | None = None  # spikes per step of the last call, [Tc]
        self.last_output: Tensor | None = None
        self.v: Tensor | None = None
        self.backend = default_backend()
        self._fresh = True

    @property
    def backend(self) -> str:
        """How a chunk runs: "auto" (the fused kernel of the device, kernels/, where it can run;
        else the eager loop), "eager", or a kernel by name, "triton" or "cpu". The tests hold
        every kernel bit-identical to the eager loop."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    def extra_repr(self) -> str:
        shape = tuple(self.threshold.shape)
        theta = f"{self.threshold.item():.4g}" if not shape else f"per-channel{list(shape)}"
        return f"threshold={theta}, reset={self.reset_mode}, v_init={self.v_init}"

    def set_threshold(self, theta: Tensor | float) -> None:
        theta = torch.as_tensor(theta, dtype=torch.float32).detach()
        if theta.dim() > 1:
            raise RmpError(
                f"threshold of '{self.name}' must be a scalar or one value per channel, "
                f"got shape {tuple(theta.shape)}"
            )
        if not bool(torch.isfinite(theta).all()) or bool((theta <= 0).any()):
            raise RmpError(
                f"threshold of '{self.name}' must be finite and positive, got "
                f"min {theta.min().item():.4g}"
            )
        self.threshold = theta.to(self.threshold.device).clone()

    def configure(self, chunk: int, batch: int | None) -> None:
        """Steps per call (Tc) and images per batch (B): an input of [B, ...] when Tc > 1 is a
        constant current (the direct-input layers ran once on the un-repeated images)."""
        self.chunk, self.batch = int(chunk), batch

    def reset_state(self) -> None:
        self._fresh = True

    def _theta(self, ndim: int, channels: int) -> Tensor:
        theta = self.threshold
        if theta.dim() == 0:
            return theta
        if theta.numel() != channels:
            raise RmpError(
                f"layer '{self.name}' has {channels} channels but {theta.numel()} "
                f"per-channel thresholds"
            )
        return theta.view(-1, *([1] * (ndim - 2)))

    def _init_state(self, shape: torch.Size, like: Tensor, theta: Tensor) -> None:
        # v(0) = v_init * theta; reuse the buffer between batches of the same size.
        fmt = memory_format_of(like)
        v = self.v
        if (
            v is None
            or v.shape != shape
            or v.device != like.device
            or not v.is_contiguous(memory_format=fmt)
        ):
            self.v = torch.empty(
                shape, dtype=state_dtype(like), device=like.device, memory_format=fmt
            )
        self.v.copy_((theta * self.v_init).expand(shape))
        self._fresh = False

    def forward(self, x: Tensor) -> Tensor:
        tc = self.chunk
        batch = self.batch if self.batch is not None else x.shape[0] // tc
        constant = tc > 1 and x.shape[0] == batch
        if not constant and x.shape[0] != tc * batch:
            raise RuntimeError(
                f"neuron '{self.name}': input batch {x.shape[0]} is neither "
                f"B={batch} nor Tc*B={tc * batch}"
            )
        shape = torch.Size((batch, *x.shape[1:]))
        theta = self._theta(x.dim(), x.shape[1] if x.dim() > 1 else 1)
        if self._fresh or self.v is None or self.v.shape != shape:
            self._init_state(shape, x, theta)
        # A fresh output each call (callers may keep it); allocation is cheap once the allocator
        # keeps freed blocks (see allocator.py). Time-major, in the input's memory format.
        flat = torch.empty(
            (tc * batch, *shape[1:]),
            dtype=state_dtype(x),
            device=x.device,
            memory_format=memory_format_of(x),
        )
        out = flat.view(tc, *shape)  # splitting the outermost dim is a view in any memory format
        kernel = self._kernel_for(x)
        if kernel is None:
            self._eager_chunk(x, out, theta, constant)
        else:
            from rmp_cli.snn.kernels import fused_chunk

            self.last_counts = fused_chunk(
                kernel,
                x,
                self.v,
                self.threshold,
                out,
                steps=tc,
                hard=self.reset_mode == "hard",
                constant=constant,
                count=self.count_spikes,
            )
        self.last_output = flat
        return flat

    def _kernel_for(self, x: Tensor) -> str | None:
        """The fused kernel for this chunk (None: the eager loop). "auto" takes the device's
        kernel where it can run and falls back quietly; a kernel asked for by name must run."""
        if self.backend == "eager":
            return None
        from rmp_cli.snn import kernels

        kernel = kernels.default_kernel(x.device) if self.backend == "auto" else self.backend
        why = kernels.refusal(kernel, x, self.v, self.threshold)
        if why is None:
            return kernel
        if self.backend != "auto":
            raise RmpError(f"neuron '{self.name}': the {kernel} kernel cannot run here: {why}")
        return None

    def _eager_chunk(self, x: Tensor, out: Tensor, theta: Tensor, constant: bool) -> None:
        """The reference: one step at a time, in place, in float32 (see the module docstring)."""
        v, (tc, batch) = self.v, out.shape[:2]
        steps = None if constant else x.reshape(tc, batch, *x.shape[1:])
        reset_ = _RESET_IN_PLACE[self.reset_mode]
        # Large steps are counted and scaled while still in cache (12-35% faster on 2 CPU cores
        # than two passes over the chunk afterwards); small ones in one call per chunk, where
        # per-call overhead outweighs cache misses (measured crossover ~2^17 elements).
        per_step = v.numel() >= _PER_STEP_MIN
        per_image = None
        if self.count_spikes and per_step:
            per_image = _counts_buffer((tc, batch), v[0].numel(), x.device)
        for t in range(tc):
            s = out[t]
            v.add_(x if steps is None else steps[t])
            torch.ge(v, theta, out=s)  # 1.0 where m >= theta
            reset_(v, s, theta)
            if per_step:
                if per_image is not None:
                    _count_per_image(s, per_image[t])
                s.mul_(theta)  # spikes carry theta
        if per_image is not None:
            self.last_counts = per_image.to(torch.int64).sum(1)
        elif self.count_spikes:
            self.last_counts = count_per_step(out)
        if not per_step:
            out.mul_(theta)

    def release(self) -> None:
        """Drop state and buffers (memory) after a simulation."""
        self.v = self.last_output = self.last_counts = None
        self._fresh = True


def state_dtype(x: Tensor) -> torch.dtype:
    """Membrane and output in at least float32: under a half-precision simulation only the
    synaptic currents are rounded, and the rounding does not accumulate over time-steps."""
    return torch.promote_types(x.dtype, torch.float32)


def _counts_buffer(shape: tuple[int, ...], frame_numel: int, device: torch.device) -> Tensor:
    """Where per-image spike counts go: float32 sums are exact below 2^24 per image and
    vectorise far better than counting a boolean; larger frames are counted as int64."""
    dtype = torch.int64 if frame_numel >= _EXACT_FLOAT_COUNT else torch.float32
    return torch.empty(shape, dtype=dtype, device=device)


def _count_per_image(spikes: Tensor, out: Tensor) -> None:
    """Spikes per image [B] of 0/1 frames [B, ...] into `out` (from `_counts_buffer`)."""
    if spikes.dim() == 1:
        out.copy_(spikes)
    elif out.dtype == torch.int64:
        out.copy_(spikes.reshape(spikes.shape[0], -1).count_nonzero(1))
    else:
        torch.sum(spikes, dim=tuple(range(1, spikes.dim())), dtype=out.dtype, out=out)


def count_per_step(values: Tensor) -> Tensor:
    """Nonzeros per step [Tc] (int64) of a 0/1 float map [Tc, B, ...]."""
    frames = values.flatten(0, 1)  # [Tc*B, ...]
    per_image = _counts_buffer((frames.shape[0],), frames[0].numel(), values.device)
    _count_per_image(frames, per_image)
    return per_image.view(values.shape[0], -1).to(torch.int64).sum(1)
