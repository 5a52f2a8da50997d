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
)


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
        await client.close()
