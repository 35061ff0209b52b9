"""Integrate-and-fire neuron (no leak, discrete time) with soft (RMP) or hard reset.

Per step:  m = v + I;  s = m >= theta;  soft: v = m - s*theta;  hard: v = m*(1 - s).
The output is s*theta, so the next layer keeps the ANN's weights.

Two options generalise the spike, each one rule applied up to G = max_spikes times per step to
the membrane r (r = m at first; soft reset: v = r afterwards, hard reset: v = m*(1 - [s > 0])):
    pos = r >= theta;  neg = signed and r <= -theta and n > 0;  d = pos - neg
    r = r - d*theta;  n = n + d;  s = s + d
  burst (max_spikes=G > 1, Li & Zeng 2022): s = min(G, floor(m / theta)) spikes in one step, the
          soft reset subtracting theta for each;
  signed  (signed=true, the signed neuron with memory of SNM, Wang et al. 2022): n is the net
          spike count so far; a neuron that has fired more than its input now warrants
          (r <= -theta) fires a negative spike and takes theta back, never below n = 0. SNM's
          rule, not a negative spike at r < 0: the threshold is symmetric (a spike either way
          needs a full theta of charge), so the residuals in (-theta, 0) that a soft reset
          leaves on any dip of the input do not make a neuron flip between +1 and -1.
The output is s*theta (s in -G..G); spike counts are counts of |s|. With G = 1 and signed off
the rule is the plain IF rule above, operation for operation.

Offset calibration (snn.presteps): after K pre-steps `calibrate()` reads the membrane and either
moves each neuron's starting membrane by one theta (COS) or silences it (SRP); see there. Multi-step: the neuron receives a
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
OFFSETS = ("cos", "srp")
# Spikes per step and neuron at most (a burst); the kernels unroll a loop of this length.
MAX_BURST = 16


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


def check_max_spikes(max_spikes: object) -> int:
    if (
        isinstance(max_spikes, bool)
        or not isinstance(max_spikes, int)
        or not 1 <= max_spikes <= MAX_BURST
    ):
        raise RmpError(
            f"max_spikes (spikes per step and neuron) must be an integer in 1..{MAX_BURST}, "
            f"got {max_spikes!r}"
        )
    return max_spikes


def check_signed(signed: object, reset: str) -> bool:
    if not isinstance(signed, bool):
        raise RmpError(f"signed must be true or false, got {signed!r}")
    if signed and reset == "hard":
        raise RmpError(
            "signed spikes need the soft reset: a negative spike gives theta back, which a hard "
            "reset (membrane to zero) would not; use reset=soft"
        )
    return signed


def check_offset(offset: object, presteps: object) -> str | None:
    """The pre-step calibration: `offset` cos|srp with `presteps` K >= 1, or none with K = 0."""
    if isinstance(presteps, bool) or not isinstance(presteps, int) or presteps < 0:
        raise RmpError(f"presteps must be a non-negative integer, got {presteps!r}")
    if offset is not None and offset not in OFFSETS:
        raise RmpError(f"unknown offset '{offset}'; choose one of: {', '.join(OFFSETS)}")
    if offset is not None and presteps == 0:
        raise RmpError(f"offset={offset} calibrates on pre-steps; set presteps to 1 or more")
    if offset is None and presteps > 0:
        raise RmpError(
            f"presteps={presteps} needs an offset rule to apply after them: {' or '.join(OFFSETS)}"
        )
    return offset


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
        self.signed = False  # negative spikes (see the module docstring)
        self.max_spikes = 1  # spikes per step at most (a burst when > 1)
        self.net_count: Tensor | None = None  # n, the net spikes so far (signed only)
        # Pre-step calibration: the per-neuron starting membrane (COS) or 0/1 mask (SRP) that
        # `calibrate()` set for this batch; the spike charge summed during the pre-steps.
        self.start: Tensor | None = None
        self.keep: Tensor | None = None
        self.tally_presteps = False
        self.pre_charge: Tensor | None = None
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
        text = f"threshold={theta}, reset={self.reset_mode}, v_init={self.v_init}"
        if self.signed:
            text += ", signed=True"
        if self.max_spikes > 1:
            text += f", max_spikes={self.max_spikes}"
        return text

    @property
    def plain(self) -> bool:
        """The plain IF rule: one positive spike at most per step."""
        return not self.signed and self.max_spikes == 1

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

    def clear_offset(self) -> None:
        """Forget the calibration of the last batch (a new batch starts its own pre-steps)."""
        self.start = self.keep = self.pre_charge = None

    def calibrate(self, offset: str) -> None:
        """After the pre-steps, with the membrane v(K) and the spikes they emitted: the rule of
        `offset`, then a fresh state for the counted steps.
          cos (Hao et al., ICLR 2023): a neuron that fired and ends below zero fired one spike
              too many, one at or above theta one too few: its starting membrane moves down or
              up by one theta (the shortest shift of the paper's rule, which changes the count
              over the same steps by exactly one).
          srp (Hao et al., AAAI 2023): a neuron whose membrane is negative after the pre-steps
              is silenced for the counted steps (its input is masked to zero).
        """
        v = self.v
        if v is None:
            raise RmpError(f"neuron '{self.name}' has not run its pre-steps")
        theta = self._theta(v.dim(), v.shape[1] if v.dim() > 1 else 1)
        if offset == "srp":
            self.keep = torch.ge(v, 0).to(v.dtype)
        elif offset == "cos":
            charge = self.pre_charge if self.pre_charge is not None else torch.zeros_like(v)
            fired = torch.gt(charge, theta / 2)  # net spikes >= 1 (their charge is n * theta)
            lower = (torch.lt(v, 0) & fired).to(v.dtype)
            higher = torch.ge(v, theta).to(v.dtype)
            start = (theta * self.v_init).expand_as(v).clone()
            start.addcmul_(lower, theta.expand_as(v), value=-1)
            start.addcmul_(higher, theta.expand_as(v))
            self.start = start
        else:
            raise RmpError(f"unknown offset '{offset}'; choose one of: {', '.join(OFFSETS)}")
        self.pre_charge = None
        self.reset_state()

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
        if self.start is not None and self.start.shape == shape:
            self.v.copy_(self.start)
        else:
            self.v.copy_((theta * self.v_init).expand(shape))
        if self.signed:
            self.net_count = torch.zeros_like(self.v)
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
        if self.signed:
            check_signed(True, self.reset_mode)
        if self._fresh or self.v is None or self.v.shape != shape:
            self._init_state(shape, x, theta)
        if self.keep is not None:
            x = self._silence(x, tc, shape)
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
            if self.plain:
                self._eager_chunk(x, out, theta, constant)
            else:
                self._eager_general(x, out, theta, constant)
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
                max_spikes=self.max_spikes,
                net_count=self.net_count if self.signed else None,
            )
        if self.tally_presteps:
            charge = out.sum(0)
            self.pre_charge = charge if self.pre_charge is None else self.pre_charge.add_(charge)
        self.last_output = flat
        return flat

    def _silence(self, x: Tensor, tc: int, shape: torch.Size) -> Tensor:
        """SRP: the input of silenced neurons set to zero (x * 1 is x exactly elsewhere), in the
        input's memory format so the fused kernels still take it."""
        assert self.keep is not None
        masked = torch.empty_like(x)
        if x.shape[0] == shape[0]:
            return torch.mul(x, self.keep, out=masked)
        torch.mul(x.view(tc, *shape), self.keep, out=masked.view(tc, *shape))
        return masked

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

    def _eager_general(self, x: Tensor, out: Tensor, theta: Tensor, constant: bool) -> None:
        """The reference for bursts and signed spikes (the module docstring's rule), one step at
        a time; with max_spikes=1 and signed off it performs the plain rule's operations."""
        v, (tc, batch) = self.v, out.shape[:2]
        steps = None if constant else x.reshape(tc, batch, *x.shape[1:])
        hard = self.reset_mode == "hard"
        n = self.net_count if self.signed else None
        d, neg = torch.empty_like(v), torch.empty_like(v)
        for t in range(tc):
            s = out[t]
            s.zero_()
            v.add_(x if steps is None else steps[t])
            r = v.clone() if hard else v  # hard reset: the burst is counted on a copy
            for _ in range(self.max_spikes):
                torch.ge(r, theta, out=d)  # 1.0 where r >= theta
                if n is not None:
                    torch.le(r, -theta, out=neg)
                    neg.mul_(torch.gt(n, 0))  # memory: never below a net count of zero
                    d.sub_(neg)
                    n.add_(d)
                r.addcmul_(d, theta, value=-1)
                s.add_(d)
            if hard:
                v.addcmul_(v, torch.ne(s, 0).to(v.dtype), value=-1)
        if self.count_spikes:
            self.last_counts = sum_per_step(out.abs())
        out.mul_(theta)  # spikes carry theta

    def release(self) -> None:
        """Drop state and buffers (memory) after a simulation."""
        self.v = self.last_output = self.last_counts = self.net_count = None
        self.clear_offset()
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


def sum_per_step(values: Tensor) -> Tensor:
    """Sum per step [Tc] (int64) of a map [Tc, B, ...] of small whole numbers (|spikes| of
    bursts and signed spikes; float64 sums of them are exact)."""
    per_image = values.reshape(values.shape[0] * values.shape[1], -1).sum(1, dtype=torch.float64)
    return per_image.view(values.shape[0], -1).to(torch.int64).sum(1)


def count_per_step(values: Tensor) -> Tensor:
    """Nonzeros per step [Tc] (int64) of a 0/1 float map [Tc, B, ...]."""
    frames = values.flatten(0, 1)  # [Tc*B, ...]
    per_image = _counts_buffer((frames.shape[0],), frames[0].numel(), values.device)
    _count_per_image(frames, per_image)
    return per_image.view(values.shape[0], -1).to(torch.int64).sum(1)
