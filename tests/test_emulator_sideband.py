"""The emulator's server-side connections to a call, driven by the official SDK's own clients:
`AsyncOpenAI.realtime.connect(call_id=...)` (Realtime sideband) and
`AsyncOpenAI.live.sideband.connect(session_id=...)` (GPT-Live attach), each joined to a call a
real aiortc peer made. Every event a sideband receives is validated against the SDK's unions.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import websockets

from emulator_helpers import (
    EVENT_TIMEOUT,
    KEY,
    connected_client,
    connected_live_client,
    mint,
    running_emulator,
    validate_live_server_event,
    validate_server_event,
)
from wakertc.emulator.replies import TONE_S, tone

INSTRUCTIONS = "Set by the sideband."


def sdk_for(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def collect(
    conn: Any, until: str, validate: Any, timeout: float = EVENT_TIMEOUT
) -> list[dict[str, Any]]:
    """Events from a sideband up to and including the first of type `until`, each validated."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await conn.recv_bytes())
            validate(event)
            events.append(event)
            if event["type"] == until:
                return events


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def pcm24(event: dict[str, Any], key: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(event[key]), dtype="<i2")


def tokens(text: str) -> int:
    """The emulator's documented text count: 4 characters a token, at least one."""
    return max(1, len(text) // 4) if text else 0


async def test_realtime_sideband_follows_the_call_and_its_response_create_is_heard() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url)
        assert client.call_id is not None
        sdk = sdk_for(emu.url)
        async with sdk.realtime.connect(call_id=client.call_id) as conn:
            await conn.session.update(session={"type": "realtime", "instructions": INSTRUCTIONS})
            seen = await collect(conn, "session.updated", validate_server_event)
            updated = seen[-1]
            assert updated["session"]["instructions"] == INSTRUCTIONS
            on_device = await client.wait_for("session.updated")
            assert on_device["event_id"] == updated["event_id"]  # one event, both connections

            await conn.response.create()
            seen += await collect(conn, "output_audio_buffer.stopped", validate_server_event)
            await client.wait_for("output_audio_buffer.stopped")
            # The device heard the reply the sideband asked for (a tone: nothing to echo yet).
            started = next(e for e in client.events if e["type"] == "output_audio_buffer.started")
            stopped = next(e for e in client.events if e["type"] == "output_audio_buffer.stopped")
            heard = client.audio_between(client.arrival(started), client.arrival(stopped) + 0.3)
            assert rms(heard) > 1000, rms(heard)

            # The sideband saw exactly what the device saw from the moment it joined.
            first = next(i for i, e in enumerate(client.events) if e is on_device)
            device_ids = [e["event_id"] for e in client.events[first:]]
            assert [e["event_id"] for e in seen[-len(device_ids) :]] == device_ids

            # Usage as documented in emulator/usage.py, exactly.
            done = next(e for e in seen if e["type"] == "response.done")
            transcript = done["response"]["output"][0]["content"][0]["transcript"]
            reply_audio = int(TONE_S * 1000 / 100)
            assert done["response"]["usage"] == {
                "total_tokens": tokens(INSTRUCTIONS) + reply_audio + tokens(transcript),
                "input_tokens": tokens(INSTRUCTIONS),
                "output_tokens": reply_audio + tokens(transcript),
                "input_token_details": {
                    "text_tokens": tokens(INSTRUCTIONS),
                    "audio_tokens": 0,
                    "image_tokens": 0,
                    "cached_tokens": 0,
                    "cached_tokens_details": {
                        "text_tokens": 0,
                        "audio_tokens": 0,
                        "image_tokens": 0,
                    },
                },
                "output_token_details": {
                    "text_tokens": tokens(transcript),
                    "audio_tokens": reply_audio,
                },
            }

            # The user speaks: the next response's input is the whole context, the part the
            # first response already had counted as cached.
            burst = tone(seconds=0.8).audio
            client.mic.play(burst)
            turn = await collect(conn, "response.done", validate_server_event)
            started_ev = next(e for e in turn if e["type"] == "input_audio_buffer.speech_started")
            stopped_ev = next(e for e in turn if e["type"] == "input_audio_buffer.speech_stopped")
            span = stopped_ev["audio_end_ms"] - started_ev["audio_start_ms"]
            usage = turn[-1]["response"]["usage"]
            details = usage["input_token_details"]
            assert details["text_tokens"] == tokens(INSTRUCTIONS)
            # Whole ms in the events, samples in the count: the floor may differ by one ms.
            user_audio = {(span + extra) // 100 for extra in (0, 1)}
            assert details["audio_tokens"] - reply_audio in user_audio, (details, span)
            assert details["cached_tokens_details"] == {
                "text_tokens": tokens(INSTRUCTIONS),
                "audio_tokens": 0,
                "image_tokens": 0,
            }
            assert usage["input_tokens"] == details["text_tokens"] + details["audio_tokens"]
        await sdk.close()
        await client.close()


async def test_realtime_sideband_tool_output_and_its_errors_stay_on_the_sideband() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url)
        assert client.call_id is not None
        sdk = sdk_for(emu.url)
        async with sdk.realtime.connect(call_id=client.call_id) as conn:
            await conn.send_raw("{not json")
            bad_json = (await collect(conn, "error", validate_server_event))[-1]
            assert bad_json["error"]["code"] == "invalid_json"
            await conn.send_raw(json.dumps({"type": "session.update", "session": {}}))
            invalid = (await collect(conn, "error", validate_server_event))[-1]
            assert invalid["error"]["param"] == "session.type"
            await conn.conversation.item.create(
                item={"type": "function_call_output", "call_id": "call_1", "output": '{"ok":1}'}
            )
            added = await collect(conn, "conversation.item.done", validate_server_event)
            on_device = await client.wait_for("conversation.item.done")
            assert on_device["item"]["output"] == '{"ok":1}'
            assert on_device["event_id"] == added[-1]["event_id"]
            # The device never saw the errors the sideband provoked: only the item.
            assert [e["type"] for e in client.events] == [
                "session.created",
                "conversation.item.added",
                "conversation.item.done",
            ]
        await sdk.close()
        await client.close()


async def test_realtime_sideband_refusals() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url)
        assert client.call_id is not None
        live = await connected_live_client(emu.url)
        assert live.call_id is not None
        ephemeral = await mint(emu.url)

        async def refused(key: str, call_id: str) -> tuple[int, dict[str, Any]]:
            sdk = sdk_for(emu.url, key)
            with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
                async with sdk.realtime.connect(call_id=call_id):
                    pass
            await sdk.close()
            response = caught.value.response
            return response.status_code, json.loads(response.body or b"{}")

        status, body = await refused("sk-wrong", client.call_id)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await refused(ephemeral, client.call_id)  # the project key only
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await refused(KEY, "rtc_nosuchcall")
        assert (status, body["error"]["code"]) == (404, "call_id_not_found")
        status, body = await refused(KEY, live.call_id)  # a Live session is not a Realtime call
        assert (status, body["error"]["code"]) == (404, "call_id_not_found")

        # A plain GET is not a sideband; nor is a model (the emulator runs no WebSocket sessions).
        async with httpx.AsyncClient(timeout=5) as http:
            auth = {"Authorization": f"Bearer {KEY}"}
            plain = await http.get(emu.url + f"/v1/realtime?call_id={client.call_id}", headers=auth)
            assert plain.status_code == 400
            model = await http.get(emu.url + "/v1/realtime?model=gpt-realtime", headers=auth)
            assert model.json()["error"]["param"] == "model"

        # A call that ended cannot be joined; one joined ends its sideband when it ends.
        sdk = sdk_for(emu.url)
        async with sdk.realtime.connect(call_id=client.call_id) as conn:
            await client.close()
            async with asyncio.timeout(EVENT_TIMEOUT):
                async for event in conn:
                    validate_server_event(event.model_dump(exclude_unset=True))
        await sdk.close()
        await asyncio.wait_for(emu.calls[client.call_id].wait_closed(), EVENT_TIMEOUT)
        status, body = await refused(KEY, client.call_id)
        assert (status, body["error"]["code"]) == (404, "call_id_not_found")
        await live.close()


async def test_live_attach_replays_reflects_audio_and_steers_the_session() -> None:
    async with running_emulator() as emu:
        device = await connected_live_client(emu.url)
        assert device.call_id is not None
        sdk = sdk_for(emu.url)
        async with sdk.live.sideband.connect(
            session_id=device.call_id, graceful_close=True
        ) as conn:
            # Attached within ~3 s of the start: the replay begins with session.started.
            first = json.loads(await conn.recv_bytes())
            validate_live_server_event(first)
            assert first["type"] == "session.started"
            assert first["session"]["id"] == device.call_id

            # The device mutes, then speaks: the model hears silence, the sideband the mic.
            device.send({"type": "session.input_audio.mute", "event_id": "m1"})
            await device.wait_for("session.input_audio.muted")
            device.mic.play(tone(seconds=0.6).audio)
            loud: list[np.ndarray] = []
            async with asyncio.timeout(EVENT_TIMEOUT):
                while sum(len(c) for c in loud) < 24000 * 0.4:
                    event = json.loads(await conn.recv_bytes())
                    validate_live_server_event(event)
                    if event["type"] == "session.input_audio.append":
                        assert "event_id" not in event  # upstream's reflection has none
                        chunk = pcm24(event, "audio")
                        if rms(chunk) > 1000:
                            loud.append(chunk)

            # A commentary from the sideband is spoken to the device and reflected as audio.
            await conn.send(
                {
                    "type": "session.commentary.append",
                    "content": "The companion says hello.",
                    "delegation_id": None,
                    "event_id": "c1",
                }
            )
            reply: list[dict[str, Any]] = []
            appended: dict[str, Any] | None = None
            async with asyncio.timeout(EVENT_TIMEOUT):
                while not reply or sum(e["end_ms"] - e["start_ms"] for e in reply) < 500:
                    event = json.loads(await conn.recv_bytes())
                    validate_live_server_event(event)
                    if event["type"] == "session.commentary.appended":
                        appended = event
                    if event["type"] == "session.output_audio.delta":
                        reply.append(event)
            assert appended is not None and appended["client_event_id"] == "c1"
            assert rms(np.concatenate([pcm24(e, "delta") for e in reply])) > 500
            assert all(e["end_ms"] - e["start_ms"] == 20 for e in reply)
            assert [e["start_ms"] for e in reply] == sorted(e["start_ms"] for e in reply)
            await device.wait_for("session.output_transcript.delta")

            await conn.send({"type": "session.close", "event_id": "end"})
            closed: dict[str, Any] | None = None
            async for parsed in conn:  # ends without an error: the graceful close was asked for
                event = parsed.model_dump(exclude_unset=True)
                validate_live_server_event(event)
                if event["type"] == "session.closed":
                    closed = event
            assert closed is not None
            assert closed["reason"] == "close_requested"
            usage = closed["usage"]
            assert usage["seconds"] == usage["active_seconds"] + usage["paused_seconds"]
            assert usage["seconds"] >= 15 and usage["paused_seconds"] == 0
            device_closed = await device.wait_for("session.closed")
            assert device_closed["usage"] == usage
        await sdk.close()
        await device.close()


async def test_live_attach_without_graceful_close_is_dropped_and_refusals() -> None:
    async with running_emulator() as emu:
        device = await connected_live_client(emu.url)
        realtime = await connected_client(emu.url)
        assert device.call_id is not None and realtime.call_id is not None
        await asyncio.sleep(3.3)  # past the replay window: session.started is not replayed
        sdk = sdk_for(emu.url)
        async with sdk.live.sideband.connect(session_id=device.call_id) as conn:
            replayed = json.loads(await conn.recv_bytes())
            validate_live_server_event(replayed)
            assert replayed["type"] == "session.input_audio.append"

            for kind in ("session.start", "session.input_audio.append"):
                await conn.send_raw(json.dumps({"type": kind, "event_id": kind, "audio": ""}))
                error = (await collect(conn, "error", validate_live_server_event))[-1]
                assert error["error"]["code"] == "invalid_event"
                assert error["client_event_id"] == kind
            await conn.send_raw("[]")
            error = (await collect(conn, "error", validate_live_server_event))[-1]
            assert error["error"]["code"] == "invalid_json"
            await conn.send({"type": "session.update", "session": {}, "event_id": "u1"})
            await collect(conn, "session.updated", validate_live_server_event)
            await device.wait_for("session.updated")
            assert "error" not in device.types()  # the sideband's errors were its own

            device.send({"type": "session.close"})
            with pytest.raises(websockets.exceptions.ConnectionClosedError):
                async with asyncio.timeout(EVENT_TIMEOUT):
                    async for parsed in conn:
                        validate_live_server_event(parsed.model_dump(exclude_unset=True))
        await sdk.close()

        async def refused(path: str, key: str = KEY) -> tuple[int, dict[str, Any]]:
            url = emu.url.replace("http", "ws") + path
            with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
                async with websockets.connect(
                    url, additional_headers={"Authorization": f"Bearer {key}"}
                ):
                    pass
            response = caught.value.response
            return response.status_code, json.loads(response.body or b"{}")

        await asyncio.wait_for(emu.calls[device.call_id].wait_closed(), EVENT_TIMEOUT)
        status, body = await refused(f"/v1/live/sessions/{device.call_id}/attach")
        assert (status, body["error"]["code"]) == (404, "session_not_found")  # it has ended
        status, body = await refused(f"/v1/live/sessions/{realtime.call_id}/attach")
        assert (status, body["error"]["code"]) == (404, "session_not_found")
        live = await connected_live_client(emu.url)
        status, body = await refused(f"/v1/live/sessions/{live.call_id}/attach", "sk-wrong")
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await refused(f"/v1/live/sessions/{live.call_id}/attach?graceful_close=1")
        assert (status, body["error"]["param"]) == (400, "graceful_close")
        await live.close()
        await realtime.close()
        await device.close()


async def test_live_data_channel_permissions_do_not_bind_the_sideband() -> None:
    """`client.data_channel` restricts the device's channel only: the sideband still sees the
    events withheld from the device, and may send what the device may not."""
    channel = {
        "allowed_client_events": ["session.close"],
        "allowed_server_events": [{"type": "session.started"}, {"type": "session.closed"}],
    }
    async with running_emulator() as emu:
        device = await connected_live_client(emu.url, client={"data_channel": channel})
        assert device.call_id is not None
        engine = emu.calls[device.call_id].engine
        async with sdk_for(emu.url).live.sideband.connect(
            session_id=device.call_id, graceful_close=True
        ) as conn:
            await conn.send(
                {
                    "type": "session.commentary.append",
                    "content": "Only the companion may say this.",
                    "delegation_id": None,
                    "event_id": "c1",
                }
            )
            seen = await collect(
                conn, "session.output_transcript.delta", validate_live_server_event
            )
            types = [e["type"] for e in seen]
            assert "error" not in types
            assert "session.commentary.appended" in types  # withheld from the device only
            assert engine.withheld["session.output_transcript.delta"] >= 1
            # The device itself may not send it.
            device.send(
                {"type": "session.commentary.append", "content": "x", "delegation_id": None}
            )
            await asyncio.sleep(0.5)
            assert "error" not in device.types()  # errors are not permitted on its channel either
            assert engine.withheld["error"] >= 1
            await conn.send({"type": "session.close"})
        await device.close()
