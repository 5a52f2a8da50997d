"""`wakertc demo`: the whole chain on this machine, no hardware, no OpenAI account.

It starts the Realtime emulator and the companion server on loopback, then runs the real daemon on
the file audio backend with gpiozero's mock pins: the input WAV (by default espeak-ng saying
"hey jarvis, what is the weather like today" in one breath) is the microphone, the reply is written
to a WAV, and every phase change is printed with the LEDs drawn in the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from .config import LedPattern, load_config
from .measure import read_wav, received_ratio, write_wav
from .state import Phase, Transition

if TYPE_CHECKING:
    from .companion import Companion
    from .daemon import Daemon
    from .emulator import Emulator, EmulatorOptions

log = logging.getLogger(__name__)

WAKE_TEXT = "hey jarvis"
QUESTION_TEXT = "what is the weather like today"
REPLY_TEXT = "It is sunny and mild today, with a high of twenty one degrees."
RATE = 16000
DEMO_API_KEY = "wakertc-demo-key-not-secret"
LEAD_SILENCE_S = 0.5
TAIL_SILENCE_S = 1.0
# A timer the script set is left to ring this long, then "pressed" off like a user would.
RING_SHOWN_S = 2.0
# With no wake word heard by the end of the input, the demo waits this long (a wake word at the
# very end of the file scores only once the silence after it has reached the detector), then ends.
NO_WAKE_GRACE_S = 1.0


@dataclass
class DemoInput:
    """The microphone recording and where the speech after the wake word lies in it."""

    path: Path
    question_start_s: float | None
    question_end_s: float | None
    duration_s: float


@dataclass
class DemoResult:
    """What `--json` prints."""

    ok: bool = False
    states: list[str] = field(default_factory=list)
    final_state: str = ""
    wake_word: str | None = None
    wake_to_live_ms: float | None = None
    utterance_received_ratio: float | None = None
    reply_audio_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    recovered: bool = False
    turns: int = 0
    """Replies heard to their end."""

    def as_json(self) -> dict[str, Any]:
        """The JSON object the issue specifies (plus `recovered` for fault runs)."""
        return {
            "ok": self.ok,
            "states": self.states,
            "final_state": self.final_state,
            "wake_word": self.wake_word,
            "wake_to_live_ms": self.wake_to_live_ms,
            "utterance_received_ratio": self.utterance_received_ratio,
            "reply_audio_s": self.reply_audio_s,
            "turns": self.turns,
            "errors": self.errors,
            "recovered": self.recovered,
        }


def espeak(text: str, voice: str = "en-us", wpm: int = 150) -> NDArray[Any]:
    """`text` spoken by espeak-ng, float32 mono at 16 kHz, leading/trailing silence trimmed."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (scripts/bootstrap.sh installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(
            [binary, "-v", voice, "-s", str(wpm), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        samples = read_wav(path, RATE)
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def make_default_input(path: Path) -> DemoInput:
    """Wake word and question said with no pause, so we know where the question starts."""
    wake = espeak(WAKE_TEXT)
    question = espeak(QUESTION_TEXT)
    lead = np.zeros(int(LEAD_SILENCE_S * RATE), np.float32)
    tail = np.zeros(int(TAIL_SILENCE_S * RATE), np.float32)
    samples = np.concatenate([lead, wake, question, tail])
    write_wav(path, samples, RATE)
    start = (len(lead) + len(wake)) / RATE
    return DemoInput(path, start, start + len(question) / RATE, len(samples) / RATE)


def describe_input(path: Path) -> DemoInput:
    """A user's WAV: the question's position is estimated later from the detection time."""
    with wave.open(str(path), "rb") as wav:
        duration = wav.getnframes() / wav.getframerate()
    return DemoInput(path, None, None, duration)


class TerminalView:
    """Prints each phase change with the LED pattern it shows (colour, effect)."""

    def __init__(
        self, patterns: Mapping[str, LedPattern], started: float, *, stream: Any = sys.stdout
    ) -> None:
        self._patterns = patterns
        self._started = started
        self._stream = stream
        self._colour = stream.isatty() and os.environ.get("NO_COLOR") is None

    def __call__(self, change: Transition) -> None:
        pattern = self._patterns.get(change.new.value, LedPattern("off"))
        lit = pattern.effect != "off"
        colour = pattern.color if lit else "#000000"
        if self._colour and lit:
            r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
            dot = f"\x1b[38;2;{r};{g};{b}m●\x1b[0m"
        else:
            dot = "●" if lit else "○"
        led = f"LED {dot} {colour} {pattern.effect:<5}"
        elapsed = change.at - self._started
        print(
            f"[{elapsed:6.2f} s] {led}  {change.old.value:>10} -> {change.new.value:<10} "
            f"{change.reason}",
            file=self._stream,
            flush=True,
        )


class ErrorLog(logging.Handler):
    """Collects error-level log lines for the JSON summary."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def run_demo(
    *,
    input_wav: Path | None,
    output_wav: Path,
    faults: list[str],
    models_dir: Path,
    workdir: Path,
    reply: Literal["echo", "tone", "speech"] = "speech",
    timeout_s: float = 60.0,
    stream: Any = sys.stdout,
    api: Literal["realtime", "live"] = "realtime",
    script: Path | None = None,
) -> DemoResult:
    """Run emulator, companion and daemon together; return what happened."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from .audio import FileBackend, open_backend
    from .daemon import Daemon, Edges
    from .emulator import EmulatorOptions

    demo_input = describe_input(input_wav) if input_wav else make_default_input(workdir / "in.wav")
    record_dir = workdir / "recording"
    result = DemoResult()
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    options = EmulatorOptions(
        host="127.0.0.1",
        port=0,
        api_key=DEMO_API_KEY,
        reply=reply,
        reply_text=REPLY_TEXT,
        record_dir=record_dir,
        faults=tuple(faults),
        script=script,
    )
    async with contextlib.AsyncExitStack() as stack:
        services = await start_services(stack, workdir, options)
        config_path = write_device_config(
            workdir,
            demo_input.path,
            output_wav,
            models_dir,
            services.companion.url,
            services.emulator.url,
            services.token_file,
            api=api,
        )
        config = load_config(config_path)

        factory = MockFactory(pin_class=MockPWMPin)
        started = time.time()
        view = TerminalView(config.leds.patterns, started, stream=stream)
        # Opened here, not by the daemon, to know when the whole input has been heard.
        audio = open_backend(config.audio)
        assert isinstance(audio, FileBackend)  # the demo's config asks for it
        daemon = Daemon(config, Edges(audio=audio, pin_factory=factory, listeners=[view]))
        transitions: list[Transition] = []

        def watch(change: Transition) -> None:
            transitions.append(change)
            if change.new is Phase.RINGING:
                # A script's timer went off: let it ring a little, then press the button.
                asyncio.get_running_loop().call_later(RING_SHOWN_S, _press, factory)

        daemon.phases.add_listener(watch)
        runner = asyncio.create_task(daemon.run(), name="demo-daemon")
        try:
            async with asyncio.timeout(timeout_s):
                fed = asyncio.create_task(audio.wait_input_finished(), name="demo-input")
                await asyncio.wait({fed, runner}, return_when=asyncio.FIRST_COMPLETED)
                fed.cancel()
                await asyncio.gather(fed, return_exceptions=True)
                fed_at = time.monotonic()
                while not runner.done() and not _back_to_waiting(daemon, transitions):
                    if not _woke(daemon, transitions) and (
                        time.monotonic() - fed_at >= NO_WAKE_GRACE_S
                    ):
                        log.error("%s", _no_wake_word(daemon, demo_input))  # shown, and in errors
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            errors.lines.append(f"demo timed out after {timeout_s:g} s")
        final = daemon.phases.phase
        daemon.stop()
        await runner

    logging.getLogger().removeHandler(errors)
    result.states = [transitions[0].old.value] + [t.new.value for t in transitions]
    if result.states and result.states[-1] == Phase.STOPPING.value:
        result.states.pop()
    result.final_state = final.value
    result.wake_word = daemon.last_detection.word if daemon.last_detection else None
    if daemon.last_wake_to_live_s is not None:
        result.wake_to_live_ms = round(daemon.last_wake_to_live_s * 1000, 1)
    result.errors = errors.lines
    completed = any(t.new.awaits_wake and "conversation over" in t.reason for t in transitions)
    result.ok = completed and final is Phase.IDLE
    result.recovered = final.awaits_wake and any(
        t.new.awaits_wake and t.old is not Phase.STARTING for t in transitions
    )
    result.turns = _turns(transitions)
    result.reply_audio_s = _duration(output_wav)
    result.utterance_received_ratio = _utterance_ratio(demo_input, record_dir, daemon)
    return result


def _back_to_waiting(daemon: Daemon, transitions: list[Transition]) -> bool:
    """A conversation (or a failure) is over and the daemon waits for the wake word again (and
    no timer it set is still to ring: the demo waits to show it)."""
    return (
        daemon.phases.phase.awaits_wake
        and not _timers_pending(daemon)
        and any(t.old is not Phase.STARTING and t.new.awaits_wake for t in transitions)
    )


def _woke(daemon: Daemon, transitions: list[Transition]) -> bool:
    return daemon.last_detection is not None or any(t.new is Phase.WAKE for t in transitions)


def _no_wake_word(daemon: Daemon, demo_input: DemoInput) -> str:
    """The error for a recording in which no wake word was heard: how close each word came."""
    best = daemon.detector.best_scores
    scores = "; ".join(
        f"best score {best.get(word.name, 0.0):.4f} for {word.name} (threshold {word.threshold:g})"
        for word in daemon.config.wake.words
    )
    return f"no wake word heard in {demo_input.path.name} ({demo_input.duration_s:.1f} s): {scores}"


def _turns(transitions: list[Transition]) -> int:
    """Replies heard to their end: the speaking phase left because the reply finished, or because
    the conversation ended once the model's last reply had played (its goodbye). A reply cut by
    barge-in, the button, a failure or the maximum length does not count."""
    return sum(
        t.old is Phase.SPEAKING
        and (t.reason == "reply finished" or (t.new.awaits_wake and "end_conversation" in t.reason))
        for t in transitions
    )


def _press(factory: Any) -> None:
    pin = factory.pin(17)  # the demo config's button
    pin.drive_low()
    asyncio.get_running_loop().call_later(0.1, pin.drive_high)


def _timers_pending(daemon: Any) -> bool:
    """A timer set by the conversation has yet to ring (the demo waits to show it)."""
    return daemon.timers is not None and bool(daemon.timers.active())


def _utterance_ratio(demo_input: DemoInput, record_dir: Path, daemon: Any) -> float | None:
    recordings = sorted(record_dir.glob("*/input.wav"))
    if not recordings:
        return None
    sent = read_wav(demo_input.path, RATE)
    received = read_wav(recordings[0], RATE)
    start, end = demo_input.question_start_s, demo_input.question_end_s
    if start is None or end is None:
        if daemon.last_detection is None:
            return None
        start, end = daemon.last_detection.t, demo_input.duration_s
    return round(received_ratio(sent, received, RATE, start, end), 3)


def _duration(path: Path) -> float:
    try:
        with wave.open(str(path), "rb") as wav:
            return round(wav.getnframes() / wav.getframerate(), 2)
    except (OSError, wave.Error, EOFError):
        return 0.0


@dataclass
class Services:
    """The emulator and the companion, running on loopback, and the device's token file."""

    emulator: Emulator
    companion: Companion
    token_file: Path


async def start_services(
    stack: contextlib.AsyncExitStack,
    workdir: Path,
    options: EmulatorOptions,
    *,
    companion_extra: str = "",
) -> Services:
    """Start the emulator and a companion minting from it (both stopped by `stack`).

    A device is registered with the companion and its token written to `workdir/device-token`.
    `companion_extra` is TOML appended to the companion's config (e.g. a `[session]` policy).
    """
    from .companion import Companion, DeviceStore, load_companion_config
    from .emulator import Emulator

    emulator = Emulator(options)
    emulator_url = await emulator.start()
    stack.push_async_callback(emulator.stop)
    companion_config_path = write_companion_config(workdir, emulator_url, extra=companion_extra)
    companion_config = load_companion_config(companion_config_path)
    token = DeviceStore(companion_config.devices_file).add("demo-device")
    companion = Companion(companion_config, api_key=options.api_key)
    await companion.start()
    stack.push_async_callback(companion.stop)
    token_file = workdir / "device-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    return Services(emulator, companion, token_file)


def write_companion_config(workdir: Path, emulator_url: str, *, extra: str = "") -> Path:
    """A companion config minting from the emulator at `emulator_url`; returns its path."""
    path = workdir / "companion.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = 0

[upstream]
url = "{emulator_url}"

[devices]
file = "{workdir / "devices.json"}"
"""
        + extra
    )
    path.chmod(0o600)
    return path


def write_device_config(
    workdir: Path,
    input_wav: Path,
    output_wav: Path,
    models_dir: Path,
    companion_url: str,
    emulator_url: str,
    token_file: Path,
    *,
    api: str = "realtime",
) -> Path:
    """The demo's device config: file audio, mock-GPIO LED and button, loopback services;
    `api` is the session API (`realtime` or `live`)."""
    path = workdir / "wakertc.toml"
    path.write_text(
        f"""
[audio]
backend = "file"
input_file = "{input_wav}"
output_file = "{output_wav}"

[wake]
models_dir = "{models_dir}"

[button]
pin = 17

[leds]
kind = "rgb"
pins = [5, 6, 13]

[companion]
url = "{companion_url}"
token_file = "{token_file}"

[session]
api = "{api}"
url = "{emulator_url}"
connect_timeout_s = 6.0
idle_timeout_s = 2.0

[state]
dir = "{workdir / "state"}"
"""
    )
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="wakertc-demo-") as tmp:
        yield Path(tmp)


def main(argv: list[str]) -> int:
    """`wakertc demo`: exit 0 when a conversation completed (or, with --fault, recovered)."""
    parser = argparse.ArgumentParser(prog="wakertc demo", description=__doc__)
    parser.add_argument("--wav", type=Path, help="microphone input (default: synthesized speech)")
    parser.add_argument("--out", type=Path, default=Path("demo-reply.wav"), help="reply WAV")
    parser.add_argument("--fault", action="append", default=[], help="emulator fault (repeatable)")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    parser.add_argument("--reply", choices=["speech", "echo", "tone"], default="speech")
    parser.add_argument(
        "--api",
        choices=["realtime", "live"],
        default="realtime",
        help="the session API the device uses (default realtime)",
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--workdir", type=Path, help="keep configs and recordings here")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--script",
        type=Path,
        help="the emulator's scripted turns (JSON/TOML), e.g. a reply that calls set_timer",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the daemon's log")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.wav is not None and not args.wav.is_file():
        parser.error(f"--wav {args.wav}: no such file")
    if args.script is not None and not args.script.is_file():
        parser.error(f"--script {args.script}: no such file")
    with _workdir(args.workdir) as workdir:
        result = asyncio.run(
            run_demo(
                input_wav=args.wav,
                output_wav=args.out.resolve(),
                faults=args.fault,
                models_dir=args.models_dir.resolve(),
                workdir=workdir,
                reply=args.reply,
                timeout_s=args.timeout,
                api=args.api,
                script=args.script.resolve() if args.script else None,
            )
        )
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print(
            f"{'conversation completed' if result.ok else 'no complete conversation'}; "
            f"wake-to-live {result.wake_to_live_ms} ms, utterance received "
            f"{result.utterance_received_ratio}, reply {result.reply_audio_s} s -> {args.out}"
        )
    if result.ok:
        return 0
    return 0 if args.fault and result.recovered else 1
