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
        return _QCFSFunction.apply(x, self.ceiling, self.levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, ceiling={float(self.ceiling.detach()):.4g}"


class _QCFSFunction(torch.autograd.Function):
    """QCFS with a hand-written straight-through backward.

    The same values as composing mul, add, clamp, floor and a detach trick in autograd, but
    about 2.5x faster on the CPU: clamp's autograd backward is a slow masked `where` there, and
    the composition keeps six intermediates alive. With s = x * L / c + 1/2 and k = floor(clamp(
    s, 0, L)), y = k * c / L; floor passes the gradient straight through, so
        dy/dx = [0 < s < L],   dy/dc = k / L - [0 < s < L] * x / c = (y - [0 < s < L] * x) / c.
    """

    @staticmethod
    def forward(ctx, x: Tensor, ceiling: Tensor, levels: int) -> Tensor:  # type: ignore[override]
        y = x * (levels / ceiling)
        y.add_(0.5).clamp_(0.0, float(levels)).floor_()
        y.div_(levels).mul_(ceiling)  # k / L * c: the top level is exactly c
        ctx.levels = levels
        ctx.save_for_backward(x, ceiling, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, ceiling, y = ctx.saved_tensors
        shifted = x * (ctx.levels / ceiling)
        shifted.add_(0.5)
        # hardtanh's backward is the vectorized "grad where min < s < max, else 0".
        grad_x = torch.ops.aten.hardtanh_backward(grad, shifted, 0.0, float(ctx.levels))
        grad_ceiling = None
        if ctx.needs_input_grad[1]:
            # Accumulate in at least float32: a bfloat16 sum over a batch loses the small terms.
            acc = torch.promote_types(x.dtype, torch.float32)
            through = (grad * y).sum(dtype=acc) - (grad_x * x).sum(dtype=acc)
            grad_ceiling = (through / ceiling).to(ceiling.dtype).reshape(ceiling.shape)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_ceiling, None


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
