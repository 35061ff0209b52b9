"""The simulator: one pass to T_max per batch, scored at every requested T from the running readout.

Layer by layer over time chunks: each stateless layer runs once per chunk on a flat [Tc*B, ...]
batch, neurons loop over the Tc steps and carry their membrane to the next chunk (memory flat in
T). With direct input the layers before the first neuron run once per batch.

Exactness: every step performs the same float32 operations as a plain step-by-step simulation, and
the readout is accumulated sequentially, so results do not depend on the chunk size as long as the
backend's conv/linear kernels give each image the same result whatever the batch size (true on
CPU for flat batches of 2 or more; a single image at Tc=1 may take a different kernel path).
Layer diagnostics (a LayerProbe) end chunks at every requested T: on CPU that changes nothing;
where kernels depend on the batch shape (CUDA, single-image batches) the last bits may differ
from a run without them, as with any other chunk size.

Counts (all per requested T, summed over images; exact integers, so shards merge exactly):
  correct   images whose label ranks < k in the readout (ties: lower class index first, as argmax)
  spikes    spikes emitted by every neuron layer (and by the readout neuron for readout="spikes")
  synops    sum over synaptic layers fed by spikes of their nonzero input entries, each times its
            true fan-out (the outputs it reaches: fewer at a padded border, `fan_out_map`). The
            first layer under direct input is analog, computed once per batch, and not counted
            (its multiply-accumulates are `analog_macs`); a pooled entry fed by several spikes
            counts once. A burst of k spikes, or a negative spike, is |k| operations per synapse
            (a pooled entry: ceil(|value| / theta), one for a nonzero average of plain spikes).
Pre-steps (presteps=K, offset=cos|srp): every batch first runs K steps whose readout is
discarded; the neurons then apply the offset rule (neurons.py) and the counted T starts afresh.
The latency paid is K + T, and the spikes and synaptic operations of the K pre-steps are added
to those of every T: they are energy spent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rmp_cli.errors import RmpError
from rmp_cli.snn.allocator import keep_freed_memory
from rmp_cli.snn.encoding import batch_generator, check_encoding, poisson_spikes
from rmp_cli.snn.network import ExecutionPlan, SpikingNet
from rmp_cli.snn.neurons import IFNeuron, check_offset, count_per_step, sum_per_step
from rmp_cli.snn.opcount import FanOut, MacCounter
from rmp_cli.snn.probes import LayerProbe, LayerStats

READOUTS = ("potential", "spikes")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class StopForward(Exception):
    """Raised by a hook to end a chunk's forward early (threshold calibration stops at layer l)."""


# --- results -------------------------------------------------------------------------------------
@dataclass
class SimResult:
    timesteps: list[int]
    num_images: int
    correct: dict[int, list[int]]  # k -> correct top-k count per T
    spikes_per_layer: dict[str, list[int]]  # layer -> total spikes over all images, per T
    synops: list[float]  # synaptic operations over all images, per T
    seconds: float = 0.0
    num_classes: int = 0
    analog_macs_per_image: float = 0.0  # the direct-input layers, run once per image
    layers: LayerStats | None = None  # per-layer diagnostics (simulate(layer_stats=True))
    # [nT, num_images] int16: each image's predicted class at each T, in the order simulated
    predictions: Tensor | None = None
    presteps: int = 0  # K pre-steps ran before the counted T (their counts are included)

    def _index(self, t: int) -> int:
        try:
            return self.timesteps.index(int(t))
        except ValueError:
            raise RmpError(f"T={t} was not simulated; simulated: {self.timesteps}") from None

    def accuracy(self, t: int, k: int = 1) -> float:
        if k not in self.correct:
            raise RmpError(f"top-{k} was not scored; scored: {sorted(self.correct)}")
        return self.correct[k][self._index(t)] / max(self.num_images, 1)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per T: accuracy, top5 (None unless scored), spikes/synops per image."""
        n = max(self.num_images, 1)
        rows = []
        for i, t in enumerate(self.timesteps):
            spikes = sum(v[i] for v in self.spikes_per_layer.values())
            rows.append(
                {
                    "timesteps": t,
                    "presteps": self.presteps,
                    "accuracy": self.correct[1][i] / n if 1 in self.correct else None,
                    "top5": self.correct[5][i] / n if 5 in self.correct else None,
                    "spikes_per_image": spikes / n,
                    "synops_per_image": self.synops[i] / n,
                    "analog_macs_per_image": self.analog_macs_per_image,
                }
            )
        return rows

    def merge(self, other: SimResult) -> SimResult:
        """Counts of two disjoint image sets (shards, ranks) added; seconds add up too."""
        if (
            other.timesteps != self.timesteps
            or set(other.correct) != set(self.correct)
            or list(other.spikes_per_layer) != list(self.spikes_per_layer)
            or (self.layers is None) != (other.layers is None)
            or self.presteps != other.presteps
        ):
            raise RmpError(
                "cannot merge simulation results with different time-steps, top-k or layers"
            )
        return SimResult(
            timesteps=list(self.timesteps),
            num_images=self.num_images + other.num_images,
            correct={k: _add(v, other.correct[k]) for k, v in self.correct.items()},
            spikes_per_layer={
                name: _add(v, other.spikes_per_layer[name])
                for name, v in self.spikes_per_layer.items()
            },
            synops=_add(self.synops, other.synops),
            seconds=self.seconds + other.seconds,
            num_classes=max(self.num_classes, other.num_classes),
            analog_macs_per_image=max(self.analog_macs_per_image, other.analog_macs_per_image),
            layers=(
                self.layers.merge(other.layers)
                if self.layers is not None and other.layers is not None
                else None
            ),
            predictions=(
                torch.cat([self.predictions, other.predictions], dim=1)
                if self.predictions is not None and other.predictions is not None
                else None
            ),
            presteps=self.presteps,
        )


def _add(a: list, b: list) -> list:
    return [x + y for x, y in zip(a, b, strict=True)]


@dataclass
class BatchTrace:
    """Everything one batch produced; tensors stay on the simulation device."""

    timesteps: list[int]
    potentials: Tensor  # [nT, B, K] accumulated output-layer potential at each requested T
    spike_counts: Tensor | None  # [nT, B, K] readout-neuron spike counts (readout="spikes")
    layer_spikes: Tensor  # [L, T_max] spikes per step per neuron layer (summed over the batch)
    layer_events: Tensor  # [S, T_max] synaptic operations per step per spike-fed synaptic layer
    pre_spikes: Tensor | None = None  # [L] spikes of the pre-steps per neuron layer
    pre_events: Tensor | None = None  # [S] synaptic operations of the pre-steps


# --- argument checks -----------------------------------------------------------------------------
def check_timesteps(timesteps: Sequence[int]) -> list[int]:
    if isinstance(timesteps, int) or not isinstance(timesteps, Iterable):
        raise RmpError(f"timesteps must be a list of positive integers, got {timesteps!r}")
    values = list(timesteps)
    if not values:
        raise RmpError("timesteps is empty; give at least one positive integer, e.g. [32, 64]")
    for t in values:
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise RmpError(f"time-steps must be positive integers, got {t!r}")
    return sorted(set(values))


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RmpError(f"{name} must be a positive integer, got {value!r}")
    return value


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RmpError(f"unknown device '{device}'; use cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RmpError("device=cuda requested but CUDA is not available; use device=cpu")
    return dev


# --- the chunked runner --------------------------------------------------------------------------
# "auto" chunk: as many steps as keep the largest per-chunk activation near this many bytes.
# Measured: on 2 CPU cores a small CNN ran within 5% from 64 to 256 MB (and 15-25% faster than
# Tc=1); on an H100 (fp32) VGG-16 ran 29k image-steps/s at 128 MB (B=256, Tc=2) but 20k at
# 1 GB (cuDNN picks FFT convolutions for large batches); a small CNN was within 3% of its best.
AUTO_CHUNK_BYTES = {"cpu": 128 << 20, "cuda": 128 << 20}
AUTO_CHUNK_MAX = {"cpu": 32, "cuda": 128}


class ChunkedRun:
    """Drives a SpikingNet over batches of images, chunk by chunk. Use as a context manager.

    chunk: steps per layer call, or "auto" (sized from the net's largest activation per image).
    channels_last: NHWC layout for 4-d activations (None = on CPU, where oneDNN convolutions and
    pooling are faster in it). It changes float rounding in the last bit, deterministically.
    allow_tf32: let CUDA convolutions/matmuls round inputs to TF32 (faster, less exact).
    precision: fp32 (exact float32 network) | bf16 | fp16: synaptic currents (convolutions,
    linear layers) under autocast in that format; spikes (0/1) are exact in it, weights and
    currents are rounded (fp16: 11-bit, bf16: 8-bit significand), membranes stay float32.
    presteps, offset: K pre-steps per batch, then the offset rule ("cos" | "srp"; neurons.py)."""

    def __init__(
        self,
        net: SpikingNet,
        *,
        encoding: str = "direct",
        poisson_scale: float = 1.0,
        chunk: int | str = 16,
        device: torch.device | str = "cpu",
        seed: int = 0,
        count_spikes: bool = True,
        count_synops: bool = True,
        channels_last: bool | None = None,
        allow_tf32: bool = False,
        precision: str = "fp32",
        probe: LayerProbe | None = None,
        presteps: int = 0,
        offset: str | None = None,
    ) -> None:
        self.net = net
        self.offset = check_offset(offset, presteps)
        self.presteps = presteps
        if precision not in PRECISIONS:
            raise RmpError(
                f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}"
            )
        self.precision = precision
        self.encoding = check_encoding(encoding, poisson_scale)
        self.poisson_scale = float(poisson_scale)
        self.auto_chunk = chunk == "auto"
        self.chunk = 1 if self.auto_chunk else check_positive_int("chunk", chunk)
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.count_spikes = count_spikes
        if self.device.type == "cpu":
            keep_freed_memory()
        self.plan: ExecutionPlan = net.plan(spiking_input=self.encoding == "poisson")
        # Global state changed below is restored by close().
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        net.to(self.device, memory_format=self.memory_format)
        # cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later: 4-5x faster,
        # but no longer the float32 network. Off unless asked for.
        self._tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        for n in net.neurons:
            n.count_spikes = count_spikes
        self.synaptic = self.plan.spike_fed if count_synops else []
        self.fan_outs: list[FanOut | None] = [None] * len(self.synaptic)  # set on first use
        # Bursts and signed spikes: an entry holds |value| / theta events of its source neuron.
        self.sources = (
            [net.spike_source(name) for name, _ in self.synaptic]
            if any(not n.plain for n in net.neurons)
            else [None] * len(self.synaptic)
        )
        self.analog_macs: float | None = None  # per image, of the layers run once (direct input)
        self._hooks = [
            m.register_forward_hook(self._synops_hook(i)) for i, (_, m) in enumerate(self.synaptic)
        ]
        # Layer diagnostics: chunks then end at the probe's time-steps, where it reads membranes.
        self.probe = probe
        if probe is not None:
            probe.attach()
        self._events: Tensor | None = None
        self._t0 = self._tc = self._batch = 0
        self.dry = False  # True during the auto-chunk sizing step: hooks must not record it

    def _size_chunk(self, x: Tensor) -> None:
        """ "auto": one dry step on one image gives every neuron layer's size per image; chunks
        then keep the largest activation near AUTO_CHUNK_BYTES. Sized once, before the first
        batch, so every batch (and every run) uses the same chunk shapes."""
        net, plan, one = self.net, self.plan, x[:1]
        self.dry = True
        try:
            net.reset_state()
            net.configure(1, 1, plan)
            if self.encoding == "poisson":
                gen = torch.Generator(device=self.device).manual_seed(0)
                inputs: tuple[Tensor, ...] = (poisson_spikes(one, 1, self.poisson_scale, gen),)
            else:
                inputs = plan.run_stem(one)
            plan.body(*inputs)
        except StopForward:
            pass
        finally:
            self.dry = False
        largest = max(
            (n.v[0].numel() * n.v.element_size() for n in net.neurons if n.v is not None),
            default=1,
        )
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        steps = AUTO_CHUNK_BYTES[kind] // (largest * x.shape[0])
        self.chunk = int(min(max(steps, 1), AUTO_CHUNK_MAX[kind]))
        self.auto_chunk = False

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def __enter__(self) -> ChunkedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.probe is not None:
            self.probe.detach()
        self.net.release()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self._tf32
        if self.channels_last:
            self.net.to(memory_format=torch.contiguous_format)

    def _synops_hook(self, index: int) -> Callable[..., None]:
        neurons = self.net.neurons

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if self.dry:
                return
            x = inputs[0]
            fan = self.fan_outs[index]
            if fan is None:
                fan = self.fan_outs[index] = FanOut(module, x.shape[1:], x.device)
            counts = next(
                (
                    n.last_counts
                    for n in neurons
                    if n.last_output is x and n.last_counts is not None
                ),
                None,
            )
            source, sizes = self.sources[index], None
            if source is not None and not source.plain:
                sizes = event_sizes(x, source.threshold)
                if counts is None:
                    counts = sum_per_step(sizes.view(self._tc, self._batch, *x.shape[1:]))
            if counts is None:  # input is pooled/reshaped spikes: count it here
                nonzero = torch.ne(x, 0, out=torch.empty_like(x))
                counts = count_per_step(nonzero.view(self._tc, self._batch, *x.shape[1:]))
            counts = fan.synops_per_step(x, counts, self._tc, sizes)
            assert self._events is not None
            self._events[index, self._t0 : self._t0 + self._tc] += counts

        return hook

    def chunks(
        self, x: Tensor, t_max: int, batch_index: int = 0
    ) -> Iterator[tuple[int, int, Tensor | None]]:
        """Run one batch of images for t_max steps; yield (t0, tc, output currents [tc, B, K]),
        output None when a hook stopped the chunk early. Spike/event counts land in
        `self.layer_spikes` / `self.layer_events` ([*, t_max]). With a probe, chunks also end at
        its time-steps (results do not depend on where chunks end; see the module docstring)."""
        x = x.to(self.device, torch.float32, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        if self.auto_chunk:
            self._size_chunk(x)
        batch = x.shape[0]
        net, plan = self.net, self.plan
        net.reset_state()
        # Where kernels may pick their algorithm by batch size (CUDA, single images on CPU), the
        # last chunk is run at full length and the extra steps discarded: every T then sees the
        # same chunk shapes, so a run to T_max scores each T exactly as a run to T would.
        pad = self.device.type == "cuda" or batch == 1
        probe = self.probe
        stops = [t for t in probe.timesteps if t <= t_max] if probe is not None else []
        if stops and stops[-1] != t_max:
            stops.append(t_max)
        k = self.presteps
        room = k + t_max + self.chunk
        spikes = torch.zeros(len(net.neurons), room, dtype=torch.int64, device=self.device)
        self._events = torch.zeros(len(self.synaptic), room, dtype=torch.int64, device=self.device)
        self.layer_spikes, self.layer_events = spikes[:, k : k + t_max], self._events[:, k:]
        self.layer_events = self.layer_events[:, :t_max]
        self.pre_spikes, self.pre_events = spikes[:, :k].sum(1), self._events[:, :k].sum(1)
        spiking_input = self.encoding == "poisson"
        if spiking_input:
            gen = batch_generator(self.seed, batch_index, self.device)
            scale = self.poisson_scale
        else:
            # Analog layers before the first neuron: once per batch (their MACs counted once).
            counter = MacCounter(plan.stem) if self.analog_macs is None and plan.stem else None
            with self._autocast(), counter or contextlib.nullcontext():
                constants = plan.run_stem(x)
            if counter is not None:
                self.analog_macs = counter.macs
        net.clear_offsets()
        if k:
            gen_or_none = gen if spiking_input else None
            self._presteps(x, constants if not spiking_input else None, gen_or_none, spikes)
        if probe is not None:
            # The ANN activations of this batch, once; the analog pass shares the synaptic layers,
            # whose counting hooks must not see it.
            self.dry = True
            try:
                probe.begin(x)
            finally:
                self.dry = False
        t0 = 0
        while t0 < t_max:
            tc = self.chunk if pad else min(self.chunk, t_max - t0)
            if stops:
                tc = min(tc, next(t for t in stops if t > t0) - t0)
            self._t0, self._tc, self._batch = k + t0, tc, batch
            net.configure(tc, batch, plan)
            for n in net.neurons:
                n.last_output = n.last_counts = None
            inputs = (poisson_spikes(x, tc, scale, gen),) if spiking_input else constants
            try:
                with self._autocast():
                    out = plan.body(*inputs)
            except StopForward:
                out = None
            if self.count_spikes:
                for i, n in enumerate(net.neurons):
                    if n.last_counts is not None:
                        spikes[i, k + t0 : k + t0 + tc] += n.last_counts
            if probe is not None and out is not None:
                probe.record(t0 + tc)
            valid = min(tc, t_max - t0)
            if out is not None:
                out = out.reshape(tc, batch, *out.shape[1:])[:valid]
            yield t0, valid, out
            t0 += tc
        if probe is not None:
            probe.end()

    def _presteps(
        self, x: Tensor, constants: tuple[Tensor, ...] | None, gen: Any, spikes: Tensor
    ) -> None:
        """K steps whose output is discarded (counted as spikes and operations in columns
        [0, K)), then the offset rule and a fresh state for the counted steps. The chunks end
        at K exactly, so the calibration never depends on the chunk or T."""
        net, plan, batch, k = self.net, self.plan, x.shape[0], self.presteps
        for n in net.neurons:
            n.tally_presteps = True
        try:
            t0 = 0
            while t0 < k:
                tc = min(self.chunk, k - t0)
                self._t0, self._tc, self._batch = t0, tc, batch
                net.configure(tc, batch, plan)
                for n in net.neurons:
                    n.last_output = n.last_counts = None
                if constants is None:
                    inputs: tuple[Tensor, ...] = (poisson_spikes(x, tc, self.poisson_scale, gen),)
                else:
                    inputs = constants
                with self._autocast():
                    plan.body(*inputs)
                if self.count_spikes:
                    for i, n in enumerate(net.neurons):
                        if n.last_counts is not None:
                            spikes[i, t0 : t0 + tc] += n.last_counts
                t0 += tc
        finally:
            for n in net.neurons:
                n.tally_presteps = False
        assert self.offset is not None
        net.calibrate(self.offset)
        self.pre_spikes = spikes[:, :k].sum(1)
        assert self._events is not None
        self.pre_events = self._events[:, :k].sum(1)


def event_sizes(x: Tensor, theta: Tensor) -> Tensor:
    """The events each entry of a burst or signed spike map carries: ceil(|x| / theta), so k for
    a burst of k (or k negative spikes) and, as for plain spikes, one for any nonzero pooled
    average of fewer than theta (x: the source neuron's output, pooled or flattened; theta one
    per layer or per channel). The margin absorbs the rounding of x / theta."""
    size = x.abs()
    if theta.dim() == 0:
        size.div_(theta)
    elif x.dim() > 1 and x.shape[1] == theta.numel():
        size.div_(theta.view(-1, *([1] * (x.dim() - 2))))
    else:  # flattened [N, C*...] features of a per-channel layer: channel-major (logical order)
        size = size.reshape(x.shape[0], theta.numel(), -1).div_(theta.view(-1, 1)).view(x.shape)
    return size.sub_(_SIZE_MARGIN).ceil_().clamp_(min=0)


_SIZE_MARGIN = 1e-4  # far above float32 rounding, far below 1 / (largest pooling window)


# --- scoring -------------------------------------------------------------------------------------
def label_rank(scores: Tensor, labels: Tensor, tiebreak: Tensor | None = None) -> Tensor:
    """Rank of the true class (0 = predicted) in scores [..., B, K]; ties go to the secondary
    score `tiebreak`, then to the lower class index (the rule of torch.argmax)."""
    y = labels.view(*([1] * (scores.dim() - 2)), -1, 1).expand(*scores.shape[:-1], 1)
    own = scores.gather(-1, y)
    above = scores > own
    tied = scores == own
    if tiebreak is not None:
        own2 = tiebreak.gather(-1, y)
        above = above | (tied & (tiebreak > own2))
        tied = tied & (tiebreak == own2)
    index = torch.arange(scores.shape[-1], device=scores.device)
    return (above | (tied & (index < y))).sum(-1)


def predicted_class(scores: Tensor, tiebreak: Tensor | None = None) -> Tensor:
    """The class of rank 0 under label_rank's rule: highest score, ties to the higher
    `tiebreak`, then to the lower class index (so predicted == label exactly when rank == 0)."""
    if tiebreak is None:
        return scores.argmax(-1)  # the first maximal index
    top = scores == scores.amax(-1, keepdim=True)
    floor = torch.finfo(tiebreak.dtype).min
    return torch.where(top, tiebreak, torch.full_like(tiebreak, floor)).argmax(-1)


def run_batch(
    run: ChunkedRun,
    x: Tensor,
    timesteps: Sequence[int],
    *,
    readout: str = "potential",
    batch_index: int = 0,
) -> BatchTrace:
    """Simulate one batch to max(timesteps); readout state at each requested T."""
    wanted = check_timesteps(timesteps)
    t_max = wanted[-1]
    net = run.net
    batch = x.shape[0]
    acc = counts = readout_neuron = None
    potentials: list[Tensor] = []
    spike_counts: list[Tensor] = []
    readout_spikes = torch.zeros(t_max, dtype=torch.int64, device=run.device)
    if readout == "spikes":
        theta = net.output_threshold if net.output_threshold else 1.0
        readout_neuron = IFNeuron(theta, reset=net.reset_mode, v_init=net.v_init).to(run.device)
        readout_neuron.name = "readout"
    next_i = 0
    for t0, tc, out in run.chunks(x, t_max, batch_index):
        assert out is not None
        if acc is None:
            acc = torch.zeros_like(out[0], dtype=torch.float32)
        if readout_neuron is not None:
            readout_neuron.configure(tc, batch)
            fired = readout_neuron(out.reshape(tc * batch, -1)).view(tc, batch, -1) != 0
            readout_spikes[t0 : t0 + tc] = fired.view(tc, -1).sum(1)
            if counts is None:
                counts = torch.zeros_like(out[0], dtype=torch.int32)
        for i in range(tc):
            acc.add_(out[i])  # sequential float32 sum: identical for every chunking
            if counts is not None:
                counts.add_(fired[i])
            if next_i < len(wanted) and t0 + i + 1 == wanted[next_i]:
                potentials.append(acc.clone())
                if counts is not None:
                    spike_counts.append(counts.clone())
                next_i += 1
    layer_spikes = run.layer_spikes
    if readout_neuron is not None:
        layer_spikes = torch.cat([layer_spikes, readout_spikes[None]])
    return BatchTrace(
        timesteps=wanted,
        potentials=torch.stack(potentials),
        spike_counts=torch.stack(spike_counts) if spike_counts else None,
        layer_spikes=layer_spikes,
        layer_events=run.layer_events,
        pre_spikes=run.pre_spikes if run.presteps else None,
        pre_events=run.pre_events if run.presteps else None,
    )


# --- the entry point -----------------------------------------------------------------------------
def simulate(
    net: SpikingNet,
    batches: Iterable[tuple[Tensor, Tensor]],
    timesteps: Sequence[int],
    *,
    encoding: str = "direct",
    poisson_scale: float = 1.0,
    chunk: int | str = 16,
    device: str | torch.device = "cpu",
    seed: int = 0,
    readout: str = "potential",
    topk: Sequence[int] = (1, 5),
    count_synops: bool = True,
    progress: Callable[[int], Any] | None = None,
    channels_last: bool | None = None,
    allow_tf32: bool = False,
    precision: str = "fp32",
    layer_stats: bool = False,
    presteps: int = 0,
    offset: str | None = None,
) -> SimResult:
    """Simulate `net` on (images, labels) batches ONCE to max(timesteps) and score every T.

    top-k with k > 1 is scored only when the net has more than 10 classes. `progress(images_done)`
    is called after each batch. `layer_stats`: per-layer diagnostics at every T in
    `SimResult.layers` (see probes.py). `presteps` K with `offset` cos|srp: K pre-steps per
    batch before the counted T (see the module docstring). Prints nothing."""
    wanted = check_timesteps(timesteps)
    if readout not in READOUTS:
        raise RmpError(f"unknown readout '{readout}'; choose one of: {', '.join(READOUTS)}")
    ks = sorted({check_positive_int("top-k", k) for k in topk} | {1})
    tic = time.perf_counter()
    num_images, num_classes = 0, 0
    pre_spikes: Tensor | int = 0
    pre_events: Tensor | int = 0
    correct: Tensor | None = None
    spikes_total: Tensor | None = None
    events_total: Tensor | None = None
    probe = LayerProbe(net, wanted) if layer_stats else None
    predictions: list[Tensor] = []
    with (
        torch.inference_mode(),
        ChunkedRun(
            net,
            encoding=encoding,
            poisson_scale=poisson_scale,
            chunk=chunk,
            device=device,
            seed=seed,
            count_synops=count_synops,
            channels_last=channels_last,
            allow_tf32=allow_tf32,
            precision=precision,
            probe=probe,
            presteps=presteps,
            offset=offset,
        ) as run,
    ):
        for batch_index, (x, y) in enumerate(batches):
            if x.shape[0] == 0:
                continue
            trace = run_batch(run, x, wanted, readout=readout, batch_index=batch_index)
            labels = y.to(run.device).long()
            num_classes = trace.potentials.shape[-1]
            if correct is None:
                ks = [k for k in ks if k == 1 or (num_classes > 10 and k <= num_classes)]
                correct = torch.zeros(len(ks), len(wanted), dtype=torch.int64, device=run.device)
                spikes_total = torch.zeros_like(trace.layer_spikes)
                events_total = torch.zeros_like(trace.layer_events)
            if trace.spike_counts is not None:
                rank = label_rank(trace.spike_counts, labels, tiebreak=trace.potentials)
                predicted = predicted_class(trace.spike_counts, tiebreak=trace.potentials)
            else:
                rank = label_rank(trace.potentials, labels)
                predicted = predicted_class(trace.potentials)
            predictions.append(predicted.to(torch.int16).cpu())
            for j, k in enumerate(ks):
                correct[j] += (rank < k).sum(-1)
            spikes_total += trace.layer_spikes
            events_total += trace.layer_events
            if trace.pre_spikes is not None and trace.pre_events is not None:
                pre_spikes = pre_spikes + trace.pre_spikes
                pre_events = pre_events + trace.pre_events
            num_images += x.shape[0]
            if progress is not None:
                progress(num_images)
        analog_macs = run.analog_macs or 0.0
    names = list(net.neuron_names) + (["readout"] if readout == "spikes" else [])
    index = torch.tensor([t - 1 for t in wanted])
    if correct is None:  # no images: zero counts
        ks = [1]
        correct = torch.zeros(1, len(wanted), dtype=torch.int64)
        spikes_total = torch.zeros(len(names), wanted[-1], dtype=torch.int64)
        events_total = torch.zeros(len(run.synaptic), wanted[-1], dtype=torch.int64)
    spikes_at = spikes_total.cpu().cumsum(1)[:, index]
    synops_at = events_total.cpu().sum(0).cumsum(0)[index]
    if isinstance(pre_spikes, Tensor) and isinstance(pre_events, Tensor):
        # the pre-steps' spikes and operations are spent at every T (readout neuron: none)
        pre = pre_spikes.cpu()
        spikes_at[: pre.numel()] += pre[:, None]
        synops_at = synops_at + pre_events.cpu().sum()
    synops = synops_at.tolist()
    return SimResult(
        timesteps=wanted,
        num_images=num_images,
        correct={k: correct[j].cpu().tolist() for j, k in enumerate(ks)},
        spikes_per_layer={name: spikes_at[i].tolist() for i, name in enumerate(names)},
        synops=[float(s) for s in synops],
        seconds=time.perf_counter() - tic,
        num_classes=num_classes,
        analog_macs_per_image=analog_macs,
        layers=probe.stats() if probe is not None else None,
        predictions=(
            torch.cat(predictions, dim=1)
            if predictions
            else torch.zeros(len(wanted), 0, dtype=torch.int16)
        ),
        presteps=presteps,
    )
