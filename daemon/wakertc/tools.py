"""Functions the model may call, and the device-side actions behind them.

Each configured tool runs either a command (arguments as JSON on stdin, its stdout is the result) or
an HTTP request (arguments as a JSON body, the response body is the result). Whatever happens, the
model gets a string back: a failure becomes a short JSON error it can talk about, never an exception
that stalls the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from .config import ToolConfig

log = logging.getLogger(__name__)

END_CONVERSATION = "end_conversation"
# What the model sees for the built-in tool that lets it close the session when the user is done.
END_CONVERSATION_TOOL = {
    "type": "function",
    "name": END_CONVERSATION,
    "description": (
        "End the voice conversation. Call this when the user says goodbye, thanks you and is done, "
        "or asks you to stop listening."
    ),
    "parameters": {"type": "object", "properties": {}},
}
MAX_RESULT_CHARS = 16_000
# A command's stdout (or an HTTP tool's body) beyond this is not read (the model gets
# MAX_RESULT_CHARS of it at most); the command or request is then ended, as one sending without end
# would otherwise run until its timeout, and fill the memory meanwhile.
MAX_STDOUT_BYTES = 4 * MAX_RESULT_CHARS
MAX_STDERR_BYTES = 4096
# After a command exits, how long its pipes may take to deliver what it wrote.
EXIT_GRACE_S = 0.5


class Builtin(Protocol):
    """Tools the device itself provides (timers): described per session, run in-process."""

    names: frozenset[str]

    def definitions(self) -> list[dict[str, Any]]:
        """Their definitions, built now (they may carry the time of day)."""

    async def run(self, name: str, args: dict[str, Any]) -> str:
        """Run one; the output for the model, failures included."""


class ToolRunner:
    """Describes the tools to the session and runs them when called."""

    def __init__(
        self,
        tools: Sequence[ToolConfig],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        builtins: Sequence[Builtin] = (),
        headers: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`headers`: request headers of HTTP tools, by tool name (the companion's server tools
        have secret ones: never logged)."""
        self._tools = {tool.name: tool for tool in tools}
        self._headers = dict(headers or {})
        self._transport = transport
        self._builtins = tuple(builtins)

    def definitions(self) -> list[dict[str, Any]]:
        """Tool definitions for `session.update`, the built-in end_conversation first."""
        return [END_CONVERSATION_TOOL, *self._builtin_definitions()] + [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            }
            for tool in self._tools.values()
        ]

    async def run(self, name: str, arguments: str) -> str:
        """Run tool `name` with JSON `arguments`; always returns the string for the model (an
        error text if need be), never raises: the model waits for an output for every call."""
        try:
            return await self._run(name, arguments)
        except Exception as exc:
            # Whatever went wrong, the call still gets an answer, or the model (and the device,
            # in THINKING) would wait for one until the session ends.
            log.exception("tool %.60s failed unexpectedly", name)
            return _failure(f"the tool failed: {type(exc).__name__}")

    async def _run(self, name: str, arguments: str) -> str:
        builtin = next((b for b in self._builtins if name in b.names), None)
        if builtin is not None:
            return await self._run_builtin(builtin, name, arguments)
        tool = self._tools.get(name)
        if tool is None:
            log.warning("the model called unknown tool %r", name[:60])  # the model's text
            return _failure(f"unknown tool {name!r}")
        try:
            args = json.loads(arguments or "{}")
        except (ValueError, RecursionError):
            # JSONDecodeError, but also an integer too long to convert or nesting too deep.
            log.warning("tool %s: arguments were not usable JSON", name)
            return _failure("arguments were not valid JSON")
        try:
            async with asyncio.timeout(tool.timeout_s):
                if tool.command:
                    result = await self._run_command(tool, args)
                else:
                    result = await self._run_http(tool, args)
        except TimeoutError:
            log.warning("tool %s timed out after %g s", name, tool.timeout_s)
            return _failure(f"timed out after {tool.timeout_s:g} s")
        except ToolFailed as exc:
            log.warning("tool %s failed: %s", name, exc)
            return _failure(str(exc))
        log.info("tool %s returned %d characters", name, len(result))
        return result[:MAX_RESULT_CHARS]

    def _builtin_definitions(self) -> list[dict[str, Any]]:
        return [definition for builtin in self._builtins for definition in builtin.definitions()]

    async def _run_builtin(self, builtin: Builtin, name: str, arguments: str) -> str:
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return _failure("arguments were not valid JSON")
        if not isinstance(args, dict):
            return _failure("arguments must be a JSON object")
        log.info("built-in tool %s", name)
        return await builtin.run(name, args)

    async def _run_command(self, tool: ToolConfig, args: Any) -> str:
        payload = json.dumps(args).encode()
        loop = asyncio.get_running_loop()
        try:
            # Its own session and process group, so a timeout ends whatever the command
            # started, not only the command itself.
            transport, protocol = await loop.subprocess_exec(
                lambda: _CommandProtocol(loop),
                *tool.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise ToolFailed(f"could not start {tool.command[0]}: {exc.strerror}") from exc
        assert protocol.stdin and protocol.stdout and protocol.stderr
        stdout, stderr = bytearray(), bytearray()
        feeder = asyncio.create_task(_feed(protocol.stdin, payload))
        readers = [
            asyncio.create_task(_read_head(protocol.stdout, stdout, MAX_STDOUT_BYTES)),
            asyncio.create_task(_read_tail(protocol.stderr, stderr, MAX_STDERR_BYTES)),
        ]
        overflowed = False
        try:
            await asyncio.wait([protocol.exited, readers[0]], return_when=asyncio.FIRST_COMPLETED)
            if not protocol.exited.done() and len(stdout) >= MAX_STDOUT_BYTES:
                # Printing without end: the result is what we have, and the command is done.
                overflowed = True
                _kill_group(transport.get_pid())
            await protocol.exited
            # The command has exited and what it wrote is in the pipes; a background child it
            # left may hold them open: take what is there rather than wait for that child.
            await asyncio.wait(readers, timeout=EXIT_GRACE_S)
        except asyncio.CancelledError:
            _kill_group(transport.get_pid())
            await protocol.exited
            raise
        finally:
            for task in (feeder, *readers):
                task.cancel()
            transport.close()  # our ends of the pipes; a background child keeps running
        status = transport.get_returncode()
        if status != 0 and not overflowed:
            detail = stderr.decode(errors="replace").strip()[-200:]
            raise ToolFailed(f"exited with status {status}: {detail}")
        return stdout.decode(errors="replace").strip()

    async def _run_http(self, tool: ToolConfig, args: Any) -> str:
        # httpx's own 5 s default would otherwise cut a tool allowed longer.
        async with httpx.AsyncClient(
            transport=self._transport, timeout=httpx.Timeout(tool.timeout_s)
        ) as client:
            headers = dict(self._headers.get(tool.name, {}))
            if tool.method == "GET":
                request = client.build_request("GET", _query_url(tool.url, args), headers=headers)
            else:
                request = client.build_request(tool.method, tool.url, json=args, headers=headers)
            try:
                response = await client.send(request, stream=True)
                try:
                    body = await _read_body(response, MAX_STDOUT_BYTES)
                finally:
                    await response.aclose()  # the rest of the body is never read
            except httpx.HTTPError as exc:
                raise ToolFailed(f"request failed: {str(exc) or type(exc).__name__}") from exc
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if response.status_code >= 400:
            raise ToolFailed(f"HTTP {response.status_code}: {text[:200]}")
        return text


class _CommandProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's stream protocol, plus a future done when the process exits: on Python 3.11
    `Process.wait()` also waits for the pipes to close, which a background child can hold open."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class ToolFailed(Exception):
    """A tool's action did not produce a result."""


def _failure(message: str) -> str:
    return json.dumps({"error": message})


def _query_url(url: str, args: Any) -> httpx.URL:
    """`url` with the model's arguments added as query parameters. Parameters already in the
    configured URL stay as configured (the model cannot replace an entity or a token); values
    that are not strings are JSON-encoded (`true`, `3`, `null`, `{"a":1}`)."""
    base = httpx.URL(url)
    if not isinstance(args, dict):
        return base
    added = {
        str(key): value if isinstance(value, str) else json.dumps(value)
        for key, value in args.items()
        if str(key) not in base.params
    }
    return base.copy_merge_params(added)


async def _feed(stdin: asyncio.StreamWriter, payload: bytes) -> None:
    # A command that does not read its stdin may exit before taking it all.
    with contextlib.suppress(ConnectionError):
        stdin.write(payload)
        await stdin.drain()
        stdin.close()


async def _read_body(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of a streamed response's body."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


async def _read_head(stream: asyncio.StreamReader, into: bytearray, limit: int) -> None:
    """Read into `into` until EOF or `limit` bytes (the rest would never reach the model)."""
    while len(into) < limit:
        chunk = await stream.read(limit - len(into))
        if not chunk:
            return
        into += chunk


async def _read_tail(stream: asyncio.StreamReader, into: bytearray, limit: int) -> None:
    """Read until EOF keeping only the last `limit` bytes (stderr's end says why it failed)."""
    while chunk := await stream.read(65536):
        into += chunk
        del into[:-limit]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
