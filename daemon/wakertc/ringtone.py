"""The ring of a timer or alarm: a phase listener that repeats a sound while the phase is RINGING.

It only reacts to phases, as the LEDs and cues do: entering `ringing` starts a named task that
queues the ring, waits for it to play and a short pause, and queues it again; leaving `ringing`
cancels that task and silences what is still queued. Register it before the cues, so that the cue
of the phase that follows (a wake chime) is not silenced with the ring.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from .config import TimersConfig
from .sounds import RATE, load_bundled, load_wav
from .state import Phase, Transition

log = logging.getLogger(__name__)

PAUSE_S = 0.6  # between repetitions: a ring, a breath, a ring

Samples = NDArray[np.int16]


class RingTone:
    """Plays the ring over and over while the phase is RINGING."""

    def __init__(
        self,
        config: TimersConfig,
        play: Callable[[Samples], None],
        clear: Callable[[], None],
    ) -> None:
        path = config.ring_sound
        samples = load_bundled("ring") if path is None else load_wav(path, key="timers.ring_sound")
        volume = min(max(config.ring_volume, 0.0), 1.0)
        self.samples = np.round(samples.astype(np.float32) * volume).astype(np.int16)
        self._play = play
        self._clear = clear
        self._task: asyncio.Task[None] | None = None
        self.rings = 0
        """How many times the sound was queued (all ringing so far)."""

    def __call__(self, change: Transition) -> None:
        """Phase listener: start ringing on entering RINGING, stop on leaving it."""
        if change.new is Phase.RINGING:
            self._stop()
            self._task = asyncio.get_running_loop().create_task(self._repeat(), name="ringtone")
        elif change.old is Phase.RINGING:
            self._stop()
            self._clear()

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _repeat(self) -> None:
        length = len(self.samples) / RATE
        while True:
            try:
                self._play(self.samples)
                self.rings += 1
            except Exception as exc:
                # No speaker (a lost device): the LEDs still ring; try again next round.
                log.warning("could not play the ring: %s", exc)
            await asyncio.sleep(length + PAUSE_S)
