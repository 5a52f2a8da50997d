"""Cue sounds: the bundled WAVs, user files in other formats, volume, and the phase mapping."""

from __future__ import annotations

import logging
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from wakertc.config import SoundsConfig
from wakertc.sounds import NAMES, RATE, CueError, Cues, load_bundled, load_wav
from wakertc.state import Phase, Transition

ROOT = Path(__file__).resolve().parent.parent
SOUNDS = ROOT / "daemon" / "wakertc" / "sounds"


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """Write float samples (frames x channels, -1..1) as PCM of the given byte width."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        if width == 1:
            data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
        elif width == 3:
            ints = np.round(frames * (2**23 - 1)).astype("<i4").ravel()
            data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        else:
            data = np.round(frames * 32767).astype("<i2").tobytes()
        out.writeframes(data)
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


# -- bundled files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bundled_cue_is_short_24k_mono_and_audible(name: str) -> None:
    with wave.open(str(SOUNDS / f"{name}.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert wav.getnframes() <= 0.5 * 24000
    samples = load_bundled(name)
    assert samples.dtype == np.int16
    assert 0.1 * RATE <= len(samples) <= 0.5 * RATE
    assert rms(samples) > 1000  # clearly audible, not a near-silent file
    assert np.abs(samples).max() < 32767  # headroom, no clipping
    # Faded at both ends, so the speaker does not click.
    assert np.abs(samples[:10]).max() < 300
    assert np.abs(samples[-10:]).max() < 300


def test_bundled_cues_are_distinct() -> None:
    loaded = {name: load_bundled(name) for name in NAMES}
    for a in NAMES:
        for b in NAMES:
            if a < b:
                assert not np.array_equal(loaded[a], loaded[b]), (a, b)


def test_script_regenerates_the_committed_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sounds.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in NAMES:
        assert (tmp_path / f"{name}.wav").read_bytes() == (SOUNDS / f"{name}.wav").read_bytes()


# -- loading and volume -------------------------------------------------------------------------


def test_volume_scales_what_play_receives() -> None:
    full: list[np.ndarray] = []
    half: list[np.ndarray] = []
    Cues(SoundsConfig(volume=1.0), full.append).wake()
    Cues(SoundsConfig(volume=0.5), half.append).wake()
    bundled = load_bundled("wake")
    np.testing.assert_array_equal(full[0], bundled)
    assert half[0].dtype == np.int16
    np.testing.assert_allclose(half[0], bundled * 0.5, atol=1)
    assert rms(half[0]) == pytest.approx(rms(bundled) / 2, rel=0.01)


def test_disabled_cues_play_nothing_and_load_nothing(tmp_path: Path) -> None:
    played: list[np.ndarray] = []
    # The missing file is never read because cues are off.
    cues = Cues(SoundsConfig(enabled=False, wake=tmp_path / "missing.wav"), played.append)
    cues.wake()
    cues(Transition(Phase.IDLE, Phase.WAKE, "test"))
    assert played == []


def test_user_wav_48k_stereo_is_converted(tmp_path: Path) -> None:
    t = np.arange(int(0.4 * 48000)) / 48000
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t)
    path = write_wav(tmp_path / "chime.wav", np.stack([tone, tone], axis=1), 48000)

    played: list[np.ndarray] = []
    Cues(SoundsConfig(volume=1.0, wake=path), played.append).wake()

    (samples,) = played
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert abs(len(samples) - 0.4 * RATE) <= 2
    assert dominant_hz(samples, RATE) == pytest.approx(1000, abs=5)
    assert rms(samples[1000:-1000]) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.02)


def test_stereo_is_averaged_not_one_channel(tmp_path: Path) -> None:
    t = np.arange(4800) / 24000
    left = 0.4 * np.sin(2 * np.pi * 500 * t)
    path = write_wav(tmp_path / "left.wav", np.stack([left, np.zeros_like(left)], axis=1), 24000)
    samples = load_wav(path)
    np.testing.assert_allclose(samples, np.round(left / 2 * 32767), atol=2)


@pytest.mark.parametrize("width", [1, 3])
def test_8_and_24_bit_wavs_load(tmp_path: Path, width: int) -> None:
    t = np.arange(int(0.2 * 16000)) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    samples = load_wav(write_wav(tmp_path / "x.wav", tone, 16000, width=width))
    assert abs(len(samples) - 0.2 * RATE) <= 2
    assert dominant_hz(samples, RATE) == pytest.approx(440, abs=6)
    assert rms(samples) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.03)


def test_missing_file_error_names_key_and_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.wav"
    with pytest.raises(CueError) as info:
        Cues(SoundsConfig(done=path), lambda _: None)
    assert "sounds.done" in str(info.value)
    assert str(path) in str(info.value)


def test_non_wav_file_error_names_key_and_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(CueError, match=r"sounds\.error = .*notes\.wav: not a PCM WAV"):
        Cues(SoundsConfig(error=path), lambda _: None)


def test_empty_wav_is_refused(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "empty.wav", np.zeros(0), 24000)
    with pytest.raises(CueError, match=r"sounds\.mute = .*empty\.wav: the file holds no audio"):
        Cues(SoundsConfig(mute=path), lambda _: None)


# -- the phase listener -------------------------------------------------------------------------

P = Phase


@pytest.mark.parametrize(
    ("old", "new", "cue"),
    [
        (P.IDLE, P.WAKE, "wake"),
        (P.ERROR, P.WAKE, "wake"),
        (P.WAKE, P.CONNECTING, None),
        (P.CONNECTING, P.LISTENING, None),
        (P.LISTENING, P.THINKING, None),
        (P.THINKING, P.SPEAKING, None),
        (P.SPEAKING, P.LISTENING, None),
        (P.LISTENING, P.IDLE, "done"),
        (P.THINKING, P.IDLE, "done"),
        (P.SPEAKING, P.IDLE, "done"),
        (P.CONNECTING, P.IDLE, "done"),
        (P.IDLE, P.MUTED, "mute"),
        (P.SPEAKING, P.MUTED, "mute"),
        (P.MUTED, P.IDLE, "unmute"),
        (P.CONNECTING, P.ERROR, "error"),
        (P.ERROR, P.IDLE, None),
        (P.STARTING, P.IDLE, None),
        (P.IDLE, P.STOPPING, None),
        (P.SPEAKING, P.STOPPING, None),
    ],
)
def test_listener_plays_the_cue_for_each_change(old: Phase, new: Phase, cue: str | None) -> None:
    played: list[np.ndarray] = []
    cues = Cues(SoundsConfig(volume=1.0), played.append)
    cues(Transition(old, new, "test"))
    if cue is None:
        assert played == []
    else:
        assert len(played) == 1
        np.testing.assert_array_equal(played[0], load_bundled(cue))


def test_each_method_plays_its_own_cue() -> None:
    played: list[np.ndarray] = []
    cues = Cues(SoundsConfig(volume=1.0), played.append)
    for name in NAMES:
        getattr(cues, name)()
    assert len(played) == len(NAMES)
    for name, samples in zip(NAMES, played, strict=True):
        np.testing.assert_array_equal(samples, load_bundled(name))


def test_a_failing_player_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: np.ndarray) -> None:
        raise RuntimeError("device gone")

    cues = Cues(SoundsConfig(), broken)
    with caplog.at_level(logging.WARNING, logger="wakertc.sounds"):
        cues(Transition(P.IDLE, P.WAKE, "test"))
    assert "could not play the wake cue: device gone" in caplog.text
