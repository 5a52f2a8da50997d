"""`--record DIR`: what reached the "model", what it said, and when, per call.

`DIR/rtc_<id>/input.wav` holds every decoded audio frame received from the client, in order and
concatenated (gaps in the RTP stream are not filled), as 48 kHz mono 16-bit PCM.
`DIR/rtc_<id>/output.wav` holds every frame the outgoing track handed to the encoder, silence
included, so its sample k left in frame k // 960 (48 kHz mono 16-bit PCM). Under the
`no-idle-audio` fault no frame is handed out between replies, so the file has no gaps for them:
`frames.jsonl` has when each frame left.
`DIR/rtc_<id>/events.jsonl` has one line per event both ways:
`{"t": <seconds since the call started, monotonic>, "dir": "in"|"out", "event": {...}}`.
A client message that is not a JSON object is recorded as `"raw": "<text>"` instead of `"event"`;
junk sent by the `bad-event` fault as `{"t", "dir": "out", "junk": "<text>"}`.
`DIR/rtc_<id>/frames.jsonl` times the audio at the emulator's side of the peer connection (for
latency measurements; `timeline.load_timeline` reads it), one line per frame:
`{"dir": "in", "t", "at", "n", "pts"}` when a decoded frame came out of aiortc's receiver, and
`{"dir": "out", "t", "at", "n"}` when the track handed one out. `t` is absolute
`time.monotonic()` (CLOCK_MONOTONIC: comparable across processes on one machine), `at` the index
of the frame's first sample in input.wav / output.wav, `n` its length, `pts` the received frame's
RTP-derived timestamp (48 kHz units). This file is flushed when the call ends.
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


def _open_wav(path: Path) -> wave.Wave_write:
    wav = wave.open(str(path), "wb")  # noqa: SIM115 (held open for the call, closed in close())
    wav.setnchannels(1)
    wav.setsampwidth(2)
    wav.setframerate(RATE)
    return wav


class CallRecorder:
    """Writes one call's audio both ways, its event log and frame times; no-ops after close()."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        # All files stay open for the whole call; close() ends them.
        self._wav: wave.Wave_write | None = _open_wav(directory / "input.wav")
        self._out_wav: wave.Wave_write | None = _open_wav(directory / "output.wav")
        self._events: IO[str] | None = (directory / "events.jsonl").open("w", encoding="utf-8")
        self._frames: IO[str] | None = (directory / "frames.jsonl").open("w", encoding="utf-8")
        self._received = 0
        self._sent = 0

    def audio(self, samples: Samples, *, arrived: float, pts: int | None) -> None:
        """Append received int16 mono 48 kHz samples to input.wav, with their arrival time."""
        if self._wav is None or self._frames is None:
            return
        self._wav.writeframes(samples.astype("<i2", copy=False).tobytes())
        self._frame(
            {"dir": "in", "t": arrived, "at": self._received, "n": len(samples), "pts": pts}
        )
        self._received += len(samples)

    def sent(self, samples: Samples, handed: float) -> None:
        """Append a frame the outgoing track handed out at monotonic time `handed`."""
        if self._out_wav is None or self._frames is None:
            return
        self._out_wav.writeframes(samples.astype("<i2", copy=False).tobytes())
        self._frame({"dir": "out", "t": handed, "at": self._sent, "n": len(samples)})
        self._sent += len(samples)

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
        """Finish every file (the WAV headers get their final lengths here)."""
        for wav in (self._wav, self._out_wav):
            if wav is not None:
                wav.close()
        self._wav = self._out_wav = None
        for stream in (self._events, self._frames):
            if stream is not None:
                stream.close()
        self._events = self._frames = None

    def _t(self) -> float:
        return round(time.monotonic() - self._started, 4)

    def _frame(self, record: dict[str, Any]) -> None:
        assert self._frames is not None
        # Not flushed per line: 100 lines a second; readers look after the call (close()).
        self._frames.write(json.dumps(record, separators=(",", ":")) + "\n")

    def _line(self, record: dict[str, Any]) -> None:
        if self._events is None:
            return
        self._events.write(json.dumps(record, separators=(",", ":")) + "\n")
        # Readers (tests, the demo) look while the call is still up.
        self._events.flush()
