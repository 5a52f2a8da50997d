"""The emulator's GPT-Live side: session creation as strict as upstream, and the event flow on
the data channel (transcripts, usage, close, mute, responses delegation), every server event
validated against the SDK's Live unions. Real aiortc peers, real HTTP, real speech (espeak-ng).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from emulator_helpers import (
    KEY,
    RealtimeClient,
    connected_live_client,
    espeak,
    live_session_body,
    running_emulator,
    validate_live_server_event,
    validate_responses_stream_event,
)
from wakertc.emulator.live_permissions import INFO_CODE, NOT_PERMITTED

CHANNEL = "session.client.data_channel"


def assert_all_live_valid(client: RealtimeClient) -> None:
    assert client.events
    for event in client.events:
        validate_live_server_event(event)


async def test_official_sdk_creates_a_live_session_and_it_closes_with_usage() -> None:
    async with running_emulator() as emu:
        sdk = openai.OpenAI(base_url=emu.url + "/v1", api_key=KEY, max_retries=0)
        client = RealtimeClient()
        offer = await client.offer()
        created = await asyncio.to_thread(
            sdk.live.create,
            session={
                "model": "gpt-live-1.1",
                "instructions": "Be brief.",
                "audio": {"output": {"voice": "cedar"}},
            },
            transport={"type": "webrtc", "sdp": offer},
        )
        assert created.session.id.startswith("live_")
        await client.accept(created.transport.sdp)
        started = await client.next_event()
        assert started["type"] == "session.started"
        assert started["session"]["id"] == created.session.id
        assert started["session"]["audio"]["output"]["voice"] == "cedar"
        client.send({"type": "session.close", "event_id": "bye"})
        closed = await client.wait_for("session.closed")
        assert closed["reason"] == "close_requested"
        assert closed["client_event_id"] == "bye"
        assert closed["usage"]["active_seconds"] >= 15  # the prepaid minimum
        await asyncio.wait_for(client.channel_closed.wait(), 5)
        assert_all_live_valid(client)
        await client.close()

        with pytest.raises(openai.BadRequestError) as caught:
            await asyncio.to_thread(
                sdk.live.create,
                session={"model": "gpt-live-1.1", "voice": "marin"},  # type: ignore[typeddict-unknown-key]
                transport={"type": "webrtc", "sdp": offer},
            )
        assert caught.value.code == "unknown_parameter"
        sdk.close()


@pytest.mark.parametrize(
    ("session", "transport", "param", "code"),
    [
        (
            {"model": "gpt-live-1.1", "turn_detection": None},
            None,
            "session.turn_detection",
            "unknown_parameter",
        ),
        (
            {"model": "gpt-live-1.1", "audio": {"output": {"format": "pcm16"}}},
            None,
            "session.audio.output.format",
            "unknown_parameter",
        ),
        ({"instructions": "hi"}, None, "session.model", "missing_required_parameter"),
        ({"model": "gpt-realtime"}, None, "session.model", "invalid_value"),
        (
            {"model": "gpt-live-1", "audio": {"output": {"voice": "robot"}}},
            None,
            "session.audio.output.voice",
            "invalid_value",
        ),
        (
            {"model": "gpt-live-1", "idle_timeout_s": "60"},
            None,
            "session.idle_timeout_s",
            "invalid_type",
        ),
        (
            {"model": "gpt-live-1", "delegation": {"type": "responses", "responses": {}}},
            None,
            "session.delegation.responses.model",
            "missing_required_parameter",
        ),
        (
            {"model": "gpt-live-1"},
            {"type": "webrtc"},
            "transport.sdp",
            "missing_required_parameter",
        ),
        ({"model": "gpt-live-1"}, {"type": "sip", "sdp": "v=0"}, "transport.type", "invalid_value"),
        # Data-channel permissions: the SDK's rules for selectors, and only events that exist.
        (
            {"model": "gpt-live-1", "client": {"data_channel": {"allowed_client_events": "none"}}},
            None,
            f"{CHANNEL}.allowed_client_events",
            "invalid_value",
        ),
        (
            {
                "model": "gpt-live-1",
                "client": {"data_channel": {"allowed_client_events": ["response.cancel"]}},
            },
            None,
            f"{CHANNEL}.allowed_client_events[0]",
            "invalid_value",
        ),
        (
            {
                "model": "gpt-live-1",
                "client": {"data_channel": {"allowed_server_events": [{"type": "error"}, {}]}},
            },
            None,
            f"{CHANNEL}.allowed_server_events[1].type",
            "missing_required_parameter",
        ),
        (
            {
                "model": "gpt-live-1",
                "client": {"data_channel": {"allowed_server_events": [{"type": "response.event"}]}},
            },
            None,
            f"{CHANNEL}.allowed_server_events[0].response_event",
            "missing_required_parameter",
        ),
        (
            {
                "model": "gpt-live-1",
                "client": {
                    "data_channel": {
                        "allowed_server_events": [
                            {"type": "session.started", "response_event": "response.completed"}
                        ]
                    }
                },
            },
            None,
            f"{CHANNEL}.allowed_server_events[0].response_event",
            "invalid_value",
        ),
        (
            {
                "model": "gpt-live-1",
                "client": {
                    "data_channel": {
                        # Realtime's, not a Responses streaming event (those end `completed`).
                        "allowed_server_events": [
                            {"type": "response.event", "response_event": "response.done"}
                        ]
                    }
                },
            },
            None,
            f"{CHANNEL}.allowed_server_events[0].response_event",
            "invalid_value",
        ),
        (
            {
                "model": "gpt-live-1",
                "client": {"data_channel": {"allowed_server_events": [{"type": "speech.started"}]}},
            },
            None,
            f"{CHANNEL}.allowed_server_events[0].type",
            "invalid_value",
        ),
    ],
)
async def test_creation_is_as_strict_as_upstream(
    session: dict[str, Any], transport: dict[str, Any] | None, param: str, code: str
) -> None:
    async with running_emulator() as emu:
        body = {"session": session, "transport": transport or {"type": "webrtc", "sdp": "v=0"}}
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                emu.url + "/v1/live/sessions", json=body, headers={"Authorization": f"Bearer {KEY}"}
            )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, code)
        assert not emu.calls


async def test_creation_needs_the_standard_key_and_a_usable_offer() -> None:
    async with running_emulator() as emu:
        async with httpx.AsyncClient(timeout=10) as http:
            url = emu.url + "/v1/live/sessions"
            body = live_session_body("v=0\r\n")
            missing = await http.post(url, json=body)
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer ek_x"})
            bad_offer = await http.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert (missing.status_code, wrong.status_code) == (401, 401)
        assert bad_offer.status_code == 400
        assert bad_offer.json()["error"]["code"] == "invalid_offer"


async def test_a_spoken_turn_gets_transcripts_and_an_audible_reply(tmp_path: Path) -> None:
    async with running_emulator(reply="echo") as emu:
        client = await connected_live_client(emu.url)
        speech = espeak("What time is it?", tmp_path)
        client.mic.play(speech)
        heard = await client.wait_for("session.input_transcript.delta")
        said = await client.wait_for("session.output_transcript.delta")
        assert said["start_ms"] >= heard["end_ms"]
        assert said["end_ms"] - said["start_ms"] == pytest.approx(
            int(said["delta"].split()[2]), abs=2
        )  # "echo of N ms": the reply's length on the session timeline
        await asyncio.sleep(said["end_ms"] / 1000 - said["start_ms"] / 1000 + 0.5)
        loud = [s for _, s in client.audio if len(s) and abs(s).max() > 1000]
        assert loud, "no reply audio arrived on the track"
        kinds = client.types()
        assert not [k for k in kinds if "audio" in k and "transcript" not in k]  # no audio events
        assert_all_live_valid(client)
        await client.close()


async def test_mute_commands_and_invalid_client_events_get_live_answers() -> None:
    async with running_emulator() as emu:
        client = await connected_live_client(emu.url)
        client.send({"type": "session.input_audio.mute", "event_id": "m1"})
        muted = await client.wait_for("session.input_audio.muted")
        assert muted["client_event_id"] == "m1"
        assert emu.calls[client.call_id or ""].engine.muted  # type: ignore[union-attr]
        client.send({"type": "session.input_audio.unmute"})
        await client.wait_for("session.input_audio.unmuted")
        cases = [
            ({"type": "session.start", "event_id": "e1"}, "invalid_event"),
            ({"type": "response.create", "event_id": "e2"}, "invalid_delegation"),
            (
                {"type": "session.update", "session": {"instructions": "x"}, "event_id": "e3"},
                "immutable_field_update",
            ),
            ({"type": "session.commentary.append", "event_id": "e4"}, None),  # no content
            ({"type": "response.cancel", "event_id": "e5"}, None),  # Realtime's, not Live's
        ]
        for sent, code in cases:
            client.send(sent)
            error = await client.wait_for("error")
            assert error["error"]["client_event_id"] == sent["event_id"]
            if code is not None:
                assert error["error"]["code"] == code
        client.channel.send("{not json")
        assert (await client.wait_for("error"))["error"]["code"] == "invalid_json"
        assert_all_live_valid(client)
        await client.close()


async def test_a_tool_call_comes_nested_in_response_event_and_its_output_continues(
    tmp_path: Path,
) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"reply": "tone", "call": {"name": "lights", "arguments": {"on": True}}},
                {"say": "The lights are on."},
            ]
        )
    )
    delegation = {
        "type": "responses",
        "responses": {
            "model": "gpt-5-mini",
            "tools": [{"type": "function", "name": "lights", "parameters": {"type": "object"}}],
        },
    }
    async with running_emulator(script=script) as emu:
        client = await connected_live_client(emu.url, delegation=delegation)
        client.mic.play(espeak("Turn on the lights", tmp_path))
        created = await client.wait_for("session.delegation.created", timeout=15)
        assert created["delegation"]["target"] == "responses"
        while True:
            nested = await client.wait_for("response.event")
            assert nested["delegation_id"] == created["delegation"]["id"]
            validate_responses_stream_event(nested["event"])
            if nested["event"]["type"] == "response.output_item.done":
                break
        call = nested["event"]["item"]
        assert (call["type"], call["name"], json.loads(call["arguments"])) == (
            "function_call",
            "lights",
            {"on": True},
        )
        client.send(
            {
                "type": "response.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": call["call_id"],
                    "output": "ok",
                },
            }
        )
        client.send({"type": "response.create"})
        spoken = await client.wait_for("session.output_transcript.delta", timeout=15)
        assert "lights are on" in spoken["delta"]
        assert_all_live_valid(client)
        nested = [e["event"] for e in client.events if e["type"] == "response.event"]
        for backend_event in nested:
            validate_responses_stream_event(backend_event)
        # Two backend responses (the call, then the answer after its output), each numbered
        # from 0 and ended as the Responses API ends a stream: `response.completed`.
        assert [(e["type"], e["sequence_number"]) for e in nested] == [
            ("response.created", 0),
            ("response.output_item.done", 1),
            ("response.completed", 2),
            ("response.created", 0),
            ("response.completed", 1),
        ]
        await client.close()


def restricted(client_events: Any, server_events: Any) -> dict[str, Any]:
    """A session's `client` object limiting its data channel."""
    return {
        "data_channel": {
            "allowed_client_events": client_events,
            "allowed_server_events": server_events,
        }
    }


async def test_a_restricted_channel_carries_only_what_it_may(tmp_path: Path) -> None:
    """Server events outside `allowed_server_events` are withheld (transcripts here: the reply
    is still heard, audio is on the track); a client event outside `allowed_client_events` gets
    an `error` and changes nothing; the frontend is told with `info` after `session.started`."""
    allowed = ["session.started", "info", "error", "session.input_audio.muted", "session.closed"]
    client_events = ["session.input_audio.mute", "session.close"]
    async with running_emulator(reply="tone") as emu:
        client = await connected_live_client(
            emu.url, client=restricted(client_events, [{"type": t} for t in allowed])
        )
        info = await client.next_event()
        assert (info["type"], info["code"]) == ("info", INFO_CODE)
        engine = emu.calls[client.call_id or ""].engine

        client.mic.play(espeak("What time is it?", tmp_path))
        async with asyncio.timeout(15):
            while not [s for _, s in client.audio if len(s) and abs(s).max() > 1000]:
                await asyncio.sleep(0.1)  # the tone reply, heard on the track
        assert engine.withheld["session.input_transcript.delta"] >= 1

        client.send({"type": "session.input_audio.mute", "event_id": "m1"})
        assert (await client.wait_for("session.input_audio.muted"))["client_event_id"] == "m1"
        client.send({"type": "session.input_audio.unmute", "event_id": "u1"})
        error = (await client.wait_for("error"))["error"]
        assert (error["code"], error["param"], error["client_event_id"]) == (
            NOT_PERMITTED,
            "type",
            "u1",
        )
        assert engine.muted  # the refused unmute changed nothing
        client.send({"type": "session.commentary.append", "content": "x", "delegation_id": None})
        assert (await client.wait_for("error"))["error"]["code"] == NOT_PERMITTED

        client.send({"type": "session.close", "event_id": "bye"})
        closed = await client.wait_for("session.closed")
        assert closed["client_event_id"] == "bye"
        await asyncio.wait_for(client.channel_closed.wait(), 5)
        assert set(client.types()) <= set(allowed)
        assert "session.output_transcript.delta" in engine.withheld
        assert "session.input_audio.unmuted" not in engine.withheld  # nothing was done
        assert_all_live_valid(client)
        await client.close()


async def test_an_unrestricted_channel_gets_everything_and_no_notice(tmp_path: Path) -> None:
    """`"all"` both ways is the default behaviour: no `info`, nothing withheld or refused."""
    async with running_emulator(reply="tone") as emu:
        client = await connected_live_client(emu.url, client=restricted("all", "all"))
        client.mic.play(espeak("What time is it?", tmp_path))
        await client.wait_for("session.output_transcript.delta", timeout=15)
        client.send({"type": "session.input_audio.unmute", "event_id": "u1"})
        assert (await client.wait_for("session.input_audio.unmuted"))["client_event_id"] == "u1"
        assert "info" not in client.types() and "error" not in client.types()
        assert not emu.calls[client.call_id or ""].engine.withheld
        await client.close()


async def test_response_events_are_permitted_by_their_nested_kind(tmp_path: Path) -> None:
    """`{type: "response.event", response_event: K}` lets through only the nested events of
    kind K: here the function call, but not its response's lifecycle."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"reply": "tone", "call": {"name": "lights"}}]))
    delegation = {
        "type": "responses",
        "responses": {
            "model": "gpt-5-mini",
            "tools": [{"type": "function", "name": "lights", "parameters": {"type": "object"}}],
        },
    }
    server_events = [
        {"type": "session.started"},
        {"type": "session.delegation.created"},
        {"type": "response.event", "response_event": "response.output_item.done"},
    ]
    async with running_emulator(script=script) as emu:
        client = await connected_live_client(
            emu.url, delegation=delegation, client=restricted("all", server_events)
        )
        client.mic.play(espeak("Turn on the lights", tmp_path))
        created = await client.wait_for("session.delegation.created", timeout=15)
        nested = await client.wait_for("response.event")
        assert nested["delegation_id"] == created["delegation"]["id"]
        assert nested["event"]["type"] == "response.output_item.done"
        engine = emu.calls[client.call_id or ""].engine
        async with asyncio.timeout(5):
            while not engine.withheld["response.event response.completed"]:
                await asyncio.sleep(0.05)
        assert engine.withheld["response.event response.created"] == 1
        kinds = [e["event"]["type"] for e in client.events if e["type"] == "response.event"]
        assert kinds == ["response.output_item.done"]
        assert "info" not in client.types()  # not permitted either: withheld like the rest
        assert_all_live_valid(client)
        await client.close()


async def test_calls_401_refuses_live_session_creation() -> None:
    """The call-setup faults hit Live's session creation: 401 as for a bad project key."""
    async with running_emulator(faults=("calls-401",)) as emu:
        client = RealtimeClient()
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                emu.url + "/v1/live/sessions",
                json=live_session_body(await client.offer()),
                headers={"Authorization": f"Bearer {KEY}"},
            )
        await client.close()
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert not emu.calls


async def test_no_reply_hears_the_turn_and_never_answers(tmp_path: Path) -> None:
    """no-reply under Live: the turn is heard (its transcript comes) but the model never takes
    its turn: no reply audio, no output transcript."""
    async with running_emulator(faults=("no-reply",), reply="tone") as emu:
        client = await connected_live_client(emu.url)
        client.mic.play(espeak("What time is it?", tmp_path))
        heard = await client.wait_for("session.input_transcript.delta", timeout=15)
        await asyncio.sleep(2.0)  # a tone reply would have started long since
        assert "session.output_transcript.delta" not in client.types()
        after = client.arrival(heard)
        assert not [s for t, s in client.audio if t > after and len(s) and abs(s).max() > 1000]
        assert_all_live_valid(client)
        await client.close()
