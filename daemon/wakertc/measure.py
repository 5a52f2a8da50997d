"""Audio measurements shared by the demo, the tests and the benchmarks.

These compare what the "model" received (the emulator's recording) with what was said into the
microphone, without trusting either side's timestamps: the two signals are aligned by correlating
their loudness envelopes.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
from numpy.typing import NDArray

ENVELOPE_HOP_S = 0.01


def read_wav(path: Path, rate: int = 16000) -> NDArray[Any]:
    """A WAV file as float32 mono at `rate` (channels averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, source_rate = wav.getnchannels(), wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    samples: NDArray[np.float32] = data.reshape(-1, channels).mean(axis=1).astype(np.float32)
    samples /= 32768.0
    if source_rate != rate and samples.size:
        samples = np.asarray(soxr.resample(samples, source_rate, rate), dtype=np.float32)
    return samples


def write_wav(path: Path, samples: NDArray[Any], rate: int) -> None:
    """Write int16 (or float in -1..1) mono samples as a 16-bit WAV file."""
    if samples.dtype != np.int16:
        samples = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())


def envelope(samples: NDArray[Any], rate: int, hop_s: float = ENVELOPE_HOP_S) -> NDArray[Any]:
    """RMS loudness per `hop_s` window."""
    hop = max(1, int(rate * hop_s))
    usable = len(samples) - len(samples) % hop
    frames = samples[:usable].astype(np.float64).reshape(-1, hop)
    return np.asarray(np.sqrt((frames**2).mean(axis=1)))


def voiced(samples: NDArray[Any], rate: int, hop_s: float = ENVELOPE_HOP_S) -> NDArray[Any]:
    """Per window, True where there is speech (louder than a fraction of the loud parts)."""
    env = envelope(samples, rate, hop_s)
    if not env.size:
        return env.astype(bool)
    return np.asarray(env > max(0.1 * float(np.percentile(env, 95)), 1e-4))


@dataclass(frozen=True)
class Alignment:
    """Where `received` starts within `sent`, and how well they match there."""

    offset_s: float
    correlation: float


def align(sent: NDArray[Any], received: NDArray[Any], rate: int) -> Alignment:
    """Best offset of `received` within `sent`, by normalised envelope cross-correlation."""
    a = envelope(sent, rate)
    b = envelope(received, rate)
    if not a.size or not b.size:
        return Alignment(0.0, 0.0)
    a = (a - a.mean()) / (a.std() or 1.0)
    b = (b - b.mean()) / (b.std() or 1.0)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    # Lags 0..len(a)-1: received starts that far into sent; wrapped lags: it starts before.
    lags = np.concatenate([np.arange(len(a)), np.arange(-len(b) + 1, 0)])
    values = np.concatenate([corr[: len(a)], corr[size - len(b) + 1 :]])
    overlap = np.minimum(len(a) - np.maximum(lags, 0), len(b) + np.minimum(lags, 0))
    scores = values / np.maximum(overlap, 1)
    scores[overlap < min(len(a), len(b)) // 2] = -np.inf
    best = int(np.argmax(scores))
    return Alignment(float(lags[best]) * ENVELOPE_HOP_S, float(scores[best]))


def received_ratio(
    sent: NDArray[Any], received: NDArray[Any], rate: int, start_s: float, end_s: float
) -> float:
    """Fraction of the speech in `sent[start_s:end_s]` found in `received`.

    `received` is aligned to `sent`; a window of speech counts as received when the recording
    covers it and carries sound there (the sender may cut it off, nothing else removes it).
    """
    if not received.size:
        return 0.0
    alignment = align(sent, received, rate)
    speech = voiced(sent, rate)
    got = envelope(received, rate)
    floor = max(0.05 * float(np.percentile(got, 95)), 1e-4) if got.size else 1.0
    first = int(start_s / ENVELOPE_HOP_S)
    last = min(int(end_s / ENVELOPE_HOP_S), len(speech))
    shift = round(alignment.offset_s / ENVELOPE_HOP_S)
    total = present = 0
    for i in range(first, last):
        if not speech[i]:
            continue
        total += 1
        j = i - shift
        if 0 <= j < len(got) and got[j] > floor:
            present += 1
    return present / total if total else 0.0
