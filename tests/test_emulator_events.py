"""The event protocol over real WebRTC: an aiortc client talks to the emulator on loopback with
real espeak-ng speech on its track. Every event of every session is validated against the
official SDK's `RealtimeServerEvent`."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emulator_helpers import (
    RATE,
    RealtimeClient,
    assert_all_valid,
    connected_client,
    envelope,
    envelope_correlation,
    espeak,
    find_offset,
    mint,
    running_emulator,
)

MANUAL = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
REPLY_TEXT = "This reply is long enough to talk over, so the user can interrupt it halfway through."


@pytest.fixture(scope="module")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 1.6 s of real speech."""
    return espeak("Hello there, what is the weather like today?", tmp_path_factory.mktemp("say"))


@pytest.fixture(scope="module")
def short_utterance(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return espeak("Stop please.", tmp_path_factory.mktemp("say"))


def voiced_span_ms(samples: np.ndarray) -> tuple[int, int]:
    """First and last 10 ms window above -40 dBFS, in ms."""
    env = envelope(samples)
    loud = np.nonzero(20 * np.log10(np.maximum(env, 1e-3) / 32768) > -40)[0]
    return int(loud[0]) * 10, int(loud[-1] + 1) * 10


def without_deltas(types: list[str]) -> list[str]:
    return [t for t in types if not t.endswith(".delta")]


def rms_dbfs(samples: np.ndarray) -> float:
    return 20 * float(
        np.log10(max(float(np.sqrt(np.mean(samples.astype(float) ** 2))), 1e-3) / 32768)
    )


async def test_voice_turn_echoes_what_was_said_and_records_it(
    tmp_path: Path, utterance: np.ndarray
) -> None:
    async with running_emulator(record_dir=tmp_path) as emu:
        client = await connected_client(emu.url)
        client.send(
            {
                "type": "session.update",
                "event_id": "evt_1",
                "session": {"type": "realtime", "instructions": "Echo."},
            }
        )
        updated = await client.wait_for("session.updated")
        assert updated["session"]["instructions"] == "Echo."
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"

        # Lead-in silence, so the 300 ms prefix padding fits before the onset.
        client.mic.play(np.zeros(RATE // 2, dtype=np.int16))
        position = client.mic.play(utterance)
        started = await client.wait_for("input_audio_buffer.speech_started")
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        playing = await client.wait_for("output_audio_buffer.started")
        done = await client.wait_for("output_audio_buffer.stopped")
        assert playing["response_id"] == done["response_id"]

        assert started["item_id"] == stopped["item_id"]

        # The reply starts right after the turn ends, and the echo sounds like what was said.
        latency = client.arrival(playing) - client.arrival(stopped)
        assert latency < 0.3, f"reply began {latency * 1000:.0f} ms after speech_stopped"
        reply = client.audio_between(client.arrival(playing), client.arrival(done))
        correlation = envelope_correlation(utterance, reply)
        assert correlation > 0.8, f"echo envelope correlation {correlation:.2f}"

        assert without_deltas(client.types()) == [
            "session.created",
            "session.updated",
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "output_audio_buffer.started",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "conversation.item.done",
            "response.output_item.done",
            "response.done",
            "output_audio_buffer.stopped",
        ]
        deltas = [
            e["delta"]
            for e in client.events
            if e["type"] == "response.output_audio_transcript.delta"
        ]
        transcript = (await_one(client, "response.output_audio_transcript.done"))["transcript"]
        assert "".join(deltas) == transcript
        echoed_ms = int(transcript.split()[2])  # "echo of N ms (...)"
        first_ms, last_ms = voiced_span_ms(utterance)
        assert abs(echoed_ms - (last_ms - first_ms + 300)) <= 60
        response = await_one(client, "response.done")["response"]
        assert response["status"] == "completed"
        assert response["output"][0]["content"][0] == {
            "type": "output_audio",
            "transcript": transcript,
        }
        committed = await_one(client, "input_audio_buffer.committed")
        assert committed["item_id"] == stopped["item_id"]
        assert_all_valid(client.events)

        call = emu.calls[client.call_id or ""]
        await client.close()
        await asyncio.wait_for(call.wait_closed(), 5)

    # The recording holds exactly the frames received, in order, and the events both ways.
    folder = tmp_path / (client.call_id or "")
    with wave.open(str(folder / "input.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 1, 2)
        recorded = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert len(recorded) == call.received_samples
    # Where the utterance landed in what the "model" received (packets lost while the link came
    # up shift it from where the client queued it).
    offset = find_offset(recorded, utterance)
    assert abs(offset - position) < RATE // 2
    heard = recorded[offset : offset + len(utterance)]
    assert envelope_correlation(utterance, heard) > 0.9
    # VAD timing on that stream: onset minus 300 ms padding; end after 500 ms of silence.
    onset_ms = (offset * 1000 // RATE) + first_ms
    end_ms = (offset * 1000 // RATE) + last_ms
    assert abs(started["audio_start_ms"] - (onset_ms - 300)) <= 40
    assert abs(stopped["audio_end_ms"] - (end_ms + 500)) <= 40
    lines = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    times = [line["t"] for line in lines]
    assert times == sorted(times)
    assert [line["event"] for line in lines if line["dir"] == "out"] == client.events
    incoming = [line["event"] for line in lines if line["dir"] == "in"]
    assert incoming[0]["type"] == "session.update" and incoming[0]["event_id"] == "evt_1"


def await_one(client: RealtimeClient, type_: str) -> dict[str, Any]:
    found = [e for e in client.events if e["type"] == type_]
    assert len(found) == 1, f"{type_}: {len(found)} events"
    return found[0]


async def test_session_update_and_client_errors() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url)
        tools = [
            {
                "type": "function",
                "name": "end_conversation",
                "description": "Stop.",
                "parameters": {"type": "object", "properties": {}},
            }
        ]
        client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "tools": tools,
                    "audio": {
                        "input": {
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                            "noise_reduction": {"type": "far_field"},
                        }
                    },
                },
            }
        )
        updated = (await client.wait_for("session.updated"))["session"]
        assert updated["tools"] == tools
        td = updated["audio"]["input"]["turn_detection"]
        assert td["silence_duration_ms"] == 300 and td["prefix_padding_ms"] == 300
        assert updated["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
        assert updated["audio"]["output"]["voice"] == "marin"  # full config, not just the change

        cases = [
            (
                {"type": "session.update", "event_id": "c1", "session": {"instructions": "x"}},
                "missing_required_parameter",
                "session.type",
            ),
            (
                {
                    "type": "session.update",
                    "event_id": "c2",
                    "session": {"type": "realtime", "audio": {"output": {"voice": "robot"}}},
                },
                "invalid_value",
                "session.audio.output.voice",
            ),
            ({"type": "response.audio.delta", "event_id": "c3"}, "invalid_value", "type"),
            ({"type": "response.cancel", "event_id": "c4"}, "response_cancel_not_active", None),
            (
                {"type": "input_audio_buffer.append", "event_id": "c5", "audio": ""},
                "invalid_value",
                "type",
            ),
            (
                {"type": "conversation.item.retrieve", "event_id": "c6", "item_id": "item_missing"},
                "item_not_found",
                "item_id",
            ),
        ]
        for event, code, param in cases:
            client.send(event)
            error = (await client.wait_for("error"))["error"]
            assert (error["code"], error["param"], error["event_id"]) == (
                code,
                param,
                event["event_id"],
            )
            assert error["type"] == "invalid_request_error" and error["message"]
        client.channel.send("{this is not json")
        error = (await client.wait_for("error"))["error"]
        assert error["code"] == "invalid_json"
        # The session survives all of that.
        client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": "Still here."},
            }
        )
        assert (await client.wait_for("session.updated"))["session"][
            "instructions"
        ] == "Still here."
        assert_all_valid(client.events)
        await client.close()


async def test_manual_turn_cancel_and_clear_stop_the_reply_at_once(utterance: np.ndarray) -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url, MANUAL)
        client.send({"type": "input_audio_buffer.clear"})
        await client.wait_for("input_audio_buffer.cleared")
        client.send({"type": "input_audio_buffer.commit"})
        error = (await client.wait_for("error"))["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"

        client.mic.play(utterance)
        await client.mic.wait_played()
        await asyncio.sleep(0.2)  # let the last frames cross the loopback link and jitter buffer
        client.send({"type": "input_audio_buffer.commit"})
        committed = await client.wait_for("input_audio_buffer.committed")
        assert "input_audio_buffer.speech_started" not in client.types()  # turn detection is off

        client.send({"type": "response.create"})
        created = (await client.wait_for("response.created"))["response"]
        await client.wait_for("output_audio_buffer.started")
        client.send({"type": "response.create"})
        busy = (await client.wait_for("error"))["error"]
        assert busy["code"] == "conversation_already_has_active_response"

        await asyncio.sleep(0.3)
        client.send({"type": "response.cancel"})
        done = (await client.wait_for("response.done"))["response"]
        assert done["id"] == created["id"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"
        assert done["output"][0]["status"] == "incomplete"
        client.send({"type": "output_audio_buffer.clear"})
        cleared = await client.wait_for("output_audio_buffer.cleared")
        assert cleared["response_id"] == created["id"]
        t_cleared = client.arrival(cleared)
        await asyncio.sleep(0.6)
        after = client.audio_between(t_cleared + 0.15, t_cleared + 0.6)
        during = client.audio_between(t_cleared - 0.5, t_cleared - 0.1)
        assert rms_dbfs(during) > -45, "the echo should have been playing before the clear"
        assert rms_dbfs(after) < -60, "audio went on after output_audio_buffer.cleared"
        assert "output_audio_buffer.stopped" not in client.types()

        client.send({"type": "response.cancel"})
        assert (await client.wait_for("error"))["error"]["code"] == "response_cancel_not_active"
        client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "ash"}}},
            }
        )
        assert (await client.wait_for("error"))["error"]["code"] == "cannot_update_voice"
        assert committed["item_id"]
        assert_all_valid(client.events)
        await client.close()


@pytest.mark.parametrize("interrupt", [True, False])
async def test_speech_over_the_reply_interrupts_only_when_asked(
    interrupt: bool, short_utterance: np.ndarray
) -> None:
    session = {
        "type": "realtime",
        "audio": {
            "input": {
                "turn_detection": {
                    "type": "server_vad",
                    "silence_duration_ms": 300,
                    "interrupt_response": interrupt,
                }
            }
        },
    }
    async with running_emulator(reply="speech", reply_text=REPLY_TEXT) as emu:
        client = await connected_client(emu.url, session)
        client.mic.play(short_utterance)
        first = (await client.wait_for("response.created"))["response"]["id"]
        await client.wait_for("output_audio_buffer.started")
        await asyncio.sleep(0.5)
        client.mic.play(short_utterance)
        await client.wait_for("input_audio_buffer.speech_started")
        if interrupt:
            done = (await client.wait_for("response.done"))["response"]
            assert done["id"] == first and done["status"] == "cancelled"
            assert done["status_details"]["reason"] == "turn_detected"
            cleared = await client.wait_for("output_audio_buffer.cleared")
            assert cleared["response_id"] == first
            # The second turn gets its own answer.
            second = (await client.wait_for("response.created"))["response"]["id"]
            assert second != first
        else:
            done = (await client.wait_for("response.done", timeout=15))["response"]
            assert done["id"] == first and done["status"] == "completed"
            assert "output_audio_buffer.cleared" not in client.types()
        assert_all_valid(client.events)
        await client.close()


async def test_scripted_function_call_then_next_turn(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {
                    "say": "Goodbye.",
                    "call": {"name": "end_conversation", "arguments": {"reason": "user is done"}},
                },
                {"say": "Second turn."},
            ]
        )
    )
    async with running_emulator(script=script) as emu:
        tools = [
            {
                "type": "function",
                "name": "end_conversation",
                "parameters": {"type": "object", "properties": {}},
            }
        ]
        client = await connected_client(emu.url, {**MANUAL, "tools": tools})
        client.send({"type": "response.create"})
        call = await client.wait_for("response.function_call_arguments.done", timeout=15)
        assert call["name"] == "end_conversation"
        assert json.loads(call["arguments"]) == {"reason": "user is done"}
        done = (await client.wait_for("response.done"))["response"]
        assert [item["type"] for item in done["output"]] == ["message", "function_call"]
        assert done["output"][0]["content"][0]["transcript"] == "Goodbye."
        assert done["output"][1]["call_id"] == call["call_id"]
        assert without_deltas(client.types()).count("response.output_item.done") == 2

        client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": '{"ok": true}',
                },
            }
        )
        added = (await client.wait_for("conversation.item.done"))["item"]
        assert added["type"] == "function_call_output" and added["call_id"] == call["call_id"]
        client.send({"type": "response.create"})
        transcript = await client.wait_for("response.output_audio_transcript.done", timeout=15)
        assert transcript["transcript"] == "Second turn."
        await client.wait_for("output_audio_buffer.stopped")
        # Script exhausted: the default policy (echo) answers; nothing committed yet -> a tone.
        client.send({"type": "response.create"})
        fallback = await client.wait_for("response.output_audio_transcript.done")
        assert fallback["transcript"].startswith("echo: nothing to echo")
        assert_all_valid(client.events)
        await client.close()


async def test_tone_and_speech_replies(tmp_path: Path) -> None:
    async with running_emulator(reply="tone") as emu:
        client = await connected_client(emu.url, MANUAL)
        client.send({"type": "response.create"})
        started = await client.wait_for("output_audio_buffer.started")
        stopped = await client.wait_for("output_audio_buffer.stopped")
        audio = client.audio_between(client.arrival(started), client.arrival(stopped)).astype(float)
        spectrum = np.abs(np.fft.rfft(audio))
        peak_hz = np.argmax(spectrum) * RATE / len(audio)
        assert abs(peak_hz - 440) < 5
        assert 0.6 < len(audio) / RATE < 1.2
        assert_all_valid(client.events)
        await client.close()

    text = "The emulator can talk."
    async with running_emulator(reply="speech", reply_text=text) as emu:
        client = await connected_client(emu.url, MANUAL)
        client.send({"type": "response.create"})
        started = await client.wait_for("output_audio_buffer.started", timeout=15)
        stopped = await client.wait_for("output_audio_buffer.stopped")
        transcript = await_one(client, "response.output_audio_transcript.done")["transcript"]
        assert transcript == text
        heard = client.audio_between(client.arrival(started), client.arrival(stopped))
        assert envelope_correlation(espeak(text, tmp_path, voice="en", wpm=175), heard) > 0.8
        assert_all_valid(client.events)
        await client.close()


async def test_text_only_response() -> None:
    async with running_emulator(reply="speech", reply_text="Just words.") as emu:
        client = await connected_client(emu.url, MANUAL)
        client.send(
            {
                "type": "response.create",
                "response": {"output_modalities": ["text"], "metadata": {"topic": "t"}},
            }
        )
        done = (await client.wait_for("response.done", timeout=15))["response"]
        assert done["output_modalities"] == ["text"] and done["metadata"] == {"topic": "t"}
        assert done["output"][0]["content"] == [{"type": "output_text", "text": "Just words."}]
        assert (
            "".join(e["delta"] for e in client.events if e["type"] == "response.output_text.delta")
            == "Just words."
        )
        assert "output_audio_buffer.started" not in client.types()
        assert_all_valid(client.events)
        await client.close()


async def test_idle_timeout_prompts_a_response() -> None:
    session = {
        "type": "realtime",
        # The service's minimum (5 s); it counts from the end of the reply's playback.
        "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}},
    }
    async with running_emulator(reply="tone") as emu:
        client = await connected_client(emu.url, session)
        client.send({"type": "response.create"})
        stopped = await client.wait_for("output_audio_buffer.stopped")
        timeout = await client.wait_for("input_audio_buffer.timeout_triggered", timeout=8)
        waited = client.arrival(timeout) - client.arrival(stopped)
        assert 4.9 <= waited < 5.6
        assert (await client.next_event())["type"] == "input_audio_buffer.committed"
        await client.wait_for("response.created")
        assert_all_valid(client.events)
        await client.close()


async def test_turn_detection_without_auto_response(utterance: np.ndarray) -> None:
    session = {
        "type": "realtime",
        "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}},
    }
    async with running_emulator() as emu:
        client = await connected_client(emu.url, session)
        client.mic.play(utterance)
        await client.wait_for("input_audio_buffer.speech_stopped")
        await client.wait_for("conversation.item.done")
        await asyncio.sleep(0.5)
        assert "response.created" not in client.types()
        assert_all_valid(client.events)
        await client.close()


async def test_conversation_items() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url, MANUAL)
        message = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        }
        client.send({"type": "conversation.item.create", "item": {**message, "id": "item_a"}})
        first = await client.wait_for("conversation.item.done")
        assert first["item"]["id"] == "item_a" and first["previous_item_id"] is None
        client.send({"type": "conversation.item.create", "item": message})
        second = await client.wait_for("conversation.item.added")
        assert second["previous_item_id"] == "item_a" and second["item"]["id"].startswith("item_")
        client.send({"type": "conversation.item.retrieve", "item_id": "item_a"})
        retrieved = await client.wait_for("conversation.item.retrieved")
        assert retrieved["item"]["content"] == message["content"]
        client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_a",
                "content_index": 0,
                "audio_end_ms": 10,
            }
        )
        assert (await client.wait_for("error"))["error"]["param"] == "item_id"
        client.send({"type": "conversation.item.delete", "item_id": "item_a"})
        assert (await client.wait_for("conversation.item.deleted"))["item_id"] == "item_a"
        client.send({"type": "conversation.item.retrieve", "item_id": "item_a"})
        assert (await client.wait_for("error"))["error"]["code"] == "item_not_found"
        assert_all_valid(client.events)
        await client.close()


async def test_transcription_session(utterance: np.ndarray) -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url, {"type": "transcription"})
        assert await_one(client, "session.created")["session"]["type"] == "transcription"
        client.mic.play(utterance)
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert completed["item_id"] == stopped["item_id"]
        assert completed["transcript"].endswith("ms of audio]")
        client.send({"type": "response.create"})
        assert (await client.wait_for("error"))["error"]["message"].startswith("Responses are not")
        assert_all_valid(client.events)
        await client.close()


async def test_speech_queued_before_the_call_is_heard_from_the_first_word(
    utterance: np.ndarray,
) -> None:
    # A device queues what follows the wake word before the call is up; it goes out in a burst
    # as soon as DTLS connects, and none of it may be lost.
    async with running_emulator() as emu:
        client = RealtimeClient()
        client.mic.play(utterance)
        await client.connect(emu.url, await mint(emu.url))
        playing = await client.wait_for("output_audio_buffer.started")
        done = await client.wait_for("output_audio_buffer.stopped")
        assert client.types()[:2] == ["session.created", "input_audio_buffer.speech_started"]
        reply = client.audio_between(client.arrival(playing), client.arrival(done))
        assert envelope_correlation(utterance, reply) > 0.8
        first_ms, last_ms = voiced_span_ms(utterance)
        echoed_ms = int(
            await_one(client, "response.output_audio_transcript.done")["transcript"].split()[2]
        )
        assert echoed_ms >= last_ms - first_ms - 40  # nothing of the start was lost
        assert_all_valid(client.events)
        await client.close()


END_TOOL = [
    {
        "type": "function",
        "name": "end_conversation",
        "parameters": {"type": "object", "properties": {"reason": {"type": "string"}}},
    }
]
LONG_REASON = {"reason": "the user said goodbye and asked for the lights to be switched off"}


async def test_a_cancelled_function_call_still_gets_its_arguments_done(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    call = {"name": "end_conversation", "arguments": LONG_REASON, "stream_s": 3.0}
    script.write_text(json.dumps([{"call": call}]))
    async with running_emulator(script=script) as emu:
        client = await connected_client(emu.url, {**MANUAL, "tools": END_TOOL})
        client.send({"type": "response.create"})
        await client.wait_for("response.function_call_arguments.delta")
        client.send({"type": "response.cancel"})
        done_args = await client.wait_for("response.function_call_arguments.done")
        full = json.dumps(LONG_REASON)
        assert done_args["name"] == "end_conversation"
        assert full.startswith(done_args["arguments"]) and done_args["arguments"] != full
        item_done = await client.wait_for("response.output_item.done")
        assert item_done["item"]["status"] == "incomplete"
        assert item_done["item"]["call_id"] == done_args["call_id"]
        response = (await client.wait_for("response.done"))["response"]
        assert response["status"] == "cancelled"
        assert response["output"][0]["arguments"] == done_args["arguments"]
        types = client.types()
        assert types.index("response.function_call_arguments.done") < types.index("response.done")
        await asyncio.sleep(3.2)  # the cancelled task sends nothing more
        assert types == client.types()
        assert_all_valid(client.events)
        await client.close()


async def test_max_output_tokens_cuts_a_response_short(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"call": {"name": "end_conversation", "arguments": LONG_REASON}},
                {"say": "This reply is far too long for the few tokens it is allowed."},
            ]
        )
    )
    async with running_emulator(script=script) as emu:
        client = await connected_client(
            emu.url, {**MANUAL, "tools": END_TOOL, "max_output_tokens": 5}
        )
        client.send({"type": "response.create"})
        done_args = await client.wait_for("response.function_call_arguments.done")
        assert done_args["arguments"] == json.dumps(LONG_REASON)[:20]  # 5 tokens x 4 characters
        response = (await client.wait_for("response.done"))["response"]
        assert response["status"] == "incomplete"
        assert response["status_details"]["reason"] == "max_output_tokens"
        assert response["output"][0]["status"] == "incomplete"

        client.send({"type": "response.create", "response": {"max_output_tokens": 8}})
        started = await client.wait_for("output_audio_buffer.started")
        response = (await client.wait_for("response.done", timeout=15))["response"]
        stopped = await client.wait_for("output_audio_buffer.stopped")
        assert response["status"] == "incomplete"
        assert response["status_details"]["reason"] == "max_output_tokens"
        assert response["output"][0]["status"] == "incomplete"
        assert response["usage"]["output_tokens"] <= 8
        played = client.arrival(stopped) - client.arrival(started)
        assert 0.2 < played < 1.1, played  # 8 tokens: under 0.8 s of audio (with its transcript)
        assert_all_valid(client.events)
        await client.close()


VAD = {"type": "server_vad"}


@pytest.mark.parametrize(
    ("session", "param", "code"),
    [
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {**VAD, "idle_timeout_ms": 4999}}},
            },
            "session.audio.input.turn_detection.idle_timeout_ms",
            "integer_below_min_value",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {**VAD, "idle_timeout_ms": 30001}}},
            },
            "session.audio.input.turn_detection.idle_timeout_ms",
            "integer_above_max_value",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {**VAD, "threshold": -0.1}}},
            },
            "session.audio.input.turn_detection.threshold",
            "decimal_below_min_value",
        ),
        (
            {"type": "realtime", "max_output_tokens": 0},
            "session.max_output_tokens",
            "integer_below_min_value",
        ),
        (
            {"type": "realtime", "max_output_tokens": "all"},
            "session.max_output_tokens",
            "invalid_type",
        ),
        (
            {"type": "realtime", "audio": {"output": {"speed": 1.75}}},
            "session.audio.output.speed",
            "decimal_above_max_value",
        ),
        (
            {"type": "realtime", "audio": {"output": {"voice": "nova"}}},
            "session.audio.output.voice",
            "invalid_value",
        ),
        ({"instructions": "no type"}, "session.type", "missing_required_parameter"),
        ({"type": "realtime", "model": "gpt-4o"}, "session.model", "invalid_value"),
    ],
)
async def test_session_update_outside_the_limits_is_refused_and_changes_nothing(
    session: dict[str, Any], param: str, code: str
) -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url)
        before = await_one(client, "session.created")["session"]
        client.send({"type": "session.update", "event_id": "evt_limit", "session": session})
        error = (await client.wait_for("error"))["error"]
        assert error["type"] == "invalid_request_error"
        assert (error["param"], error["code"], error["event_id"]) == (param, code, "evt_limit")
        client.send({"type": "session.update", "session": {"type": "realtime"}})
        after = (await client.wait_for("session.updated"))["session"]
        assert after == before
        assert "session.updated" not in client.types()[: client.types().index("error")]
        assert_all_valid(client.events)
        await client.close()


async def test_transcription_with_gpt_realtime_whisper_needs_turn_detection_off() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url, {"type": "transcription"})
        whisper = {"transcription": {"model": "gpt-realtime-whisper"}}
        client.send(
            {
                "type": "session.update",
                "event_id": "evt_whisper",
                "session": {"type": "transcription", "audio": {"input": whisper}},
            }
        )
        error = (await client.wait_for("error"))["error"]
        assert error["param"] == "session.audio.input.turn_detection"
        assert error["event_id"] == "evt_whisper"
        client.send(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {**whisper, "turn_detection": None}},
                },
            }
        )
        updated = (await client.wait_for("session.updated"))["session"]
        assert updated["audio"]["input"]["transcription"]["model"] == "gpt-realtime-whisper"
        assert updated["audio"]["input"]["turn_detection"] is None
        assert_all_valid(client.events)
        await client.close()


async def test_response_create_outside_the_limits_is_refused() -> None:
    async with running_emulator(reply="tone") as emu:
        client = await connected_client(emu.url, MANUAL)
        for response, param, code in [
            ({"max_output_tokens": 4097}, "response.max_output_tokens", "integer_above_max_value"),
            (
                {"audio": {"output": {"voice": "robot"}}},
                "response.audio.output.voice",
                "invalid_value",
            ),
        ]:
            client.send({"type": "response.create", "event_id": "evt_r", "response": response})
            error = (await client.wait_for("error"))["error"]
            assert (error["param"], error["code"], error["event_id"]) == (param, code, "evt_r")
        await asyncio.sleep(0.3)
        assert "response.created" not in client.types()
        await client.close()


async def test_a_client_event_the_sdk_refuses_gets_an_error_naming_the_parameter() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url)
        client.send({"type": "conversation.item.truncate", "event_id": "evt_t", "item_id": "x"})
        error = (await client.wait_for("error"))["error"]
        assert error["code"] == "missing_required_parameter"
        assert error["event_id"] == "evt_t"
        assert error["param"] in ("audio_end_ms", "content_index")
        await client.close()
