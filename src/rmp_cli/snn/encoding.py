"""Input encodings: how an image becomes the network's input at each time-step.

direct:  the analog image every step (the layers before the first neuron then see a constant
         input, so the simulator computes them once per batch).
poisson: seeded, sign-preserving rate coding: a pixel x fires with probability
         p = clamp(|x| / scale, 0, 1) and a spike carries sign(x) * scale, so E[input] = x
         whenever |x| <= scale (the caller passes the largest |normalised pixel| as scale).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rmp_cli.errors import RmpError
from rmp_cli.snn.layout import memory_format_of

ENCODINGS = ("direct", "poisson")


def check_encoding(encoding: str, poisson_scale: float = 1.0) -> str:
    if encoding not in ENCODINGS:
        raise RmpError(f"unknown encoding '{encoding}'; choose one of: {', '.join(ENCODINGS)}")
    if encoding == "poisson" and not float(poisson_scale) > 0:
        raise RmpError(f"poisson scale must be positive, got {poisson_scale}")
    return encoding


def poisson_spikes(x: Tensor, steps: int, scale: float, generator: torch.Generator) -> Tensor:
    """`steps` time-steps of Poisson spikes for images x [B, ...], flat time-major [steps*B, ...]
    in x's memory format. One draw per step, so the spike train does not depend on chunking."""
    batch = x.shape[0]
    prob = (x.abs() / scale).clamp_(0.0, 1.0)
    value = torch.sign(x) * scale
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.empty(
        (steps * batch, *x.shape[1:]),
        dtype=x.dtype,
        device=x.device,
        memory_format=memory_format_of(x),
    )
    draw = torch.empty_like(x)
    for t in range(steps):
        draw.uniform_(generator=generator)
        torch.where(draw < prob, value, zero, out=out[t * batch : (t + 1) * batch])
    return out


def batch_generator(seed: int, batch_index: int, device: torch.device | str) -> torch.Generator:
    """A generator per batch of images: the spike train of a batch depends only on (seed, batch),
    not on T_max or on earlier batches, so a run to T scores as a prefix of a run to T_max."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 0x9E3779B1 + int(batch_index)) % (2**63))
    return gen
