"""`wakertc enroll`: teach the wake word the household's voices (see `verifier` for the idea).

    wakertc enroll NAME [WAV ...] [--config PATH] [--takes N]
    wakertc enroll --list [--config PATH]
    wakertc enroll --remove NAME [--config PATH]

With WAV files, each is one saying of the wake phrase. Without, the phrase is recorded from the
configured microphone (the daemon's audio backend, so the file backend works too): a prompt on
the terminal, the wake cue, and the LEDs in their `listening` pattern for each take.

Training data. Positives: from each clip (clean and mixed with pink noise at 20 and 10 dB SNR)
the embedding windows where the base model's score peaks. Negatives, made here without any
download: the same clips' windows before the phrase and the clips played backwards (the same
voice, not the phrase); seeded pink and white noise at five levels; and, when espeak-ng is
installed, two dozen sentences read in eight voices at three rates, many with words that sound
like the phrase ("hey Travis", "jar", "service"). The texts differ from the bench's, so the
bench measures what enrolment did not see. Negative speech matters most: with only 12 sentences
at two rates (and acceptance at 0.9) the bench measured 120 false accepts per hour against the
stock model's 1.7, so the installer puts espeak-ng on every device (`bootstrap.sh --device`).
Everything is seeded: the same clips train the same verifier.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from . import verifier as verifier_file
from .audio import AudioDeviceError
from .config import Config, ConfigError, config_path, load_config
from .verifier import (
    DEFAULT_ACCEPT,
    DEFAULT_CONFIRM,
    DEFAULT_SIMILAR,
    DEFAULT_VETO,
    VerifierError,
    WordVerifier,
)
from .wakeword import (
    CHUNK_SAMPLES,
    SAMPLE_RATE,
    SampleArray,
    WakeWordDetector,
    WakeWordError,
    read_audio,
)

log = logging.getLogger(__name__)

SEED = 16
TAKE_S = 3.0
"""Seconds recorded per take from the microphone."""
LEAD_S = 1.0
TAIL_S = 0.5
AUG_SNR_DB = (None, 20.0, 10.0)
"""Each clip trains as is and mixed with pink noise at these SNRs (None: clean)."""
PEAK_SPREAD = 1
"""Windows either side of the peak chunk that also count as positives."""
NOISE_RMS = (30, 100, 300, 1000, 3000)
MIN_BASE_THRESHOLD = 0.005
MAX_BASE_THRESHOLD = 0.25

NEGATIVE_VOICES = (
    "en-us",
    "en-gb+f3",
    "en-us+m4",
    "en-gb-scotland",
    "en-us+f5",
    "en-gb+m2",
    "en+klatt2",
    "en-us+m1",
)
"""Voices of the negative speech, one per sentence and rate in turn: the more voices, the more
the verifier learns the household's voices rather than the phrase alone."""
L2 = 3000.0
"""The verifier's L2 penalty: strong, since a few hundred windows train 1,536 weights. Chosen on
scripts/bench_household.py's tuning set (then 30 clips, 23 minutes of negatives): with the eight
voices, 14 clips detected at no more false accepts than the stock model, against 11 with 1.0."""
NEGATIVE_RATES = (130, 160, 190)
NEGATIVE_TEXT = (
    "hey Travis, can you pass the jar of honey",
    "have a nice day, Jarvis is a name from a film",
    "the service was excellent, thank you very much",
    "hey there, are you coming to the harvest supper",
    "hey Marvin, the jam is in the larder",
    "I think the carvings on the door are very old",
    "a jar of java beans and a jersey for Harvey",
    "turn the heating up, it is cold in here",
    "hey, did you see the news about the bridge",
    "hello Jarvis, no wait, I meant hello Mavis",
    "the nervous cat jumped off the garden wall",
    "what time does the shop on the corner close",
    "the plumber said he would come on Friday morning, but nobody believes him any more",
    "we walked along the canal as far as the lock, then turned back because of the rain",
    "hey, have you finished with the scissors, I need them for the wrapping paper",
    "the children built a den out of cushions and refused to come out for supper",
    "if the parcel arrives while I am out, could you ask them to leave it with Mrs Davies",
    "honestly, the car service cost twice what they told us on the phone",
    "a pair of jackdaws has been nesting in the chimney since March",
    "turn left at the church, go past the garage, and the house is the third on the right",
    "Jasmine says the concert starts at half past seven, so we should leave by seven",
    "the dishwasher is making that noise again, can you have a look at it",
    "every evening the old man feeds the pigeons in the square and talks to them",
    "hey Harvey, did you remember to lock the back door before we left",
)


class EnrollError(Exception):
    """Enrolment cannot go on; the message names what and where."""


# --- audio helpers ------------------------------------------------------------------------------


def pink_noise(n: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Unit-RMS pink noise (1/f power), nothing below 50 Hz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 50.0))
    spectrum[freqs < 50] = 0
    noise = np.fft.irfft(spectrum, n)
    rms = float(np.sqrt(np.mean(noise**2))) or 1.0
    return noise / rms


def _mix(clip: SampleArray, snr_db: float | None, rng: np.random.Generator) -> SampleArray:
    """The clip padded with lead-in and tail, in pink noise at `snr_db` (or a faint dither)."""
    lead, tail = int(LEAD_S * SAMPLE_RATE), int(TAIL_S * SAMPLE_RATE)
    speech = clip.astype(np.float64)
    out = np.concatenate((np.zeros(lead), speech, np.zeros(tail)))
    frames = speech[: len(speech) // 320 * 320].reshape(-1, 320)
    level = float(np.sqrt(np.mean(frames**2, axis=1)).max()) if len(frames) else 1000.0
    noise_rms = level * 10 ** (-(snr_db if snr_db is not None else 50.0) / 20)
    out += pink_noise(len(out), rng) * max(noise_rms, 3.0)
    mixed: SampleArray = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    return mixed


def espeak(text: str, voice: str, wpm: int) -> SampleArray | None:
    """`text` read by espeak-ng at 16 kHz; None when espeak-ng is not installed or fails."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".wav") as out:
        result = subprocess.run(
            [exe, "-v", voice, "-s", str(wpm), "-w", out.name, text],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            return None
        return read_audio(Path(out.name))


# --- features -----------------------------------------------------------------------------------


def _positives(
    detector: WakeWordDetector, word: str, clip: SampleArray, where: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
    """(positive windows, negative windows, best base score) of one clip and its noisy copies."""
    rng = np.random.default_rng(SEED + len(clip))
    lead_chunks = int(LEAD_S * SAMPLE_RATE) // CHUNK_SAMPLES
    pos, neg, best = [], [], 0.0
    for snr in AUG_SNR_DB:
        scores, windows = detector.trace(word, _mix(clip, snr, rng))
        # the phrase ends after the lead-in: look for the model's reaction there only
        peak = lead_chunks + int(np.argmax(scores[lead_chunks:]))
        best = max(best, float(scores[peak]))
        pos.append(windows[max(peak - PEAK_SPREAD, 0) : peak + PEAK_SPREAD + 1])
        neg.append(windows[: max(lead_chunks - 2, 0)])
    if best < 0.001:
        log.warning("%s: the wake-word model hardly reacts (best score %.4f)", where, best)
    return np.concatenate(pos), np.concatenate(neg), best


def negatives(detector: WakeWordDetector, word: str) -> npt.NDArray[np.float32]:
    """Negative windows made here: noise, and espeak-ng speech when it is installed."""
    rng = np.random.default_rng(SEED)
    # noise from a quiet room to a loud fan: the verifier must not take any of it for speech
    parts = [(pink_noise(4 * SAMPLE_RATE, rng) * rms).astype(np.int16) for rms in NOISE_RMS]
    parts += [(rng.standard_normal(2 * SAMPLE_RATE) * rms).astype(np.int16) for rms in NOISE_RMS]
    speech = 0
    for i, text in enumerate(NEGATIVE_TEXT):
        for j, rate in enumerate(NEGATIVE_RATES):
            voice = NEGATIVE_VOICES[(i + j) % len(NEGATIVE_VOICES)]
            said = espeak(text, voice, rate)
            if said is None:
                continue
            speech += 1
            parts.append(_mix(said, (None, 20.0, 10.0, 5.0)[(i + rate) % 4], rng))
    if not speech:
        log.warning(
            "espeak-ng is not installed: training against noise only (install espeak-ng for "
            "negatives with speech, which makes false accepts rarer)"
        )
    audio = np.concatenate(parts)
    return detector.trace(word, audio)[1]


# --- microphone ---------------------------------------------------------------------------------


async def _record_takes(config: Config, phrase: str, takes: int) -> list[SampleArray]:
    """`takes` clips of TAKE_S seconds from the configured microphone, each after a prompt,
    the wake cue and the LEDs' `listening` pattern."""
    from .audio import open_backend
    from .leds import StatusLeds
    from .sounds import Cues
    from .state import Phase

    loop = asyncio.get_running_loop()
    backend = open_backend(config.audio)
    leds = StatusLeds(config.leds, None)
    cues = Cues(config.sounds, backend.play)
    frames: list[SampleArray] = []
    per_take = int(TAKE_S * SAMPLE_RATE)
    wanted = asyncio.Event()
    target = 0

    def on_frame(frame: SampleArray) -> None:
        frames.append(frame.copy())
        if sum(len(f) for f in frames) >= target:
            wanted.set()

    clips: list[SampleArray] = []
    try:
        backend.start(loop, on_frame)
        for take in range(takes):
            print(f"take {take + 1}/{takes}: after the tone, say '{phrase}'", flush=True)
            frames.clear()
            target = per_take
            wanted.clear()
            leds.show(Phase.LISTENING)
            cues.wake()
            await asyncio.wait_for(wanted.wait(), TAKE_S + 5.0)
            leds.show(Phase.IDLE)
            clips.append(np.concatenate(frames)[:per_take])
        cues.done()
    finally:
        leds.close()
        backend.close()
    return clips


# --- the command --------------------------------------------------------------------------------


def enroll(
    config: Config, name: str, clips: list[tuple[str, SampleArray]], word: str | None = None
) -> Path:
    """Add (or replace) `name`'s clips and retrain; the verifier file written."""
    assert config.source is not None
    path = verifier_file.verifier_path(config.source)
    detector = WakeWordDetector(config.wake)
    word_name = word or config.wake.words[0].name
    existing = _existing(path)
    current = existing.get(word_name)
    people = dict(current.people) if current is not None else {}
    rows = [_positives(detector, word_name, clip, where) for where, clip in clips]
    people[name] = np.concatenate([r[0] for r in rows])
    # The same voice saying something else: each clip backwards (the voice, not the phrase).
    rng = np.random.default_rng(SEED)
    backwards = [
        detector.trace(word_name, _mix(clip[::-1].copy(), snr, rng))[1]
        for _, clip in clips
        for snr in AUG_SNR_DB
    ]
    extra_negatives = np.concatenate([r[1] for r in rows] + backwards)
    existing[word_name] = _retrain(detector, word_name, people, extra_negatives)
    verifier_file.save(path, existing)
    best = ", ".join(f"{r[2]:.3f}" for r in rows)
    print(f"enrolled {name} for {word_name} ({len(clips)} clips, stock scores {best}) in {path}")
    return path


def _existing(path: Path) -> dict[str, WordVerifier]:
    if not path.exists():
        return {}
    try:
        return verifier_file.load(path)
    except VerifierError as exc:
        raise EnrollError(f"{exc}\n(remove the file to start afresh)") from exc


def _retrain(
    detector: WakeWordDetector,
    word: str,
    people: dict[str, npt.NDArray[np.float32]],
    extra_negatives: npt.NDArray[np.float32] | None = None,
) -> WordVerifier:
    positives = np.concatenate(list(people.values()))
    negs = negatives(detector, word)
    if extra_negatives is not None and len(extra_negatives):
        negs = np.concatenate((negs, extra_negatives))
    mean, scale, weights, bias = verifier_file.train(positives, negs, l2=L2)
    window = detector.window(word)
    base_scores = np.array(
        [detector.score_window(word, row.reshape(window, -1)) for row in positives]
    )
    # Propose at half the weakest enrolled saying's score, so every enrolled clip reaches the
    # verifier, but no lower than needed: each proposal is a chance of a false accept.
    base = float(np.clip(np.min(base_scores) / 2, MIN_BASE_THRESHOLD, MAX_BASE_THRESHOLD))
    return WordVerifier(
        model_sha256=verifier_file.model_digest(detector.model_path(word)),
        window=window,
        base_threshold=round(base, 4),
        accept=DEFAULT_ACCEPT,
        confirm=DEFAULT_CONFIRM,
        veto=DEFAULT_VETO,
        similar=DEFAULT_SIMILAR,
        mean=mean,
        scale=scale,
        weights=weights,
        bias=bias,
        people=people,
    )


def remove(config: Config, name: str) -> bool:
    """Forget `name`: retrain on the others, or delete the file when nobody is left."""
    assert config.source is not None
    path = verifier_file.verifier_path(config.source)
    existing = _existing(path)
    found = False
    detector: WakeWordDetector | None = None
    for word, current in list(existing.items()):
        if name not in current.people:
            continue
        found = True
        people = {p: rows for p, rows in current.people.items() if p != name}
        if not people:
            del existing[word]
            continue
        detector = detector or WakeWordDetector(config.wake)
        existing[word] = _retrain(detector, word, people)
    if not found:
        return False
    if existing:
        verifier_file.save(path, existing)
    else:
        path.unlink()  # nobody left: the stock model alone, as before any enrolment
    return True


def main(argv: list[str]) -> int:
    """`wakertc enroll`: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="wakertc enroll",
        description="Train a per-household verifier for the wake word from a person's sayings "
        "of it (WAV files, or recorded now from the configured microphone); stored beside the "
        "config and used by `wakertc run` and `wakertc detect`.",
    )
    parser.add_argument("name", nargs="?", help="who is enrolling (letters, digits, - and _)")
    parser.add_argument("wavs", nargs="*", type=Path, help="recordings of the wake phrase")
    parser.add_argument("--config", help="config file (default $WAKERTC_CONFIG or /etc/wakertc)")
    parser.add_argument("--list", action="store_true", help="list the enrolled people")
    parser.add_argument("--remove", metavar="NAME", help="forget NAME (nobody left: stock model)")
    parser.add_argument("--takes", type=int, default=4, help="takes from the microphone (4)")
    parser.add_argument("--word", help="wake word to enroll for (default: the first configured)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    source = config_path(args.config)
    try:
        config = load_config(source)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    path = verifier_file.verifier_path(source)
    try:
        if args.list:
            for word, current in sorted(_existing(path).items()):
                for person, rows in sorted(current.people.items()):
                    print(f"{person}\t{word}\t{len(rows)} windows")
            return 0
        if args.remove:
            if not remove(config, args.remove):
                print(f"{path}: nobody called {args.remove!r} is enrolled", file=sys.stderr)
                return 1
            print(f"removed {args.remove} ({path})")
            return 0
        if not args.name or not args.name.replace("-", "").replace("_", "").isalnum():
            parser.error("give a NAME (letters, digits, - and _), or --list or --remove NAME")
        words = {w.name for w in config.wake.words}
        if args.word is not None and args.word not in words:
            parser.error(f"--word {args.word}: not a configured wake word ({', '.join(words)})")
        if args.wavs:
            clips = [(str(p), read_audio(p)) for p in args.wavs]
        else:
            if args.takes < 1:
                parser.error("--takes: at least 1")
            phrase = (args.word or config.wake.words[0].name).replace("_", " ")
            recorded = asyncio.run(_record_takes(config, phrase, args.takes))
            clips = [(f"take {i + 1}", c) for i, c in enumerate(recorded)]
        for where, clip in clips:
            if len(clip) < SAMPLE_RATE // 4:
                raise EnrollError(f"{where}: shorter than 0.25 s; is it the wake phrase?")
        enroll(config, args.name, clips, args.word)
    except (EnrollError, ValueError, WakeWordError, AudioDeviceError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
