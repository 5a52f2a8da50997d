#!/usr/bin/env python3
"""Synthesise the bundled cue sounds (daemon/wakertc/sounds/*.wav).

    python scripts/make_sounds.py [OUTPUT_DIR]

Deterministic: the same code writes byte-identical files, so the committed WAVs can be checked
against this script (tests/test_sounds.py does). Each cue is 24 kHz mono int16 and at most 0.5 s:
short enough not to delay the conversation, with fades at both ends so speakers do not click.
The timer ring (`ring.wav`, repeated while ringing) is longer, 0.9 s: two quick pairs of beeps.

It also writes `question.wav`, the spoken question `wakertc selftest` says into a call (a device has
no speech synthesiser): espeak-ng at the microphone's 16 kHz, mono int16. That one is only as
reproducible as the installed espeak-ng, and is skipped when espeak-ng is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

RATE = 24000
QUESTION_RATE = 16000  # the microphone's rate (wakertc.audio.CAPTURE_RATE): sent as it is
QUESTION_TEXT = "Hello, can you hear me?"
QUESTION_PEAK = 0.7  # a voice at a normal level, well clear of the server's speech threshold
PEAK = 0.5  # -6 dBFS: audible over a room, leaves headroom for `sounds.volume` and output gain
FADE_S = 0.02
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "daemon" / "wakertc" / "sounds"

# Equal-tempered note frequencies (Hz) used below.
A4, C5, E5, G5, B5, C6, E6 = 440.0, 523.25, 659.26, 783.99, 987.77, 1046.50, 1318.51
EB4 = 311.13


def _tone(
    freq: Callable[[np.ndarray], np.ndarray] | float,
    length_s: float,
    decay_s: float,
    harmonics: tuple[float, ...] = (1.0, 0.25, 0.08),
) -> np.ndarray:
    """One bell-like note: a few harmonics, quick attack, exponential decay, faded tail."""
    t = np.arange(int(length_s * RATE)) / RATE
    inst = freq(t) if callable(freq) else np.full_like(t, freq)
    phase = 2 * np.pi * np.cumsum(inst) / RATE  # integrate so glides stay continuous
    wave_ = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))
    envelope = np.exp(-t / decay_s)
    attack = min(len(t), int(0.006 * RATE))
    envelope[:attack] *= np.linspace(0.0, 1.0, attack)
    return np.asarray(wave_ * envelope, dtype=np.float64)


def _sequence(notes: list[tuple[float, np.ndarray]], total_s: float) -> np.ndarray:
    """Mix notes starting at the given offsets (s) into one clip, faded at both ends."""
    out = np.zeros(int(total_s * RATE))
    for start_s, note in notes:
        start = int(start_s * RATE)
        end = min(len(out), start + len(note))
        out[start:end] += note[: end - start]
    fade = int(FADE_S * RATE)
    out[:fade] *= np.linspace(0.0, 1.0, fade)
    out[-fade:] *= 0.5 * (1 + np.cos(np.linspace(0.0, np.pi, fade)))
    return out


def _glide(start_hz: float, end_hz: float, length_s: float) -> Callable[[np.ndarray], np.ndarray]:
    """A frequency that slides geometrically (evenly in pitch) from start to end."""
    return lambda t: np.asarray(start_hz * (end_hz / start_hz) ** (t / length_s))


def cues() -> dict[str, np.ndarray]:
    """Every cue as float samples in -1..1 (not yet normalised)."""
    bright = (1.0, 0.3, 0.1)
    return {
        # Rising arpeggio: "I'm listening".
        "wake": _sequence(
            [
                (0.0, _tone(E5, 0.30, 0.10, bright)),
                (0.07, _tone(B5, 0.25, 0.09, bright)),
                (0.14, _tone(E6, 0.22, 0.08, bright)),
            ],
            0.36,
        ),
        # Falling pair: "conversation over".
        "done": _sequence(
            [(0.0, _tone(G5, 0.30, 0.10)), (0.10, _tone(C5, 0.28, 0.11))],
            0.38,
        ),
        # Two low, slightly buzzier notes a tritone apart: clearly not a normal cue.
        "error": _sequence(
            [
                (0.0, _tone(A4, 0.22, 0.12, (1.0, 0.5, 0.3, 0.15))),
                (0.18, _tone(EB4, 0.27, 0.13, (1.0, 0.5, 0.3, 0.15))),
            ],
            0.45,
        ),
        # A soft slide down, and its mirror image for unmute.
        "mute": _sequence([(0.0, _tone(_glide(C6, A4, 0.25), 0.25, 0.12))], 0.25),
        "unmute": _sequence([(0.0, _tone(_glide(A4, C6, 0.25), 0.25, 0.12))], 0.25),
        # Two pairs of short, bright, sustained beeps: an alarm clock, unlike any cue above.
        "ring": _sequence(
            [
                (start, _tone(E6 if k % 2 == 0 else C6, 0.09, 0.5, (1.0, 0.4, 0.2)))
                for k, start in enumerate((0.0, 0.13, 0.45, 0.58))
            ],
            0.9,
        ),
    }


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Normalise to PEAK and convert to int16."""
    scaled = samples / np.max(np.abs(samples)) * PEAK
    return np.asarray(np.round(scaled * 32767), dtype=np.int16)


def question() -> np.ndarray | None:
    """The self-test's question spoken by espeak-ng, 16 kHz int16, trimmed; None without it."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        return None
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "question.wav"
        subprocess.run(
            [binary, "-v", "en-us", "-s", "150", "-w", str(path), QUESTION_TEXT],
            check=True,
            capture_output=True,
        )
        with wave.open(str(path), "rb") as wav:
            rate = wav.getframerate()
            raw = np.frombuffer(wav.readframes(wav.getnframes()), "<i2") / 32768.0
    samples = np.asarray(soxr.resample(raw, rate, QUESTION_RATE), dtype=np.float64)
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    samples = samples[loud[0] : loud[-1] + 1]
    fade = int(FADE_S * QUESTION_RATE)
    samples[:fade] *= np.linspace(0.0, 1.0, fade)
    samples[-fade:] *= np.linspace(1.0, 0.0, fade)
    scaled = samples / np.max(np.abs(samples)) * QUESTION_PEAK
    return np.asarray(np.round(scaled * 32767), dtype=np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    """Write mono int16 PCM (24 kHz unless told)."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())


def main(argv: list[str]) -> int:
    """Write every cue and the question into the directory given (default: the package's
    sounds/)."""
    out_dir = Path(argv[0]) if argv else DEFAULT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, samples in cues().items():
        path = out_dir / f"{name}.wav"
        write_wav(path, to_int16(samples))
        print(f"{path}: {len(samples) / RATE:.2f} s")
    spoken = question()
    if spoken is None:
        print("espeak-ng is not installed: question.wav not written", file=sys.stderr)
    else:
        path = out_dir / "question.wav"
        write_wav(path, spoken, QUESTION_RATE)
        print(f"{path}: {len(spoken) / QUESTION_RATE:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
