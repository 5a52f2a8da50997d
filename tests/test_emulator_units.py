"""The emulator's parts on their own: session validation, VAD, input buffer, playout track,
scripts, fault parsing and the SDK-backed client event check. No network here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wakertc.emulator.audio_buffer import InputAudioBuffer, ms
from wakertc.emulator.engine import RealtimeEngine
from wakertc.emulator.faults import FaultError, Faults
from wakertc.emulator.playout import FRAME, ReplyTrack
from wakertc.emulator.replies import SpeechSynth, echo, tone, wav_to_48k_mono
from wakertc.emulator.script import ScriptError, ScriptTurn, TurnPlan, load_script, parse_script
from wakertc.emulator.session import (
    SessionError,
    beta_view,
    create_session,
    key_seconds,
    session_from_beta,
    update_session,
)
from wakertc.emulator.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    VadSettings,
    threshold_dbfs,
)
from wakertc.emulator.validation import ClientEventValidator

RATE = 48000


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rms = 32768 * 10 ** (dbfs / 20)
    return np.clip(rng.normal(0, rms, int(seconds * RATE)), -32768, 32767).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


# -- session config -----------------------------------------------------------------------------


def test_default_session_is_complete_and_validates_as_sdk_response() -> None:
    from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse

    session = create_session({"type": "realtime"}, expires_at=123)
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["model"] == "gpt-realtime"
    assert session["id"].startswith("sess_")
    parsed = ClientSecretCreateResponse.model_validate(
        {"value": "ek_x", "expires_at": 123, "session": session}
    )
    assert parsed.session.type == "realtime"
    transcription = create_session({"type": "transcription"})
    ClientSecretCreateResponse.model_validate(
        {"value": "ek_x", "expires_at": 1, "session": transcription}
    )


@pytest.mark.parametrize(
    ("request_", "param", "code"),
    [
        ({}, "session.type", "missing_required_parameter"),
        ({"type": "chat"}, "session.type", "invalid_value"),
        (
            {"type": "realtime", "audio": {"output": {"voice": "bob"}}},
            "session.audio.output.voice",
            "invalid_value",
        ),
        ({"type": "realtime", "colour": 1}, "session.colour", "unknown_parameter"),
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": {"threshold": 2}}}},
            "session.audio.input.turn_detection.threshold",
            "decimal_above_max_value",
        ),
        (
            {"type": "realtime", "output_modalities": ["audio", "text"]},
            "session.output_modalities",
            "invalid_value",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 48000}}},
            },
            "session.audio.input.format.rate",
            "invalid_value",
        ),
    ],
)
def test_invalid_sessions_name_the_parameter(request_: dict, param: str, code: str) -> None:
    with pytest.raises(SessionError) as caught:
        create_session(request_)
    assert caught.value.param == param
    assert caught.value.code == code


def test_update_merges_and_fills_turn_detection_defaults() -> None:
    session = create_session({"type": "realtime", "instructions": "a"})
    updated = update_session(
        session,
        {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}}
            },
        },
        voice_locked=False,
    )
    assert updated["instructions"] == "a"  # untouched fields survive
    td = updated["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 200 and td["threshold"] == 0.5
    off = update_session(
        updated,
        {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        voice_locked=False,
    )
    assert off["audio"]["input"]["turn_detection"] is None
    semantic = update_session(
        off,
        {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
        voice_locked=False,
    )
    assert semantic["audio"]["input"]["turn_detection"]["eagerness"] == "auto"


def test_voice_is_fixed_after_audio_and_type_cannot_change() -> None:
    session = create_session({"type": "realtime"})
    change = {"type": "realtime", "audio": {"output": {"voice": "cedar"}}}
    assert (
        update_session(session, change, voice_locked=False)["audio"]["output"]["voice"] == "cedar"
    )
    with pytest.raises(SessionError) as caught:
        update_session(session, change, voice_locked=True)
    assert caught.value.code == "cannot_update_voice"
    with pytest.raises(SessionError):
        update_session(session, {"type": "transcription"}, voice_locked=False)


@pytest.mark.parametrize(
    ("expires_after", "expected"),
    [(None, 600), ({"anchor": "created_at", "seconds": 10}, 10), ({"seconds": 7200}, 7200)],
)
def test_key_lifetime_range(expires_after: dict | None, expected: int) -> None:
    assert key_seconds(expires_after) == expected


@pytest.mark.parametrize("seconds", [9, 7201, "600", 1.5, True])
def test_key_lifetime_out_of_range(seconds: object) -> None:
    with pytest.raises(SessionError) as caught:
        key_seconds({"seconds": seconds})
    assert caught.value.param == "expires_after.seconds"


def test_beta_fields_translate_both_ways() -> None:
    session = create_session(
        session_from_beta(
            {"model": "gpt-4o-realtime-preview", "voice": "verse", "modalities": ["text"]}
        )
    )
    assert session["audio"]["output"]["voice"] == "verse"
    assert session["output_modalities"] == ["text"]
    view = beta_view(session, "ek_abc", 99)
    assert view["client_secret"] == {"value": "ek_abc", "expires_at": 99}
    assert view["voice"] == "verse" and view["modalities"] == ["text"]


# -- VAD and the input buffer -----------------------------------------------------------------


def run_vad(vad: EnergyVad, audio: np.ndarray) -> list:
    events = []
    for start in range(0, len(audio), 960):
        events += vad.process(audio[start : start + 960], start)
    return events


def test_threshold_maps_to_levels() -> None:
    assert threshold_dbfs(0.0) == -70 and threshold_dbfs(0.5) == -40 and threshold_dbfs(1.0) == -10


def test_vad_finds_speech_with_padding_and_silence_duration() -> None:
    vad = EnergyVad(VadSettings(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500))
    audio = np.concatenate([silence(1.0), noise(0.6, -20), silence(1.0)])
    events = run_vad(vad, audio)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert started.onset == RATE  # speech begins exactly at 1.0 s
    assert started.start == int(0.7 * RATE)  # 300 ms of prefix padding
    assert stopped.last_voiced == int(1.6 * RATE)
    assert stopped.end == int(2.1 * RATE)  # after 500 ms of silence


def test_vad_threshold_decides_what_counts_as_speech() -> None:
    quiet = np.concatenate([silence(0.2), noise(0.5, -50), silence(1.0)])
    assert run_vad(EnergyVad(VadSettings(threshold=0.5)), quiet) == []
    assert len(run_vad(EnergyVad(VadSettings(threshold=0.2)), quiet)) == 2


def test_vad_ignores_clicks_and_short_pauses() -> None:
    click = np.concatenate([silence(0.2), noise(0.02, -10), silence(1.0)])
    assert run_vad(EnergyVad(VadSettings()), click) == []
    words = np.concatenate([noise(0.4, -20), silence(0.3), noise(0.4, -20), silence(0.8)])
    events = run_vad(EnergyVad(VadSettings(silence_duration_ms=500)), words)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_vad_silence_without_frames_ends_speech() -> None:
    vad = EnergyVad(VadSettings())
    run_vad(vad, noise(0.5, -20))
    assert vad.speaking
    stopped = vad.silence(RATE)
    assert isinstance(stopped, SpeechStopped) and not vad.speaking
    assert vad.silence(RATE) is None


def test_input_buffer_commits_spans_by_stream_position() -> None:
    buffer = InputAudioBuffer()
    buffer.append(np.arange(4800, dtype=np.int16))
    buffer.append(np.arange(4800, 9600, dtype=np.int16))
    assert buffer.pending_ms() == 200
    assert buffer.slice(4000, 5000).tolist() == list(range(4000, 5000))
    buffer.discard_before(1000)
    assert buffer.commit(6000) == (1000, 6000)
    assert buffer.pending_ms() == 75
    buffer.clear()
    assert buffer.pending_ms() == 0
    assert ms(RATE * 2) == 2000


# -- the playout track ---------------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def playout_started(self, response_id: str) -> None:
        self.calls.append(("started", response_id))

    def playout_stopped(self, response_id: str) -> None:
        self.calls.append(("stopped", response_id))


async def test_playout_paces_frames_and_reports_start_and_stop() -> None:
    import asyncio

    track = ReplyTrack()
    listener = Listener()
    track.listener = listener
    track.feed("r1", np.full(FRAME * 2 + 100, 1000, dtype=np.int16))
    track.finish("r1")
    loop = asyncio.get_running_loop()
    began = loop.time()
    frames = [await track.recv() for _ in range(5)]
    elapsed = loop.time() - began
    assert 0.07 <= elapsed <= 0.2  # 4 frame intervals of 20 ms after the first
    data = [f.to_ndarray().reshape(-1) for f in frames]
    assert all(len(d) == FRAME for d in data)
    assert (data[0] == 1000).all() and (data[1] == 1000).all()
    assert (data[2][:100] == 1000).all() and (data[2][100:] == 0).all()
    assert (data[3] == 0).all()
    assert listener.calls == [("started", "r1"), ("stopped", "r1")]
    track.stop()


async def test_playout_clear_drops_queued_audio_at_once() -> None:
    track = ReplyTrack()
    listener = Listener()
    track.listener = listener
    track.feed("r1", np.full(RATE, 1000, dtype=np.int16))
    first = await track.recv()
    assert (first.to_ndarray() == 1000).all()
    assert track.clear() == ["r1"]
    second = await track.recv()
    assert (second.to_ndarray() == 0).all()
    assert listener.calls == [("started", "r1")]  # cleared, never "stopped"
    track.stop()


# -- replies, scripts, faults -------------------------------------------------------------------


def test_echo_reports_its_size_and_tone_is_audible() -> None:
    reply = echo(np.ones(24000, dtype=np.int16))
    assert reply.transcript == "echo of 500 ms (24000 samples at 48000 Hz)"
    assert len(reply.audio) == 24000
    beep = tone()
    assert beep.duration_ms == 800
    assert 20 * np.log10(np.sqrt(np.mean(beep.audio.astype(float) ** 2)) / 32768) > -20


def test_wav_is_resampled_to_48k_mono(tmp_path: Path) -> None:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(np.full(16000 * 2, 5000, dtype=np.int16).tobytes())
    audio = wav_to_48k_mono(buffer.getvalue())
    assert abs(len(audio) - 48000) < 10
    assert abs(int(np.median(audio)) - 5000) < 50


def test_scripts_load_from_json_and_toml(tmp_path: Path) -> None:
    turns = [
        {"call": {"name": "end_conversation", "arguments": {"reason": "bye"}}},
        {"say": "Hello"},
        {"reply": "tone"},
    ]
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps(turns))
    toml_file = tmp_path / "s.toml"
    toml_file.write_text(
        '[[turns]]\ncall = { name = "end_conversation", arguments = { reason = "bye" } }\n'
        '[[turns]]\nsay = "Hello"\n[[turns]]\nreply = "tone"\n'
    )
    assert load_script(json_file) == load_script(toml_file)
    script = load_script(json_file)
    assert script[0].call is not None and script[0].call.arguments == {"reason": "bye"}
    plan = TurnPlan(script, "echo")
    assert [plan.next() for _ in range(4)][1:] == [
        ScriptTurn(say="Hello"),
        ScriptTurn(reply="tone"),
        ScriptTurn(reply="echo"),
    ]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"nope": 1}, "expected a list"),
        ([{"say": "a", "reply": "tone"}], "turn 1: use either"),
        ([{"say": "ok"}, {"reply": "shout"}], "turn 2: `reply` must be one of"),
        ([{"call": {"arguments": {}}}], "`call` needs a `name`"),
        ([{"sing": "x"}], "unknown key"),
    ],
)
def test_bad_scripts_say_where(data: object, needle: str) -> None:
    with pytest.raises(ScriptError, match=needle):
        parse_script(data, "x.json")


def test_script_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ScriptError, match=r"bad\.json: not valid json"):
        load_script(bad)
    with pytest.raises(ScriptError, match=r"missing\.json: cannot read"):
        load_script(tmp_path / "missing.json")


def test_faults_parse_and_reject_unknown() -> None:
    faults = Faults.parse(["mint-500", "drop-after=2.5", "mint-slow", "consent-stop"])
    assert faults.mint_500 and faults.drop_after_s == 2.5
    assert faults.mint_slow_s == 10.0 and faults.consent_stop_s == 0.0
    assert sorted(faults.active) == ["consent_stop_s", "drop_after_s", "mint_500", "mint_slow_s"]
    for bad, needle in [
        ("explode", "unknown fault"),
        ("drop-after", "needs a value"),
        ("drop-after=soon", "expected seconds"),
        ("silent=1", "takes no value"),
    ]:
        with pytest.raises(FaultError, match=needle):
            Faults.parse([bad])


# -- client event validation --------------------------------------------------------------------


def test_client_events_are_checked_against_the_sdk() -> None:
    validator = ClientEventValidator()
    validator.load()
    assert validator.available
    assert validator.check({"type": "response.create"}) is None
    assert validator.check({"type": "session.update", "session": {"type": "realtime"}}) is None
    missing = validator.check({"type": "session.update", "session": {}})
    assert missing is not None
    assert (missing.code, missing.param) == ("missing_required_parameter", "session.type")
    unknown = validator.check({"type": "response.audio.delta"})
    assert unknown is not None and unknown.param == "type" and "response.create" in unknown.message
    item = validator.check(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "output": "x"},
        }
    )
    assert item is not None and item.param == "item.call_id"
    wrong_type = validator.check({"type": "response.cancel", "response_id": 5})
    assert wrong_type is not None and wrong_type.code == "invalid_type"
    # A union's member names (int, Literal['inf']) are not part of the parameter's path.
    tokens = validator.check(
        {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": "all"}}
    )
    assert tokens is not None
    assert (tokens.param, tokens.code) == ("session.max_output_tokens", "invalid_type")


# -- the engine without WebRTC ------------------------------------------------------------------


def engine_with(sent: list[dict]) -> tuple[RealtimeEngine, ReplyTrack]:
    track = ReplyTrack()
    engine = RealtimeEngine(
        session=create_session(
            {
                "type": "realtime",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "create_response": False}}
                },
            }
        ),
        send=sent.append,
        track=track,
        plan=TurnPlan((), "echo"),
        synth=SpeechSynth(),
        reply_text="hi",
    )
    return engine, track


async def test_speech_ends_when_frames_stop_arriving() -> None:
    import asyncio

    sent: list[dict] = []
    engine, track = engine_with(sent)
    for start in range(0, RATE // 2, 960):
        engine.on_audio(noise(0.02, -20, seed=start))
    assert [e["type"] for e in sent] == ["input_audio_buffer.speech_started"]
    # The client stops sending mid-word (muted mic, lost link): silence_duration_ms plus slack.
    await asyncio.sleep(0.7)
    assert [e["type"] for e in sent][:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    assert sent[1]["audio_end_ms"] == 500
    engine.close()
    track.stop()


async def test_a_stalled_event_loop_is_not_a_client_that_stopped_sending() -> None:
    """Frames that arrived while the loop was held up reach the engine a few callbacks after the
    overdue gap timer runs (socket, then the track's queue); the timer must not take the stall
    for silence and chop the turn (the emulator shares its loop with the daemon in the tests)."""
    import asyncio
    import time

    sent: list[dict] = []
    engine, track = engine_with(sent)
    for start in range(0, RATE // 2, 960):
        engine.on_audio(noise(0.02, -20, seed=start))
    assert [e["type"] for e in sent] == ["input_audio_buffer.speech_started"]
    loop = asyncio.get_running_loop()

    def deliver() -> None:
        for start in range(0, RATE // 5, 960):
            engine.on_audio(noise(0.02, -20, seed=start))

    def stall() -> None:
        time.sleep(0.8)  # past silence_duration_ms plus slack: the gap timer is now overdue
        loop.call_soon(loop.call_soon, deliver)  # two hops, as socket -> track -> engine

    loop.call_soon(stall)
    await asyncio.sleep(0.95)
    assert [e["type"] for e in sent] == ["input_audio_buffer.speech_started"]
    # Frames that really stop still end the turn, a recheck later.
    await asyncio.sleep(0.7)
    assert [e["type"] for e in sent][:2] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
    ]
    assert sent[1]["audio_end_ms"] == 700
    engine.close()
    track.stop()
