"""sd_notify over a real NOTIFY_SOCKET: ready, status, stopping; a watchdog a hung loop stops."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from notify_server import NotifyServer
from wakertc.notify import WATCHDOG_TASK_NAME, Systemd, watchdog_interval
from wakertc.state import Phase, PhaseMachine, Transition


@pytest.fixture
def notify_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyServer]:
    # tmp_path can exceed the 108-byte limit of a unix socket path; a short private dir cannot.
    with tempfile.TemporaryDirectory(prefix="wkn") as tmp:
        server = NotifyServer(str(Path(tmp) / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", server.address)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        try:
            yield server
        finally:
            server.close()


async def test_ready_status_stopping(notify_server: NotifyServer) -> None:
    systemd = Systemd(asyncio.get_running_loop())
    assert systemd.enabled
    systemd.ready()
    systemd.status("loading models")
    systemd.stopping()
    assert notify_server.next() == "READY=1"
    assert notify_server.next() == "STATUS=loading models"
    assert notify_server.next() == "STOPPING=1"


async def test_phase_listener_reports_phase_and_reason(notify_server: NotifyServer) -> None:
    systemd = Systemd(asyncio.get_running_loop())
    machine = PhaseMachine()
    machine.add_listener(systemd)
    machine.transition(Phase.IDLE, "models loaded")
    machine.transition(Phase.WAKE, "hey_jarvis 0.93")
    assert notify_server.next() == "STATUS=idle: models loaded"
    assert notify_server.next() == "STATUS=wake: hey_jarvis 0.93"


async def test_status_cannot_inject_assignments(notify_server: NotifyServer) -> None:
    systemd = Systemd(asyncio.get_running_loop())
    systemd(Transition(Phase.IDLE, Phase.ERROR, "bad\nREADY=1\nMAINPID=1"))
    assert notify_server.next() == "STATUS=error: bad READY=1 MAINPID=1"


async def test_no_socket_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    systemd = Systemd(asyncio.get_running_loop())
    assert not systemd.enabled
    systemd.ready()
    systemd.status("x")
    systemd.stopping()
    assert systemd.start_watchdog() is None
    systemd.stop()


async def test_vanished_socket_is_logged_not_raised(
    notify_server: NotifyServer, caplog: pytest.LogCaptureFixture
) -> None:
    systemd = Systemd(asyncio.get_running_loop())
    notify_server.close()
    os.unlink(notify_server.address)
    systemd.ready()
    assert "sd_notify 'READY' failed" in caplog.text


def test_watchdog_interval_from_environment() -> None:
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    # Inherited from a parent service: not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None


async def test_watchdog_pings_at_half_the_timeout(
    notify_server: NotifyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: pings every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    systemd = Systemd(asyncio.get_running_loop())
    assert systemd.watchdog_interval == pytest.approx(0.05)
    task = systemd.start_watchdog()
    assert task is not None and task.get_name() == WATCHDOG_TASK_NAME
    assert systemd.start_watchdog() is task  # idempotent: never two pingers

    await asyncio.sleep(0.55)  # measuring a rate needs time to pass
    pings = [t for t, msg in notify_server.drain() if msg == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 9 <= len(pings) <= 13, pings
    assert max(gaps) < 0.1, gaps  # never a gap long enough for systemd to fire

    systemd.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    notify_server.drain()
    await asyncio.sleep(0.15)
    assert notify_server.drain() == []


async def test_blocked_loop_stops_watchdog_pings(
    notify_server: NotifyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proof that a hung daemon is restarted: while the loop is blocked, no ping is sent."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    loop = asyncio.get_running_loop()
    systemd = Systemd(loop)
    systemd.start_watchdog()
    await asyncio.sleep(0.2)

    blocked: dict[str, float] = {}
    unblocked = asyncio.Event()

    def hang() -> None:
        blocked["start"] = time.monotonic()
        time.sleep(0.25)  # 5 ping intervals, 2.5x WATCHDOG_USEC: systemd would kill us here
        blocked["end"] = time.monotonic()
        unblocked.set()

    loop.call_soon(hang)
    await unblocked.wait()
    await asyncio.sleep(0.2)
    systemd.stop()

    pings = [t for t, msg in notify_server.drain() if msg == "WATCHDOG=1"]
    # Allow 10 ms for a ping sent just before the block to be read by the server thread.
    during = [t for t in pings if blocked["start"] + 0.01 < t < blocked["end"]]
    before = [t for t in pings if t <= blocked["start"]]
    after = [t for t in pings if t >= blocked["end"]]
    assert during == []
    assert len(before) >= 3
    assert len(after) >= 3  # the pings resume once the loop runs again


async def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    server = NotifyServer(f"@wakertc-test-{os.getpid()}")
    monkeypatch.setenv("NOTIFY_SOCKET", server.address)
    try:
        Systemd(asyncio.get_running_loop()).ready()
        assert server.next() == "READY=1"
    finally:
        server.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_fallback_without_systemd_python(abstract: bool) -> None:
    """Dev machines without systemd-python still notify, to path and abstract (@) sockets."""
    script = (
        "import sys, asyncio\n"
        "sys.modules['systemd'] = None  # as if systemd-python were not installed\n"
        "from wakertc.notify import Systemd\n"
        "s = Systemd(asyncio.new_event_loop())\n"
        "s.ready(); s.status('fallback'); s.stopping()\n"
    )
    with tempfile.TemporaryDirectory(prefix="wkn") as tmp:
        address = f"@wakertc-fallback-{os.getpid()}" if abstract else str(Path(tmp) / "notify")
        server = NotifyServer(address)
        env = {**os.environ, "NOTIFY_SOCKET": server.address}
        try:
            subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=20)
            assert server.next() == "READY=1"
            assert server.next() == "STATUS=fallback"
            assert server.next() == "STOPPING=1"
        finally:
            server.close()
