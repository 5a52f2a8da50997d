"""Server-side tools: functions the model may call that the companion runs, not the device.

`[[server_tools]]` in the companion config::

    [[server_tools]]
    name = "light_on"
    description = "Turn on a light in the house."
    parameters = '{"type": "object", "properties": {"entity_id": {"type": "string"}}}'
    method = "POST"                         # GET sends the arguments as query parameters
    url = "http://homeassistant.local:8123/api/services/light/turn_on"
    header_files = { Authorization = "/etc/wakertc/ha-token" }   # file holds "Bearer ..."
    headers = { "Content-Type" = "application/json" }            # plain values
    timeout_s = 10

The tools are added to every Realtime session the companion mints and run over the sideband
(`sideband.py`) with the device's own HTTP tool runner (`wakertc.tools.ToolRunner`, its bounds
and error outputs). The header files are read when the config loads and their values never
leave the companion: not to a device, not into a log line.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..config import ToolConfig
from ..timers import TIMER_TOOL_NAMES
from ..tools import END_CONVERSATION, ToolRunner

# Tools every device defines itself: a server tool of the same name would be called twice.
DEVICE_BUILTINS = frozenset({END_CONVERSATION, *TIMER_TOOL_NAMES})
METHODS = ("GET", "POST", "PUT")
KEYS = frozenset(
    {"name", "description", "parameters", "method", "url", "headers", "header_files", "timeout_s"}
)


@dataclass(frozen=True)
class ServerTool:
    """One `[[server_tools]]` entry: the HTTP tool, and its headers (secrets: never shown)."""

    tool: ToolConfig
    """Name, description, parameters, method, url, timeout_s."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Request headers, `header_files` already read."""

    @property
    def name(self) -> str:
        """The function name the model sees."""
        return self.tool.name


def runner(tools: Sequence[ServerTool]) -> ToolRunner:
    """A runner for the server tools (the device's HTTP tool runner, with their headers)."""
    return ToolRunner([t.tool for t in tools], headers={t.name: t.headers for t in tools})


class ServerToolError(ValueError):
    """A `[[server_tools]]` entry that cannot be used; the message names the key."""


def parse_server_tools(value: Any, base: Path) -> tuple[ServerTool, ...]:
    """Read `[[server_tools]]` (relative header files are relative to `base`)."""
    if not isinstance(value, list):
        raise ServerToolError("server_tools: expected an array of tables ([[server_tools]])")
    tools: list[ServerTool] = []
    for index, entry in enumerate(value):
        tool = _tool(entry, f"server_tools[{index}]", base)
        if any(t.name == tool.name for t in tools):
            raise ServerToolError(f"server_tools[{index}].name: {tool.name!r} is defined twice")
        tools.append(tool)
    return tuple(tools)


def definitions(tools: Sequence[ServerTool]) -> list[dict[str, Any]]:
    """The tools as the session declares them."""
    return [
        {
            "type": "function",
            "name": server_tool.tool.name,
            "description": server_tool.tool.description,
            "parameters": dict(server_tool.tool.parameters),
        }
        for server_tool in tools
    ]


def _tool(entry: Any, where: str, base: Path) -> ServerTool:
    if not isinstance(entry, dict):
        raise ServerToolError(f"{where}: expected a table with name, description, url")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise ServerToolError(
            f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(KEYS))})"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ServerToolError(f"{where}.name: expected a non-empty string")
    if name in DEVICE_BUILTINS:
        raise ServerToolError(
            f"{where}.name: {name!r} is a tool every device defines itself "
            f"({', '.join(sorted(DEVICE_BUILTINS))}); choose another name"
        )
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise ServerToolError(f"{where}.description: expected a string")
    parameters = entry.get("parameters", {"type": "object", "properties": {}})
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters)
        except ValueError:
            raise ServerToolError(
                f"{where}.parameters: expected a table or a JSON string"
            ) from None
    if not isinstance(parameters, dict):
        raise ServerToolError(f"{where}.parameters: expected a JSON schema table")
    method = entry.get("method", "POST")
    if method not in METHODS:
        raise ServerToolError(f"{where}.method: expected one of {', '.join(METHODS)}")
    url = entry.get("url")
    if not isinstance(url, str):
        raise ServerToolError(f"{where}.url: expected an http(s) URL")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ServerToolError(f"{where}.url: expected an http(s) URL, got {url!r}")
    timeout = entry.get("timeout_s", 10.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0.1 <= timeout <= 120
    ):
        raise ServerToolError(f"{where}.timeout_s: expected a number 0.1..120, got {timeout!r}")
    headers = _headers(entry.get("headers", {}), f"{where}.headers")
    for header, path in _headers(entry.get("header_files", {}), f"{where}.header_files").items():
        headers[header] = _secret(path, f"{where}.header_files.{header}", base)
    tool = ToolConfig(
        name=name,
        description=description,
        parameters=parameters,
        url=url,
        method=method,
        timeout_s=float(timeout),
    )
    return ServerTool(tool, headers)


def _headers(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    ):
        raise ServerToolError(f"{where}: expected a table of header name = string")
    return dict(value)


def _secret(value: str, where: str, base: Path) -> str:
    """A header value from a file: its first line, stripped. Never put in an error message."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ServerToolError(f"{where}: cannot read {path}: {reason}") from None
    if mode & stat.S_IROTH:
        raise ServerToolError(f"{where}: {path} is readable by other users; chmod 600 {path}")
    secret = text.splitlines()[0].strip() if text else ""
    if not secret:
        raise ServerToolError(f"{where}: {path} is empty")
    return secret
