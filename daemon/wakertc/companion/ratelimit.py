"""Token buckets: per device and global limits on key minting."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    """`rate_per_minute` tokens per minute, bursts up to the same number."""

    def __init__(
        self, rate_per_minute: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = float(rate_per_minute)
        self._per_second = rate_per_minute / 60.0
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def take(self) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self._per_second)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._per_second

    def give_back(self) -> None:
        """Return a token taken for a request that was refused elsewhere."""
        self._tokens = min(self.capacity, self._tokens + 1.0)


class RateLimiter:
    """A bucket per device plus one shared bucket; `check` returns seconds to wait (0 = go)."""

    def __init__(
        self,
        per_device_per_minute: int,
        global_per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_device = per_device_per_minute
        self._clock = clock
        self._global = TokenBucket(global_per_minute, clock=clock)
        self._devices: dict[str, TokenBucket] = {}

    def check(self, device: str) -> int:
        """Whole seconds until `device` may mint again (0 means it may now, and is counted)."""
        bucket = self._devices.get(device)
        if bucket is None:
            bucket = self._devices[device] = TokenBucket(self._per_device, clock=self._clock)
        wait = bucket.take()
        if wait:
            return max(1, math.ceil(wait))
        wait = self._global.take()
        if wait:
            bucket.give_back()  # the device did not get to use it
            return max(1, math.ceil(wait))
        return 0
