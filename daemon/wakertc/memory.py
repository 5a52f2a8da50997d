"""Keeping a long-running daemon's memory flat on a small board (glibc only; no-ops elsewhere).

Python returns freed objects to glibc's malloc, which keeps the pages for reuse; after a
conversation (WebRTC, Opus, resamplers) that can leave tens of MB resident while the daemon only
listens for its wake word again. Fewer malloc arenas and an explicit trim keep idle memory where it
started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas (each audio/WebRTC thread would otherwise get one)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Collect reference cycles (a call's codec contexts hold native threads and buffers until
    they are collected), then give memory that malloc holds but does not use back to the system."""
    gc.collect()
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
