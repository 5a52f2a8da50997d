"""The whole chain in one test: emulator + companion + the real daemon, on loopback, under
either API (`api="realtime"` or `"live"`: the device's `[session] api`).

    async with run_chain(tmp_path, models_dir, device={"session": {"max_session_s": 60}}) as chain:
        await chain.press()  # the button on mock pin 17
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("what is the weather like today"))
        await chain.wait_phase(Phase.SPEAKING)
        assert chain.leds(chain.current).effect == "pulse"

Everything is real except the edges the daemon takes at construction: the microphone is the file
audio backend with test audio mixed in on demand (`ChainMic`), the GPIO pins are gpiozero mock pins
that keep a timestamped history (`RecordingPin`). The services are `wakertc.demo.start_services`,
the device config is the demo's with per-test overrides. The harness records every phase change
(with the time and what the speaker still had queued), every LED pin change, every log record of
`wakertc.*`, what the microphone delivered and what the speaker played; the emulator records what
reached the "model" (`record_dir`: input.wav and events.jsonl per call).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import json
import logging
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
from gpiozero.pins.mock import MockFactory, MockPWMPin

from speech import synth
from wakertc.audio import CAPTURE_RATE, FRAME_SAMPLES, AudioBackend, FileBackend, open_backend
from wakertc.config import Config, config_from_dict
from wakertc.daemon import Daemon, Edges
from wakertc.demo import DEMO_API_KEY, start_services, write_device_config
from wakertc.emulator import EmulatorOptions, Faults
from wakertc.emulator.live_permissions import NOT_PERMITTED
from wakertc.leds import colour
from wakertc.measure import read_wav, received_ratio, write_wav
from wakertc.state import Phase, Transition

T = TypeVar("T")

BUTTON_PIN = 17
LED_PINS = (5, 6, 13)
# Test defaults on top of the demo's device config: quick turns, quick failures.
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "session": {"connect_timeout_s": 3.0, "idle_timeout_s": 1.5},
    "button": {"long_press_s": 0.6},
}
# The default LED colours (config.DEFAULT_PATTERNS), for assertions.
BLUE, GREEN, RED, WHITE = "#0040ff", "#00ff40", "#ff0000", "#ffffff"
# A reply long enough (~7 s) to talk over.
STORY = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman "
    "who told long stories to anyone who would listen."
)
# The session APIs a device can use (`[session] api`); the chain tests run under each.
APIS = ("realtime", "live")


@dataclass(frozen=True)
class Wire:
    """What one API sends for the same conversation: the client events the emulator receives,
    and the server events it answers with."""

    end: str | None  # the client event that ends a session (None: the HTTP hang-up)
    tool_output: str  # the client event carrying a tool's result
    barge_in: str  # the first client event of a barge-in
    mute: str | None  # the client event telling the service of a mute
    reply: str  # the server event that comes once with each spoken reply
    announce: str  # the client event asking the model to say a text


WIRE = {
    "realtime": Wire(
        None,
        "conversation.item.create",
        "response.cancel",
        None,
        "response.done",
        "response.create",
    ),
    "live": Wire(
        "session.close",
        "response.item.create",
        "session.instructions.append",
        "session.input_audio.mute",
        "session.output_transcript.delta",
        "session.commentary.append",
    ),
}
# Enough for every conversation a test opens, never the reason a test fails.
COMPANION_LIMITS = "\n[limits]\nper_device_per_minute = 1000\nglobal_per_minute = 1000\n"


def clip(text: str, pad_s: float = 0.15) -> np.ndarray:
    """espeak-ng saying `text` (int16, 16 kHz) with a little silence around it; cached."""
    return synth(text, pad_s=pad_s)


def silence(seconds: float) -> np.ndarray:
    """Digital silence at the capture rate."""
    return np.zeros(round(seconds * CAPTURE_RATE), np.int16)


# -- GPIO ------------------------------------------------------------------------------------


class RecordingPin(MockPWMPin):
    """A mock PWM pin that keeps `(monotonic time, value)` for every change."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.history: list[tuple[float, float]] = [(time.monotonic(), 0.0)]
        super().__init__(factory, info)

    def _change_state(self, value: Any) -> bool:
        changed = bool(super()._change_state(value))
        if changed:
            self.history.append((time.monotonic(), float(value)))
        return changed

    def value_at(self, t: float) -> float:
        """The pin's value at monotonic time `t`."""
        history = self.history
        index = bisect.bisect_right(history, (t, float("inf"))) - 1
        return history[max(index, 0)][1]


@dataclass(frozen=True)
class LedReading:
    """What the RGB LED showed during an interval: effect and normalised colour."""

    effect: str  # off, solid, blink or pulse
    colour: tuple[float, float, float]  # strongest component = 1; (0, 0, 0) when off
    samples: int

    def is_colour(self, hex_colour: str, tolerance: float = 0.02) -> bool:
        """Whether the LED's colour matches `#rrggbb` (brightness ignored)."""
        want = _normalise(colour(hex_colour))
        return all(abs(a - b) <= tolerance for a, b in zip(self.colour, want, strict=True))


def _normalise(rgb: tuple[float, ...]) -> tuple[float, float, float]:
    peak = max(rgb)
    if peak <= 0:
        return (0.0, 0.0, 0.0)
    r, g, b = (round(c / peak, 3) for c in rgb)
    return (r, g, b)


# -- audio -----------------------------------------------------------------------------------


@dataclass
class Spoken:
    """Audio queued into the microphone: where it lies in the heard timeline (seconds)."""

    start_s: float
    end_s: float
    done: asyncio.Future[None]


class CountingLoop:
    """An event loop (the running one by default), counting the hand-offs from other threads
    that wake it (`call_soon_threadsafe`), each as it runs."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.wakes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.loop, name)

    def call_soon_threadsafe(self, func: Callable[..., object], *args: object) -> object:
        def counted() -> None:  # counted as it runs: with what it delivers
            self.wakes += 1
            func(*args)

        return self.loop.call_soon_threadsafe(counted)


class ChainMic(AudioBackend):
    """The file backend, plus test audio mixed into the microphone while the daemon runs.

    Capture pacing, playback pacing, the output WAV and the render tap are the real
    `FileBackend`'s. On top: `speak()` mixes a clip into the next frames; `echo_gain` feeds what
    the speaker plays back into the microphone (a room without echo cancellation); every frame
    delivered (`heard`) and the loudness of every played block (`rendered`) are kept.
    """

    def __init__(
        self,
        input_file: Path,
        output_file: Path,
        *,
        echo_gain: float = 0.0,
        echo_delay_s: float = 0.04,
        keep_history: bool = True,
    ) -> None:
        self.file = FileBackend(input_file, output_file)
        # A soak of hundreds of conversations keeps no history: it would look like a leak.
        self._keep_history = keep_history
        self.frames_heard = 0
        self.loop: CountingLoop | None = None
        """The loop the backend hands frames to, counting its wakes (set by `start`)."""
        self.file.on_render = self._rendered
        self.on_error = None
        self._daemon_render: Any = None
        self._on_frame: Any = None
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._queued_frames = 0
        self._speaking: list[tuple[int, asyncio.Future[None]]] = []
        self.heard: list[np.ndarray] = []
        self.heard_since: float | None = None
        self.rendered: list[tuple[float, int]] = []
        # The speaker-to-microphone path: a fixed delay (converters, buffers, air) and a gain.
        # Captured sample k hears rendered sample k - delay, both counted from start().
        self._echo_gain = echo_gain
        self._echo_delay = round(echo_delay_s * CAPTURE_RATE)
        self._echo = np.zeros(0, np.int16)  # rendered samples from index _echo_base on
        self._echo_base = 0
        self._captured = 0
        self._echo_lock = threading.Lock()

    # AudioBackend ------------------------------------------------------------------------------

    @property
    def on_render(self) -> Any:
        return self._daemon_render

    @on_render.setter
    def on_render(self, callback: Any) -> None:
        self._daemon_render = callback

    @property
    def on_error(self) -> Any:
        return self.file.on_error

    @on_error.setter
    def on_error(self, callback: Any) -> None:
        self.file.on_error = callback

    def start(self, loop: asyncio.AbstractEventLoop, on_frame: Any) -> None:
        self._on_frame = on_frame
        self.loop = CountingLoop(loop)
        self.file.start(cast(asyncio.AbstractEventLoop, self.loop), self._frame)

    def play(self, samples: np.ndarray) -> None:
        self.file.play(samples)

    def clear_playback(self) -> None:
        self.file.clear_playback()

    def gather_frames(self, n: int) -> None:
        self.file.gather_frames(n)

    def set_volume(self, gain: float) -> bool:
        return self.file.set_volume(gain)

    @property
    def playback_queued_s(self) -> float:
        return self.file.playback_queued_s

    def close(self) -> None:
        self.file.close()

    # the test's side --------------------------------------------------------------------------

    def speak(self, samples: np.ndarray) -> Spoken:
        """Mix `samples` (int16, 16 kHz) into the microphone from the next frame on."""
        loop = asyncio.get_running_loop()
        frames = [
            np.pad(samples[i : i + FRAME_SAMPLES], (0, max(0, i + FRAME_SAMPLES - len(samples))))
            for i in range(0, len(samples), FRAME_SAMPLES)
        ]
        first = self.frames_heard + self._queued_frames
        self._pending.extend(frames)
        self._queued_frames += len(frames)
        done: asyncio.Future[None] = loop.create_future()
        last = first + len(frames)
        self._speaking.append((last, done))
        rate = CAPTURE_RATE / FRAME_SAMPLES
        return Spoken(first / rate, last / rate, done)

    async def say(self, samples: np.ndarray, timeout: float = 30.0) -> Spoken:
        """`speak()` and wait until the microphone has delivered all of it."""
        spoken = self.speak(samples)
        async with asyncio.timeout(timeout):
            await spoken.done
        return spoken

    def heard_audio(self) -> np.ndarray:
        """Everything the microphone delivered, int16 at 16 kHz."""
        return np.concatenate(self.heard) if self.heard else silence(0)

    def audible_s(self, start: float, end: float, peak: int = 300) -> float:
        """Seconds of audible playback between two monotonic times."""
        return sum(
            FRAME_SAMPLES / CAPTURE_RATE
            for t, level in list(self.rendered)
            if start <= t <= end and level >= peak
        )

    def audible_span(self, start: float, end: float, peak: int = 300) -> float:
        """Seconds from the first to the last audible played block between two monotonic times."""
        times = [t for t, level in list(self.rendered) if start <= t <= end and level >= peak]
        return times[-1] - times[0] + FRAME_SAMPLES / CAPTURE_RATE if times else 0.0

    def last_audible(self, before: float = float("inf"), peak: int = 300) -> float | None:
        """Monotonic time of the last audible played block before `before`."""
        times = [t for t, level in list(self.rendered) if t < before and level >= peak]
        return times[-1] if times else None

    # threads -----------------------------------------------------------------------------------

    def _frame(self, frame: np.ndarray) -> None:
        """One capture frame, on the loop thread (called by the file backend's hand-off)."""
        if self.heard_since is None:
            self.heard_since = time.monotonic()
        if self._pending:
            self._queued_frames -= 1
            frame = _mix(frame, self._pending.popleft())
        if self._echo_gain:
            frame = _mix(frame, self._take_echo(len(frame)))
        self.frames_heard += 1
        if self._keep_history:
            self.heard.append(frame)
        while self._speaking and self._speaking[0][0] <= self.frames_heard:
            _, done = self._speaking.pop(0)
            if not done.done():
                done.set_result(None)
        if self._on_frame is not None:
            self._on_frame(frame)

    def _rendered(self, samples: np.ndarray) -> None:
        """What the speaker played (playback thread), 16 kHz, kept as one entry per 20 ms (the
        backend hands over 30-40 ms at a time): `audible_s` counts entries as 20 ms each. All
        entries carry the time it was handed over: none is dated after what has happened."""
        if self._keep_history:
            now = time.monotonic()
            for start in range(0, len(samples), FRAME_SAMPLES):
                piece = samples[start : start + FRAME_SAMPLES]
                self.rendered.append((now, int(np.abs(piece).max(initial=0))))
        if self._echo_gain:
            scaled = (samples.astype(np.float32) * self._echo_gain).astype(np.int16)
            with self._echo_lock:
                self._echo = np.concatenate([self._echo, scaled])
        callback = self._daemon_render
        if callback is not None:
            callback(samples)

    def _take_echo(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.int16)
        first = self._captured - self._echo_delay  # rendered index heard by this frame
        self._captured += n
        with self._echo_lock:
            lo = max(first, self._echo_base)
            hi = min(first + n, self._echo_base + len(self._echo))
            if hi > lo:
                out[lo - first : hi - first] = self._echo[
                    lo - self._echo_base : hi - self._echo_base
                ]
            # Keep what later frames may still hear (the playback thread can run ahead).
            keep = max(0, first + n - self._echo_base)
            self._echo = self._echo[keep:]
            self._echo_base += keep
        return out


def _mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.clip(a.astype(np.int32) + b.astype(np.int32), -32768, 32767).astype(np.int16)


# -- logs ------------------------------------------------------------------------------------


class LogRecords(logging.Handler):
    """Every `wakertc.*` record at `level` (INFO) and above, with the time it was logged."""

    def __init__(self, loop: asyncio.AbstractEventLoop, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.records: list[tuple[float, logging.LogRecord]] = []
        self._loop = loop
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record))
        # Records may come from worker threads (audio, tools): wake waiters on the loop.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.changed.set)

    def lines(self, level: int = logging.INFO, logger: str = "wakertc") -> list[str]:
        """Messages at `level` or above from `logger` and its children."""
        return [
            r.getMessage()
            for _, r in self.records
            if r.levelno >= level and (r.name == logger or r.name.startswith(logger + "."))
        ]

    def find(self, fragment: str, level: int = logging.INFO) -> list[tuple[float, str]]:
        """(time, message) of records containing `fragment`."""
        return [
            (t, r.getMessage())
            for t, r in self.records
            if r.levelno >= level and fragment in r.getMessage()
        ]


# -- the chain -------------------------------------------------------------------------------


@dataclass
class Seen:
    """One phase change as the harness saw it."""

    t: float  # monotonic
    change: Transition
    queued_s: float  # audio the speaker still had queued right after the change

    @property
    def new(self) -> Phase:
        return self.change.new

    @property
    def old(self) -> Phase:
        return self.change.old

    @property
    def reason(self) -> str:
        return self.change.reason


@dataclass
class Chain:
    """A running chain; see the module docstring."""

    workdir: Path
    config: Config
    daemon: Daemon
    mic: ChainMic
    factory: MockFactory
    emulator: Any
    companion: Any
    logs: LogRecords
    record_dir: Path
    output_wav: Path
    input_wav: Path
    seen: list[Seen] = field(default_factory=list)
    cursor: int = 0
    runner: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # phases ------------------------------------------------------------------------------------

    def _on_change(self, change: Transition) -> None:
        queued = self.mic.playback_queued_s if self.mic is not None else 0.0
        self.seen.append(Seen(time.monotonic(), change, queued))
        self._changed.set()

    @property
    def phase(self) -> Phase:
        """The daemon's phase now."""
        return self.daemon.phases.phase

    @property
    def current(self) -> Seen:
        """The latest phase change."""
        return self.seen[-1]

    def states(self, start: int = 0) -> list[str]:
        """Phase names from change `start` on, starting with that change's old phase."""
        changes = self.seen[start:]
        if not changes:
            return []
        return [changes[0].old.value] + [s.new.value for s in changes]

    def next_change(self, after: Seen) -> Seen | None:
        """The change that ended the phase `after` entered."""
        index = self.seen.index(after)
        return self.seen[index + 1] if index + 1 < len(self.seen) else None

    async def _until(self, check: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result is not None:
                return result
            if self.runner is not None and self.runner.done():
                error = None if self.runner.cancelled() else self.runner.exception()
                raise AssertionError(f"the daemon stopped ({error!r}) waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}; "
                    f"phases so far: {self.describe()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def sample_until(
        self, phase: Phase, read: Callable[[], T], *, every_s: float = 0.02, timeout: float = 30.0
    ) -> list[T]:
        """`read()` every `every_s` until the next change into `phase` (as `wait_phase`): e.g.
        the playback queue's depth while a reply plays."""
        samples: list[T] = []

        async def sample() -> None:
            while True:
                samples.append(read())
                await asyncio.sleep(every_s)

        sampler = asyncio.create_task(sample(), name="chain-sample")
        try:
            await self.wait_phase(phase, timeout=timeout)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        return samples

    async def wait_phase(self, phase: Phase, *, timeout: float = 15.0) -> Seen:
        """Wait for the next change into `phase` after the cursor; the cursor moves past it."""

        def check() -> Seen | None:
            for index in range(self.cursor, len(self.seen)):
                if self.seen[index].new is phase:
                    self.cursor = index + 1
                    return self.seen[index]
            return None

        result: Seen = await self._until(check, timeout, f"phase {phase.value}")
        return result

    async def expect(self, *phases: Phase, timeout: float = 15.0) -> list[Seen]:
        """The next changes after the cursor must go to exactly `phases`, in order."""
        want = [p.value for p in phases]

        def check() -> list[Seen] | None:
            got = self.seen[self.cursor : self.cursor + len(phases)]
            names = [s.new.value for s in got]
            if names != want[: len(names)]:
                raise AssertionError(
                    f"expected the phases {want} next, got {names}; all: {self.describe()}"
                )
            if len(got) < len(phases):
                return None
            self.cursor += len(phases)
            return got

        result: list[Seen] = await self._until(check, timeout, f"phases {want}")
        return result

    async def wait_any(self, phases: frozenset[Phase], *, timeout: float = 15.0) -> Seen:
        """Wait for the next change into one of `phases`; the cursor moves past it."""

        def check() -> Seen | None:
            for index in range(self.cursor, len(self.seen)):
                if self.seen[index].new in phases:
                    self.cursor = index + 1
                    return self.seen[index]
            return None

        names = sorted(p.value for p in phases)
        result: Seen = await self._until(check, timeout, f"one of the phases {names}")
        return result

    def running(self) -> bool:
        """The daemon's run() has not returned."""
        return self.runner is not None and not self.runner.done()

    def forget_seen(self) -> None:
        """Drop the phase changes the cursor has passed (a long soak keeps no history)."""
        del self.seen[: self.cursor]
        self.cursor = 0

    def describe(self, start: int = 0) -> str:
        """`old -> new (reason)` for each change, for failure messages."""
        return (
            "; ".join(f"{s.old.value}->{s.new.value} ({s.reason})" for s in self.seen[start:])
            or "(none)"
        )

    async def wait_log(self, fragment: str, *, timeout: float = 10.0) -> tuple[float, str]:
        """Wait for a `wakertc` log record containing `fragment`; its (time, message)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.logs.find(fragment)
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no log line with {fragment!r} within {timeout:g} s")
            self.logs.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.logs.changed.wait(), remaining)

    # the button --------------------------------------------------------------------------------

    async def press(self, hold_s: float = 0.1) -> None:
        """A short press of the button (pulled up: pressed = low)."""
        pin = self.factory.pin(BUTTON_PIN)
        pin.drive_low()
        await asyncio.sleep(hold_s)
        pin.drive_high()

    async def long_press(self, expect: Phase, timeout: float = 5.0) -> Seen:
        """Hold the button until the daemon enters `expect`, then release it."""
        pin = self.factory.pin(BUTTON_PIN)
        pin.drive_low()
        try:
            return await self.wait_phase(expect, timeout=timeout)
        finally:
            pin.drive_high()
            await asyncio.sleep(self.config.button.bounce_s * 2)

    # LEDs --------------------------------------------------------------------------------------

    def led_at(self, t: float) -> tuple[float, float, float]:
        """The RGB LED's pin values at monotonic time `t`."""
        r, g, b = (self.factory.pin(p).value_at(t) for p in LED_PINS)
        return (r, g, b)

    def leds(self, seen: Seen, settle_s: float = 0.03, step_s: float = 0.005) -> LedReading:
        """What the LED showed while in the phase `seen` entered (until the next change)."""
        following = self.next_change(seen)
        end = following.t if following is not None else time.monotonic()
        start = seen.t + settle_s
        # A phase read just after it began (or that lasted less than settle_s): its last moment,
        # when the LED has long been switched (listeners run within the change itself).
        times = np.arange(start, end - 0.002, step_s) if end - 0.002 > start else [end]
        values = [tuple(round(c, 3) for c in self.led_at(float(t))) for t in times]
        lit = [v for v in values if max(v) > 0.001]
        if not lit:
            return LedReading("off", (0.0, 0.0, 0.0), len(values))
        brightest = max(lit, key=sum)
        distinct = set(values)
        if len(distinct) == 1:
            effect = "solid"
        elif distinct <= {brightest, (0.0, 0.0, 0.0)}:
            effect = "blink"
        else:
            effect = "pulse"
        return LedReading(effect, _normalise(brightest), len(values))

    # what reached the "model" ---------------------------------------------------------------

    def calls(self) -> list[Any]:
        """The emulator's calls, in the order they were answered."""
        return list(self.emulator.calls.values())

    def events(self, call: int = -1) -> list[dict[str, Any]]:
        """The recorded events.jsonl of a call (default: the latest)."""
        path = self.calls()[call].record_path / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def sent(self, call: int = -1) -> list[dict[str, Any]]:
        """Client events the emulator received, in order."""
        return [e["event"] for e in self.events(call) if e["dir"] == "in" and "event" in e]

    def received(self, call: int = -1) -> list[dict[str, Any]]:
        """Server events the emulator sent (junk excluded), in order."""
        return [e["event"] for e in self.events(call) if e["dir"] == "out" and "event" in e]

    def recording(self, call: int = -1) -> np.ndarray:
        """What the emulator received from the microphone in a call (float32, 16 kHz)."""
        return read_wav(self.calls()[call].record_path / "input.wav", CAPTURE_RATE)

    def assert_within_channel_permissions(self) -> None:
        """Under GPT-Live: the device sent only client events its data channel permits (the
        companion's policy, as `session.started` shows it), and none was refused."""
        for index, call in enumerate(self.calls()):
            if call.record_path is None or not (call.record_path / "events.jsonl").exists():
                continue
            received = self.received(index)
            started = [e for e in received if e["type"] == "session.started"]
            if not started:
                continue  # never started (a fault): nothing was sent on its channel
            channel = started[0]["session"].get("client", {}).get("data_channel", {})
            allowed = channel.get("allowed_client_events", "all")
            sent = {e.get("type") for e in self.sent(index)}
            if allowed != "all":
                assert sent <= set(allowed), f"not permitted: {sorted(sent - set(allowed))}"
            refused = [
                e for e in received if e["type"] == "error" and e["error"]["code"] == NOT_PERMITTED
            ]
            assert not refused, refused

    def received_ratio(self, spoken: Spoken | tuple[float, float], call: int = -1) -> float:
        """Fraction of the speech between two heard-timeline positions that reached the model.

        The call's recording is what the microphone delivered from the pre-roll before the wake
        on, so only the same stretch of both (plus a little slack for the alignment) is compared:
        replies echoed into the microphone elsewhere cannot mislead the alignment.
        """
        start, end = (spoken.start_s, spoken.end_s) if isinstance(spoken, Spoken) else spoken
        rate, slack = CAPTURE_RATE, 0.25
        answered = self.calls()[call].started
        wake = [s for s in self.seen if s.new is Phase.WAKE and s.t <= answered][-1]
        origin = self.heard_position(wake.t) - self.config.wake.preroll_ms / 1000
        low, high = max(0.0, start - slack), end + slack
        heard = self.mic.heard_audio()[int(low * rate) : int(high * rate)]
        first, last = max(0.0, low - origin), max(0.0, high - origin)
        received = self.recording(call)[int(first * rate) : int(last * rate)]
        sent = heard.astype(np.float32) / 32768.0
        return received_ratio(sent, received, rate, start - low, end - low)

    def heard_position(self, t: float) -> float:
        """A monotonic time as a position (seconds) in the microphone's heard timeline."""
        assert self.mic.heard_since is not None
        return t - self.mic.heard_since

    # faults ------------------------------------------------------------------------------------

    def set_faults(self, *specs: str) -> None:
        """Change the emulator's faults for calls and mints from now on."""
        self.emulator.faults = Faults.parse(specs)


@dataclass(frozen=True)
class Remote:
    """Services the chain does not start itself (e.g. child processes): where they are."""

    companion_url: str
    realtime_url: str
    token_file: Path


def merge_tables(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """TOML tables `extra` laid over `base`, sub-table by sub-table."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


@contextlib.asynccontextmanager
async def run_chain(
    workdir: Path,
    models_dir: Path,
    *,
    input_audio: np.ndarray | Path | None = None,
    reply: str = "echo",
    reply_text: str = "It is sunny and mild today.",
    script: list[dict[str, Any]] | None = None,
    faults: tuple[str, ...] = (),
    device: Mapping[str, Any] | None = None,
    companion_extra: str = "",
    echo_gain: float = 0.0,
    allow_tracebacks: bool = False,
    remote: Remote | None = None,
    keep_history: bool = True,
    real_audio: bool = False,
    clock: Any = None,
    daemon_opens_audio: bool = False,
    ready: Phase = Phase.IDLE,
    api: str = "realtime",
) -> AsyncIterator[Chain]:
    """Start emulator, companion and daemon; yield the chain once the daemon is listening.

    `input_audio`: the microphone's WAV (a path, or samples at 16 kHz); silence by default.
    `device`: overrides of the device config, as TOML tables (`{"session": {...}}`).
    `companion_extra`: TOML appended to the companion config (e.g. a `[session]` policy).
    `remote`: use these services instead of starting an emulator and a companion in-process
    (then `reply`, `script`, `faults` and `companion_extra` do not apply, and `chain.emulator`
    and `chain.companion` are None).
    `real_audio`: open the backend the device config's `[audio]` table names (pass it in
    `device`, e.g. a PulseRig's `audio_table()`), as the daemon would itself, instead of the
    file-backend `ChainMic`; `chain.mic` is then that backend (its playback queue is read).
    `clock`: the timers' clock (`wakertc.timers.Clock`), e.g. one set to just before an alarm.
    `daemon_opens_audio` (with `real_audio`): the daemon opens the devices itself, as `wakertc
    run` does, so that a device missing at start-up is its to handle; `chain.mic` is None.
    `ready`: the phase the daemon must reach before the chain is yielded.
    `api`: the session API the device uses (`realtime` or `live`); the emulator serves both.
    `keep_history=False`: for soaks; the microphone, the pins and the log keep no history
    (only WARNING and above is logged), so what grows is the daemon's.
    On exit the daemon is stopped, and unless `allow_tracebacks`, no `wakertc` log record may
    carry a traceback (nothing crashed, no event handler failed); under GPT-Live the device
    must have kept to its data channel's permissions (`assert_within_channel_permissions`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    models_dir = models_dir.resolve()
    if isinstance(input_audio, Path):
        input_wav = input_audio
    else:
        input_wav = workdir / "input.wav"
        samples = silence(0.2) if input_audio is None else input_audio
        write_wav(input_wav, samples, CAPTURE_RATE)
    output_wav = workdir / "output.wav"
    record_dir = workdir / "recording"
    script_path = None
    if script is not None:
        script_path = workdir / "script.json"
        script_path.write_text(json.dumps(script))
    options = EmulatorOptions(
        host="127.0.0.1",
        port=0,
        api_key=DEMO_API_KEY,
        reply=reply,
        reply_text=reply_text,
        script=script_path,
        record_dir=record_dir,
        faults=tuple(faults),
    )
    log_level = logging.INFO if keep_history else logging.WARNING
    logs = LogRecords(asyncio.get_running_loop(), log_level)
    wakertc_log = logging.getLogger("wakertc")
    level = wakertc_log.level
    wakertc_log.addHandler(logs)
    # Not above `log_level`; and for a soak not below either: pytest keeps every record it sees
    # for its report, so at INFO the test process would grow by it.
    if wakertc_log.getEffectiveLevel() > log_level or not keep_history:
        wakertc_log.setLevel(log_level)
    try:
        async with contextlib.AsyncExitStack() as stack:
            emulator = companion = None
            if remote is None:
                services = await start_services(
                    stack, workdir, options, companion_extra=COMPANION_LIMITS + companion_extra
                )
                emulator, companion = services.emulator, services.companion
                remote = Remote(services.companion.url, services.emulator.url, services.token_file)
            path = write_device_config(
                workdir,
                input_wav,
                output_wav,
                models_dir,
                remote.companion_url,
                remote.realtime_url,
                remote.token_file,
            )
            data = merge_tables(
                merge_tables(tomllib.loads(path.read_text()), DEVICE_DEFAULTS), device or {}
            )
            data = merge_tables(data, {"session": {"api": api}})
            config = config_from_dict(data, path)
            mic: Any
            if daemon_opens_audio:
                assert real_audio, "daemon_opens_audio is for the real audio backend"
                mic = None
            elif real_audio:
                # Opened here (as the daemon would) so that the harness can watch its queue.
                mic = await asyncio.to_thread(open_backend, config.audio)
                stack.callback(mic.close)
            else:
                mic = ChainMic(
                    input_wav, output_wav, echo_gain=echo_gain, keep_history=keep_history
                )
            factory = MockFactory(pin_class=RecordingPin if keep_history else MockPWMPin)
            daemon = Daemon(config, Edges(audio=mic, pin_factory=factory, clock=clock))
            chain = Chain(
                workdir=workdir,
                config=config,
                daemon=daemon,
                mic=mic,
                factory=factory,
                emulator=emulator,
                companion=companion,
                logs=logs,
                record_dir=record_dir,
                output_wav=output_wav,
                input_wav=input_wav,
            )
            daemon.phases.add_listener(chain._on_change)
            runner = chain.runner = asyncio.create_task(daemon.run(), name="chain-daemon")
            runner.add_done_callback(lambda _: chain._changed.set())
            try:
                await chain.wait_phase(ready, timeout=20.0)
                yield chain
            finally:
                daemon.stop()
                async with asyncio.timeout(10.0):
                    await runner
            if not allow_tracebacks:
                crashed = [
                    f"{r.name}: {r.getMessage()}"
                    for _, r in logs.records
                    if r.exc_info and r.name.startswith("wakertc")
                ]
                assert not crashed, f"tracebacks logged: {crashed}"
            if api == "live" and emulator is not None and keep_history:
                chain.assert_within_channel_permissions()
    finally:
        wakertc_log.removeHandler(logs)
        wakertc_log.setLevel(level)
