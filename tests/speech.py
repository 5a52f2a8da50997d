"""Real synthetic speech for tests: espeak-ng, resampled with soxr, cached for the session.

    from speech import synth, pad, mix_noise, write_wav

    audio = synth("hey jarvis", voice="en-gb")          # int16 mono 16 kHz, 1 s silence each side
    noisy = mix_noise(audio, snr_db=10)
    write_wav(tmp_path / "x.wav", audio, 16000)

espeak-ng output is deterministic, so clips are synthesised once per (text, voice, wpm) and kept
in a temporary directory for the rest of the test session.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import subprocess
import tempfile
import wave
from functools import cache
from pathlib import Path

import numpy as np
import soxr

DEFAULT_PAD_S = 1.0
_cache_dir: Path | None = None


def _session_dir() -> Path:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="wakertc-speech-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


@cache
def _espeak(text: str, voice: str, wpm: int) -> tuple[np.ndarray, int]:
    """espeak-ng's own output (int16 mono at its native rate, usually 22050 Hz)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: run scripts/bootstrap.sh --test")
    key = hashlib.sha256(repr((text, voice, wpm)).encode()).hexdigest()[:16]
    path = _session_dir() / f"{key}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    samples.setflags(write=False)
    return samples, rate


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """int16 audio at another rate (soxr)."""
    if from_rate == to_rate:
        return samples.copy()
    converted = soxr.resample(samples.astype(np.float32) / 32768.0, from_rate, to_rate)
    return to_int16(converted)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float audio in -1..1 as int16, clipped."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


def pad(samples: np.ndarray, before_s: float, after_s: float | None = None, rate: int = 16000):
    """`samples` with digital silence before and after (`after_s` defaults to `before_s`)."""
    after_s = before_s if after_s is None else after_s
    before = np.zeros(round(before_s * rate), dtype=samples.dtype)
    after = np.zeros(round(after_s * rate), dtype=samples.dtype)
    return np.concatenate((before, samples, after))


def synth(
    text: str,
    voice: str = "en-us",
    wpm: int = 140,
    rate: int = 16000,
    pad_s: float = DEFAULT_PAD_S,
) -> np.ndarray:
    """espeak-ng saying `text`: int16 mono at `rate`, with `pad_s` of silence on each side."""
    samples, native_rate = _espeak(text, voice, wpm)
    return pad(resample(samples, native_rate, rate), pad_s, rate=rate)


def mix_noise(samples: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """`samples` plus white noise at `snr_db` below the power of its non-silent samples."""
    signal = samples.astype(np.float64)
    voiced = signal[np.abs(signal) > 0]
    power = float(np.mean(voiced**2)) if voiced.size else 1.0
    noise = np.random.default_rng(seed).normal(
        0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(signal)
    )
    return np.clip(signal + noise, -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    """Write int16 mono `samples` as a 16-bit WAV, copied to `channels` channels."""
    frames = np.repeat(samples.astype(np.int16)[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames.tobytes())
    return path
