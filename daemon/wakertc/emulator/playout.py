"""The emulator's outgoing audio track: reply audio, paced in real time, silence in between.

Nothing in the API promises that silence: with `idle_audio=False` (the `no-idle-audio` fault)
the track hands out no frame at all while nothing is queued, so no RTP flows between replies (and
none in a transcription session); when a reply comes, its frames carry the wall-clock timestamps
they would have had, so the RTP timestamps jump over the gap as a discontinuous sender's do.

Responses queue their audio under their id; the track tells its listener when a response's first
frame leaves (`output_audio_buffer.started`) and when its last one has (`...stopped`). `clear()`
drops everything queued at once, which is what `output_audio_buffer.clear` and barge-in need.
`on_frame`, when set (the recorder's, the sideband's), is given each frame's samples and the
monotonic time it was handed out; unset it costs one attribute check per frame. `frame_audible`
tells whether that frame carried reply audio.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from .audio_buffer import Samples

log = logging.getLogger(__name__)

RATE = 48000
FRAME = RATE // 50  # 20 ms, the WebRTC packetisation the API uses
TIME_BASE = fractions.Fraction(1, RATE)


class PlayoutListener(Protocol):
    """Told when a response's audio starts and stops leaving the track."""

    def playout_started(self, response_id: str) -> None:
        """The first frame of `response_id` was handed to the encoder."""

    def playout_stopped(self, response_id: str) -> None:
        """The last frame of `response_id` was handed to the encoder."""


class ReplyTrack(MediaStreamTrack):
    """48 kHz mono, 20 ms frames, real-time paced; silence when nothing is queued."""

    kind = "audio"

    def __init__(self, *, idle_audio: bool = True) -> None:
        super().__init__()
        self._idle_audio = idle_audio
        self._fed = asyncio.Event()
        self.listener: PlayoutListener | None = None
        self.on_frame: Callable[[Samples, float], None] | None = None
        self._segments: collections.deque[tuple[str, Samples]] = collections.deque()
        self._finished: set[str] = set()
        self._playing: set[str] = set()  # started and not yet stopped
        self._seen: set[str] = set()
        self._start: float | None = None
        self._pts = 0
        self.sent_frames = 0
        self.frame_audible = False  # the last frame carried reply audio (not only idle silence)

    def feed(self, response_id: str, samples: Samples) -> None:
        """Queue int16 mono 48 kHz audio for a response."""
        if len(samples):
            self._segments.append((response_id, samples.astype(np.int16, copy=False)))
            self._fed.set()

    def finish(self, response_id: str) -> None:
        """No more audio will come for `response_id`; it stops once its queue drains."""
        self._finished.add(response_id)
        if response_id in self._playing and not self._queued(response_id):
            self._playing.discard(response_id)
            self._notify_stopped(response_id)

    def clear(self) -> list[str]:
        """Drop all queued audio; returns the responses whose audio was cut (in order)."""
        cut = list(dict.fromkeys([*self._playing, *(rid for rid, _ in self._segments)]))
        self._segments.clear()
        self._playing.clear()
        self._finished.update(cut)
        return cut

    def buffered_ms(self, response_id: str | None = None) -> float:
        """Milliseconds queued (for one response, or all)."""
        samples = sum(len(a) for rid, a in self._segments if response_id in (None, rid))
        return samples * 1000 / RATE

    def is_playing(self, response_id: str) -> bool:
        """Whether this response's audio has started and not yet stopped."""
        return response_id in self._playing or (
            response_id not in self._finished and self._queued(response_id)
        )

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, at real-time pace."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            wait = self._start + self._pts / RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        if not self._idle_audio and not self._segments:
            await self._wait_for_audio(loop.time)
        samples, started, stopped = self._next_samples()
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += FRAME
        self.sent_frames += 1
        if self.on_frame is not None:
            self.on_frame(samples, time.monotonic())
        for response_id in started:
            self._notify(response_id, started=True)
        for response_id in stopped:
            self._notify_stopped(response_id)
        return frame

    async def _wait_for_audio(self, clock: Callable[[], float]) -> None:
        """Hand out nothing until audio is queued, then resume on the wall clock (no burst)."""
        while not self._segments:
            self._fed.clear()
            await self._fed.wait()
        assert self._start is not None
        elapsed = int((clock() - self._start) * RATE) // FRAME * FRAME
        self._pts = max(self._pts, elapsed)

    def _next_samples(self) -> tuple[Samples, list[str], list[str]]:
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        started: list[str] = []
        stopped: list[str] = []
        while filled < FRAME and self._segments:
            response_id, audio = self._segments[0]
            if response_id not in self._seen:
                self._seen.add(response_id)
                self._playing.add(response_id)
                started.append(response_id)
            take = min(FRAME - filled, len(audio))
            out[filled : filled + take] = audio[:take]
            filled += take
            if take < len(audio):
                self._segments[0] = (response_id, audio[take:])
                continue
            self._segments.popleft()
            if response_id in self._finished and not self._queued(response_id):
                self._playing.discard(response_id)
                stopped.append(response_id)
        self.frame_audible = filled > 0
        return out, started, stopped

    def _queued(self, response_id: str) -> bool:
        return any(rid == response_id for rid, _ in self._segments)

    def _notify_stopped(self, response_id: str) -> None:
        self._notify(response_id, started=False)

    def _notify(self, response_id: str, *, started: bool) -> None:
        listener = self.listener
        if listener is None:
            return
        try:
            if started:
                listener.playout_started(response_id)
            else:
                listener.playout_stopped(response_id)
        except Exception:
            # The sender task calls recv(); an error here must not end the audio stream.
            log.exception("playout listener failed for %s", response_id)
