"""Builders for the JSON objects the emulator sends: server events, items and responses.

Shapes follow the GA Realtime API (`openai.types.realtime.RealtimeServerEvent`); the tests validate
every event of whole recorded sessions against the official SDK's models.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

ResponseStatus = Literal["in_progress", "completed", "cancelled", "incomplete", "failed"]


def new_id(prefix: str) -> str:
    """An id in the API's style, e.g. `item_3f9c...`."""
    return f"{prefix}_{secrets.token_hex(10)}"


def event(type_: str, **fields: Any) -> dict[str, Any]:
    """A server event of `type_` with a fresh `event_id`."""
    return {"type": type_, "event_id": new_id("event"), **fields}


def error_event(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    error_type: str = "invalid_request_error",
    client_event_id: str | None = None,
) -> dict[str, Any]:
    """The `error` event upstream sends for a client event it cannot accept."""
    return event(
        "error",
        error={
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    )


def user_audio_item(item_id: str, *, transcript: str | None = None) -> dict[str, Any]:
    """The user message item a committed audio buffer becomes."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def assistant_item(
    item_id: str, *, status: str, content: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """An assistant message item (audio or text content)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content or [],
    }


def function_call_item(
    item_id: str, *, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    """A function call item the model emits."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    }


def response_object(
    response_id: str,
    *,
    status: ResponseStatus,
    session: dict[str, Any],
    conversation_id: str,
    output: list[dict[str, Any]],
    modalities: list[str],
    reason: str | None = None,
    metadata: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `response` object carried by `response.created` and `response.done`."""
    details = None
    if status in ("cancelled", "incomplete", "failed"):
        details = {"type": status, "reason": reason, "error": None}
    output_audio = session.get("audio", {}).get("output", {})
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": modalities,
        "max_output_tokens": session.get("max_output_tokens", "inf"),
        "audio": {
            "output": {
                "format": output_audio.get("format"),
                "voice": output_audio.get("voice"),
            }
        },
        "usage": usage,
        "metadata": metadata,
    }
