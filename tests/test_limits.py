"""The table of the service's limits (`wakertc.limits`) that the emulator and both configs use."""

from __future__ import annotations

from typing import Any

import pytest

from wakertc import limits


@pytest.mark.parametrize(
    ("path", "good", "bad", "code"),
    [
        ("audio.input.turn_detection.idle_timeout_ms", 5000, 4999, "integer_below_min_value"),
        ("audio.input.turn_detection.idle_timeout_ms", 30000, 30001, "integer_above_max_value"),
        ("audio.input.turn_detection.idle_timeout_ms", 10000, 10000.5, "invalid_type"),
        ("audio.input.turn_detection.threshold", 0.0, -0.01, "decimal_below_min_value"),
        ("audio.input.turn_detection.threshold", 1.0, 1.01, "decimal_above_max_value"),
        ("audio.input.turn_detection.threshold", 0.5, True, "invalid_type"),
        ("max_output_tokens", 1, 0, "integer_below_min_value"),
        ("max_output_tokens", 4096, 4097, "integer_above_max_value"),
        ("max_output_tokens", "inf", "infinite", "invalid_type"),
        ("audio.output.speed", 0.25, 0.24, "decimal_below_min_value"),
        ("audio.output.speed", 1.5, 1.51, "decimal_above_max_value"),
        ("audio.output.voice", "cedar", "nova", "invalid_value"),
        ("audio.output.voice", {"id": "voice_1234"}, {"name": "x"}, "invalid_value"),
        ("audio.input.transcription.model", "gpt-realtime-whisper", "whisper-2", "invalid_value"),
        ("audio.input.turn_detection.eagerness", "high", "fast", "invalid_value"),
        ("audio.input.noise_reduction.type", "far_field", "room", "invalid_value"),
        ("model", "gpt-realtime", "gpt-4o", "invalid_value"),
        ("type", "transcription", "translation", "invalid_value"),
    ],
)
def test_each_limit_accepts_its_edges_and_names_what_it_refuses(
    path: str, good: Any, bad: Any, code: str
) -> None:
    assert limits.check(path, good) is None
    problem = limits.check(path, bad, prefix="session.")
    assert problem is not None
    assert problem.param == "session." + path
    assert problem.code == code
    shown = f"'{bad}'" if isinstance(bad, str) else repr(bad)
    assert shown in problem.message  # the message shows the refused value


def test_the_voice_list_and_models_match_the_sdk() -> None:
    import typing

    from openai.types.realtime import audio_transcription, realtime_audio_config_output
    from openai.types.realtime import realtime_session_create_request as request

    def literals(annotation: Any) -> set[str]:
        found: set[str] = set()
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) is typing.Literal:
                found.update(typing.get_args(arg))
            else:
                found |= literals(arg)
        return found

    assert set(limits.VOICES) == literals(realtime_audio_config_output.Voice)
    model = audio_transcription.AudioTranscription.model_fields["model"].annotation
    assert set(limits.TRANSCRIPTION_MODELS) == literals(model)
    session_model = request.RealtimeSessionCreateRequest.model_fields["model"].annotation
    assert set(limits.REALTIME_MODELS) == literals(session_model)


def test_check_session_walks_a_whole_session() -> None:
    session = {
        "type": "realtime",
        "max_output_tokens": 5000,
        "audio": {
            "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 1000}},
            "output": {"voice": "nova", "speed": 2},
        },
    }
    problems = limits.check_session(session)
    assert {p.param for p in problems} == {
        "session.max_output_tokens",
        "session.audio.input.turn_detection.idle_timeout_ms",
        "session.audio.output.voice",
        "session.audio.output.speed",
    }
    assert limits.check_session({"type": "realtime", "audio": {"output": {"voice": "marin"}}}) == []
    missing = limits.check_session({"instructions": "hi"})
    assert missing == [
        limits.Problem(
            "session.type",
            "Missing required parameter: 'session.type'.",
            "missing_required_parameter",
        )
    ]
    assert limits.check_session("x")[0].code == "invalid_type"


def test_gpt_realtime_whisper_needs_turn_detection_off() -> None:
    def session(**audio_input: Any) -> dict[str, Any]:
        transcription = {"model": "gpt-realtime-whisper"}
        return {
            "type": "transcription",
            "audio": {"input": {"transcription": transcription, **audio_input}},
        }

    (problem,) = limits.check_session(session())  # the default is server_vad
    assert problem.param == "session.audio.input.turn_detection"
    assert "null" in problem.message
    assert limits.check_session(session(turn_detection={"type": "server_vad"}))
    assert limits.check_session(session(turn_detection=None)) == []
    assert limits.check_session(session(), partial=True) == []  # judged on the merged session
    assert limits.check_transcription(
        "gpt-realtime-whisper", session_type="transcription", turn_detection=True
    )
    assert not limits.check_transcription(
        "gpt-4o-transcribe", session_type="transcription", turn_detection=True
    )
    prompt = limits.check_transcription(
        "gpt-realtime-whisper", session_type="transcription", turn_detection=False, prompt=True
    )
    assert [p.param for p in prompt] == ["session.audio.input.transcription.prompt"]


def test_transcription_options_only_for_their_models() -> None:
    def session(model: str, **options: Any) -> dict[str, Any]:
        transcription = {"model": model, **options}
        return {"type": "realtime", "audio": {"input": {"transcription": transcription}}}

    assert limits.check_session(session("gpt-realtime-whisper", delay="low")) == []
    assert limits.check_session(session("gpt-4o-transcribe", delay="low"))[0].param.endswith(
        ".delay"
    )
    assert limits.check_session(session("gpt-transcribe", keywords=["wakertc"])) == []
    assert limits.check_session(session("whisper-1", languages=["en"]))[0].param.endswith(
        ".languages"
    )


@pytest.mark.parametrize(
    ("expires_after", "param"),
    [
        (None, None),
        ({"anchor": "created_at", "seconds": 10}, None),
        ({"seconds": 7200}, None),
        ({"seconds": 9}, "expires_after.seconds"),
        ({"seconds": 7201}, "expires_after.seconds"),
        ({"seconds": "600"}, "expires_after.seconds"),
        ({"anchor": "now"}, "expires_after.anchor"),
        ([], "expires_after"),
    ],
)
def test_client_secret_lifetime(expires_after: Any, param: str | None) -> None:
    problems = limits.check_expires_after(expires_after)
    assert [p.param for p in problems] == ([param] if param else [])


def test_describe_says_what_is_accepted() -> None:
    assert limits.describe("audio.input.turn_detection.idle_timeout_ms") == "5000..30000"
    assert limits.describe("max_output_tokens") == '1..4096 or "inf"'
    assert limits.describe("audio.output.voice").startswith("one of alloy, ash")
