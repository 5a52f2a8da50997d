"""Checks client events against the official SDK's `RealtimeClientEvent` (or, for GPT-Live,
`openai.types.live.ClientEvent`), when it is installed.

The `openai` package is optional at run time (the `emulator` extra); without it client events get
only the emulator's own checks. Importing it costs ~0.6 s, so `load()` runs in a thread at start-up
and calls wait for it rather than stalling the event loop.
"""

from __future__ import annotations

import logging
import threading
import typing
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """Why a client event is invalid, in upstream's terms."""

    message: str
    code: str
    param: str | None


class ClientEventValidator:
    """Validates one client event at a time against the SDK model for its `type`."""

    def __init__(self, api: str = "realtime") -> None:
        self._api = api
        self._lock = threading.Lock()
        self._adapters: dict[str, Any] | None = None
        self._error_type: type[Exception] | None = None
        self.available = False

    def load(self) -> None:
        """Import the SDK models (blocking; call it in a thread). Safe to call twice."""
        with self._lock:
            if self._adapters is not None:
                return
            try:
                from openai.types.live import ClientEvent
                from openai.types.realtime import RealtimeClientEvent
                from pydantic import TypeAdapter, ValidationError
            except ImportError:
                log.info("openai package not installed: client events get basic checks only")
                self._adapters = {}
                return
            union = ClientEvent if self._api == "live" else RealtimeClientEvent
            members = typing.get_args(typing.get_args(union)[0])
            adapters: dict[str, Any] = {}
            for model in members:
                literal = model.model_fields["type"].annotation
                adapters[typing.get_args(literal)[0]] = TypeAdapter(model)
            self._error_type = ValidationError
            self._adapters = adapters
            self.available = True

    def check(self, event: dict[str, Any]) -> Problem | None:
        """None when `event` is acceptable, else the problem to report."""
        if self._adapters is None:
            self.load()
        assert self._adapters is not None
        kind = event.get("type")
        if not isinstance(kind, str):
            return Problem(
                "Missing required parameter: 'type'.", "missing_required_parameter", "type"
            )
        if not self.available:
            return None
        adapter = self._adapters.get(kind)
        if adapter is None:
            supported = ", ".join(f"'{name}'" for name in self._adapters)
            return Problem(
                f"Invalid value: '{kind}'. Supported values are: {supported}.",
                "invalid_value",
                "type",
            )
        assert self._error_type is not None
        try:
            adapter.validate_python(event)
        except self._error_type as exc:
            return _describe(exc.errors())  # type: ignore[attr-defined]
        return None


def _describe(errors: list[dict[str, Any]]) -> Problem:
    chosen = _pick(errors)
    param = ".".join(
        str(part) if isinstance(part, str) else f"[{part}]"
        for part in chosen["loc"]
        if not _is_union_tag(part)
    ).replace(".[", "[")
    if chosen["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
        return Problem(message, "missing_required_parameter", param)
    if chosen["type"].endswith(("_type", "_parsing")):
        message = f"Invalid type for '{param}': {chosen['msg']}."
        return Problem(message, "invalid_type", param)
    return Problem(f"Invalid value for '{param}': {chosen['msg']}.", "invalid_value", param)


def _pick(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The most telling error: union members whose `type` did not even match are noise."""
    wrong_members = set()
    for error in errors:
        loc = error["loc"]
        for index, part in enumerate(loc):
            tag_of_type = _is_union_tag(part) and loc[index + 1 :] == ("type",)
            if tag_of_type and error["type"] == "literal_error":
                wrong_members.add(loc[: index + 1])
    for error in errors:
        loc = error["loc"]
        if not any(loc[: len(member)] == member for member in wrong_members):
            return error
    return errors[0]


_PLAIN_TAGS = frozenset({"int", "float", "str", "bool", "none", "dict", "list"})


def _is_union_tag(part: Any) -> bool:
    """A union member pydantic names in `loc` (`RealtimeSessionCreateRequest`, `int`, ...)."""
    if not isinstance(part, str):
        return False
    return part[:1].isupper() or "[" in part or "-" in part or part in _PLAIN_TAGS
