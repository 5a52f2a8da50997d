#!/usr/bin/env python3
"""Wake-word accuracy for scripts/bench.py: wakertc's detector beside the stock openwakeword.

    .venv/bin/python scripts/bench_wakeword.py [--quick] [--json] [--workdir DIR]

or, from bench.py, `measure(quick, workdir, models_dir, say)`, which returns two figures:

- `wake_word_detection_rate`: the share of synthesized wake phrases detected. Each positive is
  "hey jarvis" (alone or followed by a request) said by an espeak-ng voice at some speed, at one
  of three speech levels, in pink noise at 10 dB SNR, with 2 s of that noise before it (so the
  detector's streaming state has settled, as on a device that was already listening) and 1.5 s
  after. It counts as detected when the engine fires between the speech onset and the clip's end.
- `wake_word_false_accepts_per_hour`: detections on one continuous stream of at least 30 minutes
  of non-wake speech (espeak-ng reading varied English, some of it with confusable words such as
  "hey Harvey" or "jars") in the same noise at 10 dB SNR, plus noise-only stretches.

Both engines hear the same int16 16 kHz samples in their normal chunking: wakertc's
`WakeWordDetector.process` gets the daemon's 20 ms frames (320 samples); the stock package's
`Model.predict` gets its 80 ms chunks (1280 samples), in child processes (it costs ~1.4 s and
~110 MB to import, and runs beside wakertc on the other core). Detection uses the daemon's
defaults for both: `WakeWordConfig().threshold` (0.5, also the stock package's documented
default) and its 2 s refractory period, which wakertc applies itself and which is applied here
to the stock per-chunk scores by the same rule. Each positive starts from a fresh engine; the
negatives are one stream. The stock package fills its start-up feature history with unseeded
`np.random` noise; it is seeded here with wakertc's `FEATURE_NOISE_SEED`, so both runs are
repeatable and comparable score for score (that noise only fills the first 1.3 s, before any
speech).

Everything is deterministic (fixed seeds; espeak-ng is deterministic). Synthesized speech is
cached under the work directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import wakertc  # noqa: F401
except ImportError:  # run by a Python without the package: use the project's virtualenv
    VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
    if VENV_PYTHON.exists() and Path(sys.executable) != VENV_PYTHON:
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    raise

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import soxr  # noqa: E402

from bench_report import figure  # noqa: E402
from wakertc.config import WakeConfig, WakeWordConfig  # noqa: E402
from wakertc.wakeword import FEATURE_NOISE_SEED, WakeWordDetector  # noqa: E402

Samples = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float64]

RATE = 16000
CHUNK = 1280  # the stock package's step (80 ms)
FRAME = 320  # the daemon's microphone frame (20 ms)
WORD = "hey_jarvis"
SEED = 20261123

SNR_DB = 10.0
NOISE_KIND = "pink (1/f power, nothing below 50 Hz): close to room, fan and traffic noise"
LEVELS_DBFS = (-22.0, -28.0, -34.0)
"""Active speech levels (RMS of the speech's active 20 ms frames); the noise sits SNR_DB below."""
LEAD_IN_S = 2.0
TAIL_S = 1.5
ACTIVE_GATE_DB = -40.0  # frames this far below the loudest one are pauses, not speech

VOICES = (
    "en-us",
    "en-us+f2",
    "en-gb",
    "en-gb+f4",
    "en-gb-scotland",
    "en-gb-x-rp+m3",
    "en-029+f3",
    "en-us-nyc+m7",
)
SPEEDS_WPM = (130, 160, 190)
PHRASES = (
    "hey jarvis",
    "hey jarvis, what time is it",
    "hey jarvis, turn on the kitchen light",
)
NEGATIVE_VOICES = (*VOICES, "en-gb-x-gbclan", "en-gb-x-gbcwmd+f5", "en-us+klatt")

PARAGRAPHS = (
    "The kettle clicked off just as the rain started again. Maria poured two cups, found the "
    "biscuits behind the flour, and sat down by the window to watch the street. A delivery van "
    "stopped outside number twelve, and the driver ran to the door with a parcel held over his "
    "head. Nobody answered, so he left it in the porch and drove away.",
    "Tomorrow will start cloudy with a few bright spells in the east. Showers will spread from "
    "the west by the middle of the afternoon, heavy at times, with a chance of thunder near the "
    "coast. Winds will be light at first but freshen later. Highest temperatures around fourteen "
    "degrees, falling to six overnight under clearer skies.",
    "To make the soup, soften an onion and two carrots in a little butter for ten minutes. Add "
    "a tin of tomatoes, a pinch of sugar and half a litre of stock, then simmer gently for twenty "
    "minutes. Blend until smooth, season with salt and pepper, and serve with warm bread and a "
    "spoonful of cream on top.",
    "The committee met on Thursday evening to discuss the new car park. Several residents said "
    "that the entrance was too close to the school, and that the lights would keep people awake. "
    "The chair promised to ask the council for a second survey before any work begins, and the "
    "meeting closed a little after nine.",
    "When the old lighthouse keeper retired, the village held a party on the harbour wall. "
    "Children ran between the tables, the band played songs nobody under sixty remembered, and "
    "the keeper told the same story about the winter storm three times, each time with a bigger "
    "wave. By midnight the lamp above them was turning on its own.",
    "Please remember that the library will be closed on Monday for the bank holiday. Books due "
    "that day can be returned on Tuesday without a fine. The reading group will meet as usual on "
    "Wednesday afternoon, and this month we are reading a short novel about a family who move to "
    "the coast.",
    "I tried to fix the bicycle myself, which was a mistake. The chain came off twice, the back "
    "brake started to squeal, and by the time I had finished there was oil on my sleeves and on "
    "the kitchen floor. In the end I took it to the shop on the corner, and they had it working "
    "in twenty minutes.",
    "The train now arriving at platform four is the eleven fifteen service to the airport, "
    "calling at all stations. Please stand well back from the edge of the platform. The first "
    "two carriages are reserved for passengers with heavy luggage. Mind the gap between the train "
    "and the platform when boarding.",
    "Our garden has never looked better. The beans are climbing the fence, the tomatoes are "
    "finally turning red, and the apple tree has so much fruit that one branch has bent almost to "
    "the ground. The only problem is the birds, who seem to know exactly when the strawberries "
    "are ready.",
    "She opened the letter slowly, as if it might bite. Inside was a single page, typed, with a "
    "signature she did not recognise. It said that her grandfather had left her a small house in "
    "the hills, a piano, and a dog called Biscuit, and that the dog was by far the most important "
    "of the three.",
    "Set a timer for twelve minutes and turn the oven down to one hundred and eighty. Check the "
    "bread after ten minutes; if the top is getting too dark, cover it loosely with foil. It is "
    "ready when it sounds hollow underneath. Leave it to cool on a rack for at least half an hour "
    "before slicing.",
    "The match was level at half time, and the second half began the same way, with neither side "
    "willing to take a risk. Then, with ten minutes left, a long pass found the winger on the "
    "left, who cut inside and curled the ball into the far corner. The home crowd did not sit down "
    "again until the final whistle.",
    "Every spring the river floods the lower meadow, and every spring the same two herons come "
    "back to fish in the shallow water. They stand perfectly still for an hour at a time, then "
    "strike so quickly that you only see the splash. By June the water has gone and the meadow is "
    "full of buttercups.",
    "Could you pick up some milk on the way home, and maybe a loaf of bread if they have the "
    "brown one? Also, the car is making that noise again when it turns left, so we should ring "
    "the garage this week. And do not forget that your sister is coming for dinner on Saturday.",
)

# Sentences made from these add vocabulary and some words that sound a little like the wake
# phrase ("hey Harvey", "jars", "service", "nervous"), as a household would say them.
OPENERS = ("", "", "", "so ", "well, ", "honestly, ", "you know, ", "hey, ", "hi there, ", "okay, ")
SUBJECTS = (
    "my neighbour",
    "the children",
    "Harvey",
    "Travis",
    "our landlord",
    "the new service",
    "a nervous driver",
    "the garden centre",
    "everyone at work",
    "my brother",
    "the man next door",
    "your aunt",
)
VERBS = (
    "asked about",
    "forgot",
    "carried",
    "painted",
    "talked about",
    "ordered",
    "fixed",
    "wanted",
    "listened to",
    "found",
    "complained about",
    "brought back",
)
OBJECTS = (
    "three jars of jam",
    "the harvest festival",
    "a service charge",
    "the kitchen lights",
    "the weather forecast",
    "a garden hose",
    "the last train home",
    "the car keys",
    "an old jersey",
    "the parcel",
    "the jazz records",
    "a bottle of vinegar",
)
ENDINGS = (
    "this morning",
    "before lunch",
    "on Tuesday",
    "after the match",
    "again",
    "without asking",
    "in the rain",
    "at the weekend",
    "for the third time",
    "",
)
REQUESTS = (
    "what time is it",
    "turn on the lights in the hall",
    "hey Harvey, are you coming",
    "is it going to rain later",
    "hey Travis, pass me the jar",
    "play some music in the kitchen",
    "how long do the potatoes need",
    "hey there, nice to see you",
)


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    name: str
    positives: tuple[tuple[str, int, str], ...]
    """(voice, words per minute, phrase) for each positive clip."""
    negative_speech_s: float
    """Speech-bearing negative audio to make, at least (segments are whole)."""
    noise_stretch_s: tuple[float, float]
    """Length range of the noise-only stretches, one after every NOISE_EVERY speech segments."""
    snr_db: float = SNR_DB
    levels_dbfs: tuple[float, ...] = LEVELS_DBFS
    stock_processes: int = 1
    """2: the stock package scores positives and negatives in two processes at once. It costs
    ~2.4x wakertc's CPU, so this keeps a full run's wall time near the negatives' scoring."""


NOISE_EVERY = 5


def _full_positives() -> tuple[tuple[str, int, str], ...]:
    return tuple((v, s, p) for p in PHRASES for s in SPEEDS_WPM for v in VOICES)


def _quick_positives() -> tuple[tuple[str, int, str], ...]:
    # Six voices, each (speed, phrase) pair different.
    return tuple((VOICES[i], SPEEDS_WPM[i % 3], PHRASES[(i + i // 3) % 3]) for i in range(6))


FULL = Plan(
    "full",
    _full_positives(),
    negative_speech_s=30 * 60.0,
    noise_stretch_s=(20.0, 40.0),
    stock_processes=2,
)
QUICK = Plan("quick", _quick_positives(), negative_speech_s=100.0, noise_stretch_s=(15.0, 20.0))


# -- audio ---------------------------------------------------------------------------------------


class Speech:
    """espeak-ng speech as 16 kHz int16, cached as .npy files in a directory."""

    def __init__(self, cache_dir: Path) -> None:
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, text: str, voice: str, wpm: int) -> Path:
        key = hashlib.sha256(repr((text, voice, wpm)).encode()).hexdigest()[:20]
        return self.cache_dir / f"{key}.npy"

    def make(self, items: list[tuple[str, str, int]]) -> None:
        """Synthesize every (text, voice, wpm) not cached yet, two espeak-ng processes at once."""
        todo = sorted({item for item in items if not self._path(*item).exists()})
        with ThreadPoolExecutor(max_workers=2) as pool:
            for _ in pool.map(lambda item: self._synth(*item), todo):
                pass

    def get(self, text: str, voice: str, wpm: int) -> Samples:
        """The clip for (text, voice, wpm), synthesizing it if needed."""
        path = self._path(text, voice, wpm)
        if not path.exists():
            self._synth(text, voice, wpm)
        samples: Samples = np.load(path)
        return samples

    def _synth(self, text: str, voice: str, wpm: int) -> None:
        path = self._path(text, voice, wpm)
        wav_path = path.with_suffix(".wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav_path), text],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with wave.open(str(wav_path), "rb") as wav:
            rate = wav.getframerate()
            native = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        wav_path.unlink()
        resampled = soxr.resample(native.astype(np.float32) / 32768.0, rate, RATE)
        samples = (np.clip(resampled, -1.0, 1.0) * 32767).astype(np.int16)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, samples)
        tmp.replace(path)  # atomic, so a half-written file is never taken from the cache


def active_frames(speech: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Per 20 ms frame, whether it is speech (within ACTIVE_GATE_DB of the loudest frame)."""
    usable = len(speech) - len(speech) % FRAME
    power = (speech[:usable].astype(np.float64).reshape(-1, FRAME) ** 2).mean(axis=1)
    if not power.size or power.max() <= 0:
        return np.zeros(len(power), dtype=bool)
    return np.asarray(power > power.max() * 10 ** (ACTIVE_GATE_DB / 10))


def active_power(speech: npt.NDArray[Any]) -> float:
    """Mean power of the speech's active frames (the "active part" the SNR is taken on)."""
    usable = len(speech) - len(speech) % FRAME
    power = (speech[:usable].astype(np.float64).reshape(-1, FRAME) ** 2).mean(axis=1)
    active = active_frames(speech)
    return float(power[active].mean()) if active.any() else 0.0


def pink_noise(n: int, rng: np.random.Generator) -> Floats:
    """`n` samples of pink noise with unit RMS."""
    if n == 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    shape = np.zeros_like(freqs)
    audible = freqs >= 50.0
    shape[audible] = 1 / np.sqrt(freqs[audible])
    noise: Floats = np.fft.irfft(spectrum * shape, n)
    noise /= np.sqrt(np.mean(noise**2))
    return noise


def level_power(dbfs: float) -> float:
    """Power of an int16 signal whose RMS is `dbfs` below full scale."""
    return float((32768.0 * 10 ** (dbfs / 20)) ** 2)


def _chunks_up(n: int) -> int:
    return -(-n // CHUNK) * CHUNK


def mix(
    speech: Samples | None,
    before_s: float,
    after_s: float,
    level_dbfs: float,
    snr_db: float,
    rng: np.random.Generator,
) -> tuple[Samples, int]:
    """Speech at `level_dbfs` (active RMS) in pink noise `snr_db` below it, with noise-only lead-in
    and tail, a whole number of 80 ms chunks long; also the sample where the speech starts."""
    before = round(before_s * RATE)
    n_speech = 0 if speech is None else len(speech)
    total = _chunks_up(before + n_speech + round(after_s * RATE))
    out = pink_noise(total, rng) * np.sqrt(level_power(level_dbfs) / 10 ** (snr_db / 10))
    onset = before
    if speech is not None and n_speech:
        gain = np.sqrt(level_power(level_dbfs) / max(active_power(speech), 1e-9))
        out[before : before + n_speech] += speech.astype(np.float64) * gain
        onset = before + int(np.argmax(active_frames(speech))) * FRAME
    return np.clip(np.round(out), -32768, 32767).astype(np.int16), onset


# -- the sets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Positive:
    """One wake phrase clip."""

    voice: str
    wpm: int
    phrase: str
    level_dbfs: float
    start: int
    """First sample in the concatenated positives."""
    length: int
    onset: int
    """Speech onset, in samples from the clip's start."""

    def label(self) -> str:
        """Short description for reports."""
        return f"{self.voice}@{self.wpm} {self.level_dbfs:g}dBFS '{self.phrase}'"


@dataclass(frozen=True)
class Segment:
    """A stretch of the negative stream."""

    start: int
    length: int
    voice: str | None = None  # None: noise only
    wpm: int = 0
    text: str = ""

    def label(self) -> str:
        """Short description for reports."""
        if self.voice is None:
            return "noise only"
        return f"{self.voice}@{self.wpm}: {self.text[:60]}..."


@dataclass
class AudioSet:
    """The audio both engines hear."""

    positives: Samples
    clips: list[Positive]
    negatives: Samples
    segments: list[Segment]
    speech_s: float = 0.0
    noise_only_s: float = 0.0


def _sentences(rng: np.random.Generator, n: int) -> str:
    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    out = []
    for _ in range(n):
        if rng.random() < 0.25:
            sentence = f"{pick(OPENERS)}{pick(REQUESTS)}?"
        else:
            parts = [pick(SUBJECTS), pick(VERBS), pick(OBJECTS), pick(ENDINGS)]
            sentence = f"{pick(OPENERS)}{' '.join(p for p in parts if p)}."
        out.append(sentence[0].upper() + sentence[1:])
    return " ".join(out)


def _negative_texts() -> Iterator[tuple[str, str, int]]:
    """(text, voice, wpm) of each speech segment, in order, without end."""
    rng = np.random.default_rng([SEED, 1])
    k = 0
    while True:
        # Paragraphs alternate with generated sentences; voices and speeds rotate independently,
        # so each paragraph comes back in another voice at another speed.
        text = PARAGRAPHS[(k // 2) % len(PARAGRAPHS)] if k % 2 == 0 else _sentences(rng, 7)
        voice = NEGATIVE_VOICES[(k * 3) % len(NEGATIVE_VOICES)]
        yield text, voice, SPEEDS_WPM[k % len(SPEEDS_WPM)]
        k += 1


def build(plan: Plan, speech: Speech, say: Callable[[str], None]) -> AudioSet:
    """Synthesize (or take from the cache) and mix both sets."""
    started = time.monotonic()
    # Synthesized up front two at a time; the estimate (words / wpm) is only for that: the mixing
    # below takes segments from the same sequence until the target is really reached.
    texts: list[tuple[str, str, int]] = []
    planned_s = 0.0
    for text, voice, wpm in _negative_texts():
        if planned_s >= plan.negative_speech_s:
            break
        texts.append((text, voice, wpm))
        planned_s += len(text.split()) * 60 / wpm
    speech.make([(p, v, s) for v, s, p in plan.positives] + texts)

    clips: list[Positive] = []
    pos_audio: list[Samples] = []
    start = 0
    for i, (voice, wpm, phrase) in enumerate(plan.positives):
        level = plan.levels_dbfs[i % len(plan.levels_dbfs)]
        clip, onset = mix(
            speech.get(phrase, voice, wpm),
            LEAD_IN_S,
            TAIL_S,
            level,
            plan.snr_db,
            np.random.default_rng([SEED, 2, i]),
        )
        clips.append(Positive(voice, wpm, phrase, level, start, len(clip), onset))
        pos_audio.append(clip)
        start += len(clip)

    segments: list[Segment] = []
    neg_audio: list[Samples] = []
    gaps = np.random.default_rng([SEED, 3])
    start = 0
    speech_s = noise_s = 0.0
    for n, (text, voice, wpm) in enumerate(_negative_texts()):
        if speech_s >= plan.negative_speech_s:
            break
        rng = np.random.default_rng([SEED, 4, n])
        level = plan.levels_dbfs[n % len(plan.levels_dbfs)]
        samples, _ = mix(
            speech.get(text, voice, wpm),
            float(gaps.uniform(0.5, 2.5)),
            float(gaps.uniform(0.5, 2.5)),
            level,
            plan.snr_db,
            rng,
        )
        segments.append(Segment(start, len(samples), voice, wpm, text))
        neg_audio.append(samples)
        start += len(samples)
        speech_s += len(samples) / RATE
        if (n + 1) % NOISE_EVERY == 0 or speech_s >= plan.negative_speech_s:
            length = float(gaps.uniform(*plan.noise_stretch_s))
            samples, _ = mix(None, length, 0.0, level, plan.snr_db, rng)
            segments.append(Segment(start, len(samples)))
            neg_audio.append(samples)
            start += len(samples)
            noise_s += len(samples) / RATE
    audio = AudioSet(
        positives=np.concatenate(pos_audio),
        clips=clips,
        negatives=np.concatenate(neg_audio),
        segments=segments,
        speech_s=speech_s,
        noise_only_s=noise_s,
    )
    say(
        f"wake word: {len(clips)} positives ({len(audio.positives) / RATE:.0f} s), negatives "
        f"{speech_s / 60:.1f} min speech + {noise_s / 60:.1f} min noise only, "
        f"made in {time.monotonic() - started:.1f} s"
    )
    return audio


# -- the engines ---------------------------------------------------------------------------------


def fire_times(scores: Floats, threshold: float, refractory_s: float) -> list[int]:
    """Chunk indices where a detector fires: score at or above the threshold, outside the
    refractory period after the previous detection (wakertc's rule, applied to stock scores)."""
    fired: list[int] = []
    chunk_s = CHUNK / RATE
    for i in np.flatnonzero(scores >= threshold):
        t = (int(i) + 1) * chunk_s
        if not fired or t - (fired[-1] + 1) * chunk_s >= refractory_s - 1e-9:
            fired.append(int(i))
    return fired


@dataclass
class EngineRun:
    """One engine's per-chunk scores and detections (chunk indices) on both sets."""

    pos_scores: Floats
    neg_scores: Floats
    pos_fired: list[list[int]]
    """Per clip, chunk indices (from the clip's start) where it fired."""
    neg_fired: list[int]
    cpu_s: float


def run_wakertc(audio: AudioSet, config: WakeConfig) -> EngineRun:
    """The daemon's detector on 20 ms frames: fresh per positive clip, one stream of negatives."""
    detector = WakeWordDetector(config)
    cpu = time.thread_time()

    def stream(samples: Samples) -> tuple[list[float], list[int]]:
        scores: list[float] = []
        fired: list[int] = []
        for start in range(0, len(samples), FRAME):
            for detection in detector.process(samples[start : start + FRAME]):
                if detection.word == WORD:
                    fired.append(round(detection.t * RATE / CHUNK) - 1)
            if round(detector.seconds * RATE / CHUNK) > len(scores):
                scores.append(detector.last_scores[WORD])
        return scores, fired

    pos_scores: list[float] = []
    pos_fired: list[list[int]] = []
    for clip in audio.clips:
        detector.reset()
        scores, fired = stream(audio.positives[clip.start : clip.start + clip.length])
        pos_scores += scores
        pos_fired.append(fired)
    detector.reset()
    neg_scores, neg_fired = stream(audio.negatives)
    return EngineRun(
        np.array(pos_scores), np.array(neg_scores), pos_fired, neg_fired, time.thread_time() - cpu
    )


class StockEngine:
    """The stock openwakeword package in a child process (this script with --stock-worker)."""

    def __init__(self, models_dir: Path, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name
        self._ready = False
        self._stderr = (workdir / f"{name}.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--stock-worker", str(models_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            self._stderr.seek(0)
            raise RuntimeError(
                f"stock openwakeword worker exited ({self.proc.returncode}): "
                f"{self._stderr.read()[-2000:]}"
            )
        return line

    def score(self, job: dict[str, Any]) -> tuple[Floats, float]:
        """Per-chunk scores for each stream of `job` (see `stock_worker`), and the CPU seconds."""
        if not self._ready:
            if self._line().strip() != "ready":
                raise RuntimeError(f"{self.name}: unexpected start-up output")
            self._ready = True
        out = self.workdir / f"{self.name}-scores.npy"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({**job, "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        summary = json.loads(self._line())
        scores: Floats = np.load(out)
        return scores, float(summary["cpu_s"])

    def close(self) -> None:
        """End the child (if it is still running) and close its log."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()


def stock_worker(models_dir: Path, stdin: IO[str], stdout: IO[str]) -> int:
    """Child side: build the stock Model, then score the job's audio in 1280-sample chunks.

    Each job (a JSON line) names an int16 .npy file and the [start, length] of each stream in
    it; each stream starts from a fresh model. The scores of all its streams go to one .npy file,
    then one JSON line answers. Ends when stdin closes."""
    from stock_oww import stock_model  # the reference on wakertc's interpreter (see there)

    model = stock_model(models_dir, [WORD])
    key = f"{WORD}_v0.1"
    print("ready", file=stdout, flush=True)
    for line in stdin:
        job = json.loads(line)
        audio = np.load(job["audio"], mmap_mode="r")
        cpu = time.thread_time()
        scores: list[float] = []
        for start, length in job["streams"]:
            np.random.seed(job["seed"])  # the start-up noise wakertc uses too
            model.reset()
            samples = np.asarray(audio[start : start + length])
            scores += [
                float(model.predict(samples[i : i + CHUNK])[key])
                for i in range(0, len(samples) - CHUNK + 1, CHUNK)
            ]
        cpu = time.thread_time() - cpu
        np.save(job["out"], np.array(scores))
        print(json.dumps({"cpu_s": cpu}), file=stdout, flush=True)
    return 0


def run_stock(
    audio: AudioSet, engines: list[StockEngine], workdir: Path, word: WakeWordConfig
) -> EngineRun:
    """The stock package's scores (positives and negatives split over `engines` if there are
    two), with wakertc's detection rule applied to them."""
    positives, negatives = workdir / "positives.npy", workdir / "negatives.npy"
    np.save(positives, audio.positives)
    np.save(negatives, audio.negatives)
    pos_job: dict[str, Any] = {
        "audio": str(positives),
        "streams": [[c.start, c.length] for c in audio.clips],
        "seed": FEATURE_NOISE_SEED,
    }
    neg_job: dict[str, Any] = {
        "audio": str(negatives),
        "streams": [[0, len(audio.negatives)]],
        "seed": FEATURE_NOISE_SEED,
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        if len(engines) > 1:
            pos_run = pool.submit(engines[0].score, pos_job)
            neg_run = pool.submit(engines[1].score, neg_job)
            (pos_scores, pos_cpu), (neg_scores, neg_cpu) = pos_run.result(), neg_run.result()
        else:
            pos_scores, pos_cpu = engines[0].score(pos_job)
            neg_scores, neg_cpu = engines[0].score(neg_job)
    pos_fired = []
    first = 0
    for clip in audio.clips:
        n = clip.length // CHUNK
        scores = pos_scores[first : first + n]
        pos_fired.append(fire_times(scores, word.threshold, word.refractory_s))
        first += n
    return EngineRun(
        pos_scores,
        neg_scores,
        pos_fired,
        fire_times(neg_scores, word.threshold, word.refractory_s),
        pos_cpu + neg_cpu,
    )


# -- figures -------------------------------------------------------------------------------------


def _detected(run: EngineRun, clips: list[Positive]) -> list[bool]:
    # A detection counts when its chunk ends after the speech onset (before it: noise fired).
    return [
        any((i + 1) * CHUNK > clip.onset for i in fired)
        for clip, fired in zip(clips, run.pos_fired, strict=True)
    ]


def _breakdown(
    clips: list[Positive], key: Callable[[Positive], str | int], hits: dict[str, list[bool]]
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for n, clip in enumerate(clips):
        row = out.setdefault(str(key(clip)), {"n": 0, **dict.fromkeys(hits, 0)})
        row["n"] += 1
        for engine, detected in hits.items():
            row[engine] += int(detected[n])
    return out


def _segment_at(segments: list[Segment], sample: int) -> Segment:
    for segment in segments:
        if segment.start <= sample < segment.start + segment.length:
            return segment
    return segments[-1]


def figures(
    plan: Plan,
    audio: AudioSet,
    mine: EngineRun,
    stock: EngineRun,
    word: WakeWordConfig,
    runtime_s: float,
) -> dict[str, dict[str, Any]]:
    """The two figures, with what they were measured on."""
    hits = {"wakertc": _detected(mine, audio.clips), "stock": _detected(stock, audio.clips)}
    n_pos = len(audio.clips)
    rate, ref_rate = sum(hits["wakertc"]) / n_pos, sum(hits["stock"]) / n_pos
    clip_chunks = [c.length // CHUNK for c in audio.clips]
    offsets = np.cumsum([0, *clip_chunks])

    def best(run: EngineRun, n: int) -> float:
        return round(float(run.pos_scores[offsets[n] : offsets[n + 1]].max()), 4)

    hours = len(audio.negatives) / RATE / 3600
    fa, ref_fa = len(mine.neg_fired) / hours, len(stock.neg_fired) / hours

    def accepts(run: EngineRun) -> list[dict[str, Any]]:
        return [
            {
                "t_s": round((i + 1) * CHUNK / RATE, 2),
                "score": round(float(run.neg_scores[i]), 3),
                "during": _segment_at(audio.segments, (i + 1) * CHUNK - 1).label(),
            }
            for i in run.neg_fired
        ]

    pos_n = min(len(mine.pos_scores), len(stock.pos_scores))
    neg_n = min(len(mine.neg_scores), len(stock.neg_scores))
    agreement = {
        "max_score_difference": round(
            max(
                float(np.abs(mine.pos_scores[:pos_n] - stock.pos_scores[:pos_n]).max()),
                float(np.abs(mine.neg_scores[:neg_n] - stock.neg_scores[:neg_n]).max()),
            ),
            6,
        ),
        "chunks_scored": {
            "wakertc": len(mine.pos_scores) + len(mine.neg_scores),
            "stock": len(stock.pos_scores) + len(stock.neg_scores),
        },
        "same_detections": mine.pos_fired == stock.pos_fired and mine.neg_fired == stock.neg_fired,
    }
    audio_s = (len(audio.positives) + len(audio.negatives)) / RATE
    common = {
        "mode": plan.name,
        "threshold": word.threshold,
        "refractory_s": word.refractory_s,
        "snr_db": plan.snr_db,
        "noise": NOISE_KIND,
        "speech_levels_dbfs": list(plan.levels_dbfs),
        "engine_cpu_s": {"wakertc": round(mine.cpu_s, 2), "stock": round(stock.cpu_s, 2)},
        "audio_s": round(audio_s, 1),
        "agreement": agreement,
        "runtime_s": round(runtime_s, 1),
    }
    stock_name = "stock openwakeword 0.6.0 Model.predict (tflite), same audio, same threshold"
    missed = [
        {"clip": c.label(), "best_wakertc": best(mine, n), "best_stock": best(stock, n)}
        for n, c in enumerate(audio.clips)
        if not (hits["wakertc"][n] and hits["stock"][n])
    ]
    early = {
        engine: sum(
            any((i + 1) * CHUNK <= c.onset for i in fired)
            for c, fired in zip(audio.clips, run.pos_fired, strict=True)
        )
        for engine, run in (("wakertc", mine), ("stock", stock))
    }
    detection = figure(
        rate,
        ref_rate,
        unit="share of wake phrases detected",
        reference_name=stock_name,
        target="no worse than the stock package (rate >= its rate)",
        met=rate >= ref_rate,
        ratio=rate / ref_rate if ref_rate else (1.0 if rate == 0 else rate * n_pos),
        positives=n_pos,
        detected={engine: sum(h) for engine, h in hits.items()},
        voices=sorted({c.voice for c in audio.clips}),
        speeds_wpm=sorted({c.wpm for c in audio.clips}),
        phrases=sorted({c.phrase for c in audio.clips}),
        clip=f"{LEAD_IN_S:g} s noise, the phrase, {TAIL_S:g} s noise; fresh engine per clip; "
        "detected = fired between the speech onset and the clip's end",
        by_voice=_breakdown(audio.clips, lambda c: c.voice, hits),
        by_speed_wpm=_breakdown(audio.clips, lambda c: c.wpm, hits),
        by_phrase=_breakdown(audio.clips, lambda c: c.phrase, hits),
        by_level_dbfs=_breakdown(audio.clips, lambda c: f"{c.level_dbfs:g}", hits),
        missed=missed,
        fired_in_lead_in_noise=early,
        **common,
    )
    false_accepts = figure(
        fa,
        ref_fa,
        unit="false accepts per hour",
        reference_name=stock_name,
        target="no worse than the stock package (<= its rate)",
        met=fa <= ref_fa,
        # Counts can be 0 on either side: the ratio is taken on counts plus one.
        ratio=(len(mine.neg_fired) + 1) / (len(stock.neg_fired) + 1),
        ratio_rule="(wakertc false accepts + 1) / (stock false accepts + 1)",
        negative_hours=round(hours, 4),
        negative_speech_min=round(audio.speech_s / 60, 2),
        noise_only_min=round(audio.noise_only_s / 60, 2),
        speech_segments=sum(s.voice is not None for s in audio.segments),
        voices=sorted({s.voice for s in audio.segments if s.voice is not None}),
        speeds_wpm=sorted({s.wpm for s in audio.segments if s.voice is not None}),
        false_accepts={"wakertc": len(mine.neg_fired), "stock": len(stock.neg_fired)},
        # How close the negatives came to firing.
        max_negative_score={
            "wakertc": round(float(mine.neg_scores.max()), 4),
            "stock": round(float(stock.neg_scores.max()), 4),
        },
        negative_chunks_over_half_threshold={
            "wakertc": int((mine.neg_scores >= word.threshold / 2).sum()),
            "stock": int((stock.neg_scores >= word.threshold / 2).sum()),
        },
        accepted={"wakertc": accepts(mine), "stock": accepts(stock)},
        text="espeak-ng reading 14 short paragraphs of everyday prose and generated household "
        "sentences (some with confusable words: 'hey Harvey', 'hey Travis', 'jars', 'service')",
        **common,
    )
    return {
        "wake_word_detection_rate": detection,
        "wake_word_false_accepts_per_hour": false_accepts,
    }


def run(plan: Plan, workdir: Path, models_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Build the sets for `plan`, run both engines on them, and return the two figures."""
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    word = WakeWordConfig(WORD)
    # Started first: their ~2 s import overlaps the synthesis.
    stock = [StockEngine(models_dir, workdir, f"stock-{n}") for n in range(plan.stock_processes)]
    try:
        audio = build(plan, Speech(workdir / "wakeword-speech"), say)
        with ThreadPoolExecutor(max_workers=1) as pool:
            stock_run = pool.submit(run_stock, audio, stock, workdir, word)
            mine = run_wakertc(audio, WakeConfig(models_dir=models_dir, words=(word,)))
            theirs = stock_run.result()
    finally:
        for engine in stock:
            engine.close()
    elapsed = time.monotonic() - started
    say(
        f"wake word: wakertc {sum(_detected(mine, audio.clips))}/{len(audio.clips)} detected, "
        f"{len(mine.neg_fired)} false accepts; stock {sum(_detected(theirs, audio.clips))}/"
        f"{len(audio.clips)}, {len(theirs.neg_fired)}; {elapsed:.1f} s"
    )
    return figures(plan, audio, mine, theirs, word, elapsed)


def measure(
    quick: bool, workdir: Path, models_dir: Path, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """`wake_word_detection_rate` and `wake_word_false_accepts_per_hour`, each beside the stock
    package's on the same audio (quick: 6 positives and ~2 min of negatives, ~10 s)."""
    return run(QUICK if quick else FULL, workdir / "wakeword", models_dir, say)


def main(argv: list[str]) -> int:
    """Command line: run the measurement and print the figures."""
    if argv[:1] == ["--stock-worker"]:
        return stock_worker(Path(argv[1]), sys.stdin, sys.stdout)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small set (~10 s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout")
    parser.add_argument("--workdir", type=Path, help="keep audio here (default: a temporary dir)")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[wakeword {time.monotonic() - started:6.1f} s] {message}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="wakertc-wakeword-") as tmp:
        workdir = args.workdir or Path(tmp)
        result = measure(args.quick, workdir, args.models_dir, say)
    if args.json:
        print(json.dumps(result, indent=2))
    for name, fig in result.items():
        print(
            f"{name}: wakertc {fig['value']:.4g}, stock {fig['reference']:.4g} {fig['unit']} "
            f"({'met' if fig['met'] else 'MISSED'}: {fig['target']})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
