"""Keep large freed blocks in the heap on glibc (CPU only).

glibc hands every freed block above its mmap threshold (at most 32 MB) straight back to the OS,
so each chunk's fresh conv output is mmapped again and page-faulted in, zero-filled: on 2 cores
that doubled the simulation time. Raising the mmap and trim thresholds lets freed blocks be
reused (the trade-off: the process keeps its peak heap). No effect on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def keep_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Idempotent; returns True when glibc accepted the settings."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Older glibc caps the threshold at 32 MB: still far better than the dynamic default.
    ok = (
        mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    )
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    ok = mallopt(_M_TOP_PAD, 64 << 20) == 1 and ok
    _done = ok
    return ok
