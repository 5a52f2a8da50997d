"""Functions the model may call, and the device-side actions behind them.

Each configured tool runs either a command (arguments as JSON on stdin, its stdout is the result) or
an HTTP request (arguments as a JSON body, the response body is the result). Whatever happens, the
model gets a string back: a failure becomes a short JSON error it can talk about, never an exception
that stalls the conversation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
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
    ) -> None:
        self._tools = {tool.name: tool for tool in tools}
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
        """Run tool `name` with JSON `arguments`; always returns the string for the model."""
        builtin = next((b for b in self._builtins if name in b.names), None)
        if builtin is not None:
            return await self._run_builtin(builtin, name, arguments)
        tool = self._tools.get(name)
        if tool is None:
            return _failure(f"unknown tool {name!r}")
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError:
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
        try:
            process = await asyncio.create_subprocess_exec(
                *tool.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ToolFailed(f"could not start {tool.command[0]}: {exc.strerror}") from exc
        try:
            stdout, stderr = await process.communicate(json.dumps(args).encode())
        except asyncio.CancelledError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            detail = stderr.decode(errors="replace").strip()[-200:]
            raise ToolFailed(f"exited with status {process.returncode}: {detail}")
        return stdout.decode(errors="replace").strip()

    async def _run_http(self, tool: ToolConfig, args: Any) -> str:
        async with httpx.AsyncClient(transport=self._transport) as client:
            try:
                if tool.method == "GET":
                    params = {k: str(v) for k, v in args.items()} if isinstance(args, dict) else {}
                    response = await client.get(tool.url, params=params)
                else:
                    response = await client.request(tool.method, tool.url, json=args)
            except httpx.HTTPError as exc:
                raise ToolFailed(f"request failed: {str(exc) or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise ToolFailed(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.text


class ToolFailed(Exception):
    """A tool's action did not produce a result."""


def _failure(message: str) -> str:
    return json.dumps({"error": message})
