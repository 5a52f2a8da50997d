"""Audio backends: conversion correctness, real-time pacing, playback edges, and real devices.

The PulseAudio tests run the PyAudio backend against a private server (see pulse.py): a 48 kHz
stereo microphone and a 44.1 kHz mono speaker, so both conversions are exercised for real.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from chain import CountingLoop
from pulse import PulseRig, pulse_rig  # noqa: F401  (fixture)
from wakertc.audio import (
    CAPTURE_RATE,
    FRAME_SAMPLES,
    PLAYBACK_RATE,
    RENDER_CHUNK,
    AudioDeviceError,
    CaptureConverter,
    FileBackend,
    PyAudioBackend,
    open_backend,
    read_wav,
)
from wakertc.config import AudioConfig
from wakertc.devices import devices_main, list_devices

FADE = PLAYBACK_RATE // 200  # the backends' 5 ms ramps


def tone(freq: float, seconds: float, rate: int, amplitude: float = 16000.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def write_wav(path: Path, channels: list[np.ndarray], rate: int, width: int = 2) -> Path:
    data = np.stack(channels, axis=1).astype(np.int16)
    if width == 2:
        raw = data.astype("<i2").tobytes()
    elif width == 1:
        raw = ((data.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    elif width == 3:
        wide = data.astype("<i4") << 8
        raw = wide.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = (data.astype("<i4") << 16).tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(len(channels))
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(raw)
    return path


def read_wav_file(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path), "rb") as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int16)
        return data, wav.getframerate(), wav.getnchannels()


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def level_at(samples: np.ndarray, rate: int, freq: float) -> float:
    """Magnitude of one frequency, relative to the strongest one."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(spectrum[round(freq * len(samples) / rate)] / spectrum.max())


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def loudest(samples: np.ndarray, length: int) -> np.ndarray:
    """The `length`-sample window with the most energy."""
    energy = np.convolve(samples.astype(np.float64) ** 2, np.ones(length), "valid")
    start = int(np.argmax(energy))
    return samples[start : start + length]


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Poll a condition on real-time behaviour (nothing to await: it is the clock that moves)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# --- conversion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "channels", "channel"), [(48000, 2, 1), (44100, 1, 0), (16000, 2, 0)]
)
def test_capture_converter_keeps_a_1khz_tone_at_16khz(rate: int, channels: int, channel: int):
    wanted = tone(1000, 1.0, rate, 12000)
    other = tone(440, 1.0, rate, 20000)
    parts = [other] * channels
    parts[channel] = wanted
    interleaved = np.stack(parts, axis=1).reshape(-1)
    converter = CaptureConverter(rate, channels, channel)
    frames = []
    chunk = rate // 50 * channels
    for start in range(0, len(interleaved), chunk):
        frames += converter.push(interleaved[start : start + chunk])
    frames += converter.flush()

    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    out = np.concatenate(frames)
    assert CAPTURE_RATE <= len(out) <= CAPTURE_RATE + 2 * FRAME_SAMPLES
    steady = out[1600:14400]  # away from the resampler's start and end transients
    assert peak_hz(steady, CAPTURE_RATE) == pytest.approx(1000, abs=2)
    assert rms(steady) == pytest.approx(12000 / np.sqrt(2), rel=0.02)
    if channels > 1:
        assert level_at(steady, CAPTURE_RATE, 440) < 0.001  # the other channel is not mixed in


def test_converter_rejects_a_channel_that_does_not_exist():
    with pytest.raises(ValueError, match="channel 2"):
        CaptureConverter(48000, 2, 2)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_converts_any_integer_pcm_to_mono_at_the_asked_rate(tmp_path: Path, width: int):
    path = write_wav(
        tmp_path / "in.wav", [tone(440, 0.5, 48000), tone(1000, 0.5, 48000)], 48000, width
    )
    out = read_wav(path, PLAYBACK_RATE, channel=1)
    assert out.dtype == np.int16
    assert len(out) == PLAYBACK_RATE // 2
    assert peak_hz(out[1200:-1200], PLAYBACK_RATE) == pytest.approx(1000, abs=3)
    assert rms(out[1200:-1200]) == pytest.approx(16000 / np.sqrt(2), rel=0.02)


# --- file backend -------------------------------------------------------------------------------


async def test_file_backend_paces_capture_in_real_time_on_the_loop_thread(tmp_path: Path):
    path = write_wav(tmp_path / "in.wav", [tone(440, 1.0, 48000), tone(1000, 1.0, 48000)], 48000)
    backend = FileBackend(path, input_channel=1)
    frames: list[tuple[np.ndarray, float, int]] = []
    loop_thread = threading.get_ident()

    backend.start(
        asyncio.get_running_loop(),
        lambda f: frames.append((f, time.monotonic(), threading.get_ident())),
    )
    t0 = time.monotonic()
    try:
        assert not backend.input_finished
        await asyncio.wait_for(backend.wait_input_finished(), 3)
        elapsed = time.monotonic() - t0
        fed = len(frames)
        assert backend.input_finished
        await wait_for(lambda: len(frames) >= fed + 10, 1)
    finally:
        backend.close()

    assert elapsed == pytest.approx(1.0, abs=0.06)  # 1 s of input delivered in 1 s
    assert fed in (50, 51)  # 1 s at 16 kHz, plus at most one zero-padded tail frame
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f, _, _ in frames)
    assert {thread for _, _, thread in frames} == {loop_thread}
    # frame n is delivered at t0 + (n+1) * 20 ms: no drift
    lateness = np.array([t - t0 - (n + 1) * 0.02 for n, (_, t, _) in enumerate(frames)])
    assert np.median(np.abs(lateness)) < 0.01
    assert abs(lateness[-1]) < 0.03
    audio = np.concatenate([f for f, _, _ in frames[:fed]])
    assert peak_hz(audio[1600:14400], CAPTURE_RATE) == pytest.approx(1000, abs=2)
    assert not np.concatenate([f for f, _, _ in frames[fed:]]).any()  # silence after the end


async def test_file_backend_gathers_frames_when_asked_losing_none(tmp_path: Path):
    # 25 frames of a ramp at 16 kHz (no conversion): each sample says where it was captured
    ramp = np.arange(25 * FRAME_SAMPLES) % 30000
    backend = FileBackend(write_wav(tmp_path / "in.wav", [ramp], CAPTURE_RATE))
    loop = CountingLoop()
    frames: list[np.ndarray] = []
    group = 4

    def on_frame(frame: np.ndarray) -> None:  # asking as the daemon does, after each frame
        frames.append(frame)
        backend.gather_frames(group - len(frames) % group)

    backend.gather_frames(group)
    backend.start(cast(asyncio.AbstractEventLoop, loop), on_frame)
    try:
        await asyncio.wait_for(backend.wait_input_finished(), 3)
        # every frame is in, the last one (25 = 6 x 4 + 1) with the end of the file
        assert np.array_equal(np.concatenate(frames), ramp)
        # six groups of four, the last frame, the end of the file (fewer if the loop was slow)
        assert loop.wakes <= 6 + 2
        group = 1  # a conversation: each frame as it comes again
        wakes = loop.wakes  # (the first hand-off after it may bring frames gathered before)
        await wait_for(lambda: loop.wakes > wakes, 1)
        wakes, count = loop.wakes, len(frames)
        await wait_for(lambda: len(frames) >= count + 8, 1)
        # (a loop busy elsewhere takes the frames that came meanwhile in one wake)
        assert loop.wakes - wakes > (len(frames) - count) / 2
    finally:
        backend.close()


async def test_file_backend_plays_in_real_time_and_writes_what_was_played(tmp_path: Path):
    out_path = tmp_path / "out.wav"
    backend = FileBackend(None, out_path)
    renders: list[tuple[int, int]] = []
    backend.on_render = lambda chunk: renders.append((len(chunk), threading.get_ident()))
    played = tone(1000, 0.5, PLAYBACK_RATE)
    backend.start(asyncio.get_running_loop(), lambda f: None)
    try:
        await wait_for(lambda: len(renders) >= 5, 1)  # idle silence renders too
        t0 = time.monotonic()
        backend.play(played)
        assert backend.playback_queued_s == pytest.approx(0.5, abs=0.001)
        await wait_for(lambda: backend.playback_queued_s <= 0.25, 1)
        half = time.monotonic() - t0
        await wait_for(lambda: backend.playback_queued_s == 0, 1)
        drained = time.monotonic() - t0
        rendered_from = sum(n for n, _ in renders)
        t1 = time.monotonic()
        await asyncio.sleep(0.3)  # idle again: not written to the file, still rendered
        rendered_idle = sum(n for n, _ in renders) - rendered_from
        idle = time.monotonic() - t1
    finally:
        backend.close()

    assert half == pytest.approx(0.25, abs=0.04)
    assert drained == pytest.approx(0.5, abs=0.04)
    out, rate, channels = read_wav_file(out_path)
    assert (rate, channels) == (PLAYBACK_RATE, 1)
    assert len(played) <= len(out) <= len(played) + 2 * PLAYBACK_RATE // 50
    assert np.array_equal(out[FADE : len(played) - FADE], played[FADE:-FADE])
    assert np.abs(out[:FADE]).max() < 16000  # faded in
    # on_render: from the playback thread, 10 ms multiples, continuous through the idle time
    assert all(n % RENDER_CHUNK == 0 for n, _ in renders)
    assert {t for _, t in renders} != {threading.get_ident()}
    assert rendered_idle / CAPTURE_RATE == pytest.approx(idle, abs=0.05)


async def test_file_backend_render_is_what_was_played_at_16khz(tmp_path: Path):
    backend = FileBackend(None, None)
    rendered: list[np.ndarray] = []
    backend.on_render = rendered.append
    backend.start(asyncio.get_running_loop(), lambda f: None)
    try:
        backend.play(tone(1000, 0.4, PLAYBACK_RATE))
        await wait_for(lambda: backend.playback_queued_s == 0, 1)
        await asyncio.sleep(0.1)  # the resampler's delay
    finally:
        backend.close()
    audio = np.concatenate(rendered)
    assert audio.dtype == np.int16
    sounding = loudest(audio, 3200)
    assert peak_hz(sounding, CAPTURE_RATE) == pytest.approx(1000, abs=5)
    assert rms(sounding) == pytest.approx(16000 / np.sqrt(2), rel=0.03)


async def test_clear_playback_drops_the_rest_at_once_without_a_click(tmp_path: Path):
    out_path = tmp_path / "out.wav"
    backend = FileBackend(None, out_path)
    backend.start(asyncio.get_running_loop(), lambda f: None)
    level = 12000  # DC: a cut at any point would be a full-height step
    try:
        backend.play(np.full(2 * PLAYBACK_RATE, level, np.int16))
        await wait_for(lambda: backend.playback_queued_s <= 1.7, 1)
        backend.clear_playback()
        assert backend.playback_queued_s == 0
        backend.play(np.full(PLAYBACK_RATE // 10, level, np.int16))  # later audio still plays
        await wait_for(lambda: backend.playback_queued_s == 0, 1)
        await asyncio.sleep(0.05)
    finally:
        backend.close()
    out, _, _ = read_wav_file(out_path)
    assert 0.4 < len(out) / PLAYBACK_RATE < 0.5  # ~0.3 s before the clear + 0.1 s after
    steps = np.abs(np.diff(np.concatenate(([0], out, [0])).astype(np.int32)))
    assert steps.max() <= level / FADE * 1.1  # only 5 ms ramps
    assert (out == 0).sum() > FADE  # it did go silent between the two


async def test_underrun_and_restart_are_ramped_and_idle_time_is_not_written(tmp_path: Path):
    out_path = tmp_path / "out.wav"
    backend = FileBackend(None, out_path)
    backend.start(asyncio.get_running_loop(), lambda f: None)
    level = 12000
    try:
        # ends inside a block (fade-out of its own tail) ...
        backend.play(np.full(PLAYBACK_RATE // 10 + 170, level, np.int16))
        await wait_for(lambda: backend.playback_queued_s == 0, 1)
        await asyncio.sleep(0.3)
        # ... and exactly at a block's end (a ramp down from the last sample in the next block)
        backend.play(np.full(PLAYBACK_RATE // 10, level, np.int16))
        await wait_for(lambda: backend.playback_queued_s == 0, 1)
        await asyncio.sleep(0.05)
    finally:
        backend.close()
    out, _, _ = read_wav_file(out_path)
    assert 0.2 <= len(out) / PLAYBACK_RATE < 0.3  # two bursts, not the 0.3 s between them
    steps = np.abs(np.diff(np.concatenate(([0], out, [0])).astype(np.int32)))
    assert steps.max() <= level / FADE * 1.1  # only 5 ms ramps, no jumps


async def test_output_volume_scales_playback(tmp_path: Path):
    out_path = tmp_path / "out.wav"
    backend = open_backend(AudioConfig(backend="file", output_file=out_path, output_volume=0.5))
    backend.start(asyncio.get_running_loop(), lambda f: None)
    try:
        backend.play(tone(1000, 0.2, PLAYBACK_RATE))
        await wait_for(lambda: backend.playback_queued_s == 0, 1)
    finally:
        backend.close()
    out, _, _ = read_wav_file(out_path)
    assert rms(out[FADE:4000]) == pytest.approx(8000 / np.sqrt(2), rel=0.01)


async def test_file_backend_without_input_gives_silence_and_closes_promptly():
    backend = open_backend(AudioConfig(backend="file"))
    frames: list[np.ndarray] = []
    backend.start(asyncio.get_running_loop(), frames.append)
    assert isinstance(backend, FileBackend)
    await asyncio.wait_for(backend.wait_input_finished(), 1)
    await wait_for(lambda: len(frames) >= 3, 1)
    t = time.monotonic()
    backend.close()
    backend.close()
    assert time.monotonic() - t < 0.2
    assert not any(th.name.startswith("wakertc-file") for th in threading.enumerate())
    assert not np.concatenate(frames).any()
    with pytest.raises(RuntimeError):
        backend.start(asyncio.get_running_loop(), frames.append)


def test_play_rejects_anything_but_int16_mono():
    backend = FileBackend(None)
    try:
        with pytest.raises(ValueError, match="int16"):
            backend.play(np.zeros(100, np.float32))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="1-D"):
            backend.play(np.zeros((100, 2), np.int16))
    finally:
        backend.close()


def test_file_backend_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioDeviceError, match=r"nope\.wav"):
        open_backend(AudioConfig(backend="file", input_file=missing))
    stereo = write_wav(tmp_path / "st.wav", [tone(440, 0.1, 16000)] * 2, 16000)
    with pytest.raises(AudioDeviceError, match=r"st\.wav.*channel 2"):
        open_backend(AudioConfig(backend="file", input_file=stereo, input_channel=2))
    with pytest.raises(AudioDeviceError, match="cannot write"):
        open_backend(AudioConfig(backend="file", output_file=tmp_path / "no" / "dir.wav"))


# --- real devices through PulseAudio ------------------------------------------------------------


@pytest.mark.pulse
def test_devices_are_listed_with_channels_and_rates(
    pulse_rig: PulseRig,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
):
    devices = {d.name: d for d in list_devices()}
    assert {pulse_rig.input_device, pulse_rig.output_device, "default"} <= set(devices)
    mic = devices[pulse_rig.input_device]
    assert mic.max_input_channels >= 2 and mic.default_rate > 0

    assert devices_main([]) == 0
    text = capsys.readouterr().out
    inputs, outputs = text.split("Outputs:")
    assert inputs.startswith("Inputs:")
    assert f"{mic.index:3d}  {pulse_rig.input_device}  (" in inputs
    assert pulse_rig.output_device in outputs and " Hz" in outputs

    assert devices_main(["--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {d["name"] for d in listed} == set(devices)
    assert all("default_rate" in d and "max_input_channels" in d for d in listed)


@pytest.mark.pulse
def test_devices_are_chosen_by_name_substring_or_index(pulse_rig: PulseRig):  # noqa: F811
    mic_index = next(d.index for d in list_devices() if d.name == pulse_rig.input_device)
    for spec in ("WAKERTC_MIC", mic_index):
        backend = PyAudioBackend(pulse_rig.audio_config(input_device=spec, output_device="speak"))
        try:
            assert backend.input_device.index == mic_index
            assert backend.output_device.name == pulse_rig.output_device
            assert (backend.input_rate, backend.input_channels) == (48000, 2)
            assert (backend.output_rate, backend.output_channels) == (44100, 1)
        finally:
            backend.close()
    backend = PyAudioBackend(pulse_rig.audio_config(input_device="", output_device=""))
    try:  # empty = the system's defaults
        assert backend.input_device.default_input and backend.output_device.default_output
    finally:
        backend.close()


@pytest.mark.pulse
def test_bad_device_choices_are_clear_errors(pulse_rig: PulseRig):  # noqa: F811
    with pytest.raises(AudioDeviceError) as missing:
        PyAudioBackend(pulse_rig.audio_config(input_device="usb-nope"))
    message = str(missing.value)
    assert "'usb-nope'" in message and pulse_rig.input_device in message and "Hz" in message
    with pytest.raises(AudioDeviceError, match="ambiguous"):
        PyAudioBackend(pulse_rig.audio_config(output_device="wakertc"))
    with pytest.raises(AudioDeviceError, match="no output device has that index"):
        PyAudioBackend(pulse_rig.audio_config(output_device=99))
    with pytest.raises(AudioDeviceError, match="input_channel = 2"):
        PyAudioBackend(pulse_rig.audio_config(input_channel=2))


@pytest.mark.pulse
async def test_microphone_tone_arrives_as_16khz_frames(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
):
    wav = write_wav(tmp_path / "mic.wav", [tone(440, 1.0, 48000), tone(1000, 1.0, 48000)], 48000)
    backend = PyAudioBackend(pulse_rig.audio_config(input_channel=1))
    frames: list[np.ndarray] = []
    threads: set[int] = set()

    def on_frame(frame: np.ndarray) -> None:
        frames.append(frame)
        threads.add(threading.get_ident())

    backend.start(asyncio.get_running_loop(), on_frame)
    try:
        t0 = time.monotonic()
        player = pulse_rig.play_into_mic(wav)
        await asyncio.sleep(1.5)  # the window being measured: real time passes, frames arrive
        elapsed = time.monotonic() - t0
        received = len(frames)
        await asyncio.to_thread(player.wait, 10)
    finally:
        t = time.monotonic()
        backend.close()
        closed_in = time.monotonic() - t

    assert closed_in < 1.0
    assert threads == {threading.get_ident()}
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    assert received == pytest.approx(elapsed / 0.02, rel=0.1)
    sounding = loudest(np.concatenate(frames), CAPTURE_RATE // 2)
    assert peak_hz(sounding, CAPTURE_RATE) == pytest.approx(1000, abs=4)
    assert rms(sounding) == pytest.approx(16000 / np.sqrt(2), rel=0.05)
    assert level_at(sounding, CAPTURE_RATE, 440) < 0.01


@pytest.mark.pulse
async def test_microphone_frames_come_four_at_a_time_when_gathered(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
):
    wav = write_wav(tmp_path / "mic.wav", [tone(1000, 1.0, 48000)], 48000)
    backend = PyAudioBackend(pulse_rig.audio_config())
    loop = CountingLoop()
    frames: list[np.ndarray] = []

    def on_frame(frame: np.ndarray) -> None:  # asking as the daemon does, after each frame
        frames.append(frame)
        backend.gather_frames(4 - len(frames) % 4)

    backend.gather_frames(4)
    backend.start(cast(asyncio.AbstractEventLoop, loop), on_frame)
    try:
        player = pulse_rig.play_into_mic(wav)
        await asyncio.to_thread(player.wait, 10)
        await asyncio.sleep(0.2)
    finally:
        backend.close()

    # one wake of the loop per four frames (fewer when it was slow to take them)
    assert len(frames) >= 4 * loop.wakes and loop.wakes > 1.0 / 0.08 * 0.8
    sounding = loudest(np.concatenate(frames), CAPTURE_RATE // 2)  # in order, none lost
    assert peak_hz(sounding, CAPTURE_RATE) == pytest.approx(1000, abs=4)
    assert rms(sounding) == pytest.approx(16000 / np.sqrt(2), rel=0.05)


@pytest.mark.pulse
async def test_played_tone_comes_out_of_the_speaker(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
):
    # two output channels on the mono sink: PulseAudio averages them, so the level only holds
    # if the mono signal was copied to both
    backend = PyAudioBackend(pulse_rig.audio_config(output_channels=2))
    rendered: list[int] = []
    backend.on_render = lambda chunk: rendered.append(len(chunk))
    backend.start(asyncio.get_running_loop(), lambda f: None)
    recording = pulse_rig.record_speaker(tmp_path / "speaker.wav")
    try:
        await wait_for(lambda: len(rendered) > 0, 2)
        t0, rendered_before = time.monotonic(), sum(rendered)
        backend.play(tone(1000, 0.6, PLAYBACK_RATE))
        await wait_for(lambda: backend.playback_queued_s == 0, 2)
        drained = time.monotonic() - t0
        await asyncio.sleep(0.2)  # what is still in the device buffer
        render_rate = (sum(rendered) - rendered_before) / (time.monotonic() - t0)
    finally:
        recording.stop()
        backend.close()

    assert drained == pytest.approx(0.6, abs=0.1)
    assert render_rate == pytest.approx(CAPTURE_RATE, rel=0.1)  # paced by the device
    out, rate, channels = read_wav_file(recording.path)
    assert (rate, channels) == (44100, 1)
    audible = np.flatnonzero(np.abs(out) > 1000)
    assert (audible[-1] - audible[0]) / rate == pytest.approx(0.6, abs=0.03)
    sounding = out[audible[0] + 2205 : audible[-1] - 2205]
    assert peak_hz(sounding, rate) == pytest.approx(1000, abs=4)
    assert rms(sounding) == pytest.approx(16000 / np.sqrt(2), rel=0.05)


@pytest.mark.pulse
async def test_audio_server_going_away_is_reported_on_the_loop(pulse_rig: PulseRig):  # noqa: F811
    backend = PyAudioBackend(pulse_rig.audio_config())
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[tuple[Exception, int]] = loop.create_future()
    backend.on_error = lambda exc: failed.done() or failed.set_result((exc, threading.get_ident()))
    frames: list[np.ndarray] = []
    backend.start(loop, frames.append)
    try:
        await wait_for(lambda: len(frames) >= 5, 2)
        pulse_rig.kill()
        exc, thread = await asyncio.wait_for(failed, 5)
    finally:
        t = time.monotonic()
        backend.close()
        backend.close()
        closed_in = time.monotonic() - t
    assert isinstance(exc, AudioDeviceError) and pulse_rig.output_device in str(exc)
    assert thread == threading.get_ident()
    assert closed_in < 1.0


@pytest.mark.pulse
async def test_a_playback_thread_stuck_in_portaudio_is_reported_from_the_loop(
    pulse_rig: PulseRig,  # noqa: F811
):
    """A write that never returns (an audio server that hangs) stops the playback thread, and
    with it the capture watch it runs: the loop sees no write return for 3 s and reports it,
    naming the device, once; the daemon then reopens the device as for any audio error, which
    works with the stuck thread left behind."""
    backend = PyAudioBackend(pulse_rig.audio_config())
    loop = asyncio.get_running_loop()
    errors: list[Exception] = []
    backend.on_error = errors.append
    backend.start(loop, lambda frame: None)
    stream = backend._out_stream
    write = stream.write
    release = threading.Event()
    stuck = threading.Event()

    def hangs(data: bytes) -> None:
        stuck.set()
        release.wait(10)
        write(data)

    released: list[str] = []
    release_portaudio = backend._release_portaudio

    def recorded() -> None:
        released.append(threading.current_thread().name)
        release_portaudio()

    backend._release_portaudio = recorded  # type: ignore[method-assign]

    again = None
    try:
        await asyncio.sleep(0.5)
        assert errors == []  # a healthy thread is not reported
        stream.write = hangs
        await asyncio.to_thread(stuck.wait, 2)
        t0 = time.monotonic()
        await wait_for(lambda: bool(errors), 6)
        noticed = time.monotonic() - t0
        await asyncio.sleep(2.2)  # reported once, not every second
        # What the daemon does next: close (the stuck thread is left behind) and reopen.
        await asyncio.to_thread(backend.close)
        again = PyAudioBackend(pulse_rig.audio_config())
        frames: list[np.ndarray] = []
        again.start(loop, frames.append)
        first = again._last_write
        await wait_for(lambda: len(frames) >= 10 and again._last_write > first + 0.1, 3)
    finally:
        release.set()
        backend.close()
        if again is not None:
            again.close()
    # the stuck thread, once it returned, released the PortAudio instance close left to it
    backend._thread.join(2)
    assert not backend._thread.is_alive() and backend._thread_done
    assert released == ["wakertc-playback"]
    assert len(errors) == 1, errors
    exc = errors[0]
    assert isinstance(exc, AudioDeviceError)
    assert "hung" in str(exc) and pulse_rig.output_device in str(exc)
    assert 2.9 < noticed < 4.5


@pytest.mark.pulse
async def test_a_capture_device_that_stops_delivering_is_reported(pulse_rig: PulseRig):  # noqa: F811
    backend = PyAudioBackend(pulse_rig.audio_config())
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[Exception] = loop.create_future()
    backend.on_error = lambda exc: failed.done() or failed.set_result(exc)
    frames: list[np.ndarray] = []
    backend.start(loop, frames.append)
    try:
        await wait_for(lambda: len(frames) >= 5, 2)
        pulse_rig.pactl("suspend-sink", "mic", "1")  # its monitor, our microphone, goes quiet
        t0 = time.monotonic()
        exc = await asyncio.wait_for(failed, 5)
        noticed = time.monotonic() - t0
    finally:
        backend.close()
    assert isinstance(exc, AudioDeviceError)
    assert "stalled" in str(exc) and pulse_rig.input_device in str(exc)
    assert 1.8 < noticed < 3.0
