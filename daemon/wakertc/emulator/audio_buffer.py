"""The input audio buffer: what the client said since the last commit or clear.

Positions are sample indices in the call's whole input stream (48 kHz mono), so VAD events,
`audio_start_ms` / `audio_end_ms` and buffer slices all speak the same unit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.int16]
"""Mono int16 audio."""

RATE = 48000
BYTES_PER_SAMPLE = 2


class InputAudioBuffer:
    """Holds received audio from `base` on, capped to the most recent `max_s` seconds."""

    def __init__(self, *, max_s: float = 120.0) -> None:
        self._data = bytearray()
        self._start = 0  # stream position of _data[0]
        self._max = int(max_s * RATE)
        self.base = 0  # first position not yet committed or cleared
        self.total = 0  # samples received in the whole call

    def append(self, samples: Samples) -> int:
        """Add int16 mono samples; returns the stream position of the first one."""
        position = self.total
        self._data += samples.astype(np.int16).tobytes()
        self.total += len(samples)
        excess = self.total - self._start - self._max
        if excess > RATE * 10:  # trim in large steps, not on every frame
            del self._data[: excess * BYTES_PER_SAMPLE]
            self._start += excess
            self.base = max(self.base, self._start)
        return position

    def slice(self, start: int, end: int) -> Samples:
        """Samples between two stream positions (clipped to what is still held)."""
        start = max(start, self._start)
        end = min(end, self.total)
        if end <= start:
            return np.zeros(0, dtype=np.int16)
        raw = bytes(self._data[(start - self._start) * 2 : (end - self._start) * 2])
        return np.frombuffer(raw, dtype=np.int16).copy()

    def pending_ms(self) -> float:
        """Milliseconds of audio not yet committed or cleared."""
        return (self.total - self.base) * 1000 / RATE

    def commit(self, end: int | None = None) -> tuple[int, int]:
        """Close the buffer at `end` (default: everything); returns the committed span."""
        end = self.total if end is None else min(end, self.total)
        span = (self.base, max(self.base, end))
        self.base = span[1]
        return span

    def discard_before(self, position: int) -> None:
        """Audio before `position` will never be committed (silence ahead of speech)."""
        self.base = max(self.base, min(position, self.total))

    def clear(self) -> None:
        """Drop everything not yet committed."""
        self.base = self.total


def ms(position: int) -> int:
    """A stream position in whole milliseconds."""
    return position * 1000 // RATE
