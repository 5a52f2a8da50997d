"""Timers and alarms through the whole chain: the model sets them (emulator script replies), the
real daemon rings them (phase, LEDs, sound), a press, the wake word or a timeout stops them, a long
press snoozes; and an entry survives SIGKILL of a real `wakertc run` and rings once."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chain import RED, Chain, clip, run_chain, silence
from test_daemon import device_config, notify, spawn, stop  # noqa: F401 (fixtures)
from test_daemon import wait_for as wait_for_notify
from test_sigterm import hook_config, payloads
from wakertc.demo import start_services, write_device_config
from wakertc.emulator import EmulatorOptions
from wakertc.measure import write_wav
from wakertc.state import Phase

AMBER = "#ffb000"
DEAD_URL = "http://127.0.0.1:9"  # the discard port: nobody listens on loopback


def state_dir(chain_or_dir: Chain | Path) -> Path:
    workdir = chain_or_dir.workdir if isinstance(chain_or_dir, Chain) else chain_or_dir
    return workdir / "state"


def seed(workdir: Path, *entries: dict[str, Any]) -> None:
    """A timers file as a previous run of the daemon would have left it."""
    directory = state_dir(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    data = {"version": 1, "next_id": 50, "timers": list(entries)}
    (directory / "timers.json").write_text(json.dumps(data))


def alarm_due(seconds_from_now: float, label: str) -> dict[str, Any]:
    due = time.time() + seconds_from_now
    hhmm = dt.datetime.fromtimestamp(due).astimezone().strftime("%H:%M")
    return {"id": f"a-{label}", "kind": "alarm", "due": due, "label": label, "time": hhmm}


async def wait_for(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def assert_rang(chain: Chain, ringing: Any, stopped: Any) -> None:
    """LEDs amber blinking and the ring audible while ringing; silent soon after it stopped."""
    reading = chain.leds(ringing)
    assert reading.effect == "blink" and reading.is_colour(AMBER), reading
    assert chain.mic.audible_s(ringing.t, stopped.t) >= 0.3
    assert chain.mic.audible_s(stopped.t + 0.15, stopped.t + 1.0) == 0.0


async def test_a_3_second_timer_rings_on_time_and_stops_on_a_press(tmp_path, models_dir):
    script = [
        {"say": "Three seconds.", "call": {"name": "set_timer", "arguments": {"seconds": 3}}},
        {"call": {"name": "end_conversation"}},
    ]
    async with run_chain(tmp_path, models_dir, script=script) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("set a timer for three seconds"))
        set_at, _ = await chain.wait_log("timer t1 set for")
        await chain.wait_phase(Phase.IDLE)
        ringing = await chain.wait_phase(Phase.RINGING, timeout=6)
        print(f"timer set -> ringing: {ringing.t - set_at:.3f} s")
        assert 2.95 <= ringing.t - set_at <= 3.5, ringing.t - set_at
        assert chain.daemon.timers is not None and chain.daemon.timers.active() == []
        # The model was told the local time when the session was configured.
        update = next(e for e in chain.sent() if e["type"] == "session.update")
        described = {t["name"]: t["description"] for t in update["session"]["tools"]}
        assert "It is now" in described["set_timer"] and "UTC" in described["set_alarm"]
        output = next(
            e["item"]["output"]
            for e in chain.sent()
            if e["type"] == "conversation.item.create"
            and e["item"].get("type") == "function_call_output"
        )
        assert json.loads(output)["ok"] is True
        await asyncio.sleep(1.5)  # a ring and a half
        assert chain.daemon.ringtone.rings >= 2
        await chain.press()
        stopped = await chain.wait_phase(Phase.IDLE)
        assert stopped.reason == "ringing stopped by the button"
        await asyncio.sleep(1.0)
        assert_rang(chain, ringing, stopped)
        assert chain.phase is Phase.IDLE


async def test_a_timer_due_mid_conversation_rings_when_it_ends(tmp_path, models_dir):
    script = [
        {"say": "One second.", "call": {"name": "set_timer", "arguments": {"seconds": 1}}},
        {"say": "Meanwhile, here is a story about a fisherman who lived by the sea."},
    ]
    async with run_chain(tmp_path, models_dir, script=script) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("set a timer for one second"))
        await chain.wait_log("ringing when the conversation ends")
        idle = await chain.wait_phase(Phase.IDLE, timeout=20)
        assert idle.reason.startswith("conversation over")
        ringing = await chain.wait_phase(Phase.RINGING, timeout=2)
        assert ringing.old is Phase.IDLE and ringing.t - idle.t < 0.5
        # Nothing rang over the conversation.
        assert [s.new for s in chain.seen].count(Phase.RINGING) == 1


async def test_missed_alarm_inside_the_grace_rings_at_start_and_the_wake_word_stops_it(
    tmp_path, models_dir
):
    seed(tmp_path, alarm_due(-120, "recent"), alarm_due(-3600, "old"))
    hook = hook_config(tmp_path / "hook.jsonl")
    device = {"hook": hook, "timers": {"missed_grace_s": 600}}
    async with run_chain(tmp_path, models_dir, device=device) as chain:
        ringing = await chain.wait_phase(Phase.RINGING, timeout=5)
        assert ringing.reason == "alarm recent"
        assert chain.logs.find("(old) was due at")
        await asyncio.sleep(1.0)
        chain.mic.speak(clip("hey jarvis"))
        stopped = await chain.wait_phase(Phase.IDLE, timeout=10)
        assert stopped.reason == "ringing stopped by the wake word hey_jarvis"
        await asyncio.sleep(1.0)
        assert chain.phase is Phase.IDLE, "the wake word that stopped the ring opened a session"
        assert chain.calls() == []
        assert_rang(chain, ringing, stopped)
        assert chain.daemon.timers is not None and chain.daemon.timers.active() == []
    timer_events = [p for p in payloads(tmp_path / "hook.jsonl") if p.get("event") == "timer"]
    states = [(p["state"], p["timers"][0]["label"]) for p in timer_events]
    assert sorted(states) == [("missed", "old"), ("ringing", "recent")]


async def test_a_long_press_snoozes_and_the_timeout_stops(tmp_path, models_dir):
    seed(tmp_path, alarm_due(-1, "wake up"))
    device = {"timers": {"snooze_s": 2.0, "ring_timeout_s": 1.5}}
    async with run_chain(tmp_path, models_dir, device=device) as chain:
        await chain.wait_phase(Phase.RINGING, timeout=5)
        snoozed = await chain.long_press(Phase.IDLE)
        assert snoozed.reason == "ringing stopped by a snooze of 2 s"
        assert chain.phase is Phase.IDLE, "the long press also toggled mute"
        again = await chain.wait_phase(Phase.RINGING, timeout=4)
        assert 1.9 <= again.t - snoozed.t <= 2.6
        assert again.reason == "timer wake up"
        timed_out = await chain.wait_phase(Phase.IDLE, timeout=4)
        assert timed_out.reason == "ringing stopped by the ring timeout"
        assert 1.4 <= timed_out.t - again.t <= 1.8


async def test_timers_ring_with_the_network_down(tmp_path, models_dir):
    """Companion and Realtime API unreachable: the device is offline, the timer rings anyway,
    a press stops it and the device is offline again (not idle)."""
    seed(tmp_path, alarm_due(2.0, "offline"))
    device = {"companion": {"url": DEAD_URL, "timeout_s": 0.5}, "session": {"url": DEAD_URL}}
    async with run_chain(tmp_path, models_dir, device=device) as chain:
        await chain.wait_phase(Phase.OFFLINE, timeout=10)
        ringing = await chain.wait_phase(Phase.RINGING, timeout=5)
        await asyncio.sleep(1.0)
        await chain.press()
        back = await chain.wait_phase(Phase.OFFLINE, timeout=5)
        assert back.old is Phase.RINGING
        await asyncio.sleep(1.0)
        assert_rang(chain, ringing, back)


async def test_ringing_while_muted_returns_to_muted(tmp_path, models_dir):
    async with run_chain(tmp_path, models_dir) as chain:
        await chain.long_press(Phase.MUTED)
        assert chain.daemon.timers is not None
        chain.daemon.timers.set_timer(1, "muted")
        ringing = await chain.wait_phase(Phase.RINGING, timeout=3)
        assert ringing.old is Phase.MUTED
        await chain.press()
        back = await chain.wait_phase(Phase.MUTED, timeout=3)
        assert back.reason == "ringing stopped by the button"
        led = chain.leds(back)
        assert led.effect == "solid" and led.is_colour(RED)


class ShiftedClock:
    """The real clocks, the wall clock shifted so that it reads a chosen local time now."""

    def __init__(self, local: str, zone: str) -> None:
        target = dt.datetime.fromisoformat(local).replace(tzinfo=zoneinfo.ZoneInfo(zone))
        self.offset = target.timestamp() - time.time()

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


async def test_an_alarm_set_by_the_model_survives_restarts_and_rings_once(tmp_path, models_dir):
    """The model sets "wake me at seven" at 06:59:50 (Paris time, by the timers' clock); the
    daemon stops before seven and starts again; the alarm rings at 07:00:00 in the second run,
    once, and a third run has nothing left to ring."""
    clock = ShiftedClock("2026-12-07T06:59:50", "Europe/Paris")
    device = {"timers": {"timezone": "Europe/Paris", "ring_timeout_s": 1.0}}
    script = [{"call": {"name": "set_alarm", "arguments": {"time": "07:00", "label": "work"}}}]
    async with run_chain(
        tmp_path / "one", models_dir, script=script, device=device, clock=clock
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("wake me at seven"))
        await chain.wait_log("alarm a1 set for Monday 07 December 2026 07:00:00 (work)")

        def outputs() -> list[str]:
            return [
                e["item"]["output"]
                for e in chain.sent()
                if e["type"] == "conversation.item.create"
                and e["item"].get("type") == "function_call_output"
            ]

        await wait_for(outputs)
        assert json.loads(outputs()[0])["rings_at"] == "Monday 07 December 2026 07:00:00"
        assert Phase.RINGING not in [s.new for s in chain.seen]
    saved = (tmp_path / "one" / "state" / "timers.json").read_text()
    for run in ("two", "three"):
        seed_dir = tmp_path / run / "state"
        seed_dir.mkdir(parents=True)
        (seed_dir / "timers.json").write_text(saved)
        async with run_chain(tmp_path / run, models_dir, device=device, clock=clock) as chain:
            if run == "two":
                ringing = await chain.wait_phase(Phase.RINGING, timeout=12)
                local = dt.datetime.fromtimestamp(
                    ringing.change.at + clock.offset, zoneinfo.ZoneInfo("Europe/Paris")
                )
                assert (local.hour, local.minute, local.second) == (7, 0, 0), local
                await chain.wait_phase(Phase.IDLE, timeout=3)
                saved = (seed_dir / "timers.json").read_text()
                assert json.loads(saved)["timers"] == []
            else:
                await asyncio.sleep(1.0)
                assert Phase.RINGING not in [s.new for s in chain.seen]


# -- a real `wakertc run` killed and restarted ----------------------------------------------------


class Run:
    """`wakertc run --config CONFIG` as a child process, its stderr kept."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._seen = asyncio.Event()

    async def start(self) -> None:
        env = {
            **os.environ,
            "GPIOZERO_PIN_FACTORY": "mock",
            "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin",
            "WAKERTC_LOG_TARGET": "stderr",
        }
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wakertc.cli",
            "run",
            "--config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while raw := await self.process.stderr.readline():
            self.lines.append(raw.decode(errors="replace"))
            self._seen.set()

    async def wait_for(self, fragment: str, timeout: float = 30.0) -> float:
        """Wait for a stderr line containing `fragment`; the wall time it was seen."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if any(fragment in line for line in self.lines):
                        return time.time()
                    self._seen.clear()
                    await self._seen.wait()
        except TimeoutError:
            log = "".join(self.lines)
            raise AssertionError(f"no {fragment!r} within {timeout} s: {log}") from None

    def count(self, fragment: str) -> int:
        return sum(fragment in line for line in self.lines)

    async def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        if self._reader is not None:
            await self._reader


async def test_a_timer_survives_sigkill_and_restart_and_rings_once(tmp_path, models_dir):
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                # No speech before the call: the response is done before any barge-in can cut it.
                {"call": {"name": "set_timer", "arguments": {"seconds": 8, "label": "tea"}}}
            ]
        )
    )
    options = EmulatorOptions(port=0, api_key="timer-test-key", script=script)
    async with contextlib.AsyncExitStack() as stack:
        services = await start_services(stack, tmp_path, options)
        said = tmp_path / "said.wav"
        speech = [silence(0.3), clip("hey jarvis"), clip("set a tea timer"), silence(1)]
        write_wav(said, np.concatenate(speech), 16000)
        quiet = tmp_path / "quiet.wav"
        write_wav(quiet, silence(0.5), 16000)

        def config(input_wav: Path, name: str) -> Path:
            path = write_device_config(
                tmp_path,
                input_wav,
                tmp_path / "output.wav",
                models_dir.resolve(),
                services.companion.url,
                services.emulator.url,
                services.token_file,
            )
            text = path.read_text() + "\n[timers]\nring_timeout_s = 1.0\n"
            target = tmp_path / name
            target.write_text(text)
            target.chmod(0o600)
            return target

        first = Run(config(said, "first.toml"))
        await first.start()
        try:
            await first.wait_for("timer t1 set for")
        finally:
            await first.kill()
        (entry,) = json.loads((state_dir(tmp_path) / "timers.json").read_text())["timers"]
        assert entry["label"] == "tea"

        second = Run(config(quiet, "second.toml"))
        await second.start()
        try:
            rang_at = await second.wait_for("phase idle -> ringing (timer tea)", timeout=20)
            print(f"rang {rang_at - entry['due']:+.2f} s from its due instant, after a SIGKILL")
            assert -0.05 <= rang_at - entry["due"] <= 1.5
            await second.wait_for("ringing stopped by the ring timeout")
        finally:
            await second.kill()
        assert json.loads((state_dir(tmp_path) / "timers.json").read_text())["timers"] == []

        third = Run(config(quiet, "third.toml"))
        await third.start()
        try:
            await third.wait_for("phase starting -> idle")
            await asyncio.sleep(2.0)
        finally:
            await third.kill()
        assert third.count("-> ringing") == 0
        assert first.count("-> ringing") == 0 and second.count("-> ringing") == 1


async def test_demo_shows_a_timer_from_a_script(tmp_path, models_dir):
    """`wakertc demo --script`: a reply that calls set_timer; the timer rings after the
    conversation, in amber, and the demo presses it off."""
    script = tmp_path / "timer.json"
    script.write_text(
        json.dumps(
            [
                {
                    "say": "Three seconds.",
                    "call": {"name": "set_timer", "arguments": {"seconds": 3}},
                },
                {"call": {"name": "end_conversation"}},
            ]
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wakertc.cli",
        "demo",
        "--script",
        str(script),
        "--json",
        "--models-dir",
        str(models_dir),
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "reply.wav"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    result = json.loads(lines[-1])
    assert result["ok"] and result["final_state"] == "idle"
    states = result["states"]
    assert states[states.index("ringing") - 1 :] == ["idle", "ringing", "idle"]
    (ring_line,) = [line for line in lines if "-> ringing" in line]
    assert "#ffb000 blink" in ring_line and "timer" in ring_line
    assert not (tmp_path / "work" / "state" / "timers.json").read_text().count('"id"')


async def test_a_ring_cut_short_by_a_lost_audio_device_does_not_ring_again(tmp_path, models_dir):
    """The audio device fails while ringing: the error takes over; once the device is back and a
    conversation has come and gone, nothing rings again."""
    from wakertc.audio import AudioDeviceError

    seed(tmp_path, alarm_due(-1, "once"))
    async with run_chain(tmp_path, models_dir, allow_tracebacks=True) as chain:
        await chain.wait_phase(Phase.RINGING, timeout=5)
        chain.mic.on_error(AudioDeviceError("unplugged"))
        await chain.wait_phase(Phase.ERROR)
        await chain.wait_phase(Phase.IDLE, timeout=10)  # reopened from the config's file
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.wait_phase(Phase.IDLE, timeout=10)
        await asyncio.sleep(0.5)
        assert [s.new for s in chain.seen].count(Phase.RINGING) == 1, chain.describe()


def test_systemd_status_and_the_hook_show_ringing(device_config, notify, tmp_path):  # noqa: F811
    """`wakertc run` under a notify socket: STATUS=ringing, and the hook hears the phase and the
    timer event (a missed alarm inside the grace, ringing at start-up, with no network at all)."""
    seed(tmp_path, alarm_due(-5, "status"))
    state = f'\n[state]\ndir = "{state_dir(tmp_path)}"\n'
    device_config.write_text(device_config.read_text() + state)
    process = spawn(device_config, notify)
    try:
        wait_for_notify(notify, lambda m: m == "STATUS=ringing: alarm status", timeout=15)
        deadline = time.monotonic() + 10
        hook = tmp_path / "hook.jsonl"
        while time.monotonic() < deadline:
            lines = hook.read_text().splitlines() if hook.exists() else []
            events = [json.loads(line) for line in lines if line.strip()]
            kinds = {(e.get("event"), e.get("new")) for e in events}
            if {("timer", None), ("phase", "ringing")} <= kinds:
                break
            time.sleep(0.1)
    finally:
        stderr = stop(process)
    assert "Traceback" not in stderr
    assert any(e.get("new") == "ringing" and e.get("reason") == "alarm status" for e in events)
    (timer,) = [e for e in events if e.get("event") == "timer"]
    assert timer["state"] == "ringing" and timer["timers"][0]["label"] == "status"


async def test_a_text_announcement_does_not_silence_a_ringing_timer(tmp_path, models_dir):
    """Home Assistant announcing while a timer rings is refused: the ring goes on until stopped."""
    from wakertc.mqtt import Announcement

    async with run_chain(tmp_path, models_dir) as chain:
        assert chain.daemon.timers is not None
        chain.daemon.timers.set_timer(1, "pasta")
        await chain.wait_phase(Phase.RINGING, timeout=3)
        with pytest.raises(ValueError, match="ringing"):
            await chain.daemon.announce(Announcement("text", "The washing is done."))
        assert chain.phase is Phase.RINGING
        assert chain.calls() == []
        await chain.press()
        stopped = await chain.wait_phase(Phase.IDLE, timeout=3)
        assert stopped.reason == "ringing stopped by the button"
