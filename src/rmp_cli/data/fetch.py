"""Downloads through torchvision, with every failure turned into one actionable line."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from rmp_cli.errors import RmpError

log = logging.getLogger(__name__)


def download(name: str, target: Path, fetch: Callable[[str], object], how_to: str) -> None:
    """Call ``fetch(str(target))``; `how_to` says how to place the files by hand if it fails."""
    log.info("downloading %s into %s", name, target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        fetch(str(target))
    except (
        Exception
    ) as exc:  # network, checksum and disk errors all leave the user the same choices
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RmpError(f"downloading {name} into {target} failed ({reason}); {how_to}") from None
