"""The `jitter` fault: a bad network path for the emulator's outgoing audio.

This machine's kernel has no `netem`, so the emulator plays the path itself: every RTP packet its
reply track sends is delayed by a base delay plus a random jitter (uniform within +-jitter, so
packets overtake each other when their delays differ by more than the 20 ms between them), and a
share of them is dropped. RTCP passes unharmed. Draws come from one seeded generator per call,
so the losses and delays are the same from run to run (only the scheduler's timing varies).

aiortc has no hook between its RTP sender and the wire: the path wraps the sender's DTLS
transport's `_send_rtp` (aiortc's private method, called with the plain RTP packet before SRTP
protects it), on this one transport object only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc.rtp import is_rtcp

log = logging.getLogger(__name__)

PACKET_S = 0.02  # the reply track's packets: 20 ms of Opus each


@dataclass(frozen=True)
class Jitter:
    """How bad the path is."""

    delay_s: float = 0.030
    """Base one-way delay added to every packet."""
    jitter_s: float = 0.020
    """Each packet's delay varies uniformly within +-this around the base (never below 0)."""
    loss: float = 0.01
    """Share of packets dropped (0..1)."""
    seed: int = 15
    """Seed of the per-call generator, for repeatable runs."""
    for_s: float | None = None
    """Bad for the first this many seconds of the call's audio (20 ms packets), then clean;
    None: for the whole call."""


class JitteryPath:
    """Delays, reorders and drops the RTP packets one DTLS transport sends."""

    def __init__(self, transport: Any, jitter: Jitter) -> None:
        self._jitter = jitter
        self._send: Callable[[bytes], Awaitable[None]] = transport._send_rtp
        self._rng = random.Random(jitter.seed)
        self._pending: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.dropped = 0
        self._packets = 0
        self.clean_at: float | None = None
        """The loop's time when the path turned clean (`Jitter.for_s`), if it has."""
        transport._send_rtp = self._send_rtp  # this object only; the class keeps aiortc's

    async def _send_rtp(self, data: bytes) -> None:
        if is_rtcp(data):
            await self._send(data)
            return
        self._packets += 1
        if self._jitter.for_s is not None and self._packets * PACKET_S > self._jitter.for_s:
            if self.clean_at is None:
                self.clean_at = asyncio.get_running_loop().time()
                log.info("jitter path clean after %g s of audio", self._jitter.for_s)
            await self._deliver(data)
            return
        if self._rng.random() < self._jitter.loss:
            self.dropped += 1
            return
        delay = max(0.0, self._jitter.delay_s + self._rng.uniform(-1, 1) * self._jitter.jitter_s)
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def deliver() -> None:
            assert handle is not None
            self._pending.discard(handle)
            task = loop.create_task(self._deliver(data), name="emulator-jitter-send")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        handle = loop.call_later(delay, deliver)
        self._pending.add(handle)

    async def _deliver(self, data: bytes) -> None:
        try:
            await self._send(data)
        except ConnectionError:
            return  # the call closed while the packet was on its way
        self.sent += 1

    async def close(self) -> None:
        """Drop what is still on its way."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
