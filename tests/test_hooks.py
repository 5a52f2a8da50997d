"""The user hook: real commands get JSON on stdin in order; timeouts, failures, a free loop."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from wakertc.config import HookConfig
from wakertc.hooks import CLOSE_GRACE_S, MAX_PENDING, PhaseHook
from wakertc.state import Phase, PhaseMachine, Transition

# Appends what it reads on stdin to OUT, then behaves as asked: sleep N seconds and append an end
# marker, hang with a child process of its own, or fail with a message on stderr.
HOOK_SCRIPT = """\
import os, subprocess, sys, time
mode, out = sys.argv[1], sys.argv[2]
data = sys.stdin.read()
with open(out, "a") as f:
    f.write(data)
if mode == "sleep":
    time.sleep(float(sys.argv[3]))
    with open(out, "a") as f:
        f.write('{"finished": true}\\n')
elif mode == "hang":
    child = subprocess.Popen(["sleep", "60"])
    with open(out + ".pids", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(60)
elif mode == "fail":
    print("something useful went wrong", file=sys.stderr)
    sys.exit(3)
"""


def running(pid: int) -> bool:
    """True if the process exists and is not a zombie (PID 1 here may not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def gone(pids: list[int], timeout: float = 2.0) -> bool:
    """Wait for the processes to die (SIGKILL to a process nobody waits for lands a bit later)."""
    async with asyncio.timeout(timeout):
        while any(running(pid) for pid in pids):
            await asyncio.sleep(0.01)
    return True


def received(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "received.jsonl"


@pytest.fixture
async def make_hook(tmp_path: Path, out: Path) -> AsyncIterator[Callable[..., PhaseHook]]:
    """A PhaseHook running the test script in `mode`; closed after the test."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK_SCRIPT)
    hooks: list[PhaseHook] = []

    def make(mode: str = "record", *args: str, timeout_s: float = 5.0) -> PhaseHook:
        command = (sys.executable, str(script), mode, str(out), *args)
        config = HookConfig(command=command, timeout_s=timeout_s)
        hook = PhaseHook(config, asyncio.get_running_loop())
        hooks.append(hook)
        return hook

    yield make
    for hook in hooks:
        await hook.aclose()


async def flush(hook: PhaseHook, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        await hook.flush()


async def test_each_change_arrives_as_json_in_order(
    make_hook: Callable[..., PhaseHook], out: Path
) -> None:
    hook = make_hook()
    machine = PhaseMachine()
    sent: list[Transition] = []
    machine.add_listener(sent.append)
    machine.add_listener(hook)
    machine.transition(Phase.IDLE, "ready")
    for phase in (Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, Phase.THINKING):
        machine.transition(phase, f"to {phase.value}", word="hey_jarvis")
    machine.transition(Phase.IDLE, "done", path=Path("/tmp/x"))  # not JSON-native: sent as text
    await flush(hook)

    got = received(out)
    assert got == [json.loads(json.dumps(t.as_json(), default=str)) for t in sent]
    assert [(g["old"], g["new"]) for g in got] == [
        ("starting", "idle"),
        ("idle", "wake"),
        ("wake", "connecting"),
        ("connecting", "listening"),
        ("listening", "thinking"),
        ("thinking", "idle"),
    ]
    assert got[1]["reason"] == "to wake" and got[1]["word"] == "hey_jarvis"
    assert got[-1]["path"] == "/tmp/x"
    assert set(got[0]) == {"event", "old", "new", "reason", "time"}
    assert hook.runs == 6


async def test_send_delivers_other_events(make_hook: Callable[..., PhaseHook], out: Path) -> None:
    hook = make_hook()
    hook.send({"event": "transcript", "text": "turn on the lights", "item_id": "item_1"})
    await flush(hook)
    assert received(out) == [
        {"event": "transcript", "text": "turn on the lights", "item_id": "item_1"}
    ]


async def test_slow_hook_never_blocks_the_loop_and_keeps_order(
    make_hook: Callable[..., PhaseHook], out: Path
) -> None:
    hook = make_hook("sleep", "0.4")
    loop = asyncio.get_running_loop()

    started = time.perf_counter()
    for phase in (Phase.WAKE, Phase.CONNECTING, Phase.LISTENING):
        hook(Transition(Phase.IDLE, phase, "test"))
    assert time.perf_counter() - started < 0.01  # queueing is all the listener does

    # Tick every 10 ms for as long as the hooks run (>= 1.2 s) and record the worst lateness.
    worst = 0.0
    flushing = asyncio.ensure_future(flush(hook))
    while not flushing.done():
        before = loop.time()
        await asyncio.sleep(0.01)
        worst = max(worst, loop.time() - before - 0.01)
    await flushing
    assert worst < 0.1, f"the event loop stalled for {worst * 1000:.0f} ms"
    # Each run finished before the next began.
    assert [g.get("new", "end") for g in received(out)] == [
        "wake",
        "end",
        "connecting",
        "end",
        "listening",
        "end",
    ]


async def test_hook_past_its_timeout_is_killed_with_its_children(
    make_hook: Callable[..., PhaseHook], out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = make_hook("hang", timeout_s=1.0)
    with caplog.at_level(logging.WARNING, logger="wakertc.hooks"):
        hook(Transition(Phase.IDLE, Phase.WAKE, "test"))
        started = time.monotonic()
        await flush(hook)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    assert "ran longer than 1.0 s: killed" in caplog.text
    hook_pid, child_pid = map(int, Path(f"{out}.pids").read_text().split())
    assert not running(hook_pid)  # the hook itself has been waited for
    assert await gone([child_pid])
    assert received(out)[0]["new"] == "wake"


async def test_failing_hook_is_logged_with_stderr_and_status(
    make_hook: Callable[..., PhaseHook], caplog: pytest.LogCaptureFixture
) -> None:
    hook = make_hook("fail")
    with caplog.at_level(logging.WARNING, logger="wakertc.hooks"):
        hook(Transition(Phase.IDLE, Phase.WAKE, "test"))
        await flush(hook)
    (record,) = [r for r in caplog.records if r.name == "wakertc.hooks"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "exit status 3" in message
    assert "something useful went wrong" in message
    assert sys.executable in message
    assert "hook.py" not in message  # arguments are not logged: they might hold secrets


async def test_missing_program_is_logged_and_later_changes_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = PhaseHook(
        HookConfig(command=(str(tmp_path / "no-such-hook"),)), asyncio.get_running_loop()
    )
    with caplog.at_level(logging.ERROR, logger="wakertc.hooks"):
        hook(Transition(Phase.IDLE, Phase.WAKE, "test"))
        hook(Transition(Phase.WAKE, Phase.IDLE, "test"))
        await flush(hook)
    assert caplog.text.count("could not be started") == 2
    assert hook.runs == 2
    await hook.aclose()


async def test_queue_is_bounded_and_drops_the_oldest(
    tmp_path: Path, out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = ("sh", "-c", 'cat >> "$1"', "hook", str(out))
    hook = PhaseHook(HookConfig(command=command), asyncio.get_running_loop())
    total = MAX_PENDING + 8
    with caplog.at_level(logging.WARNING, logger="wakertc.hooks"):
        for i in range(total):  # all queued before the first run can start
            hook.send({"n": i})
        await flush(hook)
    assert hook.dropped == 8
    assert [g["n"] for g in received(out)] == list(range(8, total))
    assert "falling behind" in caplog.text
    await hook.aclose()


async def test_aclose_lets_the_stopping_change_through(
    make_hook: Callable[..., PhaseHook], out: Path
) -> None:
    hook = make_hook("sleep", "0.1")
    machine = PhaseMachine(Phase.IDLE)
    machine.add_listener(hook)
    machine.transition(Phase.WAKE, "test")
    machine.transition(Phase.STOPPING, "shutting down")
    await hook.aclose()
    assert [g.get("new", "end") for g in received(out)] == ["wake", "end", "stopping", "end"]
    machine.transition(Phase.IDLE, "after close")  # ignored once closed
    assert hook.runs == 2


async def test_aclose_kills_a_hung_hook_after_a_short_grace(
    make_hook: Callable[..., PhaseHook], out: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = make_hook("hang", timeout_s=30.0)
    hook(Transition(Phase.IDLE, Phase.WAKE, "test"))
    hook(Transition(Phase.WAKE, Phase.STOPPING, "test"))
    pids = Path(f"{out}.pids")
    async with asyncio.timeout(5):
        while not pids.exists():  # the first run is under way
            await asyncio.sleep(0.01)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wakertc.hooks"):
        await hook.aclose()
    assert time.monotonic() - started < CLOSE_GRACE_S + 1.0
    assert "still busy at shutdown: killed, 2 change(s) not delivered" in caplog.text
    assert await gone([int(pid) for pid in pids.read_text().split()])


async def test_no_command_means_no_hook() -> None:
    hook = PhaseHook(HookConfig(), asyncio.get_running_loop())
    hook(Transition(Phase.IDLE, Phase.WAKE, "test"))
    await flush(hook, timeout=1)
    assert hook.runs == 0
    await hook.aclose()
