#!/usr/bin/env python3
"""Added audio latency each way, through real audio devices and the echo emulator.

    .venv/bin/python scripts/bench_latency.py [--quick] [--json]

Figures (bench.py's `figure()` shape; value = median over the clicks):

- `mic_to_wire_ms`: a click entering the microphone -> the packet carrying it reaching the
  emulator's side of the peer connection.
- `wire_to_speaker_ms`: the emulator handing the echoed click to its outgoing track -> the click
  coming out of the speaker.

The rig (scripts/pulserig.py): a private PulseAudio server with a microphone sink (48 kHz stereo)
and a speaker sink (44.1 kHz mono); the daemon (in this process, the real `Daemon` with its
PyAudio backend, echo canceller on, cues off) talks to the emulator in `echo` mode, which plays
each turn back. A probe process
clicks into the microphone sink and times, on both monitors, when each click entered the
microphone and when it left the speaker. The emulator records when each frame crossed its side of
the peer connection (`--record`'s frames.jsonl, emulator/timeline.py), so its own delays (VAD
end-of-turn, the reply's start, its receive jitter buffer) are left out. All times are
CLOCK_MONOTONIC, shared by the processes.

References, measured beside the daemon on the same clicks and under the same load: a bare
PortAudio capture callback on the microphone and a bare PortAudio blocking writer on the speaker,
both opened as the daemon opens its streams (same devices, formats, 20 ms periods): what the audio
server and the device buffering alone cost (`daemon_adds_ms`: the difference of the medians). The
two capture streams' 20 ms periods fall at different phases, fixed per stream, so a click waits
for them differently: on the microphone side that difference moves by up to ~15 ms between runs.
The details split each figure at the daemon's audio backend (taps on the real backend): device
side and WebRTC side. Wire to speaker's also show, click by click (`per_click`), what each click's
chunk found queued ahead of it in the playback queue at `play()`, and the rest of its way out
(the device's buffer and the audio server).

Formats: the figures are for the formats the daemon chooses itself (what a config that leaves
them unset gets: 16 kHz capture, the server resampling); the full run also forces the sinks'
native formats (48 kHz stereo in, 44.1 kHz mono out), where the daemon converts
(`with_native_formats`).

A turn is several clicks 250 ms apart (one utterance for the emulator's VAD); the next turn
starts once the echo has played out. `--quick`: 5 clicks (~6 s); full: 20 clicks per format
(~30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
try:
    import wakertc  # noqa: F401
except ImportError:  # run by a Python without the package: use the project's virtualenv
    VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
    if VENV_PYTHON.exists() and Path(sys.executable) != VENV_PYTHON:
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    raise

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from bench_report import figure, p50_p90  # noqa: E402
from pulserig import (  # noqa: E402
    MIC_CHANNELS,
    MIC_RATE,
    SPEAKER_CHANNELS,
    SPEAKER_RATE,
    ClickProbe,
    MonitorStream,
    ProbeRecording,
    PulseRig,
    PulseUnavailable,
    click,
    onsets,
    running_pulse,
)
from wakertc.audio import CAPTURE_RATE, PLAYBACK_RATE, FrameCallback, PyAudioBackend  # noqa: E402

LIMIT_MS = 60.0
SPACING_S = 0.25
CLICKS_PER_TURN = 5
BLOCK_S = 0.02  # the daemon's PortAudio period / block (audio._BLOCK_S)
TURN_TIMEOUT_S = 15.0
# After a reply, the next turn waits this long: the echo canceller (AEC3) takes the first clicks
# of a turn that comes sooner for echo of the reply's (same pattern, 250 ms apart) and ducks them.
TURN_GAP_S = 0.8
STAGE_WINDOW_S = 0.2  # the most one stage may take; below the clicks' least spacing (230 ms)
# The emulator's VAD: a shorter end-of-turn and padding make turns quicker; neither is timed.
# Quicker turns, set where the session policy lives: the companion's config.
COMPANION = "\n[session.turn_detection]\nsilence_duration_ms = 400\nprefix_padding_ms = 100\n"


@dataclass(frozen=True)
class Plan:
    """How many clicks a run times (in turns of CLICKS_PER_TURN)."""

    name: str
    clicks: int


QUICK = Plan("quick", 5)
FULL = Plan("full", 20)


# -- the daemon's backend, tapped --------------------------------------------------------------


class TappedBackend(PyAudioBackend):
    """The daemon's real PyAudio backend, noting when each microphone frame reached the daemon
    (on the loop) and when each chunk was handed to the speaker: where a figure splits between
    the device side and the WebRTC side."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[tuple[float, NDArray[np.int16]]] = []
        self.played: list[tuple[float, NDArray[np.int16]]] = []
        self.queued: list[float] = []
        """Seconds queued ahead of each chunk of `played` when it was handed over: what it
        waits behind in the playback queue, before the device and the audio server."""

    def start(self, loop: asyncio.AbstractEventLoop, on_frame: FrameCallback) -> None:
        """Start the real backend with a frame callback that notes each frame first."""

        def tapped(frame: NDArray[np.int16]) -> None:
            self.frames.append((time.monotonic(), frame.copy()))
            on_frame(frame)

        super().start(loop, tapped)

    def play(self, samples: NDArray[np.int16]) -> None:
        """Note the chunk, then queue it as the real backend does."""
        self.queued.append(self.playback_queued_s)
        self.played.append((time.monotonic(), samples.copy()))
        super().play(samples)


def stream_times(
    chunks: list[tuple[float, NDArray[np.int16]]], rate: int, *, place: bool
) -> tuple[NDArray[np.int16], Callable[[int], float]]:
    """Concatenated chunks and a function: sample index -> when its chunk was noted (plus its
    place in the chunk when `place`, for audio handed over to be played in sequence)."""
    if not chunks:
        return np.zeros(0, np.int16), lambda index: math.nan
    starts = np.cumsum([0] + [len(c) for _, c in chunks])
    times = [t for t, _ in chunks]

    def when(index: int) -> float:
        i = int(np.searchsorted(starts, index, side="right")) - 1
        return times[i] + ((index - int(starts[i])) / rate if place else 0.0)

    return np.concatenate([c for _, c in chunks]), when


# -- references: bare PortAudio on the same devices --------------------------------------------


def _device_index(pa: Any, name: str) -> int:
    for i in range(pa.get_device_count()):
        if pa.get_device_info_by_index(i)["name"] == name:
            return i
    raise RuntimeError(f"PortAudio does not list {name!r}")


@dataclass(frozen=True)
class Formats:
    """What the daemon's backend opened (the bare streams open the same)."""

    input_rate: int
    input_channels: int
    output_rate: int
    output_channels: int

    @classmethod
    def of(cls, backend: PyAudioBackend) -> Formats:
        """The formats a constructed backend resolved."""
        return cls(
            backend.input_rate,
            backend.input_channels,
            backend.output_rate,
            backend.output_channels,
        )

    def describe(self) -> str:
        """For the report."""
        return (
            f"capture {self.input_rate} Hz x {self.input_channels}, "
            f"playback {self.output_rate} Hz x {self.output_channels}"
        )


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """PortAudio's start-up prints dozens of harmless ALSA/JACK lines to fd 2: drop them."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class BareStreams:
    """A bare PortAudio capture callback and a bare blocking writer, opened as the daemon opens
    its streams (same devices, formats and 20 ms periods) and running beside the daemon: the
    capture reference hears the very clicks the daemon does, the writer clicks into the speaker
    while the user's turn is on (the daemon's speaker is quiet then), both under the same load."""

    def __init__(self, rig: PulseRig, formats: Formats) -> None:
        import pyaudio

        self.formats = formats
        self.captured: list[tuple[float, NDArray[np.int16]]] = []
        self.written: list[tuple[float, NDArray[np.int16]]] = []
        self._lock = threading.Lock()
        self._tape = np.zeros(0, np.int16)
        self._stop = threading.Event()
        # Set before the capture stream opens: PortAudio may call back before `open` returns.
        self._continue = pyaudio.paContinue
        with quiet_native_stderr():
            self._pa = pyaudio.PyAudio()
        try:
            self._capture = self._pa.open(
                format=pyaudio.paInt16,
                channels=formats.input_channels,
                rate=formats.input_rate,
                input=True,
                input_device_index=_device_index(self._pa, rig.input_device),
                frames_per_buffer=round(formats.input_rate * BLOCK_S),
                stream_callback=self._captured,
            )
            self._output = self._pa.open(
                format=pyaudio.paInt16,
                channels=formats.output_channels,
                rate=formats.output_rate,
                output=True,
                output_device_index=_device_index(self._pa, rig.output_device),
                frames_per_buffer=round(formats.output_rate * BLOCK_S),
            )
        except BaseException:
            self._pa.terminate()
            raise
        self._writer = threading.Thread(target=self._write, name="bare-writer", daemon=True)
        self._writer.start()

    def clicks(self, count: int, seed: int) -> None:
        """Click `count` times into the speaker, from ~10 ms from now."""
        tape = click_train(count, self.formats.output_rate, seed=seed + 1000, lead_s=0.01)
        with self._lock:
            self._tape = tape

    def close(self) -> None:
        """Stop the writer and close both streams."""
        self._stop.set()
        self._writer.join(2)
        self._capture.close()
        self._output.close()
        self._pa.terminate()

    def _captured(self, data: bytes, frames: int, info: Any, status: int) -> tuple[None, int]:
        t = time.monotonic()
        block = np.frombuffer(data, np.int16).reshape(-1, self.formats.input_channels)[:, 0]
        self.captured.append((t, block.copy()))
        return None, self._continue

    def _write(self) -> None:
        size = round(self.formats.output_rate * BLOCK_S)
        while not self._stop.is_set():
            block = np.zeros(size, np.int16)
            with self._lock:
                part, self._tape = self._tape[:size], self._tape[size:]
            block[: len(part)] = part
            self.written.append((time.monotonic(), block))
            self._output.write(np.repeat(block, self.formats.output_channels).tobytes())


def click_train(count: int, rate: int, *, seed: int, lead_s: float) -> NDArray[np.int16]:
    """Clicks SPACING_S apart, each 0-20 ms late on the grid (seeded), after `lead_s`."""
    rng = np.random.default_rng(seed)
    one = click(rate)
    spacing = round(SPACING_S * rate)
    lead = round(lead_s * rate)
    tape = np.zeros(lead + count * spacing + len(one), np.float32)
    for k in range(count):
        at = lead + k * spacing + int(rng.integers(0, round(0.02 * rate)))
        tape[at : at + len(one)] += one
    return (tape * 32767).astype(np.int16)


# -- the daemon through the emulator -----------------------------------------------------------


@dataclass
class DaemonRun:
    """The tapped backend, the emulator's call recording, and when the run went on."""

    backend: TappedBackend
    formats: Formats
    bare: BareStreams
    call_dir: Path
    window: tuple[float, float]


class PhaseLog:
    """Phase changes as they come, and a way to wait for one."""

    def __init__(self) -> None:
        self.changes: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, change: Any) -> None:
        self.changes.append(change)
        self._changed.set()

    async def wait(self, phase: Any, since: int, within_s: float) -> int:
        """Wait until `phase` is entered after change number `since`; returns its number."""
        async with asyncio.timeout(within_s):
            while True:
                for i in range(since, len(self.changes)):
                    if self.changes[i].new is phase:
                        return i + 1
                    if self.changes[i].new.name == "ERROR":
                        raise RuntimeError(f"the daemon failed: {self.changes[i].reason}")
                self._changed.clear()
                await self._changed.wait()


async def played_out(backend: PyAudioBackend, then_s: float) -> None:
    """Until the playback queue is empty, then `then_s` more (the device's own buffers)."""
    # The backend has no event for an empty queue: poll it.
    for _ in range(round(TURN_TIMEOUT_S / 0.02)):
        if backend.playback_queued_s <= 0:
            await asyncio.sleep(then_s)
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the speaker still had audio queued after {TURN_TIMEOUT_S:g} s")


async def variant_run(
    rig: PulseRig,
    probe: ClickProbe,
    plan: Plan,
    audio: dict[str, Any],
    workdir: Path,
    models_dir: Path,
    say: Callable[[str], None],
) -> DaemonRun:
    """The bare references at the formats the daemon's backend resolves, then the real daemon
    on the rig's devices: one conversation, the clicks in turns of CLICKS_PER_TURN."""
    from wakertc.config import config_from_dict
    from wakertc.daemon import Daemon, Edges
    from wakertc.demo import DEMO_API_KEY, start_services
    from wakertc.emulator import EmulatorOptions
    from wakertc.state import Phase

    options = EmulatorOptions(
        host="127.0.0.1",
        port=0,
        api_key=DEMO_API_KEY,
        reply="echo",
        record_dir=workdir / "recording",
    )
    async with contextlib.AsyncExitStack() as stack:
        services = await start_services(stack, workdir, options, companion_extra=COMPANION)
        data = {
            "audio": {
                "backend": "pyaudio",
                "input_device": rig.input_device,
                "output_device": rig.output_device,
                **audio,
            },
            "wake": {"models_dir": str(models_dir)},
            "sounds": {"enabled": False},
            "companion": {"url": services.companion.url, "token_file": str(services.token_file)},
            "session": {
                "url": services.emulator.url,
                "idle_timeout_s": 60.0,
                "max_session_s": 300.0,
            },
        }
        config = config_from_dict(data, workdir / "latency.toml")
        backend = await asyncio.to_thread(TappedBackend, config.audio)
        formats = Formats.of(backend)
        try:
            bare = await asyncio.to_thread(BareStreams, rig, formats)
        except BaseException:
            backend.close()
            raise
        daemon = Daemon(config, Edges(audio=backend))
        phases = PhaseLog()
        daemon.phases.add_listener(phases)
        runner = asyncio.get_running_loop().create_task(daemon.run(), name="latency-daemon")
        started = time.monotonic()
        try:
            mark = await phases.wait(Phase.IDLE, 0, 30.0)
            daemon.start_conversation("latency bench")
            mark = await phases.wait(Phase.LISTENING, mark, 15.0)
            say(f"latency: the daemon is live ({formats.describe()}); clicking")
            done = 0
            while done < plan.clicks:
                count = min(CLICKS_PER_TURN, plan.clicks - done)
                span = probe.clicks(count, SPACING_S, seed=done)
                bare.clicks(count, seed=done)
                mark = await phases.wait(Phase.SPEAKING, mark, span + TURN_TIMEOUT_S)
                mark = await phases.wait(Phase.LISTENING, mark, TURN_TIMEOUT_S)
                done += count
                await played_out(backend, TURN_GAP_S if done < plan.clicks else 0.25)
                say(f"latency: {done}/{plan.clicks} clicks echoed by the daemon")
            ended = time.monotonic()
        finally:
            daemon.stop()
            async with asyncio.timeout(10.0):
                await runner
            backend.close()
            bare.close()
        calls = list(services.emulator.calls.values())
        if len(calls) != 1:
            raise RuntimeError(f"expected one call to the emulator, saw {len(calls)}")
        async with asyncio.timeout(5.0):
            await calls[0].wait_closed()
        assert calls[0].record_path is not None
        return DaemonRun(backend, formats, bare, calls[0].record_path, (started, ended))


# -- analysis ----------------------------------------------------------------------------------


def read_wav(path: Path) -> NDArray[np.int16]:
    """A 16-bit mono WAV's samples."""
    with wave.open(str(path), "rb") as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16)


def monitor_clicks(stream: MonitorStream, window: tuple[float, float]) -> list[float]:
    """When each click was at a monitor, for the clicks inside a time window."""
    times = stream.times_of(stream.onsets())
    return [t for t in times if window[0] <= t <= window[1]]


def follow(stages: list[list[float]], window_s: float = STAGE_WINDOW_S) -> list[list[float]]:
    """Each click of the first stage through the next ones: at every stage, the first onset
    after the previous stage's, within `window_s` (less than the clicks' spacing, so a click
    lost at one stage is never taken for its neighbour). Clicks lost anywhere are left out."""
    rows = []
    for first in stages[0]:
        row = [first]
        for stage in stages[1:]:
            later = next((t for t in stage if row[-1] < t <= row[-1] + window_s), None)
            if later is None:
                break
            row.append(later)
        else:
            rows.append(row)
    return rows


def differences_ms(rows: list[list[float]], later: int, earlier: int) -> list[float]:
    """Per click, stage `later` minus stage `earlier`, in ms."""
    return [round((row[later] - row[earlier]) * 1000, 2) for row in rows]


def summary(samples: list[float]) -> dict[str, float]:
    """p50 and p90 of a part, in ms."""
    p50, p90 = p50_p90(samples)
    return {"p50": round(p50, 1), "p90": round(p90, 1)}


@dataclass(frozen=True)
class Direction:
    """One direction's click latencies, the bare reference's, and the parts (ms)."""

    samples: list[float]
    reference: list[float]
    parts: dict[str, list[float]]
    lost: dict[str, int]
    per_click: dict[str, list[float]] = field(default_factory=dict)
    """A split of a part worth seeing click by click (it moves by turn)."""

    def details(self) -> dict[str, Any]:
        """p50/p90 of everything, for a figure."""
        p50, p90 = p50_p90(self.samples)
        ref50, ref90 = p50_p90(self.reference)
        return {
            "p50": round(p50, 1),
            "p90": round(p90, 1),
            "n": len(self.samples),
            "samples": self.samples,
            "reference_p50": round(ref50, 1),
            "reference_p90": round(ref90, 1),
            "reference_samples": self.reference,
            "parts": {name: summary(values) for name, values in self.parts.items()},
            "clicks_left_out": self.lost,
            **({"per_click": self.per_click} if self.per_click else {}),
        }


def loud_onsets(samples: NDArray[np.int16], rate: int) -> tuple[list[int], int]:
    """Onsets of the clicks at full level, and how many were much quieter than the others.

    The echo canceller (AEC3, on from the first reply) ducks the first clicks after a reply by
    up to 20 dB; the onset of a click whose gain changes under it is not where it began.
    """
    found = onsets(samples, rate)
    span = round(0.04 * rate)
    peaks = [int(np.abs(samples[k : k + span].astype(np.int32)).max()) for k in found]
    if not peaks:
        return [], 0
    full = [k for k, peak in zip(found, peaks, strict=True) if peak >= 0.5 * max(peaks)]
    return full, len(found) - len(full)


def analyse(plan: Plan, recording: ProbeRecording, run: DaemonRun) -> dict[str, Direction]:
    """Find the clicks at every stage, follow each through them, and take the differences."""
    from wakertc.emulator.timeline import load_timeline

    bare = run.bare
    captured, captured_at = stream_times(bare.captured, bare.formats.input_rate, place=False)
    written, written_at = stream_times(bare.written, bare.formats.output_rate, place=True)
    at_mic = monitor_clicks(recording.mic, run.window)
    at_speaker = monitor_clicks(recording.speaker, run.window)
    callbacks = [captured_at(k) for k in onsets(captured, bare.formats.input_rate)]
    bare_in = follow([at_mic, callbacks])
    writes = [written_at(k) for k in onsets(written, bare.formats.output_rate)]
    bare_out = follow([writes, at_speaker])

    timeline = load_timeline(run.call_dir)
    heard, ducked = loud_onsets(read_wav(run.call_dir / "input.wav"), 48000)
    said = read_wav(run.call_dir / "output.wav")
    frames, frame_at = stream_times(run.backend.frames, CAPTURE_RATE, place=False)
    played, played_at = stream_times(run.backend.played, PLAYBACK_RATE, place=True)
    # Stages: microphone, daemon frame, wire (estimated), out of the emulator's jitter buffer.
    mic_rows = follow(
        [
            at_mic,
            [frame_at(k) for k in onsets(frames, CAPTURE_RATE)],
            [timeline.wire_time(k) for k in heard],
            [timeline.received_at(k) for k in heard],
        ]
    )
    # Stages: handed out by the emulator, handed to the daemon's backend, out of the speaker.
    sent = [timeline.sent_at(k) for k in onsets(said, 48000)]
    handed = onsets(played, PLAYBACK_RATE)
    speaker_rows = follow([sent, [played_at(k) for k in handed], at_speaker])
    # What each click's chunk found queued ahead of it at play(): the rest of "daemon play to
    # speaker" is the device and the audio server (a turn of clicks shares one reply).
    starts = np.cumsum([0] + [len(chunk) for _, chunk in run.backend.played])
    queued_at = {
        played_at(k): run.backend.queued[int(np.searchsorted(starts, k, side="right")) - 1]
        for k in handed
    }
    queued_ahead = [round(queued_at[row[1]] * 1000, 2) for row in speaker_rows]
    beyond_queue = [
        round(total - ahead, 2)
        for total, ahead in zip(differences_ms(speaker_rows, 2, 1), queued_ahead, strict=True)
    ]
    measured = {
        "mic": len(mic_rows),
        "speaker": len(speaker_rows),
        "bare mic": len(bare_in),
        "bare speaker": len(bare_out),
    }
    if min(measured.values()) < plan.clicks // 2 or len(at_mic) != plan.clicks:
        raise RuntimeError(
            f"of {plan.clicks} clicks ({len(at_mic)} at the microphone) too few were followed "
            f"through every stage: {measured}"
        )
    return {
        "mic_to_wire_ms": Direction(
            differences_ms(mic_rows, 2, 0),
            differences_ms(bare_in, 1, 0),
            {
                "device_to_daemon_ms": differences_ms(mic_rows, 1, 0),
                "daemon_to_wire_ms": differences_ms(mic_rows, 2, 1),
                "excluded_emulator_jitter_buffer_ms": differences_ms(mic_rows, 3, 2),
            },
            {
                "ducked_by_the_echo_canceller": ducked,
                "not_followed": len(at_mic) - ducked - len(mic_rows),
            },
        ),
        "wire_to_speaker_ms": Direction(
            differences_ms(speaker_rows, 2, 0),
            differences_ms(bare_out, 1, 0),
            {
                "wire_to_daemon_play_ms": differences_ms(speaker_rows, 1, 0),
                "daemon_play_to_speaker_ms": differences_ms(speaker_rows, 2, 1),
            },
            # A click ducked on the way in may be missing from the echo (the VAD's onset came
            # later), so the echo's clicks are the ones counted here.
            {"not_followed": len(sent) - len(speaker_rows)},
            {"queued_ahead_at_play_ms": queued_ahead, "device_and_server_ms": beyond_queue},
        ),
    }


HOW = {
    "mic_to_wire_ms": "a click entering the microphone sink (probe on mic.monitor) to the "
    "arrival of the packet holding it at the emulator (its receive jitter buffer undone, "
    "emulator/timeline.py); parts split at the daemon's backend handing the frame to the loop",
    "wire_to_speaker_ms": "the emulator's track handing out the echoed click to the click "
    "leaving the speaker sink (probe on speaker.monitor); parts split at the daemon handing "
    "the audio to its backend's play()",
}
# Wire to speaker: at most this much above the bare writer on the same device (issue 15).
OVER_BARE_MS = 25.0
TARGET = {
    "mic_to_wire_ms": f"<= {LIMIT_MS:g} ms",
    "wire_to_speaker_ms": f"<= reference + {OVER_BARE_MS:g} ms",
}
REFERENCE_NAME = {
    "mic_to_wire_ms": "bare PortAudio capture callback on the same device, format and 20 ms "
    "periods as the daemon: click at the microphone to the callback holding it (p50)",
    "wire_to_speaker_ms": "bare PortAudio blocking writer on the same device, format and 20 ms "
    "blocks as the daemon: write of the click to it leaving the speaker (p50)",
}


def skipped(reason: str) -> dict[str, dict[str, Any]]:
    """Both figures without values: the rig could not run here."""
    return {
        name: figure(
            math.nan,
            math.nan,
            unit="ms (p50)",
            reference_name=REFERENCE_NAME[name],
            target=TARGET[name],
            met=None,
            skipped=reason,
        )
        for name in HOW
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (PortAudio's ALSA plugin reads them) and restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The daemon's own choice of formats (what a user's config leaves unset), and the sinks' native
# formats forced (a device without 16 kHz capture: every conversion runs in the daemon).
CHOSEN: dict[str, Any] = {}
NATIVE: dict[str, Any] = {
    "input_rate": MIC_RATE,
    "input_channels": MIC_CHANNELS,
    "output_rate": SPEAKER_RATE,
    "output_channels": SPEAKER_CHANNELS,
}


async def measure(
    quick: bool, workdir: Path, models_dir: Path, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Both latency figures (skipped, with the reason, when PulseAudio cannot start here).

    The figures are for the formats the daemon chooses itself; the full run also measures the
    sinks' native formats forced (`with_native_formats`).
    """
    plan = QUICK if quick else FULL
    variants = {"chosen": CHOSEN} if quick else {"chosen": CHOSEN, "native": NATIVE}
    for name in variants:
        await asyncio.to_thread((workdir / name).mkdir, parents=True, exist_ok=True)
    runs: dict[str, DaemonRun] = {}
    with contextlib.ExitStack() as stack:
        try:
            rig = stack.enter_context(running_pulse())
        except PulseUnavailable as exc:
            say(f"latency: skipped, {exc}")
            return skipped(f"PulseAudio cannot start here: {exc}")
        stack.enter_context(environment(rig.env_vars))
        probe = ClickProbe(rig, workdir / "probe")
        await probe.start()
        try:
            for name, audio in variants.items():
                runs[name] = await variant_run(
                    rig, probe, plan, audio, workdir / name, models_dir, say
                )
        except BaseException:
            await probe.kill()
            raise
        recording = await probe.stop()
    results = {name: analyse(plan, recording, run) for name, run in runs.items()}
    figures = {}
    for name in HOW:
        main = results["chosen"][name]
        p50 = statistics.median(main.samples)
        details = main.details()
        details["daemon_adds_ms"] = round(details["p50"] - details["reference_p50"], 1)
        details["formats"] = runs["chosen"].formats.describe()
        if "native" in results:
            native = results["native"][name].details()
            del native["samples"], native["reference_samples"]
            native["daemon_adds_ms"] = round(native["p50"] - native["reference_p50"], 1)
            details["with_native_formats"] = {
                "formats": runs["native"].formats.describe(),
                **native,
            }
        if name == "wire_to_speaker_ms":
            details["device_playback"] = runs["chosen"].backend.device_playback
        details["how"] = HOW[name]
        details["probe_late_reads_ms"] = round(
            max(recording.mic.late_reads_ms(), recording.speaker.late_reads_ms()), 2
        )
        reference = statistics.median(main.reference)
        figures[name] = figure(
            p50,
            reference,
            unit="ms (p50)",
            reference_name=REFERENCE_NAME[name],
            target=TARGET[name],
            met=p50 <= (reference + OVER_BARE_MS if name == "wire_to_speaker_ms" else LIMIT_MS),
            **details,
        )
        say(
            f"latency: {name} p50 {details['p50']} ms (p90 {details['p90']}), "
            f"bare {details['reference_p50']} ms"
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print the figures."""
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.clicks} clicks")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[latency {time.monotonic() - started:5.1f} s] {message}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="wakertc-latency-") as tmp:
        figures = asyncio.run(measure(args.quick, Path(tmp), ROOT / "models", say))
    if args.json:
        print(json.dumps(figures))
    else:
        for name, f in figures.items():
            print(f"{name}: {json.dumps(f, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
