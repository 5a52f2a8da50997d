"""Real processes and a dead network path for fault tests.

    emulator = ServiceProcess("emulator", ["--api-key", KEY], port=free_port())
    await emulator.start()          # `wakertc emulator --port PORT ...`, ready once it listens
    await emulator.kill()           # SIGKILL: no clean-up, as a crash or the OOM killer would
    await emulator.start()          # again, on the same port
    with Blackhole(port):           # the port accepts connections and never answers
        ...

`ServiceProcess` reads the child's stderr all the time (so a chatty child never blocks on a full
pipe) and keeps every line for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from wakertc.companion import DeviceStore, load_companion_config
from wakertc.demo import DEMO_API_KEY

READY_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """`wakertc NAME --port PORT ARGS...` as a child process that can be killed and restarted."""

    def __init__(
        self, name: str, args: list[str], *, port: int, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.port = port
        self.env = {**os.environ, "WAKERTC_LOG_TARGET": "stderr", **(env or {})}
        self.lines: list[str] = []
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the child and wait for its `NAME listening on URL` line."""
        assert not self.running, f"{self.name} is already running"
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wakertc.cli",
            self.name,
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        self.starts += 1
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(
            self._read(self._process, ready), name=f"{self.name}-stderr"
        )
        async with asyncio.timeout(READY_TIMEOUT_S):
            await ready

    async def _read(self, process: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        assert process.stderr is not None
        while raw := await process.stderr.readline():
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if not ready.done() and f"{self.name} listening on {self.url}" in line:
                ready.set_result(None)
        code = await process.wait()
        if not ready.done():
            ready.set_exception(
                AssertionError(f"{self.name} exited {code} before it was ready: {self.log()}")
            )

    async def kill(self) -> None:
        """SIGKILL the child and reap it."""
        assert self._process is not None and self.running, f"{self.name} is not running"
        self._process.send_signal(signal.SIGKILL)
        await self._finish()

    async def stop(self) -> None:
        """SIGTERM the child if it runs (SIGKILL after 5 s); reap it."""
        if not self.running:
            await self._finish()
            return
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5.0):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
        await self._finish()

    async def _finish(self) -> None:
        if self._process is not None:
            await self._process.wait()
        if self._reader is not None:
            await self._reader

    def log(self) -> str:
        """Everything the child wrote to stderr, all runs."""
        return "".join(self.lines)


class Blackhole:
    """A TCP port that accepts connections and never answers: a listening socket nobody reads.

    The kernel completes each handshake from the listen backlog, so a client connects, sends
    its request and then waits for an answer that never comes, as behind a dead route or a
    hung server.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> Blackhole:
        """Start listening (and never answering)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._sock = sock
        return self

    def close(self) -> None:
        """Free the port; connections still waiting are reset. Idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Blackhole:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def established_to(port: int) -> int:
    """How many ESTABLISHED TCP connections on this host go to `port` on 127.0.0.1."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote, state = fields[2], fields[3]
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


@dataclass
class Services:
    """The child processes and what the device needs to reach them."""

    emulator: ServiceProcess
    companion: ServiceProcess
    token_file: Path


async def start_services(
    workdir: Path,
    *,
    emulator_args: tuple[str, ...] = (),
    key_lifetime_s: int = 600,
    companion_extra: str = "",
) -> Services:
    """The emulator and a companion minting from it, as processes on fixed free ports;
    `companion_extra` is TOML appended to the companion's config (e.g. turn detection)."""
    emulator_port = free_port()
    emulator = ServiceProcess(
        "emulator",
        ["--port", str(emulator_port), "--api-key", DEMO_API_KEY, *emulator_args],
        port=emulator_port,
    )
    key_file = workdir / "openai-key"
    key_file.write_text(DEMO_API_KEY + "\n")
    key_file.chmod(0o600)
    companion_port = free_port()
    config = workdir / "companion.toml"
    config.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {companion_port}

[upstream]
url = "{emulator.url}"
api_key_file = "{key_file}"

[devices]
file = "{workdir / "devices.json"}"

[session]
key_lifetime_s = {key_lifetime_s}

[limits]
per_device_per_minute = 1000
global_per_minute = 1000
{companion_extra}"""
    )
    config.chmod(0o600)
    token = DeviceStore(load_companion_config(config).devices_file).add("kitchen")
    token_file = workdir / "device-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    companion = ServiceProcess("companion", ["--config", str(config)], port=companion_port)
    await asyncio.gather(emulator.start(), companion.start())
    return Services(emulator, companion, token_file)
