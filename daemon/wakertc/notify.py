"""systemd integration: readiness, status, stopping and the watchdog, via sd_notify.

Under `Type=notify` systemd passes `$NOTIFY_SOCKET`; we send `READY=1` once the daemon listens,
`STATUS=<phase>: <reason>` on every phase change (a listener of `PhaseMachine`) and `STOPPING=1`
on shutdown. With `WatchdogSec=` set, systemd also passes `$WATCHDOG_USEC` and kills the service
when no `WATCHDOG=1` arrives within it. The pings are sent by a task on the daemon's own event loop,
not by a thread, so that a blocked or hung loop stops them and systemd restarts the service: a
thread would keep a dead daemon looking alive.

Messages go through `systemd.daemon.notify` (systemd-python). Where that module is not installed
(development machines), the same datagram is sent directly to `$NOTIFY_SOCKET`. Without
`$NOTIFY_SOCKET` (not started by systemd) every method is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

from .state import Transition

log = logging.getLogger(__name__)

WATCHDOG_TASK_NAME = "systemd-watchdog"


def _send_datagram(address: str, message: str) -> bool:
    """Send one sd_notify datagram to `address` (a path, or `@name` for an abstract socket)."""
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), target)
    return True


def _default_sender() -> Callable[[str], bool]:
    try:
        import systemd.daemon
    except ImportError:
        # Development machines without systemd-python: speak the protocol ourselves.
        def fallback(message: str) -> bool:
            address = os.environ.get("NOTIFY_SOCKET", "")
            return bool(address) and _send_datagram(address, message)

        return fallback

    def via_libsystemd(message: str) -> bool:
        return bool(systemd.daemon.notify(message))

    return via_libsystemd


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings asked for by `WATCHDOG_USEC`/`WATCHDOG_PID`, or None when off."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        # The variables were inherited from a parent that is itself the watched service.
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    if value <= 0:
        return None
    # Half the timeout, as sd_watchdog_enabled(3) recommends, leaves room for one late ping.
    return value / 2 / 1_000_000


class Systemd:
    """Tells systemd what the daemon is doing; every method is a no-op outside systemd."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._send = _default_sender()
        self._watchdog: asyncio.Task[None] | None = None
        self._interval = watchdog_interval(os.environ, os.getpid()) if self._enabled else None

    @property
    def enabled(self) -> bool:
        """True when started by systemd with a notify socket."""
        return self._enabled

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or None when systemd asked for no watchdog."""
        return self._interval

    def notify(self, message: str) -> None:
        """Send raw sd_notify assignments; failures are logged, never raised."""
        if not self._enabled:
            return
        try:
            self._send(message)
        except OSError as exc:
            # systemd being unreachable must never take the daemon down with it.
            log.warning("sd_notify %r failed: %s", message.split("=", 1)[0], exc)

    def ready(self) -> None:
        """Report start-up complete: systemd now considers the service active."""
        self.notify("READY=1")

    def status(self, text: str) -> None:
        """Set the one-line status shown by `systemctl status`."""
        # A newline would start a new assignment (e.g. a reason reading "\nREADY=1").
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> None:
        """Report that shutdown has begun."""
        self.notify("STOPPING=1")

    def __call__(self, change: Transition) -> None:
        """Phase listener: show the new phase and why in `systemctl status`."""
        self.status(f"{change.new.value}: {change.reason}")

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Start pinging the watchdog from the event loop, if systemd asked for it."""
        if self._interval is None:
            return None
        if self._watchdog is None or self._watchdog.done():
            log.debug("watchdog pings every %.3f s", self._interval)
            self._watchdog = self._loop.create_task(
                self._ping_forever(self._interval), name=WATCHDOG_TASK_NAME
            )
        return self._watchdog

    def stop(self) -> None:
        """Stop the watchdog pings (the task ends at the loop's next turn)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _ping_forever(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
