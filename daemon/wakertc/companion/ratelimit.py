"""Token buckets in the store: per device and global limits on key minting, one set of buckets
for every companion process on the same store.

Each device has a bucket of `per_device_per_minute` tokens and all devices share one of
`global_per_minute`; both refill at their per-minute rate and hold at most that many (a burst).
A mint takes one token from both in one store transaction, or from neither: refused by the
global bucket, a device keeps its own token. The buckets live in the store's `rate_buckets`
table, so two companions behind one address on one PostgreSQL enforce one limit together.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

from .store import GLOBAL_BUCKET


class RateLimiter:
    """A bucket per device plus one shared bucket; `check` returns seconds to wait (0 = go)."""

    def __init__(
        self,
        store: Store,
        per_device_per_minute: int,
        global_per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` is wall-clock time: the processes sharing the buckets share no other clock."""
        self._store = store
        self._per_device = per_device_per_minute
        self._global = global_per_minute
        self._clock = clock

    async def check(self, device: str) -> int:
        """Whole seconds until `device` may mint again (0 means it may now, and is counted)."""
        wait = await self._store.take_tokens(
            [(f"device:{device}", self._per_device), (GLOBAL_BUCKET, self._global)], self._clock()
        )
        return max(1, math.ceil(wait)) if wait else 0
