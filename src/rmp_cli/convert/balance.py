"""Threshold balancing: one threshold per neuron layer (or per channel) from calibration images.

max_act     max ANN activation of the layer (Diehl et al. 2015).
percentile  p-th percentile of ALL the layer's ANN activations (Rueckauer et al. 2017), defined as
            the ceil(p/100 * N)-th smallest of the N values (numpy's "inverted_cdf"); exact, and
            independent of batch size and order: a radix selection over the float bit patterns,
            three histogram passes of 11/11/10 bits, memory bounded by the histograms.
spike_norm  Sengupta et al. 2019: layer by layer in execution order, earlier layers spiking at
            their final thresholds, theta_l = max over images and time-steps of neuron l's per-step
            input current (conv path + shortcut at a residual junction). Calibration neurons use
            `calib_reset` (hard, as Sengupta) and v_init = 0; each pass stops after layer l.
rmp         spike_norm calibrated with SOFT-reset neurons (RMP-SNN), times `scale`.
mse         Li et al. 2021: per layer (or channel) the threshold, among `grid` candidates
            theta = k/grid * max_act, that minimises the squared error between the ANN activation
            and its T-step clip-floor approximation theta/T * clamp(floor(a*T/theta + shift), 0, T)
            (shift = v_init: 0.5 models the half-threshold start). k = grid is max_act itself, so
            the result is never worse than max_act in this objective.
trained     the ceilings of trained clipping activations (ClipReLU, QCFS).
Every method multiplies by `scale` at the end. A threshold that comes out <= 0 (a channel or layer
that never activated on the calibration set) falls back to the layer's threshold, else 1.0.
The spike-count readout's threshold (`net.output_threshold`) is the max ANN logit, unscaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn

from rmp_cli.convert.canonical import canonicalize
from rmp_cli.errors import RmpError
from rmp_cli.snn.network import SpikingNet
from rmp_cli.snn.neurons import RESETS
from rmp_cli.snn.simulator import ChunkedRun, StopForward, check_positive_int

BALANCE_METHODS = ("max_act", "percentile", "mse", "spike_norm", "rmp", "trained")
MSE_GRID = 100  # candidate thresholds per layer/channel: 1/100 .. 100/100 of max_act
_RADIX_WIDTHS = (11, 11, 10)  # 32 bits of a float32 key, most significant first


# --- helpers -------------------------------------------------------------------------------------
def _batches(calib_images: Tensor | Iterable[Any], batch_size: int) -> list[Tensor]:
    """Calibration images as a list of batches (materialised: several passes are needed)."""
    if isinstance(calib_images, Tensor):
        out = list(calib_images.split(batch_size))
    else:
        out = [b[0] if isinstance(b, (tuple, list)) else b for b in calib_images]
    out = [b for b in out if isinstance(b, Tensor) and b.shape[0] > 0]
    if not out:
        raise RmpError("no calibration images: threshold balancing needs at least one image")
    return out


def _reduce_max(x: Tensor, per_channel: bool) -> Tensor:
    if not per_channel or x.dim() < 2:
        return x.max()
    return x.transpose(0, 1).reshape(x.shape[1], -1).max(1).values


def _per_channel_values(x: Tensor, per_channel: bool) -> Tensor:
    """[C, M] view of a layer output (C = 1 for one threshold per layer)."""
    if not per_channel or x.dim() < 2:
        return x.reshape(1, -1)
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _positive(theta: Tensor) -> Tensor:
    """Fallback for layers/channels that never activated: layer max, else 1.0."""
    theta = theta.float()
    if theta.dim() == 0:
        return theta if theta > 0 else torch.ones_like(theta)
    layer = theta.max()
    fill = layer if layer > 0 else torch.ones_like(layer)
    return torch.where(theta > 0, theta, fill)


def _has_module(root: nn.Module, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


class _AnnProbe:
    """Forward hooks on the ANN's activations named like the SNN's neurons."""

    def __init__(self, ann: nn.Module, names: Sequence[str]) -> None:
        if not all(_has_module(ann, n) for n in names):
            ann = canonicalize(ann)  # activations written as functions or called at several places
        self.ann = ann
        try:
            self.modules = [ann.get_submodule(n) for n in names]
        except AttributeError as exc:
            raise RmpError(
                f"the ANN has no layer matching a spiking neuron ({exc}); balance with "
                f"the ANN the SpikingNet was converted from"
            ) from exc
        first = next(ann.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")

    @torch.no_grad()
    def run(self, batches: list[Tensor], on_activation: Callable[[int, Tensor], None]) -> float:
        """Forward every batch, calling on_activation(layer, output); returns the max logit."""
        was_training = self.ann.training
        self.ann.eval()
        handles = [
            m.register_forward_hook(lambda _m, _i, out, i=i: on_activation(i, out))
            for i, m in enumerate(self.modules)
        ]
        top = -math.inf
        try:
            for x in batches:
                logits = self.ann(x.to(self.device, torch.float32))
                top = max(top, float(logits.max()))
        finally:
            for h in handles:
                h.remove()
            self.ann.train(was_training)
        return top


# --- data-based methods --------------------------------------------------------------------------
def max_activations(
    probe: _AnnProbe, batches: list[Tensor], per_channel: bool
) -> tuple[list[Tensor], float]:
    maxima: list[Tensor | None] = [None] * len(probe.modules)

    def record(i: int, out: Tensor) -> None:
        m = _reduce_max(out.float(), per_channel)
        maxima[i] = m if maxima[i] is None else torch.maximum(maxima[i], m)

    top = probe.run(batches, record)
    return [m.cpu() for m in maxima], top


def _float_keys(values: Tensor) -> Tensor:
    """Order-preserving map float32 -> int64 in [0, 2^32)."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits + 2**31, -1 - bits)


def _key_to_float(keys: Tensor) -> Tensor:
    bits = torch.where(keys >= 2**31, keys - 2**31, -1 - keys).to(torch.int32)
    return bits.view(torch.float32)


def rank_for_percentile(p: float, n: int) -> int:
    """1-based rank of the p-th percentile among n values: ceil(p/100 * n), exact decimal p."""
    k = math.ceil(Fraction(repr(float(p))) * n / 100)
    return min(max(k, 1), n)


def check_percentile(p: float) -> float:
    p = float(p)
    if not (math.isfinite(p) and 0.0 < p <= 100.0):
        raise RmpError(f"percentile must be in (0, 100], got {p}")
    return p


def percentile_activations(
    probe: _AnnProbe, batches: list[Tensor], p: float, per_channel: bool
) -> tuple[list[Tensor], float]:
    """Exact p-th percentile per layer/channel by radix selection over several ANN passes."""
    layers = len(probe.modules)
    prefix: list[Tensor | None] = [None] * layers  # selected high bits so far, per channel
    remaining: list[Tensor | None] = [None] * layers  # rank still to find inside the prefix
    done_bits = 0
    top = -math.inf
    for width in _RADIX_WIDTHS:
        shift = 32 - done_bits - width
        hist: list[Tensor | None] = [None] * layers

        def record(
            i: int, out: Tensor, shift: int = shift, width: int = width, hist: list = hist
        ) -> None:
            keys = _float_keys(_per_channel_values(out.float(), per_channel))
            channels = keys.shape[0]
            digit = (keys >> shift) & ((1 << width) - 1)
            index = digit + torch.arange(channels, device=keys.device)[:, None] * (1 << width)
            if prefix[i] is not None:
                match = (keys >> (shift + width)) == prefix[i].to(keys.device)[:, None]
                index = index[match]
            counts = torch.bincount(index.reshape(-1), minlength=channels << width)
            hist[i] = counts if hist[i] is None else hist[i] + counts

        top = max(top, probe.run(batches, record))
        for i in range(layers):
            counts = hist[i].view(-1, 1 << width).cpu()
            if remaining[i] is None:  # first pass: N per channel is known now
                totals = counts.sum(1).tolist()
                remaining[i] = torch.tensor([rank_for_percentile(p, n) for n in totals])
                prefix[i] = torch.zeros(counts.shape[0], dtype=torch.int64)
            below = counts.cumsum(1)
            digit = (below < remaining[i][:, None]).sum(1)
            below_digit = torch.where(
                digit > 0, below.gather(1, (digit - 1).clamp(min=0)[:, None])[:, 0], 0
            )
            remaining[i] = remaining[i] - below_digit
            prefix[i] = (prefix[i] << width) | digit
        done_bits += width
    values = [_key_to_float(pref) for pref in prefix]
    return [v if per_channel else v[0] for v in values], top


def clip_floor(a: Tensor, theta: Tensor, timesteps: int, shift: float) -> Tensor:
    """What an IF neuron with threshold theta can emit in T steps: theta/T * {0, 1, ..., T}.
    `theta` broadcasts against `a` (a scalar, or [C, 1] against [C, M] values)."""
    levels = torch.clamp(torch.floor(a * (timesteps / theta) + shift), 0, timesteps)
    return levels * (theta / timesteps)


def mse_errors(values: Tensor, candidates: Tensor, timesteps: int, shift: float) -> Tensor:
    """[C, K] summed squared error of [C, M] activations against each of K thresholds per channel."""
    return torch.stack(
        [
            (values - clip_floor(values, candidates[:, k : k + 1], timesteps, shift))
            .square()
            .sum(1, dtype=torch.float64)
            for k in range(candidates.shape[1])
        ],
        dim=1,
    )


def mse_activations(
    probe: _AnnProbe,
    batches: list[Tensor],
    *,
    timesteps: int,
    shift: float,
    per_channel: bool,
    grid: int = MSE_GRID,
) -> tuple[list[Tensor], float]:
    """Grid search of the clip-floor MSE threshold, two ANN passes (max, then the errors)."""
    maxima, top = max_activations(probe, batches, per_channel)
    fractions = torch.arange(1, grid + 1, dtype=torch.float32) / grid
    candidates = [_positive(m).reshape(-1, 1) * fractions for m in maxima]  # [C, K]
    errors: list[Tensor | None] = [None] * len(maxima)

    def record(i: int, out: Tensor) -> None:
        values = _per_channel_values(out.float(), per_channel)
        err = mse_errors(values, candidates[i].to(values.device), timesteps, shift).cpu()
        errors[i] = err if errors[i] is None else errors[i] + err

    probe.run(batches, record)
    best = []
    for i, err in enumerate(errors):
        # Ties (e.g. a layer that never fires) go to the largest candidate: max_act itself.
        flipped = err.flip(1).argmin(1)
        index = candidates[i].shape[1] - 1 - flipped
        theta = candidates[i].gather(1, index[:, None])[:, 0]
        best.append(theta if per_channel else theta[0])
    return best, top


# --- simulation-based methods --------------------------------------------------------------------
def spike_norm_thresholds(
    net: SpikingNet,
    batches: list[Tensor],
    *,
    timesteps: int,
    reset: str,
    per_channel: bool,
    device: str,
    chunk: int | str,
    encoding: str = "direct",
    poisson_scale: float = 1.0,
    seed: int = 0,
    progress: Callable[..., Any] | None = None,
) -> list[Tensor]:
    """Layer-by-layer max input current with earlier layers spiking at their final thresholds."""
    saved_reset, saved_v_init = net.reset_mode, net.v_init
    net.reset_mode, net.v_init = reset, 0.0
    found: list[Tensor] = []
    try:
        with (
            torch.inference_mode(),
            ChunkedRun(
                net,
                encoding=encoding,
                poisson_scale=poisson_scale,
                chunk=chunk,
                device=device,
                seed=seed,
                count_spikes=False,
                count_synops=False,
            ) as run,
        ):
            for layer, neuron in enumerate(net.neurons):
                peak: list[Tensor | None] = [None]

                def probe(_m: nn.Module, inputs: tuple[Tensor, ...], peak: list = peak) -> None:
                    if run.dry:  # the auto-chunk sizing step is not calibration data
                        raise StopForward
                    m = _reduce_max(inputs[0], per_channel)
                    peak[0] = m if peak[0] is None else torch.maximum(peak[0], m)
                    raise StopForward

                handle = neuron.register_forward_pre_hook(probe)
                try:
                    for batch_index, x in enumerate(batches):
                        for _ in run.chunks(x, timesteps, batch_index):
                            pass
                finally:
                    handle.remove()
                theta = _positive(peak[0].float().cpu())
                found.append(theta)
                neuron.set_threshold(theta.clone())  # final for the layers after it
                if progress is not None:
                    progress(layer + 1)
    finally:
        net.reset_mode, net.v_init = saved_reset, saved_v_init
    return found


# --- the entry point -----------------------------------------------------------------------------
def balance_thresholds(
    net: SpikingNet,
    ann: nn.Module,
    calib_images: Tensor | Iterable[Any],
    *,
    method: str,
    scale: float = 1.0,
    percentile: float = 99.99,
    timesteps: int = 256,
    calib_reset: str = "hard",
    per_channel: bool = False,
    device: str = "cpu",
    chunk: int | str = 16,
    progress: Callable[..., Any] | None = None,
    batch_size: int = 256,
    encoding: str = "direct",
    poisson_scale: float = 1.0,
    seed: int = 0,
    shift: float = 0.0,
) -> list[Tensor]:
    """Compute thresholds with `method`, multiply by `scale`, set them on `net`, return them."""
    if method not in BALANCE_METHODS:
        raise RmpError(
            f"unknown balance method '{method}'; choose one of: {', '.join(BALANCE_METHODS)}"
        )
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise RmpError(f"balance scale must be positive, got {scale}")
    if method == "percentile":
        check_percentile(percentile)
    if method in ("spike_norm", "rmp", "mse"):
        check_positive_int("balance timesteps", timesteps)
        if calib_reset not in RESETS:
            raise RmpError(
                f"unknown calib_reset '{calib_reset}'; choose one of: {', '.join(RESETS)}"
            )
    batches = _batches(calib_images, check_positive_int("batch_size", batch_size))
    probe = _AnnProbe(ann, net.neuron_names)
    if method == "max_act":
        raw, top = max_activations(probe, batches, per_channel)
    elif method == "percentile":
        raw, top = percentile_activations(probe, batches, percentile, per_channel)
    elif method == "mse":
        raw, top = mse_activations(
            probe, batches, timesteps=timesteps, shift=shift, per_channel=per_channel
        )
    elif method == "trained":
        missing = [name for name, n in net.named_neurons() if n.ceiling is None]
        if missing:
            raise RmpError(
                f"balance method 'trained' needs trained clipping activations (ClipReLU, "
                f"QCFS); layer '{missing[0]}' was a plain ReLU"
            )
        raw = [n.ceiling.reshape(()) if n.ceiling.numel() == 1 else n.ceiling for n in net.neurons]
        top = probe.run(batches, lambda _i, _out: None)
    else:
        reset = "soft" if method == "rmp" else calib_reset
        raw = spike_norm_thresholds(
            net,
            batches,
            timesteps=timesteps,
            reset=reset,
            per_channel=per_channel,
            device=device,
            chunk=chunk,
            encoding=encoding,
            poisson_scale=poisson_scale,
            seed=seed,
            progress=progress,
        )
        top = probe.run(batches, lambda _i, _out: None)
    thresholds = [_positive(t.detach().cpu()) * scale for t in raw]
    net.thresholds = thresholds
    net.output_threshold = top if top > 0 else None
    return net.thresholds
