"""SIGTERM in every phase: LEDs off, the peer hung up, the hook told, gone within 3 s.

In-process (the chain of chain.py: emulator, companion and the real daemon with mock pins), a
real SIGTERM is delivered to this process and handled as `wakertc run` handles it
(`loop.add_signal_handler(SIGTERM, daemon.stop)`), in each phase: idle, connecting (the call
set-up hanging), listening, thinking (a tool still running), speaking, error and muted. Then:
`run()` has returned within 3 s, every LED pin is at 0 and released (the LED and the button can
be claimed again), an open call was hung up (the emulator closed it on the device's request),
no tool process is left, and the user hook's last payload was the change into `stopping`.

As a process: `wakertc run` speaking a long reply, and `wakertc run` stuck connecting to a
Realtime URL that never answers, each SIGTERMed: exit status 0 within 3 s, the call hung up, the
hook told.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import gpiozero
import httpx
import numpy as np

from chain import BUTTON_PIN, LED_PINS, STORY, Chain, clip, run_chain, silence
from process_helpers import Blackhole, free_port
from wakertc.demo import start_services, write_device_config
from wakertc.emulator import EmulatorOptions
from wakertc.measure import write_wav
from wakertc.state import Phase
from wakertc.webrtc import MicTrack, RealtimeCall

EXIT_WITHIN_S = 3.0


def hook_config(out: Path) -> dict[str, Any]:
    """A user hook appending each payload (one JSON line) to `out`."""
    return {"command": ["/bin/sh", "-c", f"cat >> '{out}'"], "timeout_s": 2.0}


def payloads(out: Path) -> list[dict[str, Any]]:
    """What the hook received, in order."""
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def sigterm_stops(chain: Chain) -> Iterator[None]:
    """SIGTERM handled as `run_daemon` does, for the block; the previous handler restored."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, chain.daemon.stop)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


async def terminate(chain: Chain) -> float:
    """Send this process a real SIGTERM; seconds until the daemon's run() returned."""
    assert chain.runner is not None and not chain.runner.done()
    with sigterm_stops(chain):
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        done, _ = await asyncio.wait({chain.runner}, timeout=EXIT_WITHIN_S + 2)
        took = time.monotonic() - sent
    assert done, f"run() still going {took:.1f} s after SIGTERM; phases: {chain.describe()}"
    assert chain.runner.exception() is None
    return took


def assert_leds_off_and_released(chain: Chain) -> None:
    """All LED pins at 0 now, and the pins free: the LED and the button were closed."""
    assert [chain.factory.pin(p).state for p in LED_PINS] == [0, 0, 0]
    # gpiozero refuses a pin another device still holds (GPIOPinInUse).
    gpiozero.RGBLED(*LED_PINS, pin_factory=chain.factory).close()
    gpiozero.Button(BUTTON_PIN, pin_factory=chain.factory).close()


@contextlib.asynccontextmanager
async def chain_with_hook(
    tmp_path: Path, models_dir: Path, **kwargs: Any
) -> AsyncIterator[tuple[Chain, Path]]:
    """run_chain with the recording hook; yields the chain and the hook's output file."""
    out = tmp_path / "hook.jsonl"
    device = {"hook": hook_config(out), **kwargs.pop("device", {})}
    async with run_chain(tmp_path / "chain", models_dir, device=device, **kwargs) as chain:
        yield chain, out


def assert_stopped_cleanly(chain: Chain, out: Path, took: float, phase: Phase) -> None:
    """The common checks after SIGTERM in `phase`."""
    print(f"SIGTERM while {phase.value}: run() returned after {took * 1000:.0f} ms")
    assert took < EXIT_WITHIN_S, f"run() returned {took:.2f} s after SIGTERM in {phase.value}"
    stopping = chain.current
    assert (stopping.old, stopping.new) == (phase, Phase.STOPPING), chain.describe()
    assert_leds_off_and_released(chain)
    last = payloads(out)[-1]
    assert (last["event"], last["old"], last["new"]) == ("phase", phase.value, "stopping"), last
    assert chain.logs.find("stopped")


def assert_hung_up(chain: Chain) -> None:
    """The one call of the test was ended by the device's hang-up request."""
    (call,) = chain.calls()
    assert call.closed and call.close_reason == "hung up by the client"


# -- in-process, every phase -------------------------------------------------------------------


async def test_sigterm_while_idle(tmp_path: Path, models_dir: Path) -> None:
    async with chain_with_hook(tmp_path, models_dir) as (chain, out):
        took = await terminate(chain)
        assert_stopped_cleanly(chain, out, took, Phase.IDLE)
        assert chain.calls() == []


async def test_sigterm_while_connecting(tmp_path: Path, models_dir: Path) -> None:
    """The call set-up hangs (calls-hang): SIGTERM does not wait for the connect timeout."""
    device = {"session": {"connect_timeout_s": 20.0}}
    async with chain_with_hook(tmp_path, models_dir, faults=("calls-hang",), device=device) as (
        chain,
        out,
    ):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING)
        took = await terminate(chain)
        assert_stopped_cleanly(chain, out, took, Phase.CONNECTING)
        assert chain.calls() == []  # never answered, so nothing to hang up


async def test_sigterm_while_listening(tmp_path: Path, models_dir: Path) -> None:
    device = {"session": {"idle_timeout_s": 30.0}}
    async with chain_with_hook(tmp_path, models_dir, device=device) as (chain, out):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        took = await terminate(chain)
        assert_stopped_cleanly(chain, out, took, Phase.LISTENING)
        assert_hung_up(chain)


async def test_sigterm_while_thinking(tmp_path: Path, models_dir: Path) -> None:
    """The model called a tool that takes its time: the tool is killed too."""
    pid_file = tmp_path / "tool.pid"
    tool = {
        "name": "slow_lookup",
        "description": "Looks something up, slowly.",
        "command": ["/bin/sh", "-c", f"echo $$ > '{pid_file}'; exec sleep 60"],
        "timeout_s": 60.0,
    }
    script = [{"call": {"name": "slow_lookup", "arguments": {}}}]
    async with chain_with_hook(tmp_path, models_dir, script=script, device={"tools": [tool]}) as (
        chain,
        out,
    ):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("look it up"))
        await chain.wait_phase(Phase.THINKING)
        await chain.wait_log("the model called slow_lookup")
        async with asyncio.timeout(5):
            while not pid_file.exists() or not pid_file.read_text().strip():
                await asyncio.sleep(0.02)
        tool_pid = int(pid_file.read_text())
        assert chain.phase is Phase.THINKING
        took = await terminate(chain)
        assert_stopped_cleanly(chain, out, took, Phase.THINKING)
        assert_hung_up(chain)
        assert not Path(f"/proc/{tool_pid}").exists(), "the tool outlived the daemon"


async def test_sigterm_while_speaking(tmp_path: Path, models_dir: Path) -> None:
    """Mid-reply: the speaker stops with the daemon (nothing is played after run() returns)."""
    async with chain_with_hook(tmp_path, models_dir, script=[{"say": STORY}]) as (chain, out):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("tell me a story"))
        _, speaking = await chain.expect(Phase.THINKING, Phase.SPEAKING)
        async with asyncio.timeout(3):
            while chain.mic.audible_s(speaking.t, time.monotonic()) < 0.3:
                await asyncio.sleep(0.02)
        took = await terminate(chain)
        stopped = time.monotonic()
        assert_stopped_cleanly(chain, out, took, Phase.SPEAKING)
        assert_hung_up(chain)
        assert chain.mic.audible_s(stopped, float("inf")) == 0.0


async def test_sigterm_while_showing_an_error(tmp_path: Path, models_dir: Path) -> None:
    async with chain_with_hook(tmp_path, models_dir, faults=("calls-401",)) as (chain, out):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.ERROR, timeout=5)
        took = await terminate(chain)
        assert_stopped_cleanly(chain, out, took, Phase.ERROR)
        assert chain.calls() == []


async def test_sigterm_while_muted(tmp_path: Path, models_dir: Path) -> None:
    async with chain_with_hook(tmp_path, models_dir) as (chain, out):
        await chain.long_press(Phase.MUTED)
        took = await terminate(chain)
        assert_stopped_cleanly(chain, out, took, Phase.MUTED)


def udp_sockets() -> set[int]:
    """Inodes of the UDP sockets this process holds open."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(int(target[8:-1]))
    udp = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                udp.add(int(line.split()[9]))
    return mine & udp


async def test_a_call_cancelled_while_gathering_leaves_no_socket_open() -> None:
    """What SIGTERM while connecting does to the call: cancel `connect()` at every point of the
    offer (ICE gathering binds a UDP socket per host address, over several loop turns), then
    close it. No socket may stay open (a leaked one stays registered with the loop for good)."""
    before = udp_sockets()
    async with httpx.AsyncClient(timeout=5.0) as http:
        with Blackhole(free_port()) as hole:
            for turns in range(16):
                call = RealtimeCall(
                    base_url=hole.url,
                    http=http,
                    ice_servers=(),
                    mic=MicTrack(),
                    on_event=lambda _: None,
                    on_audio=lambda _: None,
                    on_lost=lambda _: None,
                )
                connecting = asyncio.create_task(call.connect("key"))
                for _ in range(turns):
                    await asyncio.sleep(0)
                connecting.cancel()
                await asyncio.wait({connecting})
                assert connecting.cancelled()
                await call.close(hang_up=False)
                left = udp_sockets() - before
                assert not left, (
                    f"cancelled after {turns} loop turns: {len(left)} UDP socket(s) open"
                )


# -- `wakertc run` as a process -----------------------------------------------------------------


async def read_until(stream: asyncio.StreamReader, fragment: str, lines: list[str]) -> None:
    """Read lines into `lines` until one contains `fragment`."""
    while raw := await stream.readline():
        lines.append(raw.decode(errors="replace"))
        if fragment in lines[-1]:
            return
    raise AssertionError(f"the daemon exited before {fragment!r}: {''.join(lines)}")


async def run_and_terminate(
    config: Path, wait_for: str, *, timeout: float = 20.0
) -> tuple[int, float, str]:
    """`wakertc run --config CONFIG`; SIGTERM once stderr shows `wait_for`.

    Returns the exit status, the seconds from the signal to the exit, and all of stderr.
    """
    env = {
        **os.environ,
        "GPIOZERO_PIN_FACTORY": "mock",
        "GPIOZERO_MOCK_PIN_CLASS": "mockpwmpin",
        "WAKERTC_LOG_TARGET": "stderr",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wakertc.cli",
        "run",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await read_until(process.stderr, wait_for, lines)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(EXIT_WITHIN_S + 5):
            rest = await process.stderr.read()
            code = await process.wait()
        took = time.monotonic() - sent
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, took, "".join(lines) + rest.decode(errors="replace")


def device_config(
    workdir: Path, models_dir: Path, companion_url: str, realtime_url: str, token_file: Path
) -> tuple[Path, Path]:
    """The demo's device config with the recording hook; returns it and the hook's file.

    The microphone file says the wake word and asks for a story in one breath.
    """
    said = np.concatenate([silence(0.3), clip("hey jarvis"), clip("tell me a story"), silence(1)])
    input_wav = workdir / "input.wav"
    write_wav(input_wav, said, 16000)
    path = write_device_config(
        workdir,
        input_wav,
        workdir / "output.wav",
        models_dir.resolve(),
        companion_url,
        realtime_url,
        token_file,
    )
    out = workdir / "hook.jsonl"
    hook = hook_config(out)
    path.write_text(
        path.read_text().replace("connect_timeout_s = 6.0", "connect_timeout_s = 20.0")
        + f"\n[hook]\ncommand = {json.dumps(hook['command'])}\ntimeout_s = {hook['timeout_s']}\n"
    )
    return path, out


async def test_wakertc_run_exits_within_3s_of_sigterm_while_speaking(
    tmp_path: Path, models_dir: Path
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"say": STORY}]))
    options = EmulatorOptions(port=0, api_key="sigterm-test-key", script=script)
    async with contextlib.AsyncExitStack() as stack:
        services = await start_services(stack, tmp_path, options)
        config, out = device_config(
            tmp_path, models_dir, services.companion.url, services.emulator.url, services.token_file
        )
        code, took, stderr = await run_and_terminate(config, "phase thinking -> speaking")
        calls = list(services.emulator.calls.values())
    print(f"wakertc run SIGTERMed while speaking: exited after {took * 1000:.0f} ms")
    assert code == 0, stderr
    assert took < EXIT_WITHIN_S, f"exited {took:.2f} s after SIGTERM"
    assert "Traceback" not in stderr
    assert "phase speaking -> stopping" in stderr and "wakertc.daemon: stopped" in stderr
    (call,) = calls
    assert call.closed and call.close_reason == "hung up by the client"
    last = payloads(out)[-1]
    assert (last["old"], last["new"]) == ("speaking", "stopping")


async def test_wakertc_run_exits_within_3s_of_sigterm_while_connecting_to_a_dead_path(
    tmp_path: Path, models_dir: Path
) -> None:
    """The Realtime URL accepts and never answers, the connect timeout is 20 s: SIGTERM does not
    wait for it."""
    options = EmulatorOptions(port=0, api_key="sigterm-test-key")
    async with contextlib.AsyncExitStack() as stack:
        services = await start_services(stack, tmp_path, options)
        with Blackhole(free_port()) as hole:
            config, out = device_config(
                tmp_path, models_dir, services.companion.url, hole.url, services.token_file
            )
            code, took, stderr = await run_and_terminate(config, "phase wake -> connecting")
    print(f"wakertc run SIGTERMed while connecting: exited after {took * 1000:.0f} ms")
    assert code == 0, stderr
    assert took < EXIT_WITHIN_S, f"exited {took:.2f} s after SIGTERM"
    assert "Traceback" not in stderr
    assert "phase connecting -> stopping" in stderr
    last = payloads(out)[-1]
    assert (last["old"], last["new"]) == ("connecting", "stopping")
