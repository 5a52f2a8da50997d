"""`POST /v1/live/sessions`: the request body checked as strictly as upstream checks it.

GPT-Live rejects unknown fields (the SDK's pydantic models accept extras, so they cannot be the
check): the body is walked against the SDK's own request TypedDicts (`LiveCreateParams` and
everything it refers to), field by field, and the first problem is reported in upstream's terms
(`unknown_parameter`, `missing_required_parameter`, `invalid_type`, `invalid_value`) with its
`param` path. On success, the session resource `session.started` will carry is built.
"""

from __future__ import annotations

import collections.abc
import copy
import types
import typing
from typing import Any

import typing_extensions as tx

from .events import new_id
from .live_permissions import check_data_channel
from .session import SessionError

LIVE_MODELS = ("gpt-live-1", "gpt-live-1.1")
DEFAULT_VOICE = "marin"
# Not published: a Live session's length is read from `expires_at` (GPT_LIVE_PROTOCOL.md 5).
LIVE_SESSION_S = 60 * 60


def check_create_body(body: dict[str, Any]) -> None:
    """Raise SessionError for anything in `body` upstream would refuse."""
    from openai.types.live.live_create_params import LiveCreateParams

    _check(body, LiveCreateParams, "")
    session = body["session"]
    if session["model"] not in LIVE_MODELS:
        raise SessionError(
            f"Invalid value: '{session['model']}'. Supported values are: "
            + ", ".join(f"'{m}'" for m in LIVE_MODELS)
            + ".",
            "session.model",
        )
    from openai.types.live.built_in_voice import BuiltInVoice

    voice = session.get("audio", {}).get("output", {}).get("voice")
    if isinstance(voice, str) and voice not in tx.get_args(BuiltInVoice):
        shown = ", ".join(f"'{v}'" for v in tx.get_args(BuiltInVoice))
        raise SessionError(
            f"Invalid value: '{voice}'. Supported values are: {shown}.",
            "session.audio.output.voice",
        )
    idle = session.get("idle_timeout_s")
    if idle is not None and idle < 1:
        raise SessionError(
            f"Invalid 'session.idle_timeout_s': {idle}; it must be at least 1.",
            "session.idle_timeout_s",
        )
    check_data_channel(session)


def session_resource(session: dict[str, Any], *, now: int) -> dict[str, Any]:
    """The resolved session (`SessionResource`): the request's fields plus the defaults."""
    resource = copy.deepcopy(session)
    resource.setdefault("audio", {}).setdefault("output", {}).setdefault("voice", DEFAULT_VOICE)
    resource.setdefault("delegation", None)
    resource.setdefault("store", False)
    resource.update(id=new_id("live"), expires_at=now + LIVE_SESSION_S, status="active")
    return resource


def delegation_type(session: dict[str, Any]) -> str:
    """`client`, `responses` or `decisions` (omitted or null: client)."""
    delegation = session.get("delegation")
    return str(delegation.get("type")) if isinstance(delegation, dict) else "client"


def _check(value: Any, hint: Any, path: str) -> None:
    """Raise SessionError unless `value` fits the type `hint` (SDK request types)."""
    origin = tx.get_origin(hint)
    args = tx.get_args(hint)
    if origin is tx.Annotated:
        _check(value, args[0], path)
        return
    if tx.is_typeddict(hint):
        _check_typeddict(value, hint, path)
        return
    if origin in (typing.Union, types.UnionType):
        _check_union(value, args, path)
        return
    if origin is tx.Literal:
        if value not in args:
            shown = ", ".join(f"'{a}'" for a in args)
            raise SessionError(
                f"Invalid value: '{value}'. Supported values are: {shown}.", path or None
            )
        return
    if hint is type(None):
        if value is not None:
            raise _wrong_type(path, "null", value)
        return
    if hint is str:
        if not isinstance(value, str):
            raise _wrong_type(path, "a string", value)
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong_type(path, "a boolean", value)
        return
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(path, "an integer", value)
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong_type(path, "a number", value)
        return
    if origin in (collections.abc.Iterable, collections.abc.Sequence, list) or (
        getattr(origin, "__name__", "") == "SequenceNotStr"
        or getattr(hint, "__name__", "") == "SequenceNotStr"
    ):
        if not isinstance(value, list):
            raise _wrong_type(path, "an array", value)
        for index, item in enumerate(value):
            _check(item, args[0] if args else Any, f"{path}[{index}]")
        return
    if origin in (dict, collections.abc.Mapping) and not isinstance(value, dict):
        raise _wrong_type(path, "an object", value)
    # Anything else (free-form objects, Any): as upstream, accepted here.


def _check_typeddict(value: Any, hint: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _wrong_type(path, "an object", value)
    fields = tx.get_type_hints(hint, include_extras=True)
    for key in value:
        if key not in fields:
            where = f"{path}.{key}" if path else key
            raise SessionError(f"Unknown parameter: '{where}'.", where, "unknown_parameter")
    for key in sorted(fields):
        wrapper: Any = tx.get_origin(fields[key])
        required = wrapper is tx.Required or (hint.__total__ and wrapper is not tx.NotRequired)
        if required and key not in value:
            where = f"{path}.{key}" if path else key
            raise SessionError(
                f"Missing required parameter: '{where}'.", where, "missing_required_parameter"
            )
    for key, item in value.items():
        field_hint = fields[key]
        while _is_required_marker(tx.get_origin(field_hint)):
            field_hint = tx.get_args(field_hint)[0]
        _check(item, field_hint, f"{path}.{key}" if path else key)


def _is_required_marker(origin: Any) -> bool:
    return origin is tx.Required or origin is tx.NotRequired


def _check_union(value: Any, members: tuple[Any, ...], path: str) -> None:
    if isinstance(value, dict) and "type" in value:
        # Tagged objects: the member whose `type` literal matches decides.
        for member in members:
            if tx.is_typeddict(member):
                tag = tx.get_type_hints(member).get("type")
                tag_args = tx.get_args(tx.get_args(tag)[0] if tag is not None else None)
                literal = tx.get_args(tag) if tx.get_origin(tag) is tx.Literal else ()
                if value["type"] in literal or value["type"] in tag_args:
                    _check(value, member, path)
                    return
    best: SessionError | None = None
    for member in members:
        try:
            _check(value, member, path)
        except SessionError as exc:
            # The member that got furthest into the value names the real problem (a list
            # refused by `Literal["all"]` says nothing about what is wrong inside it).
            if best is None or len(exc.param or "") > len(best.param or ""):
                best = exc
        else:
            return
    assert best is not None
    raise best


def _wrong_type(path: str, expected: str, value: Any) -> SessionError:
    return SessionError(
        f"Invalid type for '{path}': expected {expected}, but got "
        f"{type(value).__name__ if value is not None else 'null'} instead.",
        path or None,
        "invalid_type",
    )
