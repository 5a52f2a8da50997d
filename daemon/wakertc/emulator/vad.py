"""Server VAD: an energy detector that honours the session's `turn_detection` settings.

The API's `threshold` (0..1) is mapped linearly onto a level in dBFS (RMS over 10 ms):
0.0 -> -70 dBFS (anything above near-silence is speech), 0.5 -> -40 dBFS (normal speech at a
microphone), 1.0 -> -10 dBFS (only shouting). Speech starts after 30 ms above the level, ends
after `silence_duration_ms` below it (6 dB of hysteresis so word tails do not chop the turn);
`prefix_padding_ms` of audio before the onset belongs to the utterance, as upstream does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio_buffer import Samples

RATE = 48000
CHUNK = RATE // 100  # 10 ms analysis windows
ONSET_CHUNKS = 3
HYSTERESIS_DB = 6.0
# semantic_vad has no energy meaning; its eagerness maps onto a silence duration.
EAGERNESS_SILENCE_MS = {"low": 1200, "medium": 600, "auto": 600, "high": 300}


def threshold_dbfs(threshold: float) -> float:
    """The RMS level (dBFS) a 0..1 `threshold` stands for."""
    return -70.0 + 60.0 * threshold


@dataclass(frozen=True)
class VadSettings:
    """The parts of `turn_detection` that shape detection."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    @classmethod
    def from_turn_detection(cls, turn_detection: dict[str, Any]) -> VadSettings:
        """Settings for an effective `turn_detection` object (server_vad or semantic_vad)."""
        if turn_detection["type"] == "semantic_vad":
            silence = EAGERNESS_SILENCE_MS[turn_detection.get("eagerness") or "auto"]
            return cls(silence_duration_ms=silence)
        return cls(
            threshold=float(turn_detection["threshold"]),
            prefix_padding_ms=int(turn_detection["prefix_padding_ms"]),
            silence_duration_ms=int(turn_detection["silence_duration_ms"]),
        )


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began; positions are sample indices in the call's input stream."""

    onset: int
    start: int  # onset minus the prefix padding


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended after the configured silence."""

    last_voiced: int  # end of the last chunk above the level
    end: int  # where the silence ran out (what upstream reports as audio_end_ms)


VadEvent = SpeechStarted | SpeechStopped


class EnergyVad:
    """Feeds on 48 kHz mono int16 audio; returns speech start/stop events as they happen."""

    def __init__(self, settings: VadSettings, *, floor: int = 0) -> None:
        self.settings = settings
        self._on_db = threshold_dbfs(settings.threshold)
        self._off_db = self._on_db - HYSTERESIS_DB
        self._silence_chunks = max(1, round(settings.silence_duration_ms / 10))
        self._prefix = settings.prefix_padding_ms * RATE // 1000
        self._pending = np.zeros(0, dtype=np.int16)
        self._position = 0  # stream index of the first pending sample
        self._floor = floor  # start positions never reach before this (last commit)
        self._run = 0
        self._run_start = 0
        self._quiet = 0
        self._last_voiced = 0
        self.speaking = False

    def set_floor(self, position: int) -> None:
        """Audio before `position` was already committed; padding must not reach into it."""
        self._floor = position

    def process(self, samples: Samples, position: int) -> list[VadEvent]:
        """Analyse `samples`, whose first sample is stream index `position`."""
        if not len(self._pending):
            self._position = position
        self._pending = np.concatenate((self._pending, samples))
        events: list[VadEvent] = []
        while len(self._pending) >= CHUNK:
            chunk, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            start = self._position
            self._position += CHUNK
            event = self._step(_level_db(chunk), start, self._position)
            if event is not None:
                events.append(event)
        return events

    def silence(self, position: int) -> SpeechStopped | None:
        """The input went quiet without frames (no RTP): end the turn if speech was on."""
        if not self.speaking:
            return None
        self.speaking = False
        self._run = self._quiet = 0
        return SpeechStopped(last_voiced=self._last_voiced, end=position)

    def _step(self, level: float, start: int, end: int) -> VadEvent | None:
        if self.speaking:
            if level >= self._off_db:
                self._quiet = 0
                self._last_voiced = end
                return None
            self._quiet += 1
            if self._quiet >= self._silence_chunks:
                self.speaking = False
                self._run = self._quiet = 0
                return SpeechStopped(last_voiced=self._last_voiced, end=end)
            return None
        if level < self._on_db:
            self._run = 0
            return None
        if self._run == 0:
            self._run_start = start
        self._run += 1
        if self._run < ONSET_CHUNKS:
            return None
        self.speaking = True
        self._quiet = 0
        self._last_voiced = end
        onset = self._run_start
        return SpeechStarted(onset=onset, start=max(self._floor, onset - self._prefix))


def _level_db(chunk: Samples) -> float:
    rms = float(np.sqrt(np.mean(np.square(chunk.astype(np.float32)))))
    return 20.0 * float(np.log10(max(rms, 1e-3) / 32768.0))
