"""Where every figure is written: atomically, in each of FORMATS, like every other result."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from rmp_cli.runs.atomic import atomic_write

FORMATS = ("png", "pdf")


def save_figure(fig: Figure, path: Path) -> Path:
    """Atomically, like every result: a full disk leaves the previous figure, not half a PNG."""
    ext = path.suffix.lstrip(".")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=ext, dpi=130))
