"""The nonlinearities a model may use; every one becomes an IF neuron at conversion.

Only `make_activation` builds them, so every model gets a fresh module per use (the converter
replaces each instance by its own stateful neuron). The trainable clipping activations expose
`.ceiling`, a scalar nn.Parameter: the converter reads it as the trained firing threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rmp_cli.errors import RmpError

ACTIVATIONS = ("relu", "clip", "qcfs")
# Initial ceiling of the trainable clips (the QCFS reference code starts at 8); training moves it.
DEFAULT_CEILING = 8.0


class ClipReLU(nn.Module):
    """Threshold-ReLU / TCL (Deng & Gu 2021, Ho & Chang 2021): clamp(x, 0, ceiling), ceiling
    trained. Bounding the activation lets the converter use the ceiling as the threshold."""

    is_activation = True  # converter contract: replace this module by an IF neuron

    def __init__(self, ceiling: float = DEFAULT_CEILING) -> None:
        super().__init__()
        self.ceiling = nn.Parameter(torch.tensor(float(ceiling)))

    def forward(self, x: Tensor) -> Tensor:
        # minimum (not clamp) so the ceiling receives the gradient of every clipped element.
        return torch.minimum(x.clamp_min(0.0), self.ceiling)

    def extra_repr(self) -> str:
        return f"ceiling={float(self.ceiling.detach()):.4g}"


class FixedClip(nn.Module):
    """clamp(x, 0, ceiling) with a fixed ceiling: what ReLU6 and hardtanh(x, 0, c) compute. The
    converter puts it in their place, so the ceiling can serve as a threshold (balance=trained)."""

    is_activation = True  # converter contract: replace this module by an IF neuron

    def __init__(self, ceiling: float) -> None:
        super().__init__()
        self.register_buffer("ceiling", torch.tensor(float(ceiling)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.minimum(x.clamp_min(0.0), self.ceiling.to(x.dtype))

    def extra_repr(self) -> str:
        return f"ceiling={float(self.ceiling):.4g}"


class QCFS(nn.Module):
    """Quantization-clip-floor-shift (Bu et al., ICLR 2022):
    y = ceiling * clamp(floor(x * L / ceiling + 1/2) / L, 0, 1), L = `levels`.

    Its L+1 output levels are what an IF neuron with threshold `ceiling` can emit in L steps,
    which is why it converts with little loss at low latency. floor gets a straight-through
    gradient (identity), so both the input and the ceiling are trained.
    """

    is_activation = True  # converter contract: replace this module by an IF neuron

    def __init__(self, levels: int = 8, ceiling: float = DEFAULT_CEILING) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        self.ceiling = nn.Parameter(torch.tensor(float(ceiling)))

    def forward(self, x: Tensor) -> Tensor:
        # Clamping before the floor gives the same values (floor is monotone, 0 and L are
        # integers) but a gradient window that does not depend on how clamp treats its bounds:
        # d/dx = 1 wherever the shifted input lies strictly inside (0, L).
        scaled = torch.clamp(x * (self.levels / self.ceiling) + 0.5, 0.0, float(self.levels))
        # Straight-through floor, as floor + (s - s.detach()) rather than s + (floor - s).detach()
        # so the value is exactly an integer: exactly L+1 output values, not blurred by rounding.
        steps = torch.floor(scaled).detach() + (scaled - scaled.detach())
        return steps / self.levels * self.ceiling  # k / L * c: the top level is exactly c

    def extra_repr(self) -> str:
        return f"levels={self.levels}, ceiling={float(self.ceiling.detach()):.4g}"


def check_levels(levels: object) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise RmpError(
            f"model.act_levels must be a positive integer (QCFS quantization levels L, "
            f"e.g. 8), got {levels!r}"
        )
    return levels


def check_activation(kind: object) -> str:
    if kind not in ACTIVATIONS:
        raise RmpError(
            f"unknown model.activation {kind!r}; choose one of: {', '.join(ACTIVATIONS)}"
        )
    return str(kind)


def make_activation(kind: str, levels: int = 8) -> nn.Module:
    """A NEW activation module of the given kind; `levels` is only used by qcfs."""
    kind = check_activation(kind)
    if kind == "relu":
        return nn.ReLU()
    if kind == "clip":
        return ClipReLU()
    return QCFS(levels=check_levels(levels))
