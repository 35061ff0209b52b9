"""Tensor memory layouts shared by the neurons, their fused kernels, the encoder and pooling."""

from __future__ import annotations

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last for NHWC-strided 4-d tensors (the fast CPU layout), else contiguous."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format
