"""Reply audio: what the "model" says, as 48 kHz mono int16 plus its transcript.

`echo` plays back the user's last utterance (proof that audio made the whole loop), `tone` a short
beep, `speech` a text through espeak-ng (falling back to the tone when espeak-ng is missing).
Synthesis runs in a subprocess and is cached, so the event loop never waits on it for long.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from .audio_buffer import Samples

log = logging.getLogger(__name__)

RATE = 48000
TONE_HZ = 440.0
TONE_S = 0.8
SYNTH_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Reply:
    """Audio to play (may be empty) and the words that go with it."""

    audio: Samples
    transcript: str

    @property
    def duration_ms(self) -> float:
        """Length of the audio in milliseconds."""
        return len(self.audio) * 1000 / RATE


def echo(utterance: Samples) -> Reply:
    """The user's utterance played back; the transcript reports its size."""
    if not len(utterance):
        beep = tone()
        return Reply(beep.audio, "echo: nothing to echo yet, here is a tone")
    ms = len(utterance) * 1000 // RATE
    return Reply(utterance.copy(), f"echo of {ms} ms ({len(utterance)} samples at {RATE} Hz)")


def tone(frequency: float = TONE_HZ, seconds: float = TONE_S) -> Reply:
    """A sine beep at -12 dBFS with 10 ms fades."""
    t = np.arange(int(seconds * RATE)) / RATE
    wave_ = np.sin(2 * np.pi * frequency * t) * (10 ** (-12 / 20))
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)
    audio = (wave_ * fade * 32767).astype(np.int16)
    return Reply(audio, f"tone {frequency:g} Hz, {seconds * 1000:.0f} ms")


class SpeechSynth:
    """espeak-ng behind a cache; `say` never blocks the loop."""

    def __init__(self, program: str = "espeak-ng") -> None:
        self._program = shutil.which(program)
        self._cache: dict[str, Samples] = {}
        if self._program is None:
            log.warning("%s not found: the speech reply will be a tone", program)

    async def say(self, text: str) -> Reply:
        """Speech for `text` at 48 kHz mono."""
        cached = self._cache.get(text)
        if cached is None:
            cached = await self._synthesise(text)
            self._cache[text] = cached
        if not len(cached):
            return Reply(tone().audio, text)
        return Reply(cached, text)

    async def _synthesise(self, text: str) -> Samples:
        if self._program is None:
            return np.zeros(0, dtype=np.int16)
        with tempfile.TemporaryDirectory(prefix="wakertc-emu-") as tmp:
            out = Path(tmp) / "say.wav"
            proc = await asyncio.create_subprocess_exec(
                self._program,
                "-w",
                str(out),
                "--",
                text,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                _, err = await asyncio.wait_for(proc.communicate(), SYNTH_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                log.warning("espeak-ng took over %.0f s; using a tone", SYNTH_TIMEOUT_S)
                return np.zeros(0, dtype=np.int16)
            if proc.returncode != 0:
                log.warning("espeak-ng failed (%s): %s", proc.returncode, err.decode()[:200])
                return np.zeros(0, dtype=np.int16)
            data = out.read_bytes()
        return await asyncio.to_thread(wav_to_48k_mono, data)


def wav_to_48k_mono(data: bytes) -> Samples:
    """Decode a 16-bit PCM WAV and resample it to 48 kHz mono int16."""
    with wave.open(io.BytesIO(data)) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    samples = raw.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE)
    out: Samples = np.clip(samples * 32768.0, -32768, 32767).astype(np.int16)
    return out
