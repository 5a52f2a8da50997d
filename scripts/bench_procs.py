"""Processes measured by scripts/bench.py: the real daemon (`wakertc run`) and the stock reference.

Figures come from the kernel, not from the processes themselves: resident memory is `VmRSS` in
/proc/PID/status and CPU time is utime + stime in /proc/PID/stat (all threads of the process).
Readiness is what systemd would see: a `READY=1` datagram on a real AF_UNIX `NOTIFY_SOCKET`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LIVE_LINE = re.compile(r"session live (\d+) ms after the wake word")


def rss_parts_mb(pid: int) -> dict[str, float]:
    """VmRSS of `pid` in MiB and how the kernel splits it, from one read of /proc/PID/status:
    `anonymous` (malloc's heap, Python's objects, thread stacks: memory only this process
    holds), `file_backed` (the pages of libraries and models it has touched: clean ones the
    kernel can drop and read again, shared with every process that maps the same file) and
    `shmem`. The three add up to `total`."""
    wanted = {
        "VmRSS": "total",
        "RssAnon": "anonymous",
        "RssFile": "file_backed",
        "RssShmem": "shmem",
    }
    parts: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            parts[wanted[key]] = int(value.split()[0]) / 1024
    if len(parts) != len(wanted):
        raise RuntimeError(f"process {pid}: /proc status lacks {set(wanted) - set(parts)}")
    return parts


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` in MiB (VmRSS)."""
    return rss_parts_mb(pid)["total"]


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds used so far by every thread of `pid`."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (the command) may contain spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's `NOTIFY_SOCKET`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start collecting datagrams (each may carry several newline-separated assignments)."""
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="bench-notify")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 4096)
            now = time.monotonic()
            async with self._arrived:
                for line in data.decode(errors="replace").splitlines():
                    self.messages.append((now, line))
                self._arrived.notify_all()

    async def wait_for(self, prefix: str, count: int = 1, within_s: float = 30.0) -> float:
        """Time at which the `count`-th message starting with `prefix` arrived."""
        async with asyncio.timeout(within_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.matching(prefix)) >= count)
            return self.matching(prefix)[count - 1][0]

    def matching(self, prefix: str) -> list[tuple[float, str]]:
        """Messages received so far that start with `prefix`."""
        return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    async def close(self) -> None:
        """Stop reading and remove the socket file."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._sock.close()
        self.path.unlink(missing_ok=True)


class DaemonProcess:
    """`wakertc run --config CFG` under a private NOTIFY_SOCKET, its log read line by line."""

    def __init__(self, wakertc: Path, config: Path, notify_path: Path) -> None:
        self._argv = [str(wakertc), "run", "--config", str(config)]
        self.notify = NotifySocket(notify_path)
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.wake_to_live_ms: list[float] = []
        self._log_reader: asyncio.Task[None] | None = None
        self.spawned_at = 0.0
        self.ready_s = 0.0  # spawn to READY=1

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self, within_s: float = 30.0) -> float:
        """Spawn the daemon; seconds from spawn to its READY=1."""
        self.notify.start()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), WAKERTC_LOG_TARGET="stderr")
        env.pop("WATCHDOG_USEC", None)
        self.spawned_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self._argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._log_reader = asyncio.get_running_loop().create_task(
            self._read_log(), name="bench-daemon-log"
        )
        exited = asyncio.ensure_future(self.proc.wait())
        ready = asyncio.ensure_future(self.notify.wait_for("READY=1", within_s=within_s))
        await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self._drain_log()
            tail = "\n".join(self.log[-15:])
            raise RuntimeError(
                f"the daemon exited ({self.proc.returncode}) before READY=1:\n{tail}"
            )
        exited.cancel()
        self.ready_s = ready.result() - self.spawned_at
        return self.ready_s

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            match = LIVE_LINE.search(line)
            if match:
                self.wake_to_live_ms.append(float(match.group(1)))

    async def _drain_log(self) -> None:
        if self._log_reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._log_reader), 2.0)

    def conversations_over(self) -> int:
        """Conversations that ended normally so far (STATUS=idle: conversation over ...)."""
        return len(self.notify.matching("STATUS=idle: conversation over"))

    async def stop(self, within_s: float = 5.0) -> float:
        """SIGTERM, wait for the exit; seconds it took (killed when not gone within `within_s`)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        took = time.monotonic() - started
        await self._drain_log()
        if self._log_reader is not None:
            self._log_reader.cancel()
        await self.notify.close()
        return took


class ReferenceProcess:
    """scripts/bench_oww.py: the stock openWakeWord predict loop, started and stopped on cue."""

    def __init__(
        self, python: Path, wav: Path, models_dir: Path, seconds: float, log: Path
    ) -> None:
        script = Path(__file__).with_name("bench_oww.py")
        self._argv = [str(python), str(script), str(wav), str(models_dir), f"{seconds:.3f}"]
        self._log = log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The reference process's id."""
        assert self.proc is not None
        return self.proc.pid

    async def start(self, within_s: float = 60.0) -> float:
        """Spawn it; seconds until the stock Model is constructed and ready to predict."""
        started = time.monotonic()
        with self._log.open("wb") as log:  # a file, so its warnings can never fill a pipe
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        line = await self._line(within_s)
        if line != "ready":
            raise RuntimeError(f"bench_oww.py did not start: {line!r} {await self._stderr()}")
        return time.monotonic() - started

    async def go(self) -> None:
        """Start the paced loop."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def result(self, within_s: float) -> dict[str, Any]:
        """The loop's summary line, once it has fed all its audio."""
        line = await self._line(within_s)
        try:
            summary: dict[str, Any] = json.loads(line)
        except ValueError:
            raise RuntimeError(f"bench_oww.py failed: {line!r} {await self._stderr()}") from None
        return summary

    async def stop(self) -> None:
        """Close its stdin and wait for it to exit."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10.0)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def _line(self, within_s: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        return raw.decode(errors="replace").strip()

    async def _stderr(self) -> str:
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5.0)
        return self._log.read_text(errors="replace")[-2000:]


def venv_bin(name: str) -> Path:
    """A program of the virtualenv this script runs in."""
    return Path(sys.executable).parent / name
