"""Acoustic echo cancellation: keep the device from hearing its own voice.

WebRTC's AEC3 (through livekit's `AudioProcessingModule`) subtracts what the speaker played
from what the microphone captured. The playback thread feeds the reference (`render`), the loop
thread cleans the capture (`capture`); both in 10 ms frames at 16 kHz. It runs only during
conversations, when the speaker can talk: idle listening for the wake word stays as cheap as a
bare wake-word loop.

AEC3 has to learn the room (the delay from speaker to microphone, then the echo path) from the
device's own voice, and while it learns it lets bursts of echo through: measured on the loopback
rig, 30 dB under the echo at 1.0-1.6 s into the first reply after start-up, loud enough for a
server-side VAD to take for the user. So until it has heard `LEARN_S` of that voice, `may_leak`
tells the caller to keep the capture out of the session while the speaker plays (as half-duplex
does), and only then trusts the canceller alone. Meanwhile the wake word hears the raw
microphone: while it learns, AEC3 also ducks the user's voice under the speaker's, so far that
"Hey Jarvis" said over the first reply went unheard (tests/test_conversation.py). The
canceller is made once per daemon: it learns once (again after an audio device change), not
in every conversation.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .audio import CAPTURE_RATE

log = logging.getLogger(__name__)

CHUNK = CAPTURE_RATE // 100  # 10 ms, what the module processes at a time

# How much of the device's own voice AEC3 must hear before it is trusted alone. Measured on the
# pulse rig (tests/test_e2e_pulse.py): leaks end ~1.7 s into the first reply, ~1.3 s of which
# are voiced; 2.5 s leaves room for a slower machine and a livelier room.
LEARN_S = 2.5
# A 10 ms reference chunk louder than this (RMS, dBFS) counts as voice heard.
VOICED_DBFS = -50.0
_VOICED_RMS = 32768 * 10 ** (VOICED_DBFS / 20)
# How long after the speaker's last voiced chunk its echo can still arrive: the reference is
# fed as blocks are written, ahead of the sound by the output buffer; then the room, the input
# buffer and the hand-off to the loop.
ECHO_TAIL_S = 0.4


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
        # Written by the playback thread only (in `render`), read on the loop: single floats,
        # and a read one frame stale costs nothing.
        self._heard_s = 0.0  # voiced reference seen so far
        self._last_voiced = -1e9  # monotonic time of the last voiced reference chunk
        self.learned = False

    def relearn(self) -> None:
        """Another audio device: until it has heard enough of it, `may_leak` is true again."""
        self._heard_s = 0.0
        self.learned = False

    def may_leak(self) -> bool:
        """True while the canceller is still learning the room and the speaker has just played:
        what `capture` returns may carry bursts of the device's own voice."""
        if self.learned:
            return False
        if self._heard_s >= LEARN_S:
            self.learned = True
            log.info(
                "echo canceller has learned the room (%.1f s of the device's voice)", self._heard_s
            )
            return False
        return time.monotonic() - self._last_voiced < ECHO_TAIL_S

    def render(self, samples: NDArray[np.int16]) -> None:
        """Feed what was just handed to the speaker (any thread)."""
        samples = (
            np.concatenate([self._render_rest, samples]) if self._render_rest.size else samples
        )
        whole = len(samples) - len(samples) % CHUNK
        voiced = 0
        with self._lock:
            for start in range(0, whole, CHUNK):
                chunk = samples[start : start + CHUNK]
                self._apm.process_reverse_stream(self._frame(chunk))
                if np.sqrt(np.mean(np.square(chunk, dtype=np.float64))) > _VOICED_RMS:
                    voiced += 1
        self._render_rest = samples[whole:].copy()
        if voiced:
            self._heard_s += voiced * CHUNK / CAPTURE_RATE
            self._last_voiced = time.monotonic()

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
