"""The sound card disappearing and coming back, through real PulseAudio and PyAudio.

The daemon runs in-process on the private PulseAudio rig (pulse.py) with the real PyAudio
backend, the emulator and companion on loopback, mock pins, and a real `$NOTIFY_SOCKET` with a
watchdog. Unloading the rig's two null sinks (`pactl unload-module`) is a USB sound card with
microphone and speaker being pulled out; loading them again is plugging it back in.

What PortAudio reports (measured here, PortAudio 19.6 over ALSA's pulse plugin, PulseAudio 16):
- both sinks gone: the next blocking write to the speaker fails at once with
  `[Errno -9999] Unanticipated host error` (~40 ms), and capture callbacks simply stop (no error
  from PortAudio for the input side);
- the microphone's sink alone gone: PulseAudio moves the capture stream to another source (the
  speaker's monitor here) and nothing fails; the speaker's sink alone: the playback stream moves
  to the other sink. PortAudio cannot tell, so neither can the daemon;
- a capture device that stalls without an error (here: its source suspended) is caught by the
  backend's stall detector, 2 s without a capture callback (also tests/test_audio.py).

Expected of the daemon: the loss logged and shown (ERROR "audio device lost", the red blink),
the watchdog pinged throughout (the event loop never blocks on the dead device), retries while
the device is away, and listening again (IDLE, and a wake word said into the microphone opens a
session) once it is back; mid-conversation, the call hung up. After a failed conversation the
error stays shown while the device is away, and a press is heard as soon as it is back; a
microphone that reopens but delivers nothing is not declared back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chain import (
    RED,
    Chain,
    Seen,
    clip,
    merge_tables,
    run_chain,
    silence,
)
from notify_server import NotifyServer
from pulse import MIC_CHANNELS, MIC_RATE, SPEAKER_CHANNELS, SPEAKER_RATE, PulseRig, pulse_rig  # noqa: F401
from wakertc.audio import AudioDeviceError, PyAudioBackend
from wakertc.daemon import AUDIO_RETRY_S
from wakertc.demo import DEMO_API_KEY, start_services, write_device_config
from wakertc.emulator import EmulatorOptions
from wakertc.measure import write_wav
from wakertc.state import Phase

pytestmark = pytest.mark.pulse

WATCHDOG_USEC = 400_000  # systemd would kill the daemon after 0.4 s without a ping
SINKS = {
    "mic": f"rate={MIC_RATE} channels={MIC_CHANNELS} norewinds=1",
    "speaker": f"rate={SPEAKER_RATE} channels={SPEAKER_CHANNELS} norewinds=1",
}


# -- the sound card ---------------------------------------------------------------------------


def unplug(rig: PulseRig) -> None:
    """Unload both null sinks: microphone (the mic sink's monitor) and speaker are gone."""
    modules = rig.pactl("list", "short", "modules").splitlines()
    for name in SINKS:
        (index,) = [m.split()[0] for m in modules if f"sink_name={name} " in m + " "]
        rig.pactl("unload-module", index)
    assert "mic" not in rig.pactl("list", "short", "sinks")


def plug_in(rig: PulseRig) -> None:
    """Load the sinks again, as the rig had them, and make them the defaults again."""
    for name, arguments in SINKS.items():
        rig.pactl("load-module", "module-null-sink", f"sink_name={name}", *arguments.split())
    rig.pactl("set-default-sink", "speaker")
    rig.pactl("set-default-source", "mic.monitor")


async def say_into_mic(rig: PulseRig, path: Path, samples: np.ndarray) -> None:
    """Play 16 kHz speech into the microphone sink in real time, until it has been played."""
    write_wav(path, np.concatenate([silence(0.3), samples, silence(0.5)]), 16000)
    player = rig.play_into_mic(path)
    assert await asyncio.to_thread(player.wait, 30) == 0


# -- the daemon on the rig ------------------------------------------------------------------


@pytest.fixture
def watchdog(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyServer]:
    """A real $NOTIFY_SOCKET with WATCHDOG_USEC set for this process."""
    # tmp_path can exceed the 108-byte limit of a unix socket path; a short private dir cannot.
    with tempfile.TemporaryDirectory(prefix="wkh") as tmp:
        server = NotifyServer(str(Path(tmp) / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", server.address)
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield server
        finally:
            server.close()


@contextlib.asynccontextmanager
async def daemon_on_rig(
    rig: PulseRig, workdir: Path, models_dir: Path, device: dict[str, Any] | None = None
) -> AsyncIterator[Chain]:
    """Emulator, companion and the daemon on the rig's devices; yields once it listens."""
    device = merge_tables({"audio": rig.audio_table()}, device or {})
    async with run_chain(workdir, models_dir, device=device, real_audio=True) as chain:
        assert isinstance(chain.mic, PyAudioBackend)
        yield chain


def assert_watchdog_fed(server: NotifyServer, start: float, end: float) -> list[float]:
    """WATCHDOG=1 arrived all the way from `start` to `end`, never WATCHDOG_USEC apart."""
    pings = [t for t, message in server.drain() if message == "WATCHDOG=1"]
    during = [t for t in pings if start <= t <= end]
    gaps = [b - a for a, b in itertools.pairwise([start, *during, end])]
    limit = WATCHDOG_USEC / 1e6
    assert max(gaps) < limit, f"a {max(gaps):.2f} s gap in the watchdog pings (limit {limit} s)"
    return gaps


async def assert_device_lost(chain: Chain, unplugged: float) -> Seen:
    """The loss shown at once: ERROR "audio device lost", one error line, the red blink."""
    error = await chain.wait_phase(Phase.ERROR, timeout=3)
    assert error.reason == "audio device lost"
    assert error.t - unplugged < 1.0, f"noticed {error.t - unplugged:.2f} s after"
    failed = chain.logs.lines(logging.ERROR, "wakertc.daemon")
    assert any(line.startswith("audio device failed: ") for line in failed), failed
    return error


async def assert_listening_again(chain: Chain, rig: PulseRig, tmp_path: Path, error: Seen) -> None:
    """Back to IDLE once the device is back, with the red blink shown until then; then a wake
    word said into the microphone opens a session (and a press ends it)."""
    back = await chain.wait_phase(Phase.IDLE, timeout=10)
    assert back.reason == "audio device back", chain.describe()
    assert chain.logs.find("audio device back")
    reading = chain.leds(error)
    assert reading.effect == "blink" and reading.is_colour(RED), reading
    await say_into_mic(rig, tmp_path / "wake.wav", clip("hey jarvis"))
    wake, _, _ = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=10)
    assert wake.reason == "wake word hey_jarvis"
    await chain.press()
    await chain.wait_phase(Phase.IDLE, timeout=5)


# -- tests ------------------------------------------------------------------------------------


async def test_sound_card_unplugged_while_listening_for_the_wake_word(
    pulse_rig: PulseRig,  # noqa: F811
    watchdog: NotifyServer,
    tmp_path: Path,
    models_dir: Path,
) -> None:
    async with daemon_on_rig(pulse_rig, tmp_path / "chain", models_dir) as chain:
        unplug(pulse_rig)
        unplugged = time.monotonic()
        error = await assert_device_lost(chain, unplugged)
        # Still away at the first retry: the daemon keeps trying, and keeps showing the error.
        await chain.wait_log("audio device still unavailable", timeout=5)
        assert chain.phase is Phase.ERROR
        plug_in(pulse_rig)
        await assert_listening_again(chain, pulse_rig, tmp_path, error)
        gaps = assert_watchdog_fed(watchdog, unplugged, time.monotonic())
        print(f"watchdog: {len(gaps) - 1} pings, longest gap {max(gaps) * 1000:.0f} ms")


async def unplug_mid_conversation(chain: Chain, rig: PulseRig) -> tuple[Seen, float]:
    """Open a session, pull the card: the loss is shown and the call hung up."""
    await chain.press()
    await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=10)
    unplug(rig)
    unplugged = time.monotonic()
    error = await assert_device_lost(chain, unplugged)
    (call,) = chain.calls()
    async with asyncio.timeout(3):
        await call.wait_closed()
    assert call.close_reason == "hung up by the client"
    await chain.wait_log("conversation failed: the audio device failed")
    return error, unplugged


async def test_sound_card_unplugged_mid_conversation(
    pulse_rig: PulseRig,  # noqa: F811
    watchdog: NotifyServer,
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """The conversation fails and its call is hung up; plugged back in at once, the device is
    reopened at the first retry."""
    async with daemon_on_rig(pulse_rig, tmp_path / "chain", models_dir) as chain:
        error, unplugged = await unplug_mid_conversation(chain, pulse_rig)
        plug_in(pulse_rig)
        back = await chain.wait_phase(Phase.IDLE, timeout=5)
        assert back.reason == "audio device back", chain.describe()
        assert back.t - unplugged < AUDIO_RETRY_S[0] + 1.0
        reading = chain.leds(error)
        assert reading.effect == "blink" and reading.is_colour(RED), reading
        assert_watchdog_fed(watchdog, unplugged, time.monotonic())


async def test_a_press_right_after_the_card_returns_mid_conversation_opens_a_session(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    async with daemon_on_rig(pulse_rig, tmp_path / "chain", models_dir) as chain:
        await unplug_mid_conversation(chain, pulse_rig)
        plug_in(pulse_rig)
        back = await chain.wait_phase(Phase.IDLE, timeout=5)
        assert back.reason == "audio device back"
        await chain.press()  # the device says it listens: a press must be heard
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=3)


async def test_error_stays_shown_while_the_card_is_away_after_a_conversation(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unplugged mid-conversation and away for two retries (3 s, longer than the 2 s a failed
    conversation shows its error): the device must not claim to listen without a microphone.
    The second retry fails as the first did: logged only at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="wakertc.daemon")

    def retries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "audio device still unavailable" in r.getMessage()]

    async with daemon_on_rig(pulse_rig, tmp_path / "chain", models_dir) as chain:
        error, _ = await unplug_mid_conversation(chain, pulse_rig)
        async with asyncio.timeout(8):
            while len(retries()) < 2:
                await asyncio.sleep(0.05)
        assert chain.current is error, f"left the error while the card is away: {chain.describe()}"
        first, second = retries()[:2]
        assert (first.levelno, second.levelno) == (logging.WARNING, logging.DEBUG)
        plug_in(pulse_rig)
        await assert_listening_again(chain, pulse_rig, tmp_path, error)


async def test_an_unplugged_card_is_not_reported_as_a_format_problem(
    pulse_rig: PulseRig,  # noqa: F811
) -> None:
    """Opening a device that is gone says so, instead of advising other rates and channels
    (which is right only for a format the device refuses)."""
    with pytest.raises(AudioDeviceError) as refused:
        PyAudioBackend(pulse_rig.audio_config(input_channels=64))
    assert "set audio.input_rate / audio.input_channels" in str(refused.value)
    unplug(pulse_rig)
    with pytest.raises(AudioDeviceError) as gone:
        PyAudioBackend(pulse_rig.audio_config())
    message = str(gone.value)
    assert f"input device [1] {pulse_rig.input_device}" in message, message
    assert "is not available (Unanticipated host error): is it connected?" in message
    assert "audio.input_rate" not in message


async def test_a_microphone_that_opens_but_stays_silent_is_not_reported_back(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """The microphone's source suspended: capture stalls without an error (the backend's stall
    detector reports it after 2 s), and reopening it "works" but delivers nothing: the daemon
    must keep showing the error and retrying until audio flows again."""
    async with daemon_on_rig(pulse_rig, tmp_path / "chain", models_dir) as chain:
        pulse_rig.pactl("suspend-sink", "mic", "1")
        error = await chain.wait_phase(Phase.ERROR, timeout=5)
        assert chain.logs.find("stalled: no audio for 2 s")
        # Whichever comes first: the daemon claims the device back, or it retries in vain.
        async with asyncio.timeout(8):
            while chain.current is error and not chain.logs.find("audio device still unavailable"):
                await asyncio.sleep(0.05)
        assert chain.current is error, f"claimed to listen with a silent mic: {chain.describe()}"
        pulse_rig.pactl("suspend-sink", "mic", "0")
        back = await chain.wait_phase(Phase.IDLE, timeout=10)
        assert back.reason == "audio device back"


# -- not there at start-up ------------------------------------------------------------------


def unplug_mic(rig: PulseRig) -> None:
    """Unload only the microphone's sink: a USB microphone not plugged in yet."""
    modules = rig.pactl("list", "short", "modules").splitlines()
    (index,) = [m.split()[0] for m in modules if "sink_name=mic " in m + " "]
    rig.pactl("unload-module", index)
    assert "mic.monitor" not in rig.pactl("list", "short", "sources")


def plug_in_mic(rig: PulseRig) -> None:
    """Load the microphone's sink again, as the rig had it."""
    rig.pactl("load-module", "module-null-sink", "sink_name=mic", *SINKS["mic"].split())
    rig.pactl("set-default-source", "mic.monitor")


async def test_a_microphone_plugged_in_10_s_after_start_ends_in_listening(
    pulse_rig: PulseRig,  # noqa: F811
    watchdog: NotifyServer,
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """The service starts before the USB microphone is there: it reports READY=1 at once with
    STATUS "waiting for the audio device", shows the error, logs one line naming the device,
    feeds the watchdog, tells why a press does nothing, lets the microphone be muted and
    unmuted, and listens once the microphone appears ~10 s later, in the same run."""
    unplug_mic(pulse_rig)
    device = merge_tables({"audio": pulse_rig.audio_table()}, {})
    started = time.monotonic()
    async with run_chain(
        tmp_path / "chain",
        models_dir,
        device=device,
        real_audio=True,
        daemon_opens_audio=True,
        ready=Phase.ERROR,
    ) as chain:
        waiting = chain.current
        assert waiting.reason == "waiting for the audio device", chain.describe()
        # The phase is shown (and STATUS sent) just before READY=1: let that datagram arrive.
        messages: list[str] = []
        async with asyncio.timeout(5):
            while "READY=1" not in messages:
                messages += [m for _, m in watchdog.drain()]
                await asyncio.sleep(0.01)
        status = "STATUS=error: waiting for the audio device"
        assert status in messages and "READY=1" in messages, messages
        assert messages.index(status) < messages.index("READY=1")
        ready_at = time.monotonic()

        await asyncio.sleep(1.5)
        await chain.press()
        await chain.wait_log("button pressed, but there is no audio device to talk with")
        assert chain.phase is Phase.ERROR and chain.daemon.conversations == 0
        muted = await chain.long_press(Phase.MUTED)
        assert muted.reason == "microphone muted by the button"
        await chain.long_press(Phase.ERROR)
        assert chain.current.reason == "waiting for the audio device", chain.describe()

        await asyncio.sleep(max(0.0, started + 10 - time.monotonic()))
        plug_in_mic(pulse_rig)
        plugged = time.monotonic()
        back = await chain.wait_phase(Phase.IDLE, timeout=25)
        assert back.reason == "audio device back", chain.describe()
        print(f"listening {back.t - plugged:.1f} s after the microphone appeared")
        assert chain.running()  # the same run: no restart
        states = [s.new for s in chain.seen]
        assert Phase.STOPPING not in states and Phase.STARTING not in states

        reading = chain.leds(waiting)
        assert reading.effect == "blink" and reading.is_colour(RED), reading
        said = [
            line
            for t, line in chain.logs.find("", level=logging.WARNING)
            if ready_at - 5 <= t <= back.t
        ]
        assert len(said) == 1, said  # one line, not one per retry
        assert said[0].startswith("waiting for the audio device")
        assert f"input device [1] {pulse_rig.input_device} (" in said[0], said[0]
        assert "(audio.input_device) is not available" in said[0], said[0]
        gaps = assert_watchdog_fed(watchdog, ready_at, time.monotonic())
        print(f"watchdog: {len(gaps) - 1} pings, longest gap {max(gaps) * 1000:.0f} ms")

        await say_into_mic(pulse_rig, tmp_path / "wake.wav", clip("hey jarvis"))
        wake, _, _ = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=10)
        assert wake.reason == "wake word hey_jarvis"
        await chain.press()
        await chain.wait_phase(Phase.IDLE, timeout=5)


async def test_wakertc_run_waits_for_a_missing_microphone_instead_of_exiting(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """`wakertc run` as systemd starts it, the microphone not there: it does not exit (it used
    to exit 1 at once), it says READY=1 with the waiting status, and it listens once the
    microphone is plugged in; SIGTERM then stops it with status 0."""
    unplug_mic(pulse_rig)
    async with contextlib.AsyncExitStack() as stack:
        options = EmulatorOptions(port=0, api_key=DEMO_API_KEY)
        services = await start_services(stack, tmp_path, options)
        config = write_device_config(
            tmp_path,
            tmp_path / "unused.wav",
            tmp_path / "output.wav",
            models_dir.resolve(),
            services.companion.url,
            services.emulator.url,
            services.token_file,
        )
        text = config.read_text()
        start, end = text.index("[audio]"), text.index("[wake]")
        audio = "".join(f"{k} = {json.dumps(v)}\n" for k, v in pulse_rig.audio_table().items())
        config.write_text(f"{text[:start]}[audio]\n{audio}\n{text[end:]}")
        notify_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="wkh"))
        notify = NotifyServer(str(Path(notify_dir) / "notify"))
        stack.callback(notify.close)
        env = {
            **pulse_rig.env,
            "NOTIFY_SOCKET": notify.address,
            "GPIOZERO_PIN_FACTORY": "mock",
            "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin",
            "WAKERTC_LOG_TARGET": "stderr",
        }
        for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "wakertc.cli", "run", "--config", str(config)),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stderr is not None
        lines: list[str] = []

        async def read_until(fragment: str) -> None:
            assert process.stderr is not None
            while raw := await process.stderr.readline():
                lines.append(raw.decode(errors="replace"))
                if fragment in lines[-1]:
                    return
            raise AssertionError(f"wakertc run exited before {fragment!r}: {''.join(lines)}")

        try:
            async with asyncio.timeout(20):
                await read_until("phase starting -> error (waiting for the audio device)")
            # Past two retries (at 1 s and 3 s), still running and still waiting.
            await asyncio.sleep(AUDIO_RETRY_S[0] * 3 + 0.5)
            assert process.returncode is None, "".join(lines)
            messages = [m for _, m in notify.drain()]
            assert "READY=1" in messages, messages
            assert "STATUS=error: waiting for the audio device" in messages, messages
            plug_in_mic(pulse_rig)
            async with asyncio.timeout(15):
                await read_until("phase error -> idle (audio device back)")
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(8):
                rest = (await process.stderr.read()).decode(errors="replace")
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    log = "".join(lines) + rest
    assert code == 0, log
    assert "cannot start" not in log and "Traceback" not in log, log
    assert log.count("waiting for the audio device (retrying") == 1, log
    assert "ALSA lib" not in log, log  # the retries' probing stays out of the journal


async def test_an_input_that_cannot_capture_is_named_at_start_up_with_the_alternatives(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    models_dir: Path,
) -> None:
    """The config's input is an output (as HDMI on a Pi): start-up says so in its one line,
    naming the devices that can capture, and waits (an index can point elsewhere once the USB
    microphone appears) instead of exiting."""
    asoundrc = Path(pulse_rig.env_vars["XDG_CONFIG_HOME"]) / "alsa" / "asoundrc"
    asoundrc.write_text(
        asoundrc.read_text() + "\npcm.wakertc_hdmi {\n    type asym\n"
        '    playback.pcm "wakertc_speaker"\n}\n'
    )
    device = {"audio": pulse_rig.audio_table(input_device="hdmi")}
    async with run_chain(
        tmp_path / "chain",
        models_dir,
        device=device,
        real_audio=True,
        daemon_opens_audio=True,
        ready=Phase.ERROR,
    ) as chain:
        assert chain.current.reason == "waiting for the audio device"
        (line,) = [m for _, m in chain.logs.find("", level=logging.WARNING)]
        assert line.startswith("waiting for the audio device (retrying"), line
        assert "audio.input_device = 'hdmi' is [" in line and "which cannot capture" in line
        assert f"] {pulse_rig.input_device} (" in line.split("devices that can capture")[1], line
