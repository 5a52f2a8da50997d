"""Session configuration: GA defaults, validation of client input, and merging of updates.

A session is kept as the plain JSON object the API shows in `session.created` / `session.updated`
(the *effective* config, every default filled in), so events can carry it unchanged. Everything
that reaches here from a client is untrusted; errors name the parameter the way upstream does
(`session.audio.output.voice`). The service's own limits (ranges, voices, models, the rules of
transcription models) come from the package's one table, `wakertc.limits`.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from .. import limits
from .events import new_id

VOICES = limits.VOICES
SESSION_TYPES = limits.SESSION_TYPES
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_VOICE = "marin"
DEFAULT_INSTRUCTIONS = "You are a helpful, witty and friendly voice assistant. Keep replies short."
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-transcribe"
KEY_SECONDS_MIN, KEY_SECONDS_MAX = limits.KEY_SECONDS_MIN, limits.KEY_SECONDS_MAX
KEY_SECONDS_DEFAULT = limits.KEY_SECONDS_DEFAULT
BETA_KEY_SECONDS = 60  # the beta keys' fixed lifetime

PCM24: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}
SERVER_VAD: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}

_REALTIME_KEYS = frozenset(
    {
        "type", "model", "instructions", "output_modalities", "tools", "tool_choice",
        "max_output_tokens", "audio", "include", "tracing", "truncation", "prompt", "reasoning",
        "parallel_tool_calls",
    }
)  # fmt: skip
_TRANSCRIPTION_KEYS = frozenset({"type", "audio", "include"})
_SERVER_OWNED = frozenset({"id", "object", "expires_at"})


class SessionError(ValueError):
    """A session object the API would refuse; carries upstream's `param` and `code`."""

    def __init__(self, message: str, param: str | None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def create_session(request: Any, *, expires_at: int = 0, prefix: str = "session") -> dict[str, Any]:
    """Validate a client's session object and return it with every default filled in."""
    if request is None:
        request = {"type": "realtime"}
    if not isinstance(request, dict):
        raise SessionError(f"Invalid type for '{prefix}': expected an object.", prefix)
    kind = request.get("type")
    if kind is None:
        raise SessionError(
            f"Missing required parameter: '{prefix}.type'.",
            f"{prefix}.type",
            "missing_required_parameter",
        )
    _check_choice(kind, SESSION_TYPES, f"{prefix}.type")
    base = _defaults(kind)
    base["expires_at"] = expires_at
    return _check_whole(_merge(base, request, prefix), prefix)


def update_session(current: dict[str, Any], update: Any, *, voice_locked: bool) -> dict[str, Any]:
    """Apply a `session.update` payload to the effective config (raises SessionError)."""
    prefix = "session"
    if not isinstance(update, dict):
        raise SessionError("Invalid type for 'session': expected an object.", prefix)
    kind = update.get("type")
    if kind is None:
        raise SessionError(
            "Missing required parameter: 'session.type'.",
            "session.type",
            "missing_required_parameter",
        )
    _check_choice(kind, SESSION_TYPES, "session.type")
    if kind != current["type"]:
        raise SessionError(
            f"Cannot update a {current['type']} session to type '{kind}'.", "session.type"
        )
    merged = _check_whole(_merge(copy.deepcopy(current), update, prefix), prefix)
    if voice_locked and _voice(merged) != _voice(current):
        raise SessionError(
            "Cannot update a conversation's voice if assistant audio is present.",
            "session.audio.output.voice",
            "cannot_update_voice",
        )
    return merged


def turn_detection(session: dict[str, Any]) -> dict[str, Any] | None:
    """The session's effective turn detection, or None when the client turns it manually."""
    value: dict[str, Any] | None = session["audio"]["input"]["turn_detection"]
    return value


def session_from_beta(body: Any) -> dict[str, Any]:
    """Translate a beta `POST /v1/realtime/sessions` body (flat fields) into a GA session object."""
    if not isinstance(body, dict):
        raise SessionError("Invalid body: expected a JSON object.", None)
    session: dict[str, Any] = {"type": "realtime"}
    for key in ("model", "instructions", "tools", "tool_choice"):
        if key in body:
            session[key] = body[key]
    if "modalities" in body:
        modalities = body["modalities"]
        session["output_modalities"] = (
            ["audio"] if isinstance(modalities, list) and "audio" in modalities else ["text"]
        )
    if "max_response_output_tokens" in body:
        session["max_output_tokens"] = body["max_response_output_tokens"]
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    if "voice" in body:
        audio_out["voice"] = body["voice"]
    if "turn_detection" in body:
        audio_in["turn_detection"] = body["turn_detection"]
    if "input_audio_noise_reduction" in body:
        audio_in["noise_reduction"] = body["input_audio_noise_reduction"]
    if "input_audio_transcription" in body:
        audio_in["transcription"] = body["input_audio_transcription"]
    if audio_in or audio_out:
        session["audio"] = {"input": audio_in, "output": audio_out}
    return session


def beta_view(session: dict[str, Any], key: str, expires_at: int) -> dict[str, Any]:
    """The beta response shape: flat fields plus `client_secret {value, expires_at}`."""
    audio_in = session["audio"]["input"]
    modalities = ["audio", "text"] if session["output_modalities"] == ["audio"] else ["text"]
    return {
        "id": session["id"],
        "object": "realtime.session",
        "model": session["model"],
        "modalities": modalities,
        "instructions": session["instructions"],
        "voice": session["audio"]["output"]["voice"],
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": audio_in["transcription"],
        "turn_detection": audio_in["turn_detection"],
        "tools": session["tools"],
        "tool_choice": session["tool_choice"],
        "temperature": 0.8,
        "max_response_output_tokens": session["max_output_tokens"],
        "client_secret": {"value": key, "expires_at": expires_at},
    }


def key_seconds(expires_after: Any) -> int:
    """Validate `expires_after` and return the key lifetime in seconds."""
    for problem in limits.check_expires_after(expires_after):
        raise SessionError(problem.message, problem.param, problem.code)
    if expires_after is None:
        return KEY_SECONDS_DEFAULT
    seconds: int = expires_after.get("seconds", KEY_SECONDS_DEFAULT)
    return seconds


def now_s() -> int:
    """Unix time in whole seconds, as the API reports it."""
    return int(time.time())


def _defaults(kind: str) -> dict[str, Any]:
    session: dict[str, Any]
    if kind == "transcription":
        session = {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": new_id("sess"),
            "expires_at": 0,
            "include": None,
            "audio": {
                "input": {
                    "format": dict(PCM24),
                    "transcription": {
                        "model": DEFAULT_TRANSCRIPTION_MODEL,
                        "language": None,
                        "prompt": "",
                    },
                    "noise_reduction": None,
                    "turn_detection": dict(SERVER_VAD),
                }
            },
        }
        return session
    session = {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": DEFAULT_MODEL,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "include": None,
        "audio": {
            "input": {
                "format": dict(PCM24),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD),
            },
            "output": {"format": dict(PCM24), "voice": DEFAULT_VOICE, "speed": 1.0},
        },
    }
    return session


def _check_whole(session: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Rules that hold between parameters (a transcription model and turn detection)."""
    for problem in limits.check_session(session, prefix=f"{prefix}."):
        raise SessionError(problem.message, problem.param, problem.code)
    return session


def _check_limit(path: str, value: Any, param: str) -> Any:
    """`value` if `limits.LIMITS[path]` accepts it, else SessionError naming `param`."""
    problem = limits.LIMITS[path].problem(param, value)
    if problem is not None:
        raise SessionError(problem.message, problem.param, problem.code)
    return value


def _merge(session: dict[str, Any], request: dict[str, Any], prefix: str) -> dict[str, Any]:
    allowed = _TRANSCRIPTION_KEYS if session["type"] == "transcription" else _REALTIME_KEYS
    for key, value in request.items():
        param = f"{prefix}.{key}"
        if key in _SERVER_OWNED:
            continue  # echoing back a session.created payload is harmless
        if key not in allowed:
            raise SessionError(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
        if key == "type":
            continue
        if key == "audio":
            _merge_audio(session, value, param)
            continue
        session[key] = _CHECKS[key](value, param)
    return session


def _merge_audio(session: dict[str, Any], audio: Any, param: str) -> None:
    _check_object(audio, param)
    allowed = ("input",) if session["type"] == "transcription" else ("input", "output")
    for direction, value in audio.items():
        if direction not in allowed:
            raise SessionError(
                f"Unknown parameter: '{param}.{direction}'.",
                f"{param}.{direction}",
                "unknown_parameter",
            )
        _check_object(value, f"{param}.{direction}")
        target = session["audio"][direction]
        for key, item in value.items():
            item_param = f"{param}.{direction}.{key}"
            check = _AUDIO_CHECKS[direction].get(key)
            if check is None:
                raise SessionError(
                    f"Unknown parameter: '{item_param}'.", item_param, "unknown_parameter"
                )
            if key == "turn_detection":
                target[key] = _turn_detection(item, target.get(key), item_param)
            else:
                target[key] = check(item, item_param)


def _voice(session: dict[str, Any]) -> Any:
    return session.get("audio", {}).get("output", {}).get("voice")


def _turn_detection(value: Any, current: dict[str, Any] | None, param: str) -> Any:
    if value is None:
        return None
    _check_object(value, param)
    kind = value.get("type", current["type"] if current else None)
    _check_limit("audio.input.turn_detection.type", kind, f"{param}.type")
    base = dict(current) if current and current["type"] == kind else {}
    result = dict(SERVER_VAD if kind == "server_vad" else SEMANTIC_VAD)
    result.update(base)
    for key, item in value.items():
        if key not in result:
            raise SessionError(
                f"Unknown parameter: '{param}.{key}'.", f"{param}.{key}", "unknown_parameter"
            )
        result[key] = item
    if kind == "server_vad":
        _check_limit(
            "audio.input.turn_detection.threshold", result["threshold"], f"{param}.threshold"
        )
        _check_int(result["prefix_padding_ms"], 0, 10_000, f"{param}.prefix_padding_ms")
        _check_int(result["silence_duration_ms"], 0, 10_000, f"{param}.silence_duration_ms")
        if result["idle_timeout_ms"] is not None:
            _check_limit(
                "audio.input.turn_detection.idle_timeout_ms",
                result["idle_timeout_ms"],
                f"{param}.idle_timeout_ms",
            )
    else:
        _check_limit(
            "audio.input.turn_detection.eagerness", result["eagerness"], f"{param}.eagerness"
        )
    for flag in ("create_response", "interrupt_response"):
        _check_bool(result[flag], f"{param}.{flag}")
    return result


def _check_object(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        raise SessionError(f"Invalid type for '{param}': expected an object.", param)


def _check_choice(value: Any, allowed: tuple[str, ...], param: str) -> Any:
    if value not in allowed:
        supported = ", ".join(f"'{a}'" for a in allowed)
        raise SessionError(
            f"Invalid value: {value!r} for '{param}'. Supported values are: {supported}.", param
        )
    return value


def _check_int(value: Any, low: int, high: int, param: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SessionError(
            f"Invalid '{param}': expected an integer between {low} and {high}, got {value!r}.",
            param,
        )
    return value


def _check_bool(value: Any, param: str) -> Any:
    if not isinstance(value, bool):
        raise SessionError(f"Invalid type for '{param}': expected a boolean.", param)
    return value


def _check_str(value: Any, param: str) -> Any:
    if not isinstance(value, str):
        raise SessionError(f"Invalid type for '{param}': expected a string.", param)
    return value


def _check_modalities(value: Any, param: str) -> Any:
    if value not in (["audio"], ["text"]):
        raise SessionError(
            f"Invalid value for '{param}': expected ['audio'] or ['text'], got {value!r}.", param
        )
    return list(value)


def _check_tools(value: Any, param: str) -> Any:
    if not isinstance(value, list):
        raise SessionError(f"Invalid type for '{param}': expected an array.", param)
    for index, tool in enumerate(value):
        item = f"{param}[{index}]"
        _check_object(tool, item)
        _check_choice(tool.get("type", "function"), ("function",), f"{item}.type")
        _check_str(tool.get("name"), f"{item}.name")
        if "description" in tool:
            _check_str(tool["description"], f"{item}.description")
        if "parameters" in tool:
            _check_object(tool["parameters"], f"{item}.parameters")
    return copy.deepcopy(value)


def _check_tool_choice(value: Any, param: str) -> Any:
    if isinstance(value, dict):
        _check_choice(value.get("type"), ("function", "mcp"), f"{param}.type")
        return dict(value)
    return _check_choice(value, ("none", "auto", "required"), param)


def _check_max_tokens(value: Any, param: str) -> Any:
    return _check_limit("max_output_tokens", value, param)


def _check_model(value: Any, param: str) -> Any:
    return _check_limit("model", value, param)


def _check_format(value: Any, param: str) -> Any:
    _check_object(value, param)
    kind = _check_choice(value.get("type"), ("audio/pcm", "audio/pcmu", "audio/pcma"), param)
    if kind == "audio/pcm":
        _check_choice(value.get("rate", 24000), (24000,), f"{param}.rate")  # type: ignore[arg-type]
        return dict(PCM24)
    return {"type": kind}


def _check_noise_reduction(value: Any, param: str) -> Any:
    if value is None:
        return None
    _check_object(value, param)
    _check_limit("audio.input.noise_reduction.type", value.get("type"), f"{param}.type")
    return dict(value)


def _check_transcription(value: Any, param: str) -> Any:
    if value is None:
        return None
    _check_object(value, param)
    result = {"model": DEFAULT_TRANSCRIPTION_MODEL, "language": None, "prompt": ""}
    result.update(value)
    _check_limit("audio.input.transcription.model", result["model"], f"{param}.model")
    return result


def _check_voice(value: Any, param: str) -> Any:
    _check_limit("audio.output.voice", value, param)
    return dict(value) if isinstance(value, dict) else value  # a dict: a custom voice


def _check_speed(value: Any, param: str) -> Any:
    return _check_limit("audio.output.speed", value, param)


def _check_any(value: Any, param: str) -> Any:
    return copy.deepcopy(value)


_CHECKS = {
    "model": _check_model,
    "instructions": _check_str,
    "output_modalities": _check_modalities,
    "tools": _check_tools,
    "tool_choice": _check_tool_choice,
    "max_output_tokens": _check_max_tokens,
    "include": _check_any,
    "tracing": _check_any,
    "truncation": _check_any,
    "prompt": _check_any,
    "reasoning": _check_any,
    "parallel_tool_calls": _check_bool,
}
_AUDIO_CHECKS = {
    "input": {
        "format": _check_format,
        "noise_reduction": _check_noise_reduction,
        "transcription": _check_transcription,
        "turn_detection": _check_any,  # handled by _turn_detection
    },
    "output": {"format": _check_format, "voice": _check_voice, "speed": _check_speed},
}
