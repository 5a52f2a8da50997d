"""Acoustic echo cancellation: keep the device from hearing its own voice.

WebRTC's AEC3 (through livekit's `AudioProcessingModule`) subtracts what the speaker played
from what the microphone captured. The playback thread feeds the reference (`render`), the loop
thread cleans the capture (`capture`); both in 10 ms frames at 16 kHz. It runs only during
conversations, when the speaker can talk: idle listening for the wake word stays as cheap as a
bare wake-word loop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .audio import CAPTURE_RATE

log = logging.getLogger(__name__)

CHUNK = CAPTURE_RATE // 100  # 10 ms, what the module processes at a time


class EchoCanceller:
    """AEC3 + high-pass on 16 kHz mono int16 audio.

    No noise suppression here: the Realtime API's own `noise_reduction` does that server-side,
    and suppressing twice only costs words.
    """

    def __init__(self, stream_delay_ms: int = 60) -> None:
        # Imported here: the module costs ~35 MB and 0.4 s, and the daemon only needs it once a
        # conversation starts.
        from livekit.rtc import AudioFrame, AudioProcessingModule

        self._frame_type: Any = AudioFrame
        self._apm = AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self._delay_ms = stream_delay_ms
        self._lock = threading.Lock()
        self._render_rest = np.zeros(0, dtype=np.int16)

    def render(self, samples: NDArray[np.int16]) -> None:
        """Feed what was just handed to the speaker (any thread)."""
        samples = (
            np.concatenate([self._render_rest, samples]) if self._render_rest.size else samples
        )
        whole = len(samples) - len(samples) % CHUNK
        with self._lock:
            for start in range(0, whole, CHUNK):
                frame = self._frame(samples[start : start + CHUNK])
                self._apm.process_reverse_stream(frame)
        self._render_rest = samples[whole:].copy()

    def capture(self, samples: NDArray[np.int16]) -> NDArray[np.int16]:
        """Return `samples` (a multiple of 10 ms) with the speaker's echo removed."""
        out = np.empty_like(samples)
        with self._lock:
            for start in range(0, len(samples) - len(samples) % CHUNK, CHUNK):
                frame = self._frame(samples[start : start + CHUNK])
                self._apm.set_stream_delay_ms(self._delay_ms)
                self._apm.process_stream(frame)
                out[start : start + CHUNK] = np.frombuffer(frame.data, dtype=np.int16)
        return out

    def _frame(self, samples: NDArray[np.int16]) -> Any:
        return self._frame_type(bytearray(samples.tobytes()), CAPTURE_RATE, 1, len(samples))


def make_echo_canceller(enabled: bool) -> EchoCanceller | None:
    """An echo canceller when enabled and it loads; None otherwise, and the caller falls back
    to half-duplex (the warning says so).

    Any failure counts, not only ImportError: livekit's native library can be missing, built
    for another machine or need a newer glibc (OSError from the loader, raised at import by some
    versions, wrapped in ImportError at first use by others), or fail in its own set-up.
    """
    if not enabled:
        return None
    try:
        return EchoCanceller()
    except Exception as exc:
        reason = " ".join(str(exc).split())  # livekit's messages span lines; the log's must not
        log.warning(
            "echo cancellation unavailable (%s: %s); falling back to half-duplex: the "
            "microphone is closed while the device speaks",
            type(exc).__name__,
            reason,
        )
        return None
