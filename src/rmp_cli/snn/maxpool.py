"""Spike-gated max-pooling (Rueckauer et al. 2017): the spiking replacement of a max-pool.

Every input unit accumulates its input over time, A_i(t) = sum_{u <= t} x_i(u) (the current step
counts before selection). Each pooling window passes, at step t, the current input x_i(t) of the
unit with the largest A_i(t). When several units share that largest accumulated input, the
window passes the SMALLEST of their current inputs: the unit that was already ahead before this
step wins the tie (its A_i(t-1) is the larger one). For spike inputs (0 or theta, one theta per
window: per layer or per channel) this makes a spike pass exactly when the window's largest
accumulated count grows, so after every step

    output spike count of a window == largest input spike count in it        (exactly, every T)

and the output rate is the largest input rate. Bursts and signed spikes (k * theta, k in -G..G)
take the same rule: a unit may now take the lead by several spikes at once or lose it by a
negative one, so the identity above becomes approximate (the output still follows the leading
unit's rate, and is the same for every chunk size). Inputs that are not spikes (currents, sums of
spikes of several layers) are gated by their accumulated values, so the output rate tends to the
largest input rate once one unit stays ahead. Values are accumulated (not counts) so that
per-channel thresholds and analog inputs are handled by the same rule; float32 sums of one
repeated theta are a strictly increasing function of the count (below 2^24 steps), so they
compare exactly like counts.

Geometry follows the ANN op exactly (kernel, stride, padding, dilation, ceil_mode, 1-3 spatial
dimensions, adaptive output sizes; padding never wins): regular windows are strided views of the
input (Tensor.unfold), adaptive ones (unequal sizes) an index table. A max-pool that sees only a
constant current (the direct-input stem) is exactly the ANN op; `static_pool()` gives it.
Multi-step like the neurons: a chunk arrives as [Tc*B, C, ...], accumulation is a sequential
float32 sum (identical for every chunk size), selection runs once per chunk on the whole chunk
with a Python loop over the K kernel positions only (never over windows), and state is carried
across chunks until `reset_state()`, so memory stays flat in T.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmp_cli.errors import RmpError
from rmp_cli.snn.layout import memory_format_of

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_ADAPTIVE_MAX_POOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


def _tuple(value: int | Sequence[int] | None, dims: int, name: str) -> tuple[int, ...]:
    values = (value,) * dims if value is None or isinstance(value, int) else tuple(value)
    if len(values) == 1 and dims > 1:
        values = values * dims
    if len(values) != dims:
        raise RmpError(f"max-pool {name} {value!r} does not have {dims} values")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class PoolGeometry:
    """Where the windows of a max-pool lie: a regular pool or an adaptive one (output_size)."""

    dims: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    ceil_mode: bool = False
    output_size: tuple[int | None, ...] | None = None  # adaptive pools only

    @classmethod
    def regular(
        cls,
        dims: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        ceil_mode: bool = False,
    ) -> PoolGeometry:
        kernel = _tuple(kernel_size, dims, "kernel_size")
        # PyTorch: stride None (or an empty list, torch.max_pool2d's default) means the kernel.
        empty = stride is None or (not isinstance(stride, int) and len(stride) == 0)
        return cls(
            dims=dims,
            kernel=kernel,
            stride=kernel if empty else _tuple(stride, dims, "stride"),
            padding=_tuple(padding, dims, "padding"),
            dilation=_tuple(dilation, dims, "dilation"),
            ceil_mode=bool(ceil_mode),
        )

    @classmethod
    def adaptive(cls, dims: int, output_size: int | Sequence[int | None]) -> PoolGeometry:
        sizes = (output_size,) * dims if isinstance(output_size, int) else tuple(output_size)
        if len(sizes) != dims:
            raise RmpError(f"adaptive max-pool output_size {output_size!r} needs {dims} values")
        return cls(dims=dims, output_size=sizes)

    def describe(self) -> str:
        if self.output_size is not None:
            return f"adaptive, output_size={self.output_size}"
        return (
            f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )

    def unfold_plan(self, spatial: Sequence[int]) -> list[tuple[int, int, int, int, int, int]]:
        """Regular pools, per spatial axis: (left pad, right pad, window span, stride, dilation,
        output length). The right pad also makes room for ceil_mode's last partial window."""
        plan = []
        for axis, length in enumerate(spatial):
            k, s, p, d = (
                self.kernel[axis],
                self.stride[axis],
                self.padding[axis],
                self.dilation[axis],
            )
            out = pool_output_length(int(length), k, s, p, d, self.ceil_mode)
            span = d * (k - 1) + 1
            right = max(p, (out - 1) * s + span - int(length) - p)
            plan.append((p, right, span, s, d, out))
        return plan

    def window_index(self, spatial: Sequence[int]) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """Adaptive pools (windows of unequal size): flat input positions [L_out, K] of every
        window, a mask of the real ones (shorter windows are padded), and the output's shape."""
        assert self.output_size is not None
        index = torch.zeros((1, 1), dtype=torch.long)
        real = torch.ones((1, 1), dtype=torch.bool)
        out_shape: list[int] = []
        for axis, length in enumerate(spatial):
            out = self.output_size[axis] or int(length)
            starts = torch.tensor([(o * length) // out for o in range(out)])
            ends = torch.tensor([-((-(o + 1) * length) // out) for o in range(out)])  # ceil
            pos = starts[:, None] + torch.arange(int((ends - starts).max()))[None, :]
            ok = pos < ends[:, None]
            out_shape.append(out)
            # Outer product with the axes so far: [Lo, K] x [o, k] -> [Lo*o, K*k], row-major.
            index = ((index * int(length))[:, None, :, None] + pos[None, :, None, :]).flatten(2)
            real = (real[:, None, :, None] & ok[None, :, None, :]).flatten(2)
            index, real = index.flatten(0, 1), real.flatten(0, 1)
        return torch.where(real, index, 0), real, tuple(out_shape)

    def max_pool(self, x: Tensor) -> Tensor:
        """The ANN op itself, for a constant input."""
        if self.output_size is not None:
            return _ADAPTIVE_MAX_POOL[self.dims](x, self.output_size)
        return _MAX_POOL[self.dims](
            x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode
        )


def pool_output_length(length: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length (a last window that starts in the right padding is
    dropped in ceil mode)."""
    span = length + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= length + p:
        out -= 1
    if out < 1:
        raise RmpError(
            f"max-pool window (kernel {k}, dilation {d}, padding {p}) does not fit an input "
            f"of length {length}"
        )
    return out


_REGULAR_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_ADAPTIVE_MODULES = {nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}
MAX_POOL_TYPES = (*_REGULAR_MODULES, *_ADAPTIVE_MODULES)


def geometry_of(module: nn.Module) -> PoolGeometry | None:
    """The windows of a max-pooling module (subclasses included), None for any other module.
    One that returns its indices (for unpooling) has no spiking counterpart: RmpError."""
    for kind, dims in _REGULAR_MODULES.items():
        if isinstance(module, kind):
            geometry = PoolGeometry.regular(
                dims,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.ceil_mode,
            )
            break
    else:
        adaptive = [d for kind, d in _ADAPTIVE_MODULES.items() if isinstance(module, kind)]
        if not adaptive:
            return None
        geometry = PoolGeometry.adaptive(adaptive[0], module.output_size)
    if module.return_indices:
        raise RmpError(
            f"{type(module).__name__} with return_indices=True (unpooling) has no spiking "
            f"equivalent"
        )
    return geometry


class StaticMaxPool(nn.Module):
    """A gate's geometry as the plain ANN op (used where the input is a constant current)."""

    def __init__(self, geometry: PoolGeometry) -> None:
        super().__init__()
        self.geometry = geometry

    def forward(self, x: Tensor) -> Tensor:
        return self.geometry.max_pool(x)


class MaxPoolGate(nn.Module):
    """Spike-gated max-pooling over [Tc*B, C, *spatial] chunks (see the module docstring)."""

    def __init__(self, geometry: PoolGeometry) -> None:
        super().__init__()
        self.geometry = geometry
        self.name = ""  # qualified path (error messages)
        self.chunk, self.batch = 1, None
        self.total: Tensor | None = None  # accumulated input A(t) per unit, [B, C, *spatial]
        self._fresh = True
        self._index: dict[tuple, tuple[Tensor, Tensor, tuple[int, ...]]] = {}  # adaptive

    @classmethod
    def from_module(cls, module: nn.Module) -> MaxPoolGate:
        """A gate with the geometry of an nn.MaxPool{1,2,3}d or nn.AdaptiveMaxPool{1,2,3}d."""
        geometry = geometry_of(module)
        if geometry is None:
            raise RmpError(f"{type(module).__name__} is not a max-pooling module")
        return cls(geometry)

    def extra_repr(self) -> str:
        return self.geometry.describe()

    def static_pool(self) -> StaticMaxPool:
        return StaticMaxPool(self.geometry)

    def configure(self, chunk: int, batch: int | None) -> None:
        self.chunk, self.batch = int(chunk), batch

    def reset_state(self) -> None:
        self._fresh = True

    def release(self) -> None:
        self.total = None
        self._fresh = True
        self._index.clear()

    def _windows_of(self, x: Tensor, fill: float) -> tuple[Tensor, tuple[int, ...]]:
        """x [N, C, *spatial] as [N, C, *out, *window] (regular pools: a strided view, copied
        only to pad with `fill`) and the window axes to reduce over."""
        spatial = tuple(x.shape[2:])
        g = self.geometry
        if g.output_size is not None:
            key = (spatial, x.device)
            if key not in self._index:
                index, real, out_shape = g.window_index(spatial)
                self._index[key] = (index.to(x.device), real.to(x.device), out_shape)
            index, real, out_shape = self._index[key]
            windows = x.reshape(*x.shape[:2], -1)[..., index].masked_fill_(~real, fill)
            return windows.view(*x.shape[:2], *out_shape, -1), (-1,)
        plan = g.unfold_plan(spatial)
        pads = [p for left, right, *_ in reversed(plan) for p in (left, right)]
        if any(pads):
            x = F.pad(x, pads, value=fill)
        for axis, (_, _, span, stride, _, out) in enumerate(plan):
            x = x.unfold(2 + axis, span, stride).narrow(2 + axis, 0, out)
        dilations = tuple(d for *_, d, _ in plan)
        if any(d != 1 for d in dilations):
            x = x[(..., *(slice(None, None, d) for d in dilations))]
        return x, tuple(range(-g.dims, 0))

    def forward(self, x: Tensor) -> Tensor:
        dims = self.geometry.dims
        if x.dim() != dims + 2:
            raise RuntimeError(
                f"max-pool gate '{self.name}' expects [N, C, {dims} spatial dims], got "
                f"{tuple(x.shape)}"
            )
        tc = self.chunk
        batch = self.batch if self.batch is not None else x.shape[0] // tc
        if x.shape[0] != tc * batch:
            raise RuntimeError(
                f"max-pool gate '{self.name}': input batch {x.shape[0]} is not Tc*B={tc * batch}"
            )
        frame = (batch, *x.shape[1:])
        dtype = torch.promote_types(x.dtype, torch.float32)
        fmt = memory_format_of(x)
        if (
            self._fresh
            or self.total is None
            or tuple(self.total.shape) != frame
            or self.total.device != x.device
        ):
            self.total = torch.empty(frame, dtype=dtype, device=x.device, memory_format=fmt)
            self.total.zero_()
            self._fresh = False
        # acc[0] = A(t0 - 1) carried over, acc[t + 1] = acc[t] + x(t): the same sequential float
        # additions as one step at a time, whatever the chunk size. Kept in the input's layout.
        steps = x.reshape(tc, *frame)  # splitting the outermost dim is a view in any layout
        acc = torch.empty(
            ((tc + 1) * batch, *x.shape[1:]), dtype=dtype, device=x.device, memory_format=fmt
        ).view(tc + 1, *frame)
        acc[0].copy_(self.total)
        for t in range(tc):
            torch.add(acc[t], steps[t], out=acc[t + 1])
        self.total.copy_(acc[tc])

        # A(t) and x(t) per window offset: strided views [N, C, *out] (a Python loop over the K
        # positions of the kernel, never over windows). Padding holds -inf in A: it never leads.
        held, axes = self._windows_of(acc[1:].view(x.shape), -math.inf)
        current, _ = self._windows_of(x, 0.0)
        offsets = list(itertools.product(*(range(held.shape[a]) for a in axes)))
        top = held[(..., *offsets[0])].clone()
        for offset in offsets[1:]:
            torch.maximum(top, held[(..., *offset)], out=top)
        out = torch.full_like(top, math.inf, dtype=dtype)
        mask = torch.empty_like(top)
        for offset in offsets:
            # Arithmetic instead of masks (comparisons into float and boolean where() are several
            # times slower on CPU): A - top is 0 at a leader and negative elsewhere, so
            # 1/(1 + sign(A - top)) - 1 is 0 at a leader and +inf elsewhere, and x + it is x
            # exactly at a leader. The minimum over the offsets is the tie rule.
            torch.sub(held[(..., *offset)], top, out=mask)
            mask.sign_().add_(1).reciprocal_().sub_(1).add_(current[(..., *offset)])
            torch.minimum(out, mask, out=out)
        return out.to(x.dtype).contiguous(memory_format=fmt)
