"""`wakertc enroll` and the household verifier: trained from WAV files or the microphone (file
backend), loaded by the daemon at start, bad files reported and ignored, `--remove` undone."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import MODELS
from speech import synth, write_wav
from test_daemon import device_config, notify, spawn, stop, wait_for  # noqa: F401 (fixtures)
from wakertc import enroll, verifier
from wakertc.config import WakeConfig, load_config
from wakertc.wakeword import WakeWordDetector

VOICE = "en-us-nyc+m7"
"""A voice the stock model half-hears: 'hey jarvis' at 165 wpm in pink noise at 10 dB SNR
scores ~0.27 against the 0.5 threshold (0.99 when said at 150 wpm in quiet)."""
ENROLL_WPM = (140, 150, 190, 200)  # never the test's 165 wpm, never in the test's noise
NEGATIVES = (
    "hey Travis, is the jar in the cupboard",
    "have you seen the harvest festival posters",
    "the service in that restaurant was very slow",
    "hey Marvin, turn the radio down a bit",
    "my neighbour Jarrod keeps his car keys in a jar",
    "what time does the bus leave on Sunday",
)


def in_noise(samples: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    """`samples` at -28 dBFS speech level in pink noise `snr_db` below it."""
    audio = samples.astype(np.float64)
    voiced = audio[np.abs(audio) > 0]
    audio *= 32768 * 10 ** (-28 / 20) / np.sqrt(np.mean(voiced**2))
    level = 32768 * 10 ** (-28 / 20)
    noise = enroll.pink_noise(len(audio), np.random.default_rng(seed)) * level
    mixed = audio + noise * 10 ** (-snr_db / 20)
    return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)


def fast_phrase() -> np.ndarray:
    return in_noise(synth("hey jarvis", voice=VOICE, wpm=165, pad_s=2.0), 10.0, seed=2)


def negative_speech() -> np.ndarray:
    """~40 s of confusable speech in several voices and noise, none of it the wake phrase."""
    parts = [
        in_noise(synth(text, voice=voice, wpm=wpm, pad_s=0.5), snr, seed=i)
        for i, text in enumerate(NEGATIVES)
        for voice, wpm, snr in ((VOICE, 165, 10.0), ("en-gb", 180, 20.0))
    ]
    return np.concatenate(parts)


def detections(config_path: Path | None, samples: np.ndarray, models_dir: Path) -> list:
    path = None if config_path is None else verifier.verifier_path(config_path)
    detector = WakeWordDetector(WakeConfig(models_dir=models_dir), path)
    found = []
    for start in range(0, len(samples), 320):  # the daemon's 20 ms frames
        found += detector.process(samples[start : start + 320])
    return found


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    """A config with VOICE enrolled from WAV files through the CLI; its path."""
    models_dir = MODELS
    tmp = tmp_path_factory.mktemp("enrolled")
    token = tmp / "device-token"
    token.write_text("device-token-for-tests\n")
    token.chmod(0o600)
    config = tmp / "wakertc.toml"
    config.write_text(f'[companion]\ntoken_file = "{token}"\n[wake]\nmodels_dir = "{models_dir}"\n')
    config.chmod(0o600)
    wavs = [
        write_wav(tmp / f"take{wpm}.wav", synth("hey jarvis", voice=VOICE, wpm=wpm), 16000)
        for wpm in ENROLL_WPM
    ]
    assert enroll.main(["alice", *map(str, wavs), "--config", str(config)]) == 0
    return config


def test_enrolled_voice_is_heard_when_said_fast_and_negatives_stay_quiet(enrolled, models_dir):
    phrase = fast_phrase()
    stock = detections(None, phrase, models_dir)
    assert stock == []  # the stock model misses it ...
    heard = detections(enrolled, phrase, models_dir)
    assert len(heard) == 1 and heard[0].score < 0.5  # ... the verifier accepts the proposal
    assert heard[0].verifier is not None and heard[0].verifier >= 0.5
    assert detections(enrolled, negative_speech(), models_dir) == []


NEAR_MISSES = (
    "Hey Travis. Hey service. A jar of peas. Hey Harvey. Hey Mavis. Heavy jars.",
    "Hey Davis. Hey jazz fans. Hey Garvey. Hey Chavis. They starve us. Have a service.",
)


def test_near_misses_said_alone_by_strangers_are_not_accepted(enrolled, models_dir):
    """Short near misses, each said alone as a wake phrase is, by voices neither enrolled nor
    among enrolment's negative voices, fast, in noise: no chunk the verifier is asked about
    reaches its acceptance (probability and similarity), where one chunk would fire (trained
    with four negative voices and a weak L2, one chunk of en-gb-x-rp+m3 at 165 wpm did)."""
    word = verifier.load(verifier.verifier_path(enrolled))["hey_jarvis"]
    detector = WakeWordDetector(WakeConfig(models_dir=models_dir))
    accepted = []
    for voice in ("en-us+f2", "en-gb-x-rp+m3", "en-gb-x-gbcwmd+f4"):
        assert voice not in enroll.NEGATIVE_VOICES
        for wpm in (165, 190):
            for snr in (20.0, 10.0):
                for k, text in enumerate(NEAR_MISSES):
                    speech = in_noise(synth(text, voice=voice, wpm=wpm, pad_s=1.0), snr, seed=k)
                    found = detections(enrolled, speech, models_dir)
                    assert [d for d in found if d.score < 0.5] == []  # the stock model's own
                    scores, windows = detector.trace("hey_jarvis", speech)
                    for i in np.flatnonzero(scores >= word.base_threshold):
                        if i + 1 > word.window:
                            window = windows[i].reshape(word.window, -1)
                            p = word.probability(window)
                            if p >= word.accept and word.similarity(window) >= word.similar:
                                accepted.append((voice, wpm, snr, k, int(i), round(p, 3)))
    assert accepted == []


def test_enroll_list_and_file_contents(enrolled, capsys):
    assert enroll.main(["--list", "--config", str(enrolled)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("alice\they_jarvis\t")
    data = json.loads(verifier.verifier_path(enrolled).read_text())
    assert data["format"] == "wakertc-verifier" and data["version"] == 2
    entry = data["words"]["hey_jarvis"]
    assert len(entry["weights"]) == 16 * 96 and set(entry["people"]) == {"alice"}
    assert entry["veto"] == verifier.DEFAULT_VETO
    assert entry["similar"] == verifier.DEFAULT_SIMILAR
    # the training windows: base64 float32, as many as the file says, and what training used
    alice = entry["people"]["alice"]
    raw = base64.b64decode(alice["positives"])
    assert len(raw) == alice["windows"] * 16 * 96 * 4 == len(ENROLL_WPM) * 3 * 3 * 16 * 96 * 4
    loaded = verifier.load(verifier.verifier_path(enrolled))["hey_jarvis"].people["alice"]
    assert np.array_equal(loaded, np.frombuffer(raw, "<f4").reshape(-1, 16 * 96))


def _as_version_1(path: Path) -> None:
    """Rewrite the verifier file at `path` as wakertc wrote it before version 2: number lists."""
    data = json.loads(path.read_text())
    data["version"] = 1
    for entry in data["words"].values():
        for person in entry["people"].values():
            rows = np.frombuffer(base64.b64decode(person["positives"]), "<f4").reshape(-1, 1536)
            person["positives"] = [[round(float(v), 6) for v in row] for row in rows]
    path.write_text(json.dumps(data))


def test_a_version_1_file_still_works_and_is_rewritten_as_version_2_when_someone_enrolls(
    enrolled, tmp_path, models_dir
):
    config = _copy_config(enrolled, tmp_path)
    path = verifier.verifier_path(config)
    _as_version_1(path)
    alice = verifier.load(path)["hey_jarvis"].people["alice"]
    assert detections(config, fast_phrase(), models_dir) != []  # the daemon's detector uses it
    wavs = [
        str(write_wav(tmp_path / f"b{wpm}.wav", synth("hey jarvis", "en-gb", wpm), 16000))
        for wpm in (150, 190)
    ]
    assert enroll.main(["bob", *wavs, "--config", str(config)]) == 0
    assert json.loads(path.read_text())["version"] == 2
    people = verifier.load(path)["hey_jarvis"].people
    assert set(people) == {"alice", "bob"} and np.array_equal(people["alice"], alice)
    assert detections(config, fast_phrase(), models_dir) != []


def _set_veto(path: Path, veto: float | None, accept: float = 0.95) -> None:
    """The file's veto (None: no key), at an acceptance of `accept` (a veto must be below it:
    this test's proposals score 0.59-0.90, above the default acceptance)."""
    data = json.loads(path.read_text())
    entry = data["words"]["hey_jarvis"]
    entry.pop("veto", None)
    entry["accept"] = accept
    if veto is not None:
        entry["veto"] = veto
    path.write_text(json.dumps(data))


def test_the_verifier_vetoes_a_base_detection_it_is_sure_of_and_detect_shows_it(
    enrolled, tmp_path, models_dir, caplog, capsys
):
    """A base score at the threshold fires unless the verifier's probability is below the
    file's veto: then it is logged and `wakertc detect` shows it; a file without a veto (as
    written before it existed) vetoes nothing."""
    from wakertc.wakeword import detect_main

    config = _copy_config(enrolled, tmp_path)
    path = verifier.verifier_path(config)
    _set_veto(path, verifier.DEFAULT_VETO)
    word = verifier.load(path)["hey_jarvis"]
    # "a jar vase": the stock model hears the phrase in it (0.99)
    speech = synth("Hey Chavez. A jar vase. Hey nervous.", voice="en-us", wpm=150, pad_s=1.0)
    scores, windows = WakeWordDetector(WakeConfig(models_dir=models_dir)).trace(
        "hey_jarvis", speech
    )
    high = [
        word.probability(windows[i].reshape(word.window, -1)) for i in np.flatnonzero(scores >= 0.5)
    ]
    assert high and max(high) < word.accept  # proposals the verifier alone would not fire
    stock = detections(None, speech, models_dir)
    _set_veto(path, None)
    assert verifier.load(path)["hey_jarvis"].veto == 0.0
    kept = detections(config, speech, models_dir)
    assert len(stock) >= 1 and [d.t for d in kept] == [d.t for d in stock]

    _set_veto(path, round(max(high) + 0.01, 4))
    with caplog.at_level(logging.INFO, logger="wakertc.wakeword"):
        assert detections(config, speech, models_dir) == []
    vetoed = [r.getMessage() for r in caplog.records if "vetoed" in r.getMessage()]
    assert len(vetoed) == len(stock), vetoed  # one line for each detection it stopped
    assert f"below its veto {max(high) + 0.01:.2f}" in vetoed[0]
    wav = write_wav(tmp_path / "chavez.wav", speech, 16000)
    assert detect_main([str(wav), "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and re.search(r"hey_jarvis: score 0\.\d+ at [\d.]+ s vetoed by the", err)

    _set_veto(path, round(max(min(high) - 0.01, 0.0), 4))
    assert [d.t for d in detections(config, speech, models_dir)] == [d.t for d in stock]


def test_the_daemon_decodes_the_training_windows_only_to_compare_with_them(
    enrolled, tmp_path, models_dir, caplog
):
    """Without `similar` the detector needs the model, not the people's windows: it loads
    without decoding them (damaged ones do not stop it), while `enroll`, which retrains from
    them, reports them. With it (as `enroll` writes), the windows are what a proposal is
    compared with: damaged ones make the file unusable, reported, and the stock model runs."""
    config = _copy_config(enrolled, tmp_path)
    path = verifier.verifier_path(config)
    data = json.loads(path.read_text())
    assert data["words"]["hey_jarvis"]["similar"] == verifier.DEFAULT_SIMILAR > 0
    full = verifier.load(path)["hey_jarvis"]
    quick = verifier.load(path, training_data=False)["hey_jarvis"]
    assert list(quick.people) == ["alice"] and quick.people["alice"].size == 0  # names kept
    assert quick.templates().shape == full.people["alice"].shape
    window = full.people["alice"][0].reshape(16, -1)
    assert quick.similarity(window) == pytest.approx(full.similarity(window)) == pytest.approx(1)
    with pytest.raises(verifier.VerifierError, match="no enrolled windows"):
        dataclasses.replace(quick, accept=0.9).similarity(window)  # a copy has none to compare
    data["words"]["hey_jarvis"]["people"]["alice"]["positives"] = "not base64!"
    data["words"]["hey_jarvis"]["similar"] = 0
    path.write_text(json.dumps(data))
    quick = verifier.load(path, training_data=False)["hey_jarvis"]
    assert list(quick.people) == ["alice"] and quick.people["alice"].size == 0
    detector = WakeWordDetector(WakeConfig(models_dir=models_dir), path)
    assert detector.verified_words == ["hey_jarvis"]
    assert detections(config, fast_phrase(), models_dir) != []
    with pytest.raises(verifier.VerifierError, match=r"people\.alice\.positives: not base64"):
        verifier.load(path)
    assert enroll.main(["--list", "--config", str(config)]) == 2

    data["words"]["hey_jarvis"]["similar"] = verifier.DEFAULT_SIMILAR
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.ERROR):
        detector = WakeWordDetector(WakeConfig(models_dir=models_dir), path)
    assert detector.verified_words == []
    assert "people.alice.positives: not base64" in caplog.text
    assert detections(config, fast_phrase(), models_dir) == []  # the stock model alone


def test_detect_shows_base_score_and_verifier_decision(enrolled, tmp_path, capsys):
    from wakertc.wakeword import detect_main

    wav = write_wav(tmp_path / "fast.wav", fast_phrase(), 16000)
    assert detect_main([str(wav), "--config", str(enrolled)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1
    assert lines[0]["score"] < 0.5 and lines[0]["verifier"] >= 0.5 and lines[0]["by"] == "verifier"
    assert lines[0]["similarity"] >= verifier.DEFAULT_SIMILAR  # the second opinion, shown
    assert detect_main([str(wav), "--config", str(enrolled), "--no-verifier"]) == 0
    assert capsys.readouterr().out == ""


def _copy_config(enrolled: Path, tmp_path: Path) -> Path:
    config = tmp_path / "wakertc.toml"
    shutil.copy(enrolled, config)
    shutil.copy(verifier.verifier_path(enrolled), verifier.verifier_path(config))
    return config


def test_remove_restores_stock_behaviour(enrolled, tmp_path, models_dir, capsys):
    config = _copy_config(enrolled, tmp_path)
    assert detections(config, fast_phrase(), models_dir) != []
    assert enroll.main(["--remove", "bob", "--config", str(config)]) == 1
    assert "nobody called 'bob'" in capsys.readouterr().err
    assert enroll.main(["--remove", "alice", "--config", str(config)]) == 0
    assert "removed alice" in capsys.readouterr().out
    assert not verifier.verifier_path(config).exists()
    assert detections(config, fast_phrase(), models_dir) == []
    assert enroll.main(["--list", "--config", str(config)]) == 0
    assert "alice" not in capsys.readouterr().out


def test_removing_one_of_two_people_keeps_the_other(enrolled, tmp_path, models_dir):
    config = _copy_config(enrolled, tmp_path)
    wavs = [
        str(write_wav(tmp_path / f"b{wpm}.wav", synth("hey jarvis", "en-gb", wpm), 16000))
        for wpm in (150, 190)
    ]
    assert enroll.main(["bob", *wavs, "--config", str(config)]) == 0
    assert set(verifier.load(verifier.verifier_path(config))["hey_jarvis"].people) == {
        "alice",
        "bob",
    }
    assert enroll.main(["--remove", "bob", "--config", str(config)]) == 0
    assert set(verifier.load(verifier.verifier_path(config))["hey_jarvis"].people) == {"alice"}
    assert detections(config, fast_phrase(), models_dir) != []


def _corrupt(entry: dict) -> None:
    entry["feature_size"] = 128


def _other_model(entry: dict) -> None:
    entry["model_sha256"] = "0" * 64


def _short_weights(entry: dict) -> None:
    entry["weights"] = entry["weights"][:100]


def _veto_out_of_range(entry: dict) -> None:
    entry["veto"] = 1.5


def _veto_above_accept(entry: dict) -> None:
    entry["veto"] = round(entry["accept"] + 0.01, 2)


def _similar_out_of_range(entry: dict) -> None:
    entry["similar"] = -0.2


def _similar_with_nobody(entry: dict) -> None:
    entry["people"] = {}


def _future_version(data: dict) -> None:
    data["version"] = 3


def _boolean_version(data: dict) -> None:
    data["version"] = True  # == 1 to Python, but no version


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text[: len(text) // 2], "not valid JSON"),
        (lambda text: "[1, 2]", "not a wakertc verifier file"),
        (_corrupt, "feature_size: 128, but the embedding model gives 96"),
        (_other_model, "trained for another model than"),
        (_short_weights, "weights: expected a list of 1536 numbers, got 100 values"),
        (_veto_out_of_range, "words.hey_jarvis.veto: expected a number in [0.0, 0.8], got 1.5"),
        (_veto_above_accept, "words.hey_jarvis.veto: expected a number in [0.0, 0.8], got 0.81"),
        (_similar_out_of_range, "words.hey_jarvis.similar: expected a number in [0.0, 1.0]"),
        (_similar_with_nobody, "words.hey_jarvis.similar: 0.7 needs enrolled windows"),
        (_future_version, "verifier format version 3, this wakertc reads versions 1, 2"),
        (_boolean_version, "verifier format version True, this wakertc reads versions 1, 2"),
    ],
)
def test_bad_verifier_is_reported_and_ignored(
    enrolled, tmp_path, models_dir, caplog, damage, message
):
    config = _copy_config(enrolled, tmp_path)
    path = verifier.verifier_path(config)
    text = path.read_text()
    if damage.__name__ == "<lambda>":
        path.write_text(damage(text))
    else:
        data = json.loads(text)
        whole_file = damage in (_future_version, _boolean_version)
        damage(data if whole_file else data["words"]["hey_jarvis"])
        path.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="wakertc.wakeword"):
        detector = WakeWordDetector(WakeConfig(models_dir=models_dir), path)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage()
    assert message in errors[0].getMessage()
    assert detector.verified_words == []
    # the stock model still works: a clearly said phrase fires, the fast one does not
    assert detector.process(synth("hey jarvis", voice="en-us", wpm=150, pad_s=1.0))
    assert detections(config, fast_phrase(), models_dir) == []


def test_enroll_from_the_microphone_on_the_file_backend(enrolled, tmp_path, models_dir, capsys):
    takes = [synth("hey jarvis", voice=VOICE, wpm=wpm, pad_s=0.0) for wpm in ENROLL_WPM]
    take_samples = int(enroll.TAKE_S * 16000)
    mic = np.zeros(take_samples * len(takes), np.int16)
    for i, take in enumerate(takes):  # each said 0.5 s into its take, after the tone
        start = i * take_samples + 8000
        mic[start : start + len(take)] = take
    write_wav(tmp_path / "mic.wav", mic, 16000)
    token = load_config(enrolled).companion.token_file
    config = tmp_path / "wakertc.toml"
    config.write_text(
        f'[companion]\ntoken_file = "{token}"\n[wake]\nmodels_dir = "{models_dir}"\n'
        '[audio]\nbackend = "file"\ninput_file = "mic.wav"\noutput_file = "out.wav"\n'
    )
    config.chmod(0o600)
    assert enroll.main(["carol", "--takes", "4", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "take 1/4: after the tone, say 'hey jarvis'" in out and "take 4/4" in out
    people = verifier.load(verifier.verifier_path(config))["hey_jarvis"].people
    assert list(people) == ["carol"] and len(people["carol"]) == 4 * 3 * 3
    # the wake cue before each take and the done cue went to the speaker
    import wave

    with wave.open(str(tmp_path / "out.wav"), "rb") as played:
        assert played.getnframes() > 0
    # each take held its saying (the stock model's best score per take, printed by enroll)
    scores = re.search(r"stock scores ([\d., ]+)\)", out)
    assert scores is not None
    assert all(float(x) > 0.3 for x in scores.group(1).split(", ")), out


def test_daemon_loads_the_verifier_at_start(device_config, notify, enrolled, tmp_path):  # noqa: F811
    shutil.copy(verifier.verifier_path(enrolled), verifier.verifier_path(device_config))
    write_wav(tmp_path / "input.wav", fast_phrase(), 16000)
    process = spawn(device_config, notify)
    try:
        wait_for(notify, lambda m: "READY=1" in m, timeout=15)
        wait_for(notify, lambda m: m.startswith("STATUS=wake"), timeout=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        stderr = stop(process)
    assert "household verifier for alice" in stderr
    assert re.search(r"wake word hey_jarvis \(score 0\.\d+, verifier (0\.9\d\d|1\.000),", stderr)
