"""Operation counts: multiply-accumulates of analog layers, true fan-out of spike-fed ones.

A spike reaches every output whose receptive field holds it: fewer at a padded border than
inside, none at a position a strided convolution skips. `FanOut` counts a chunk's synaptic
operations exactly, cheaply: `f_max` x spikes (the neurons count those anyway) minus the deficit
of the border rows and columns, where alone the fan-out is below its maximum. A convolution's
fan-out is the same for every input channel and separable in the spatial dimensions, so the
deficit needs only the spikes of those rows and columns, summed over channels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rmp_cli.snn.network import SYNAPTIC_TYPES, StepwiseLinear


def fan_out_map(layer: nn.Module, frame_shape: Sequence[int]) -> Tensor:
    """True synaptic fan-out of every input element of one image [N] (float64, whole numbers):
    the (output position, output channel) pairs whose receptive field holds it. Taps that fall
    on padding are no synapses. Computed as the gradient of a convolution with all-ones weights."""
    layer = layer.linear if isinstance(layer, StepwiseLinear) else layer
    n = int(torch.tensor(list(frame_shape)).prod())
    if isinstance(layer, nn.Linear):
        return torch.full((n,), float(layer.out_features), dtype=torch.float64)
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.zeros(1, *frame_shape, dtype=torch.float64, requires_grad=True)
        ones = torch.ones(layer.weight.shape, dtype=torch.float64)
        layer._conv_forward(x, ones, None).sum().backward()
    assert x.grad is not None
    return x.grad.reshape(-1).detach()


def _slices(mask: Tensor) -> list[slice]:
    """The True positions of a 1-d mask as few slices: one strided slice when they are evenly
    spaced (a strided convolution's skipped rows), else one per contiguous run."""
    index = mask.nonzero().flatten().tolist()
    if not index:
        return []
    steps = {b - a for a, b in itertools.pairwise(index)}
    if len(steps) <= 1:
        step = steps.pop() if steps else 1
        return [slice(index[0], index[-1] + 1, step)]
    runs, start = [], index[0]
    for a, b in itertools.pairwise(index):
        if b != a + 1:
            runs.append(slice(start, a + 1))
            start = b
    runs.append(slice(start, index[-1] + 1))
    return runs


class FanOut:
    """The fan-out of one spike-fed layer, and its exact synaptic operations per step."""

    def __init__(self, layer: nn.Module, frame_shape: Sequence[int], device: torch.device) -> None:
        fan = fan_out_map(layer, frame_shape)
        self.map = fan
        self.f_max = float(fan.max()) if fan.numel() else 0.0
        self.uniform = bool((fan == self.f_max).all())
        self.rows: list[slice] | None = None
        if self.uniform:
            return
        spatial = fan.view(*frame_shape)[0]  # every input channel reaches as many outputs
        if spatial.dim() != 2 or not bool((fan.view(*frame_shape) == spatial).all()):
            # Not a 2-d convolution: weight every element (slower, still exact).
            self.full = spatial.to(device, torch.float32)
            return
        deficit = self.f_max - spatial  # [H, W], zero inside
        rows = (deficit > 0).any(1)
        cols = (deficit > 0).any(0)
        # Slices, not index lists: gathering rows of a channels_last tensor is slow, views are free.
        self.rows = _slices(rows)
        self.cols = _slices(cols)
        self.other_rows = _slices(~rows)
        self.row_deficits = [deficit[r].to(device, torch.float32) for r in self.rows]
        self.col_deficits = [
            deficit[r][:, c].to(device, torch.float32) for r in self.other_rows for c in self.cols
        ]

    def synops_per_step(
        self, x: Tensor, counts: Tensor, steps: int, sizes: Tensor | None = None
    ) -> Tensor:
        """Synaptic operations [steps] (int64) of a chunk x [steps*B, C, ...] of spikes (or any
        values: a nonzero entry is one event), given its events per step `counts`. `sizes`
        (like x): the events of each entry where one entry may hold several (bursts, signed
        spikes: |spikes|), else one per nonzero entry."""
        if self.uniform:
            return counts * round(self.f_max)
        if self.rows is None:  # general fallback
            grid = torch.ne(x, 0) if sizes is None else sizes
            per_position = grid.sum(1, dtype=torch.float32)
            weighted = (per_position * self.full).flatten(1).sum(1, dtype=torch.float64)
            return weighted.view(steps, -1).sum(1).round().to(torch.int64)
        deficit = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        parts = [(r, slice(None)) for r in self.rows]
        parts += [(r, c) for r in self.other_rows for c in self.cols]
        for (r, c), weights in zip(parts, self.row_deficits + self.col_deficits, strict=True):
            part = torch.ne(x[:, :, r, c], 0) if sizes is None else sizes[:, :, r, c]
            band = part.sum(1, dtype=torch.float32)
            deficit += (band * weights).flatten(1).sum(1, dtype=torch.float64)
        total = counts.to(torch.float64) * self.f_max - deficit.view(steps, -1).sum(1)
        return total.round().to(torch.int64)


class MacCounter:
    """Multiply-accumulates per image of the conv/linear layers of a module, counted by hooks
    during the forward passes inside `with` (output elements x weights per output)."""

    def __init__(self, module: nn.Module) -> None:
        self.layers = [m for m in module.modules() if isinstance(m, SYNAPTIC_TYPES)]
        self.macs = 0.0
        self._handles: list = []

    def _count(self, layer: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        per_image = output.numel() / max(int(output.shape[0]), 1) if output.dim() > 1 else 1.0
        self.macs += per_image * layer.weight[0].numel()

    def __enter__(self) -> MacCounter:
        self._handles = [m.register_forward_hook(self._count) for m in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def synaptic_macs(module: nn.Module, example: Tensor) -> float:
    """MACs per image of one forward pass of `module` on `example` (a batch)."""
    with MacCounter(module) as counter, torch.no_grad():
        module(example)
    return counter.macs


def ann_macs_per_image(ann: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Multiply-accumulates of one ANN forward pass on one image of `input_shape`."""
    first = next(ann.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = ann.training
    ann.eval()
    try:
        return synaptic_macs(ann, torch.zeros(1, *input_shape, device=device))
    finally:
        ann.train(was_training)
