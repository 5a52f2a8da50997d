"""Scripted turns (`--script FILE`): what each successive response says or does.

A script is a JSON list of turns (or a JSON/TOML table with a `turns` list; in TOML write
`[[turns]]`). Each turn has at most one of `say` (text spoken with espeak-ng) and `reply`
(`echo`, `tone` or `speech`), and optionally `call` (a function call that ends the response);
for example `{"say": "Goodbye", "call": {"name": "end_conversation", "arguments": {}}}`.
`call.stream_s` spreads the call's argument deltas over that many seconds (default 0: at once),
so a client can cancel the response while the arguments stream.
Responses take turns in order; when the script runs out the `--reply` policy answers.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPLY_KINDS = ("echo", "tone", "speech")


class ScriptError(ValueError):
    """A script file that cannot be used; the message names the file and the turn."""


@dataclass(frozen=True)
class FunctionCall:
    """A function call the "model" makes."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    stream_s: float = 0.0


@dataclass(frozen=True)
class ScriptTurn:
    """One response: speech (`say`) or a reply policy, then optionally a function call."""

    say: str | None = None
    reply: str | None = None
    call: FunctionCall | None = None


def load_script(path: Path) -> tuple[ScriptTurn, ...]:
    """Read and validate a script file (JSON or TOML, chosen by its suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read script: {exc.strerror or exc}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScriptError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    return parse_script(data, str(path))


def parse_script(data: Any, where: str = "script") -> tuple[ScriptTurn, ...]:
    """Validate an already-decoded script (a list of turns or a table with `turns`)."""
    if isinstance(data, dict):
        data = data.get("turns")
    if not isinstance(data, list):
        raise ScriptError(f"{where}: expected a list of turns (or a `turns` list)")
    return tuple(_turn(item, f"{where}: turn {index + 1}") for index, item in enumerate(data))


def _turn(item: Any, where: str) -> ScriptTurn:
    if not isinstance(item, dict):
        raise ScriptError(f"{where}: expected a table/object, got {type(item).__name__}")
    unknown = set(item) - {"say", "reply", "call"}
    if unknown:
        raise ScriptError(f"{where}: unknown key(s) {sorted(unknown)}; use say, reply or call")
    if "say" in item and "reply" in item:
        raise ScriptError(f"{where}: use either `say` or `reply`, not both")
    if not item:
        raise ScriptError(f"{where}: empty turn; give `say`, `reply` or `call`")
    say = item.get("say")
    if say is not None and (not isinstance(say, str) or not say.strip()):
        raise ScriptError(f"{where}: `say` must be a non-empty string")
    reply = item.get("reply")
    if reply is not None and reply not in REPLY_KINDS:
        raise ScriptError(f"{where}: `reply` must be one of {', '.join(REPLY_KINDS)}")
    call = None
    if "call" in item:
        raw = item["call"]
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise ScriptError(f"{where}: `call` needs a `name` string")
        arguments = raw.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ScriptError(f"{where}: `call.arguments` must be a table/object")
        unknown = set(raw) - {"name", "arguments", "stream_s"}
        if unknown:
            raise ScriptError(f"{where}: unknown key(s) in `call`: {sorted(unknown)}")
        stream_s = raw.get("stream_s", 0.0)
        if isinstance(stream_s, bool) or not isinstance(stream_s, int | float):
            raise ScriptError(f"{where}: `call.stream_s` must be a number of seconds")
        if not 0 <= stream_s <= 60:
            raise ScriptError(f"{where}: `call.stream_s` must be within 0..60, got {stream_s}")
        call = FunctionCall(name=raw["name"], arguments=dict(arguments), stream_s=float(stream_s))
    return ScriptTurn(say=say, reply=reply, call=call)


class TurnPlan:
    """Hands out one turn per response: the script's, in order, then the default policy's."""

    def __init__(self, script: tuple[ScriptTurn, ...], default_reply: str) -> None:
        self._script = script
        self._default = ScriptTurn(reply=default_reply)
        self.used = 0

    def next(self) -> ScriptTurn:
        """The turn for the next response."""
        scripted = self.used < len(self._script)
        turn = self._script[self.used] if scripted else self._default
        self.used += 1
        return turn
