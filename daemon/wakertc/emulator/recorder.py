"""`--record DIR`: what reached the "model" and what it said, per call.

`DIR/rtc_<id>/input.wav` holds every decoded audio frame received from the client, in order and
concatenated (gaps in the RTP stream are not filled), as 48 kHz mono 16-bit PCM.
`DIR/rtc_<id>/events.jsonl` has one line per event both ways:
`{"t": <seconds since the call started, monotonic>, "dir": "in"|"out", "event": {...}}`.
A client message that is not a JSON object is recorded as `"raw": "<text>"` instead of `"event"`;
junk sent by the `bad-event` fault as `{"t", "dir": "out", "junk": "<text>"}`.
"""

from __future__ import annotations

import json
import logging
import time
import wave
from pathlib import Path
from typing import IO, Any

from .audio_buffer import Samples

log = logging.getLogger(__name__)

RATE = 48000


class CallRecorder:
    """Writes one call's input audio and event log; every method is a no-op after close()."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        # Both files stay open for the whole call; close() ends them.
        self._wav: wave.Wave_write | None = wave.open(str(directory / "input.wav"), "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(RATE)
        self._events: IO[str] | None = (directory / "events.jsonl").open("w", encoding="utf-8")

    def audio(self, samples: Samples) -> None:
        """Append received int16 mono 48 kHz samples to input.wav."""
        if self._wav is not None:
            self._wav.writeframes(samples.astype("<i2", copy=False).tobytes())

    def event(self, direction: str, event: dict[str, Any]) -> None:
        """Log one event sent ("out") or received ("in")."""
        self._line({"t": self._t(), "dir": direction, "event": event})

    def raw(self, direction: str, text: str) -> None:
        """Log a received message that is not a JSON object."""
        self._line({"t": self._t(), "dir": direction, "raw": text})

    def junk(self, text: str) -> None:
        """Log deliberate junk sent by the bad-event fault."""
        self._line({"t": self._t(), "dir": "out", "junk": text})

    def close(self) -> None:
        """Finish both files (the WAV header gets its final length here)."""
        if self._wav is not None:
            self._wav.close()
            self._wav = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def _t(self) -> float:
        return round(time.monotonic() - self._started, 4)

    def _line(self, record: dict[str, Any]) -> None:
        if self._events is None:
            return
        self._events.write(json.dumps(record, separators=(",", ":")) + "\n")
        # Readers (tests, the demo) look while the call is still up.
        self._events.flush()
