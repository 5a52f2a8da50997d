"""The Realtime API's limits, as its spec states them: one table for the emulator, the companion
and the device's config.

The `openai` SDK's types carry the shapes (which keys, which JSON types) but not these: a voice or
a transcription model is any string there, a threshold any float. The service refuses a value
outside them, so the emulator refuses it too, and both config loaders refuse it at load time
instead of letting the first call fail. Sources: the openai-openapi spec and the `openai` SDK's
docstrings (3.63); see /work/shared/REALTIME_PROTOCOL.md.

Checks return `Problem`s, `(param, message, code)`, with `param` the dotted path upstream names
(`audio.input.turn_detection.threshold`, prefixed by the caller, e.g. `session.`) and `code`
upstream's error code; an empty list means the value is acceptable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_SESSION_S = 3600
"""A session (call) ends after 60 minutes, whatever the client does."""

KEY_SECONDS_MIN, KEY_SECONDS_MAX, KEY_SECONDS_DEFAULT = 10, 7200, 600
"""`expires_after.seconds` of a client secret: 10 s .. 2 h, default 10 minutes."""

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
"""The built-in voices (a custom voice is an object `{"id": "voice_..."}`)."""

REALTIME_MODELS = (
    "gpt-realtime",
    "gpt-realtime-1.5",
    "gpt-realtime-2",
    "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini",
    "gpt-realtime-2025-08-28",
    "gpt-4o-realtime-preview",
    "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17",
    "gpt-4o-realtime-preview-2025-06-03",
    "gpt-4o-mini-realtime-preview",
    "gpt-4o-mini-realtime-preview-2024-12-17",
    "gpt-realtime-mini",
    "gpt-realtime-mini-2025-10-06",
    "gpt-realtime-mini-2025-12-15",
    "gpt-audio-1.5",
    "gpt-audio-mini",
    "gpt-audio-mini-2025-10-06",
    "gpt-audio-mini-2025-12-15",
)
"""Models a realtime session may name (`session.model`)."""

TRANSCRIPTION_MODELS = (
    "whisper-1",
    "gpt-transcribe",
    "gpt-live-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-transcribe-2025-12-15",
    "gpt-4o-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
)
"""Models `audio.input.transcription.model` may name."""

NO_VAD_TRANSCRIPTION_MODELS = ("gpt-realtime-whisper",)
"""In a transcription session these need `turn_detection: null` (VAD is not supported)."""
NO_PROMPT_TRANSCRIPTION_MODELS = ("gpt-realtime-whisper",)
"""`transcription.prompt` is not supported with these."""
DELAY_TRANSCRIPTION_MODELS = ("gpt-realtime-whisper",)
"""Only these take `transcription.delay`."""
KEYWORD_TRANSCRIPTION_MODELS = ("gpt-transcribe", "gpt-live-transcribe")
"""Only these take `transcription.keywords` and `transcription.languages`."""

TURN_DETECTION_TYPES = ("server_vad", "semantic_vad")
EAGERNESS = ("low", "medium", "high", "auto")
NOISE_REDUCTION_TYPES = ("near_field", "far_field")
SESSION_TYPES = ("realtime", "transcription")


class Problem(NamedTuple):
    """A value the service would refuse: where, why, and upstream's error code."""

    param: str
    message: str
    code: str = "invalid_value"


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` inclusive (an integer when `integer`), or one of `also`."""

    low: float
    high: float
    integer: bool = False
    also: tuple[str, ...] = ()

    def problem(self, param: str, value: Any) -> Problem | None:
        """None when `value` is inside the range."""
        if value in self.also and isinstance(value, str):
            return None
        kind = "integer" if self.integer else "decimal"
        number = int | float if not self.integer else int
        if isinstance(value, bool) or not isinstance(value, number):
            alternatives = "".join(f" or '{a}'" for a in self.also)
            expected = "an integer" if self.integer else "a number"
            return Problem(
                param,
                f"Invalid type for '{param}': expected {expected}{alternatives}, "
                f"but got {_shown(value)} instead.",
                "invalid_type",
            )
        if value < self.low:
            return Problem(
                param,
                f"Invalid '{param}': {kind} below minimum value. Expected a value >= "
                f"{self.low:g}, but got {value!r} instead.",
                f"{kind}_below_min_value",
            )
        if value > self.high:
            return Problem(
                param,
                f"Invalid '{param}': {kind} above maximum value. Expected a value <= "
                f"{self.high:g}, but got {value!r} instead.",
                f"{kind}_above_max_value",
            )
        return None

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high)."""
        return self.low, self.high

    def describe(self) -> str:
        """`5000..30000`, for config error messages."""
        text = f"{self.low:g}..{self.high:g}"
        return text + "".join(f' or "{a}"' for a in self.also)


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings (or, when `custom_id`, an object `{"id": "..."}`)."""

    values: tuple[str, ...]
    custom_id: bool = False

    def problem(self, param: str, value: Any) -> Problem | None:
        """None when `value` is one of the choices."""
        if isinstance(value, str) and value in self.values:
            return None
        if self.custom_id and isinstance(value, Mapping) and isinstance(value.get("id"), str):
            return None
        supported = ", ".join(f"'{v}'" for v in self.values)
        return Problem(
            param,
            f"Invalid value: {_shown(value)}. Supported values are: {supported}.",
            "invalid_value",
        )

    def describe(self) -> str:
        """`one of a, b, c`, for config error messages."""
        return "one of " + ", ".join(self.values)


Limit = Range | Choice

VAD_THRESHOLD = Range(0.0, 1.0)
"""server_vad's `threshold`."""

LIMITS: dict[str, Limit] = {
    "type": Choice(SESSION_TYPES),
    "model": Choice(REALTIME_MODELS),
    "max_output_tokens": Range(1, 4096, integer=True, also=("inf",)),
    "audio.input.turn_detection.type": Choice(TURN_DETECTION_TYPES),
    "audio.input.turn_detection.threshold": VAD_THRESHOLD,
    "audio.input.turn_detection.idle_timeout_ms": Range(5000, 30000, integer=True),
    "audio.input.turn_detection.eagerness": Choice(EAGERNESS),
    "audio.input.noise_reduction.type": Choice(NOISE_REDUCTION_TYPES),
    "audio.input.transcription.model": Choice(TRANSCRIPTION_MODELS),
    "audio.output.speed": Range(0.25, 1.5),
    "audio.output.voice": Choice(VOICES, custom_id=True),
}
"""Session parameters (paths inside the GA `session` object) and what the service accepts."""

KEY_SECONDS = Range(KEY_SECONDS_MIN, KEY_SECONDS_MAX, integer=True)
"""`expires_after.seconds` of `POST /v1/realtime/client_secrets`."""


def check(path: str, value: Any, *, prefix: str = "") -> Problem | None:
    """The problem with one session parameter (a key of `LIMITS`), or None."""
    return LIMITS[path].problem(prefix + path, value)


def describe(path: str) -> str:
    """What `LIMITS[path]` accepts, in words (for config errors)."""
    return LIMITS[path].describe()


def check_expires_after(expires_after: Any, *, prefix: str = "expires_after") -> list[Problem]:
    """`expires_after` of a client secret request (None = the default)."""
    if expires_after is None:
        return []
    if not isinstance(expires_after, Mapping):
        return [
            Problem(prefix, f"Invalid type for '{prefix}': expected an object.", "invalid_type")
        ]
    problems = []
    anchor = expires_after.get("anchor", "created_at")
    if anchor != "created_at":
        problems.append(Choice(("created_at",)).problem(f"{prefix}.anchor", anchor))
    seconds = expires_after.get("seconds", KEY_SECONDS_DEFAULT)
    problems.append(KEY_SECONDS.problem(f"{prefix}.seconds", seconds))
    return [p for p in problems if p is not None]


def check_session(
    session: Any, *, prefix: str = "session.", partial: bool = False
) -> list[Problem]:
    """Every limit a GA session object breaks.

    `session` is what a client sends (`session.update`, a client secret's `session`, a call's
    `session` part). `partial` (a `session.update`) skips the rules that need the whole
    effective session (a transcription model's turn detection); run them on the merged session.
    A missing `type` is always a problem: the service requires it everywhere.
    """
    name = prefix.rstrip(".") or "session"
    if not isinstance(session, Mapping):
        return [Problem(name, f"Invalid type for '{name}': expected an object.", "invalid_type")]
    if "type" not in session:
        return [
            Problem(
                f"{prefix}type",
                f"Missing required parameter: '{prefix}type'.",
                "missing_required_parameter",
            )
        ]
    problems = []
    for path, limit in LIMITS.items():
        value = _get(session, path)
        problem = limit.problem(prefix + path, value) if value is not None else None
        if problem is not None:
            problems.append(problem)
    if problems:
        return problems
    return _transcription_problems(session, prefix, partial=partial)


def check_transcription(
    model: str, *, session_type: str, turn_detection: bool, prompt: bool = False
) -> list[Problem]:
    """A transcription model's own constraints, for callers that hold settings, not a session."""
    session: dict[str, Any] = {
        "type": session_type,
        "audio": {
            "input": {
                "transcription": {"model": model, **({"prompt": "x"} if prompt else {})},
                "turn_detection": {"type": "server_vad"} if turn_detection else None,
            }
        },
    }
    return check_session(session, prefix="session.")


def _transcription_problems(
    session: Mapping[str, Any], prefix: str, *, partial: bool
) -> list[Problem]:
    audio_input = _get(session, "audio.input")
    transcription = _get(session, "audio.input.transcription")
    if not isinstance(audio_input, Mapping) or not isinstance(transcription, Mapping):
        return []
    model = transcription.get("model")
    where = f"{prefix}audio.input.transcription"
    problems = []
    if transcription.get("prompt") and model in NO_PROMPT_TRANSCRIPTION_MODELS:
        problems.append(
            Problem(f"{where}.prompt", f"'prompt' is not supported with {model}.", "invalid_value")
        )
    if transcription.get("delay") is not None and model not in DELAY_TRANSCRIPTION_MODELS:
        problems.append(
            Problem(
                f"{where}.delay",
                f"'delay' is only supported with {', '.join(DELAY_TRANSCRIPTION_MODELS)}.",
            )
        )
    for key in ("keywords", "languages"):
        if transcription.get(key) and model not in KEYWORD_TRANSCRIPTION_MODELS:
            problems.append(
                Problem(
                    f"{where}.{key}",
                    f"'{key}' is only supported with {', '.join(KEYWORD_TRANSCRIPTION_MODELS)}.",
                )
            )
    no_vad = model in NO_VAD_TRANSCRIPTION_MODELS and session.get("type") == "transcription"
    # The default turn detection is server_vad: leaving it out does not turn it off.
    has_vad = "turn_detection" not in audio_input or audio_input["turn_detection"] is not None
    if no_vad and has_vad and not partial:
        problems.append(
            Problem(
                f"{prefix}audio.input.turn_detection",
                f"Transcription with {model} does not support turn detection: set "
                "'audio.input.turn_detection' to null.",
            )
        )
    return problems


def _get(session: Mapping[str, Any], path: str) -> Any:
    value: Any = session
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _shown(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)
