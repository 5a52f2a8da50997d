"""scripts/bench_household.py: its split keeps enrolment, tuning and test apart (and says so
when they are not), and its tuning simulates the daemon's detector chunk for chunk."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS
from speech import synth
from wakertc import verifier as verifier_file
from wakertc.config import WakeConfig, WakeWordConfig
from wakertc.wakeword import WakeWordDetector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_household as bh


def _sets(n_negatives: int = 400, test_set: int = 1) -> tuple[list[bh.Say], ...]:
    """The bench's own sets (more negative segments than a 2-hour run uses)."""
    chosen = bh.TEST_SETS[test_set]
    return (
        bh.enrollment_says(),
        bh.positive_says(bh.ENROLLED, bh.TUNE_WPM, bh.TUNE_PHRASES),
        bh.positive_says((*bh.ENROLLED, *bh.STRANGERS), chosen.wpm, chosen.phrases),
        list(itertools.islice(bh.negative_says(tuning=True), n_negatives)),
        list(itertools.islice(bh.negative_says(tuning=False, test=chosen), n_negatives)),
    )


@pytest.mark.parametrize("test_set", sorted(bh.TEST_SETS))
def test_the_bench_split_is_disjoint(test_set: int) -> None:
    enrolment, tuning, test, tuning_neg, test_neg = _sets(test_set=test_set)
    bh.check_split(enrolment, tuning, test, tuning_neg, test_neg)
    # and the check looks at what it claims to: the sets are not empty, the strangers are tested
    assert len(enrolment) == 15 and len(tuning) == 45 and len(test) == 110
    strangers = {(s.engine, s.voice) for s in test} - set(bh.ENROLLED)
    assert strangers == set(bh.STRANGERS)
    assert {s.engine for s in test_neg} == {"espeak-ng", "flite", "festival"}
    assert {(s.engine, s.voice) for s in tuning_neg} == {*bh.ENROLLED, *bh.VISITORS}


@pytest.mark.parametrize(
    "overlap", ["test clip", "enrolment clip", "text", "stranger", "engine", "visitor"]
)
def test_an_overlapping_split_is_refused(overlap: str) -> None:
    enrolment, tuning, test, tuning_neg, test_neg = _sets(60)
    if overlap == "test clip":
        tuning = [*tuning, test[3]]  # the same saying, in other noise, still the same speech
    elif overlap == "enrolment clip":
        tuning = [*tuning, bh.Say(**{**enrolment[0].__dict__, "noise": "pink", "snr_db": 10.0})]
    elif overlap == "text":
        tuning_neg = [*tuning_neg, bh.Say("flite", "slt", test_neg[7].text, 160)]
    elif overlap == "stranger":
        engine, voice = bh.STRANGERS[1]
        tuning_neg = [*tuning_neg, bh.Say(engine, voice, "a sentence of its own", 160)]
    elif overlap == "visitor":  # a visitor the verifier was trained against is no stranger
        voice = bh.NEGATIVE_VOICES[2]
        tuning_neg = [*tuning_neg, bh.Say("espeak-ng", voice, "a sentence of its own", 160)]
    else:
        enrolment = [*enrolment, bh.Say("festival", "kal_diphone", "hey jarvis", 170)]
    with pytest.raises(bh.SplitError):
        bh.check_split(enrolment, tuning, test, tuning_neg, test_neg)


def test_tuning_simulates_the_detector(tmp_path: Path) -> None:
    """`simulate` over `trace` fires on the very chunks where the daemon's detector does, with a
    verifier that accepts often (random weights) so its streaks and refractory are exercised."""
    wake = WakeConfig(models_dir=MODELS)
    detector = WakeWordDetector(wake)
    window = detector.window(bh.bw.WORD)
    rng = np.random.default_rng(5)
    size = window * verifier_file.FEATURE_SIZE
    word = verifier_file.WordVerifier(
        model_sha256=verifier_file.model_digest(detector.model_path(bh.bw.WORD)),
        window=window,
        base_threshold=0.0005,
        accept=0.6,
        confirm=2,
        mean=np.zeros(size, np.float32),
        scale=np.ones(size, np.float32),
        weights=(rng.standard_normal(size) * 0.02).astype(np.float32),
        bias=0.0,
        people={"x": np.zeros((1, size), np.float32)},
    )
    path = tmp_path / "wakertc.verifier.json"
    verifier_file.save(path, {bh.bw.WORD: word})
    loaded = verifier_file.load(path)[bh.bw.WORD]  # as rounded in the file
    audio = np.concatenate(
        [
            synth(text, voice=voice, wpm=wpm, pad_s=1.0)
            for text, voice, wpm in (
                ("hey jarvis", "en-us", 140),
                ("hey Travis, pass me the jar", "en-gb", 170),
                ("hey jarvis, what time is it", "en-us-nyc+m7", 165),
                ("the harvest service was on Sunday", "en-us+f2", 150),
            )
        ]
    )
    scores, probs = bh.trace(detector, loaded, audio)
    point = bh.OperatingPoint(loaded.base_threshold, loaded.accept, loaded.confirm)
    simulated = bh.simulate(scores, probs, window, point, WakeWordConfig())

    verified = WakeWordDetector(wake, path)
    assert verified.verified_words == [bh.bw.WORD]
    real = []
    for start in range(0, len(audio), bh.bw.FRAME):
        for d in verified.process(audio[start : start + bh.bw.FRAME]):
            real.append((round(d.t * bh.RATE / bh.bw.CHUNK) - 1, d.score < 0.5))
    assert len(real) >= 3 and any(by_verifier for _, by_verifier in real), real
    assert simulated == [i for i, _ in real]


def test_the_second_test_set_is_new_audio() -> None:
    """Set 2 shares no clip (voice, words and rate) and no negative text with set 1, so a
    design chosen after looking at set 1 is measured on speech it has not heard."""
    first, second = _sets(test_set=1), _sets(test_set=2)
    assert not {s.speech for s in first[2]} & {s.speech for s in second[2]}
    assert not {s.text for s in first[4]} & {s.text for s in second[4]}
    strings = " ".join(s.text.lower() for s in second[4][2::3])  # every third: near misses
    assert all(p.lower() in strings for p in bh.NEAR_MISSES_EVAL_2)
    assert not any(p.lower() in strings for p in bh.NEAR_MISSES_EVAL + bh.NEAR_MISSES_TUNE)
    assert {s.wpm for s in second[4]} == set(bh.TEST_SETS[2].negative_wpm)


def test_the_false_accepts_one_engine_made_alone_are_found() -> None:
    stock = [100, 400, 900]
    mine = [101, 400, 650, 930]  # 101 and 400 are the stock model's; 650 and 930 are not
    assert bh.unmatched(mine, stock, within=25) == [650, 930]
    assert bh.unmatched(stock, mine, within=25) == [900]
    assert bh.unmatched(mine, [], within=25) == mine


def test_a_household_voice_among_the_devices_own_voices_is_refused_by_name(monkeypatch) -> None:
    """A household voice that also babbles (or reads enrol's negatives) is no test of hearing
    it: refused, and named, as a stranger's voice would be."""
    enrolment, tuning, test, tuning_neg, test_neg = _sets(60)
    monkeypatch.setattr(bh, "BABBLE_VOICES", (*bh.BABBLE_VOICES, "en-029+f3"))
    with pytest.raises(bh.SplitError, match=r"a test voice trains or babbles: .*en-029\+f3"):
        bh.check_split(enrolment, tuning, test, tuning_neg, test_neg)
