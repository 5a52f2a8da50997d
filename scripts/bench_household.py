#!/usr/bin/env python3
"""Household enrolment (issue 16), measured: the verifier beside the stock openwakeword package.

    /work/venv-main/bin/python scripts/bench_household.py [--negative-min 30] [--workdir DIR]

Extends scripts/bench_wakeword.py (its mixing, its stock-package worker and its detection rule)
with what enrolment needs:

- speech from three Debian TTS engines: espeak-ng (`-s` words per minute), flite and festival
  (their duration stretch set to 165 / wpm: both read at roughly 165 wpm by default, so the
  rates of those two are approximate);
- voices split into an enrolled household (enrolled with "hey jarvis" at 130, 150 and 190 wpm,
  clean, through `wakertc.enroll.enroll`, exactly as `wakertc enroll` does) and strangers (whole
  voices and the festival engine never enrolled);
- test positives at 120, 140, 165, 180 and 200 wpm (never an enrolment rate), alone or followed
  by a request, at -22/-28/-34 dBFS, in pink noise at 5, 10 and 20 dB SNR, babble (four
  espeak-ng voices reading at once) at 10 dB, and a room reverb (RT60 0.5 s) with pink noise at
  10 dB, each with 2 s of that noise before it;
- negatives: bench_wakeword's negative speech (confusable phrases included) read by espeak-ng,
  flite and festival voices, enrolled and strangers alike, in pink noise or babble at 5-20 dB,
  plus noise-only stretches; false accepts per hour are reported over all of it.

Both engines hear the same audio; the stock package is the unchanged openwakeword 0.6.0 on the
same interpreter (scripts/stock_oww.py). wakertc runs with the verifier file that enrolment
wrote, through `WakeWordDetector(config, verifier_path)` as the daemon does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_wakeword as bw
from wakertc.config import Config, WakeConfig, WakeWordConfig
from wakertc.enroll import enroll
from wakertc.verifier import verifier_path

RATE = bw.RATE
ENROLLED = (
    ("espeak-ng", "en-us-nyc+m7"),
    ("espeak-ng", "en-029+f3"),
    ("espeak-ng", "en-gb-x-gbclan"),
    ("flite", "slt"),
    ("flite", "awb"),
)
STRANGERS = (
    ("espeak-ng", "en-us"),
    ("espeak-ng", "en-gb-scotland"),
    ("espeak-ng", "en-us+f2"),
    ("flite", "rms"),
    ("flite", "kal16"),
    ("festival", "kal_diphone"),
)
ENROLL_WPM = (130, 150, 190)
TEST_WPM = (120, 140, 165, 180, 200)
PHRASES = ("hey jarvis", "hey jarvis, what time is it")
CONDITIONS = (
    ("pink", 5.0),
    ("pink", 10.0),
    ("pink", 20.0),
    ("babble", 10.0),
    ("reverb+pink", 10.0),
)
LEVELS = (-22.0, -28.0, -34.0)
BABBLE_VOICES = ("en-us", "en-gb+f3", "en-us+m4", "en-gb-scotland")


class Tts:
    """Speech from the three engines as 16 kHz int16, cached as .npy files."""

    def __init__(self, cache: Path) -> None:
        for exe in ("espeak-ng", "flite", "text2wave"):
            if shutil.which(exe) is None:
                raise RuntimeError(f"{exe} is not installed (apt: espeak-ng flite festival)")
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)

    def get(self, engine: str, voice: str, text: str, wpm: int) -> bw.Samples:
        """`text` said by `voice` of `engine` at about `wpm` words per minute."""
        key = hashlib.sha256(repr((engine, voice, text, wpm)).encode()).hexdigest()[:20]
        path = self.cache / f"{key}.npy"
        if not path.exists():
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "out.wav"
                stretch = f"{165 / wpm:.3f}"
                if engine == "espeak-ng":
                    cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text]
                    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
                elif engine == "flite":
                    cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}"]
                    subprocess.run(
                        [*cmd, "-t", text, "-o", str(wav)], check=True, capture_output=True
                    )
                else:
                    subprocess.run(
                        [
                            "text2wave",
                            "-eval",
                            f"(voice_{voice})",
                            "-eval",
                            f"(Parameter.set 'Duration_Stretch {stretch})",
                            "-o",
                            str(wav),
                        ],
                        input=text.encode(),
                        check=True,
                        capture_output=True,
                        timeout=120,
                    )
                with wave.open(str(wav), "rb") as w:
                    rate = w.getframerate()
                    native = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            out = soxr.resample(native.astype(np.float32) / 32768.0, rate, RATE)
            np.save(path, (np.clip(out, -1, 1) * 32767).astype(np.int16))
        samples: bw.Samples = np.load(path)
        return samples


def room_reverb(x: bw.Floats, rng: np.random.Generator, rt60: float = 0.5) -> bw.Floats:
    """`x` in a small room: convolved with exponentially decaying noise (direct path first)."""
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    ir[0] = 1.0
    size = len(x) + n - 1
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    return wet * np.sqrt(np.mean(x**2) / max(np.mean(wet**2), 1e-9))


def babble(tts: Tts, n: int, rng: np.random.Generator) -> bw.Floats:
    """`n` samples of four voices reading at once, unit RMS."""
    streams = []
    for i, voice in enumerate(BABBLE_VOICES):
        text = bw.PARAGRAPHS[(i * 3 + int(rng.integers(5))) % len(bw.PARAGRAPHS)]
        s = tts.get("espeak-ng", voice, text, 160).astype(np.float64)
        reps = -(-n // len(s)) + 1
        s = np.tile(s, reps)
        off = int(rng.integers(len(s) - n))
        streams.append(s[off : off + n] / (np.sqrt(np.mean(s**2)) + 1e-9))
    out = np.sum(streams, axis=0)
    return out / np.sqrt(np.mean(out**2))


def noisy(
    tts: Tts,
    speech: bw.Samples | None,
    kind: str,
    snr_db: float,
    level_dbfs: float,
    before_s: float,
    after_s: float,
    rng: np.random.Generator,
) -> tuple[bw.Samples, int]:
    """Like bench_wakeword.mix, with babble or reverb as well as pink noise."""
    before = round(before_s * RATE)
    n_speech = 0 if speech is None else len(speech)
    total = bw._chunks_up(before + n_speech + round(after_s * RATE))
    bed = babble(tts, total, rng) if kind == "babble" else bw.pink_noise(total, rng)
    out = bed * np.sqrt(bw.level_power(level_dbfs) / 10 ** (snr_db / 10))
    onset = before
    if speech is not None and n_speech:
        s = speech.astype(np.float64)
        if kind.startswith("reverb"):
            s = room_reverb(np.concatenate((s, np.zeros(RATE // 2))), rng)[:n_speech]
        gain = np.sqrt(bw.level_power(level_dbfs) / max(bw.active_power(speech), 1e-9))
        out[before : before + n_speech] += s * gain
        onset = before + int(np.argmax(bw.active_frames(speech))) * bw.FRAME
    return np.clip(np.round(out), -32768, 32767).astype(np.int16), onset


def build(tts: Tts, negative_s: float, say: Any) -> tuple[bw.AudioSet, list[bool]]:
    """The audio set, and per positive clip whether its voice is enrolled."""
    rng = np.random.default_rng(bw.SEED + 16)
    clips: list[bw.Positive] = []
    parts: list[bw.Samples] = []
    enrolled: list[bool] = []
    start = 0
    k = 0
    for group, voices in ((True, ENROLLED), (False, STRANGERS)):
        for engine, voice in voices:
            for wpm in TEST_WPM:
                for phrase in PHRASES:
                    kind, snr = CONDITIONS[k % len(CONDITIONS)]
                    level = LEVELS[k % len(LEVELS)]
                    k += 1
                    speech = tts.get(engine, voice, phrase, wpm)
                    clip, onset = noisy(tts, speech, kind, snr, level, 2.0, 1.5, rng)
                    label = f"{engine}:{voice} [{kind} {snr:g} dB]"
                    clips.append(bw.Positive(label, wpm, phrase, level, start, len(clip), onset))
                    enrolled.append(group)
                    parts.append(clip)
                    start += len(clip)
    say(f"{len(clips)} positives")
    # negatives: the bench's texts, each segment read by one of all the voices, in turn
    voices = (*ENROLLED, *STRANGERS)
    segments: list[bw.Segment] = []
    negs: list[bw.Samples] = []
    pos = 0
    speech_s = noise_s = 0.0
    texts = bw._negative_texts()
    n = 0
    while speech_s < negative_s:
        text, _, wpm = next(texts)
        engine, voice = voices[n % len(voices)]
        kind, snr = CONDITIONS[(n * 2) % len(CONDITIONS)]
        speech = tts.get(engine, voice, text, wpm)
        seg, _ = noisy(tts, speech, kind, max(snr, 5.0), LEVELS[n % 3], 0.5, 0.5, rng)
        segments.append(bw.Segment(pos, len(seg), f"{engine}:{voice}", wpm, text))
        negs.append(seg)
        pos += len(seg)
        speech_s += len(seg) / RATE
        n += 1
        if n % 5 == 0:
            quiet, _ = noisy(tts, None, "pink" if n % 10 else "babble", 10.0, -28.0, 20, 0, rng)
            segments.append(bw.Segment(pos, len(quiet)))
            negs.append(quiet)
            pos += len(quiet)
            noise_s += len(quiet) / RATE
    audio = bw.AudioSet(
        np.concatenate(parts), clips, np.concatenate(negs), segments, speech_s, noise_s
    )
    say(f"negatives: {speech_s / 60:.1f} min speech + {noise_s / 60:.1f} min noise")
    return audio, enrolled


def run_verified(audio: bw.AudioSet, wake: WakeConfig, verifier: Path) -> bw.EngineRun:
    """wakertc with the household verifier, on 20 ms frames (fresh per clip, as bench_wakeword)."""
    from wakertc.wakeword import WakeWordDetector

    detector = WakeWordDetector(wake, verifier)
    assert detector.verified_words == [bw.WORD], "the verifier did not load"
    cpu = time.thread_time()

    def stream(samples: bw.Samples) -> list[int]:
        fired = []
        for s in range(0, len(samples), bw.FRAME):
            for d in detector.process(samples[s : s + bw.FRAME]):
                fired.append(round(d.t * RATE / bw.CHUNK) - 1)
        return fired

    pos_fired = []
    for clip in audio.clips:
        detector.reset()
        pos_fired.append(stream(audio.positives[clip.start : clip.start + clip.length]))
    detector.reset()
    neg_fired = stream(audio.negatives)
    empty = np.zeros(0)
    return bw.EngineRun(empty, empty, pos_fired, neg_fired, time.thread_time() - cpu)


def main(argv: list[str]) -> int:
    """Enroll, build, run both engines, print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--negative-min", type=float, default=30.0, help="minutes of speech")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wakertc-bench-household"))
    parser.add_argument("--models-dir", type=Path, default=bw.ROOT / "models")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    tts = Tts(work / "tts")
    wake = WakeConfig(models_dir=args.models_dir)
    config = Config(wake=wake, source=work / "wakertc.toml")
    verifier = verifier_path(config.source)  # type: ignore[arg-type]
    verifier.unlink(missing_ok=True)
    for engine, voice in ENROLLED:
        clips = [(f"{voice}@{w}", tts.get(engine, voice, "hey jarvis", w)) for w in ENROLL_WPM]
        enroll(config, voice.replace("+", "_"), clips)
    say("enrolled")
    audio, enrolled = build(tts, args.negative_min * 60, say)
    engines = [bw.StockEngine(args.models_dir, work, f"stock{i}") for i in range(2)]
    try:
        stock = bw.run_stock(audio, engines, work, WakeWordConfig())
    finally:
        for e in engines:
            e.close()
    say("stock scored")
    mine = run_verified(audio, wake, verifier)
    plain = bw.run_wakertc(audio, wake)
    say("wakertc scored")
    hours = len(audio.negatives) / RATE / 3600
    hits = {
        "stock": bw._detected(stock, audio.clips),
        "wakertc_verifier": bw._detected(mine, audio.clips),
        "wakertc_no_verifier": bw._detected(plain, audio.clips),
    }
    runs = {"stock": stock, "wakertc_verifier": mine, "wakertc_no_verifier": plain}
    result: dict[str, Any] = {
        "negative_hours": round(hours, 3),
        "negative_speech_min": round(audio.speech_s / 60, 1),
        "negative_noise_min": round(audio.noise_only_s / 60, 1),
        "cpu_s": {k: round(r.cpu_s, 1) for k, r in runs.items()},
    }
    for group, flag in (("enrolled", True), ("strangers", False)):
        idx = [i for i, e in enumerate(enrolled) if e == flag]
        names = {c.voice.split(" ")[0] for i, c in enumerate(audio.clips) if i in idx}
        seg_hits: dict[str, int] = {}
        for name, run in runs.items():
            seg_hits[name] = sum(
                1
                for f in run.neg_fired
                if bw._segment_at(audio.segments, f * bw.CHUNK).voice in names
            )
        result[group] = {
            "clips": len(idx),
            "detection_rate": {k: round(np.mean([h[i] for i in idx]), 3) for k, h in hits.items()},
            "false_accepts_on_their_speech": seg_hits,
        }
        by_condition: dict[str, dict[str, int]] = {}
        for i in idx:
            cond = audio.clips[i].voice.split("[")[1].rstrip("]")
            row = by_condition.setdefault(cond, {"n": 0, **dict.fromkeys(hits, 0)})
            row["n"] += 1
            for k, h in hits.items():
                row[k] += int(h[i])
        result[group]["by_condition"] = by_condition
        by_rate: dict[str, dict[str, int]] = {}
        for i in idx:
            row = by_rate.setdefault(str(audio.clips[i].wpm), {"n": 0, **dict.fromkeys(hits, 0)})
            row["n"] += 1
            for k, h in hits.items():
                row[k] += int(h[i])
        result[group]["by_wpm"] = by_rate
    result["false_accepts_per_hour"] = {
        k: round(len(r.neg_fired) / hours, 2) for k, r in runs.items()
    }
    result["false_accepts"] = {
        k: [bw._segment_at(audio.segments, f * bw.CHUNK).label()[:70] for f in r.neg_fired[:10]]
        for k, r in runs.items()
    }
    print(json.dumps(result, indent=1))
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
