"""Wake word: real openWakeWord models, real espeak-ng speech, parity with the stock package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS, ROOT
from speech import mix_noise, synth, write_wav
from wakertc.config import WakeConfig, WakeWordConfig
from wakertc.wakeword import (
    CHUNK_SAMPLES,
    FEATURE_NOISE_SEED,
    Detection,
    WakeWordDetector,
    WakeWordError,
    detect_main,
)

VOICES = ("en-us", "en-gb", "en-gb-scotland")
UNRELATED = "the weather is nice today, let us go for a walk"
SILENCE_1S = np.zeros(16000, dtype=np.int16)
NOISE_1S = np.random.default_rng(3).normal(0, 1000, 16000).astype(np.int16)


def wake(*words: WakeWordConfig, models_dir: Path = MODELS) -> WakeConfig:
    return WakeConfig(models_dir=models_dir, words=words or (WakeWordConfig(),))


def chunks(audio: np.ndarray, size: int = CHUNK_SAMPLES) -> Iterator[np.ndarray]:
    for start in range(0, len(audio), size):
        yield audio[start : start + size]


def feed(detector: WakeWordDetector, audio: np.ndarray, size: int = CHUNK_SAMPLES):
    return [d for chunk in chunks(audio, size) for d in detector.process(chunk)]


def score_trace(detector: WakeWordDetector, audio: np.ndarray) -> dict[str, list[float]]:
    """Each word's score after every whole chunk."""
    trace: dict[str, list[float]] = {name: [] for name in detector.last_scores}
    for chunk in chunks(audio[: len(audio) - len(audio) % CHUNK_SAMPLES]):
        detector.process(chunk)
        for name, score in detector.last_scores.items():
            trace[name].append(score)
    return trace


def speech_span(text: str, voice: str = "en-us") -> tuple[float, float]:
    """Start and end (s) of the speech in `synth(text, voice)`, which has 1 s of silence around."""
    return 1.0, len(synth(text, voice)) / 16000 - 1.0


# -- detection on real speech ------------------------------------------------------------------


@pytest.mark.parametrize("voice", VOICES)
def test_hey_jarvis_is_detected_once_in_each_voice(voice):
    detector = WakeWordDetector(wake())
    detections = feed(detector, synth("hey jarvis", voice))
    start, end = speech_span("hey jarvis", voice)
    assert len(detections) == 1, detections
    (detection,) = detections
    assert detection.word == "hey_jarvis"
    assert 0.5 <= detection.score <= 1.0
    assert start < detection.t <= end + 0.5
    # t counts whole 80 ms chunks of audio fed
    assert detection.t / 0.08 == pytest.approx(round(detection.t / 0.08))


def test_unrelated_sentence_is_not_detected():
    detector = WakeWordDetector(wake())
    audio = synth(UNRELATED)
    assert feed(detector, audio) == []
    detector.reset()
    assert max(score_trace(detector, audio)["hey_jarvis"]) < 0.1


def test_two_words_at_once_each_fire_only_on_their_own_phrase():
    detector = WakeWordDetector(wake(WakeWordConfig("hey_jarvis"), WakeWordConfig("alexa")))
    jarvis, alexa = synth("hey jarvis"), synth("alexa", "en-gb")
    detections = feed(detector, np.concatenate((jarvis, alexa, synth(UNRELATED))))
    assert [d.word for d in detections] == ["hey_jarvis", "alexa"]
    assert (
        detections[0].t < len(jarvis) / 16000 < detections[1].t < (len(jarvis) + len(alexa)) / 16000
    )

    detector.reset()
    trace = score_trace(detector, jarvis)
    assert max(trace["hey_jarvis"]) > 0.9 and max(trace["alexa"]) < 0.05
    detector.reset()
    trace = score_trace(detector, alexa)
    assert max(trace["alexa"]) > 0.9 and max(trace["hey_jarvis"]) < 0.05


def test_threshold_decides_what_counts():
    audio = synth("hey jarvis")
    best = max(score_trace(WakeWordDetector(wake()), audio)["hey_jarvis"])
    assert best > 0.9

    above = WakeWordDetector(wake(WakeWordConfig(threshold=min(1.0, best + 1e-3))))
    assert feed(above, audio) == []
    (at_best,) = feed(WakeWordDetector(wake(WakeWordConfig(threshold=best))), audio)
    assert at_best.score == best
    (sensitive,) = feed(WakeWordDetector(wake(WakeWordConfig(threshold=0.05))), audio)
    assert sensitive.t <= at_best.t and sensitive.score >= 0.05


def test_refractory_period_suppresses_repeats_of_the_same_word():
    twice = np.concatenate((synth("hey jarvis"), synth("hey jarvis", "en-gb")))

    def detections(refractory_s: float) -> list[Detection]:
        return feed(WakeWordDetector(wake(WakeWordConfig(refractory_s=refractory_s))), twice)

    # Without a refractory period every chunk above the threshold fires, 80 ms apart.
    every_chunk = detections(0.0)
    assert len(every_chunk) > 4
    assert min(np.diff([d.t for d in every_chunk])) == pytest.approx(0.08)

    one_each = detections(1.0)
    assert len(one_each) == 2
    assert one_each[1].t - one_each[0].t > 2.0  # the second phrase, not a repeat of the first
    assert {d.t for d in one_each} <= {d.t for d in every_chunk}

    assert len(detections(30.0)) == 1


def test_refractory_is_per_word():
    both = (WakeWordConfig("hey_jarvis", refractory_s=30), WakeWordConfig("alexa", refractory_s=30))
    audio = np.concatenate((synth("hey jarvis"), synth("alexa", "en-gb")))
    assert [d.word for d in feed(WakeWordDetector(wake(*both)), audio)] == ["hey_jarvis", "alexa"]


def test_reset_forgets_stale_audio_and_restarts_the_clock():
    audio = synth("hey jarvis")
    fresh = WakeWordDetector(wake())
    first = feed(fresh, audio)
    fire_chunk = round(first[0].t / 0.08)
    almost = audio[: (fire_chunk - 2) * CHUNK_SAMPLES]  # the phrase nearly said, not yet detected

    control = WakeWordDetector(wake())
    assert feed(control, almost) == []
    assert feed(control, np.tile(SILENCE_1S, 2)) != []  # what was heard would fire

    detector = WakeWordDetector(wake())
    assert feed(detector, almost) == []
    detector.reset()
    assert detector.seconds == 0.0
    assert feed(detector, np.tile(SILENCE_1S, 2)) == []

    # After a reset the detector behaves exactly like a new one, refractory state included.
    detector.reset()
    assert feed(detector, audio) == first


def test_custom_model_path_and_name(tmp_path):
    custom = tmp_path / "computer.tflite"
    shutil.copy(MODELS / "hey_jarvis_v0.1.tflite", custom)
    detector = WakeWordDetector(wake(WakeWordConfig(name="computer", model=custom)))
    assert [d.word for d in feed(detector, synth("hey jarvis"))] == ["computer"]


def test_odd_and_small_input_sizes_give_identical_results():
    audio = mix_noise(synth("hey jarvis", "en-gb"), snr_db=20)
    reference = feed(WakeWordDetector(wake()), audio, CHUNK_SAMPLES)
    assert reference
    assert feed(WakeWordDetector(wake()), audio, 320) == reference
    detector = WakeWordDetector(wake())
    sizes = [1, 7, 333, 4000, 0, 1279, 2561]
    pieces, start = [], 0
    while start < len(audio):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(audio[start : start + size])
        start += size
    assert [d for piece in pieces for d in detector.process(piece)] == reference


def test_audio_of_the_wrong_type_is_refused():
    detector = WakeWordDetector(wake())
    with pytest.raises(ValueError, match="int16"):
        detector.process(np.zeros(1280, dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        detector.process(np.zeros((1280, 2), dtype=np.int16))


# -- loading errors ---------------------------------------------------------------------------


def _models_copy(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copy(MODELS / name, tmp_path / name)
    return tmp_path


def test_missing_default_models_point_at_bootstrap(tmp_path):
    with pytest.raises(WakeWordError) as caught:
        WakeWordDetector(wake(models_dir=tmp_path))
    message = str(caught.value)
    assert str(tmp_path / "hey_jarvis_v0.1.tflite") in message
    assert "not found" in message and "scripts/bootstrap.sh" in message

    models = _models_copy(tmp_path, "hey_jarvis_v0.1.tflite", "embedding_model.tflite")
    with pytest.raises(
        WakeWordError, match=r"melspectrogram\.tflite: melspectrogram model not found"
    ):
        WakeWordDetector(wake(models_dir=models))


def test_missing_custom_model_names_the_config_key(tmp_path):
    missing = tmp_path / "nope.tflite"
    config = wake(WakeWordConfig("hey_jarvis"), WakeWordConfig("mine", model=missing))
    with pytest.raises(WakeWordError) as caught:
        WakeWordDetector(config)
    assert str(missing) in str(caught.value) and "wake.words[1].model" in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"not a model at all\n" * 100], ids=["empty", "text"])
def test_a_file_that_is_not_a_model_is_named(tmp_path, content):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(content)
    with pytest.raises(WakeWordError) as caught:
        WakeWordDetector(wake(WakeWordConfig("mine", model=bad)))
    assert str(bad) in str(caught.value) and "TensorFlow Lite" in str(caught.value)


@pytest.mark.parametrize("wrong", ["embedding_model.tflite", "melspectrogram.tflite"])
def test_a_model_of_the_wrong_kind_is_explained(wrong):
    with pytest.raises(WakeWordError) as caught:
        WakeWordDetector(wake(WakeWordConfig("mine", model=MODELS / wrong)))
    assert str(MODELS / wrong) in str(caught.value) and "expected [1, N, 96]" in str(caught.value)


def test_garbage_front_end_model_is_named(tmp_path):
    models = _models_copy(tmp_path, "hey_jarvis_v0.1.tflite", "melspectrogram.tflite")
    (models / "embedding_model.tflite").write_bytes(b"\0" * 4096)
    with pytest.raises(WakeWordError, match=r"embedding_model\.tflite: embedding model is not a"):
        WakeWordDetector(wake(models_dir=models))


# -- parity with the stock openwakeword package ------------------------------------------------

PARITY_WORDS = ("hey_jarvis", "alexa")
PARITY_CLIPS = {
    "jarvis-en-us": lambda: synth("hey jarvis"),
    "jarvis-en-gb-scotland-noisy": lambda: mix_noise(synth("hey jarvis", "en-gb-scotland"), 10),
    "alexa-en-gb": lambda: synth("alexa", "en-gb"),
    "unrelated": lambda: synth(UNRELATED),
    "noise-then-both": lambda: np.concatenate(
        (NOISE_1S, synth("hey jarvis", "en-gb"), NOISE_1S, synth("alexa"))
    ),
}


@pytest.fixture(scope="module")
def stock():
    """The stock openWakeWord 0.6.0 model, the reference (slow to import, so built once).

    It runs on ai_edge_litert, as wakertc does: scripts/stock_oww.py says how and why."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from stock_oww import stock_model
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return stock_model(MODELS, list(PARITY_WORDS))


def stock_trace(stock, audio: np.ndarray, seed: int) -> dict[str, list[float]]:
    # openWakeWord fills its feature history with unseeded np.random noise on reset.
    np.random.seed(seed)
    stock.reset()
    trace: dict[str, list[float]] = {w: [] for w in PARITY_WORDS}
    for start in range(0, len(audio) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        scores = stock.predict(audio[start : start + CHUNK_SAMPLES])
        for word in PARITY_WORDS:
            trace[word].append(float(scores[f"{word}_v0.1"]))
    return trace


def reference_detections(trace: dict[str, list[float]], word: WakeWordConfig) -> list[float]:
    """When a word fires given per-chunk scores: at or above threshold, outside refractory."""
    fired: list[float] = []
    for i, score in enumerate(trace[word.name]):
        t = (i + 1) * CHUNK_SAMPLES / 16000
        if score >= word.threshold and (not fired or t - fired[-1] >= word.refractory_s):
            fired.append(t)
    return fired


@pytest.mark.parametrize("clip", PARITY_CLIPS)
def test_scores_and_detections_match_the_stock_package(stock, clip):
    audio = PARITY_CLIPS[clip]()
    words = tuple(WakeWordConfig(w) for w in PARITY_WORDS)
    detector = WakeWordDetector(wake(*words))
    expected = stock_trace(stock, audio, FEATURE_NOISE_SEED)
    detections = []
    actual: dict[str, list[float]] = {w: [] for w in PARITY_WORDS}
    for chunk in chunks(audio[: len(audio) - len(audio) % CHUNK_SAMPLES]):
        detections += detector.process(chunk)
        for word in PARITY_WORDS:
            actual[word].append(detector.last_scores[word])

    for word in words:
        np.testing.assert_allclose(actual[word.name], expected[word.name], rtol=0, atol=1e-4)
        # both report exactly 0 while the start-up noise fills the feature window
        assert actual[word.name][:5] == expected[word.name][:5] == [0.0] * 5
        mine = [d.t for d in detections if d.word == word.name]
        assert mine == reference_detections(expected, word)
    if clip != "unrelated":
        assert detections, "each speech clip should fire at least one word"


def test_start_up_noise_only_affects_the_first_window(stock):
    """With its own noise, the stock package agrees once 16 real features fill the window."""
    audio = synth("hey jarvis", "en-gb")
    expected = stock_trace(stock, audio, FEATURE_NOISE_SEED + 12345)
    actual = score_trace(WakeWordDetector(wake(WakeWordConfig("hey_jarvis"))), audio)
    np.testing.assert_allclose(actual["hey_jarvis"][16:], expected["hey_jarvis"][16:], atol=1e-4)


# -- wakertc detect ------------------------------------------------------------------------------


@pytest.fixture
def no_config(monkeypatch, tmp_path):
    monkeypatch.setenv("WAKERTC_CONFIG", str(tmp_path / "absent.toml"))


def _wav_48k_stereo(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "jarvis.wav", synth("hey jarvis", rate=48000), 48000, channels=2)


def _wav_44k_float(tmp_path: Path) -> Path:
    source = write_wav(tmp_path / "source.wav", synth("hey jarvis", rate=44100), 44100)
    out = tmp_path / "float.wav"
    subprocess.run(
        ["sox", str(source), "-e", "floating-point", "-b", "32", "-c", "2", str(out)], check=True
    )
    return out


@pytest.mark.parametrize("make_wav", [_wav_48k_stereo, _wav_44k_float], ids=["48k-s16", "44k-f32"])
def test_detect_prints_json_lines(tmp_path, capsys, no_config, make_wav):
    wav = make_wav(tmp_path)
    assert detect_main([str(wav), "--models-dir", str(MODELS)]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["word"] for line in lines] == ["hey_jarvis"]
    assert set(lines[0]) == {"word", "score", "t"}
    start, end = speech_span("hey jarvis")
    assert lines[0]["score"] >= 0.5 and start < lines[0]["t"] <= end + 0.5
    # the same as feeding the 16 kHz clip directly, within a chunk or two of resampling jitter
    (direct,) = feed(WakeWordDetector(wake()), synth("hey jarvis"))
    assert abs(lines[0]["t"] - direct.t) <= 0.16
    assert "hey_jarvis: best score 0.9" in err


def test_detect_threshold_flag_and_config_file(tmp_path, capsys, write_config):
    wav = write_wav(tmp_path / "alexa.wav", synth("alexa", "en-gb"), 16000)
    config = write_config(
        f'[wake]\nmodels_dir = "{MODELS}"\n'
        '[[wake.words]]\nname = "hey_jarvis"\n[[wake.words]]\nname = "alexa"\nthreshold = 0.3\n'
    )
    assert detect_main([str(wav), "--config", str(config)]) == 0
    assert [json.loads(line)["word"] for line in capsys.readouterr().out.splitlines()] == ["alexa"]

    assert detect_main([str(wav), "--config", str(config), "--threshold", "1.0"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("content", [None, b"RIFF\x10\0\0\0WAVEjunk", b"\x00" * 1000])
def test_detect_bad_file_is_one_line_and_exit_2(tmp_path, capsys, no_config, content):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    assert detect_main([str(path), "--models-dir", str(MODELS)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"{path}: cannot read audio: ")


def test_detect_missing_models_is_one_line_and_exit_2(tmp_path, capsys, no_config):
    wav = _wav_48k_stereo(tmp_path)
    assert detect_main([str(wav), "--models-dir", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "scripts/bootstrap.sh" in err


def test_wakertc_detect_command(tmp_path):
    wav = _wav_48k_stereo(tmp_path)
    env = {"WAKERTC_CONFIG": str(tmp_path / "absent.toml"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "wakertc.cli", "detect", str(wav), "--models-dir", str(MODELS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["word"] for line in run.stdout.splitlines()] == ["hey_jarvis"]


def test_the_stock_models_run_without_the_tflite_interpreter_under_numpy_2():
    """wakertc runs openWakeWord's models itself (wakertc/tflite.py): the TFLite interpreter,
    ~21 MB resident, is not even imported for them."""
    code = (
        "import sys, numpy\n"
        "from pathlib import Path\n"
        "from wakertc.config import WakeConfig\n"
        "from wakertc.wakeword import WakeWordDetector\n"
        f"WakeWordDetector(WakeConfig(models_dir=Path({str(MODELS)!r})))\n"
        "print(numpy.__version__.split('.')[0])\n"
        "print(' '.join(sorted(m for m in sys.modules if 'tflite' in m or 'litert' in m)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    numpy_major, modules = run.stdout.splitlines()
    assert int(numpy_major) >= 2
    assert modules.split() == ["wakertc.tflite"]
