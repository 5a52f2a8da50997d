"""The emulator's HTTP side: every endpoint and status, over real HTTP on loopback, plus the
official `openai` SDK used unchanged against it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from openai.types.realtime.client_secret_create_response import ClientSecretCreateResponse

from emulator_helpers import KEY, RealtimeClient, mint, running_emulator

AUTH = {"Authorization": f"Bearer {KEY}"}


async def post(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(url, **kwargs)


def assert_envelope(
    response: httpx.Response, status: int, code: str | None, param: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert error["message"]
    return error


async def offer_sdp(*, audio: bool = True, data: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if data:
        pc.createDataChannel("oai-events")
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


# -- client_secrets ------------------------------------------------------------------------------


async def test_client_secret_returns_key_and_effective_session() -> None:
    async with running_emulator() as emu:
        before = int(time.time())
        response = await post(
            emu.url + "/v1/realtime/client_secrets",
            headers=AUTH,
            json={
                "expires_after": {"anchor": "created_at", "seconds": 120},
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime",
                    "instructions": "Be brief.",
                    "audio": {"output": {"voice": "cedar"}},
                },
            },
        )
        assert response.status_code == 200
        body = response.json()
        parsed = ClientSecretCreateResponse.model_validate(body)
        assert parsed.value.startswith("ek_")
        assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
        session = body["session"]
        assert session["instructions"] == "Be brief."
        assert session["audio"]["output"]["voice"] == "cedar"
        # Defaults the client did not send are filled in.
        assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        assert session["output_modalities"] == ["audio"]

        default = await post(emu.url + "/v1/realtime/client_secrets", headers=AUTH, json={})
        assert default.status_code == 200
        assert default.json()["expires_at"] - int(time.time()) in range(598, 601)


IDLE_4S = {"type": "server_vad", "idle_timeout_ms": 4999}
IDLE_31S = {"type": "server_vad", "idle_timeout_ms": 30001}
LOUD = {"type": "server_vad", "threshold": 1.01}
WHISPER = {"model": "gpt-realtime-whisper"}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"session": {"model": "gpt-realtime"}}, "session.type", "missing_required_parameter"),
        ({"session": {"type": "conversation"}}, "session.type", "invalid_value"),
        (
            {"session": {"type": "realtime", "audio": {"output": {"voice": "robot"}}}},
            "session.audio.output.voice",
            "invalid_value",
        ),
        ({"expires_after": {"seconds": 9}}, "expires_after.seconds", "integer_below_min_value"),
        ({"expires_after": {"seconds": 7201}}, "expires_after.seconds", "integer_above_max_value"),
        (
            {"session": {"type": "realtime", "audio": {"input": {"turn_detection": IDLE_4S}}}},
            "session.audio.input.turn_detection.idle_timeout_ms",
            "integer_below_min_value",
        ),
        (
            {"session": {"type": "realtime", "audio": {"input": {"turn_detection": IDLE_31S}}}},
            "session.audio.input.turn_detection.idle_timeout_ms",
            "integer_above_max_value",
        ),
        (
            {"session": {"type": "realtime", "audio": {"input": {"turn_detection": LOUD}}}},
            "session.audio.input.turn_detection.threshold",
            "decimal_above_max_value",
        ),
        (
            {"session": {"type": "realtime", "max_output_tokens": 4097}},
            "session.max_output_tokens",
            "integer_above_max_value",
        ),
        (
            {"session": {"type": "realtime", "max_output_tokens": 0}},
            "session.max_output_tokens",
            "integer_below_min_value",
        ),
        (
            {"session": {"type": "realtime", "audio": {"output": {"speed": 1.6}}}},
            "session.audio.output.speed",
            "decimal_above_max_value",
        ),
        (
            {"session": {"type": "realtime", "audio": {"output": {"speed": 0.2}}}},
            "session.audio.output.speed",
            "decimal_below_min_value",
        ),
        (
            {"session": {"type": "realtime", "model": "gpt-5-realtime"}},
            "session.model",
            "invalid_value",
        ),
        (
            {"session": {"type": "transcription", "audio": {"input": {"transcription": WHISPER}}}},
            "session.audio.input.turn_detection",
            "invalid_value",
        ),
        (
            {
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"model": "whisper-9"}}},
                }
            },
            "session.audio.input.transcription.model",
            "invalid_value",
        ),
    ],
)
async def test_client_secret_rejects_bad_sessions(body: dict, param: str, code: str) -> None:
    async with running_emulator() as emu:
        response = await post(emu.url + "/v1/realtime/client_secrets", headers=AUTH, json=body)
        error = assert_envelope(response, 400, code, param)
        assert error["type"] == "invalid_request_error"


async def test_client_secret_needs_the_standard_key() -> None:
    async with running_emulator() as emu:
        url = emu.url + "/v1/realtime/client_secrets"
        assert_envelope(await post(url, json={}), 401, None)
        wrong = await post(url, json={}, headers={"Authorization": "Bearer sk-wrong"})
        assert_envelope(wrong, 401, "invalid_api_key")
        ephemeral = await mint(emu.url)
        with_ek = await post(url, json={}, headers={"Authorization": f"Bearer {ephemeral}"})
        assert_envelope(with_ek, 401, "invalid_api_key")
        garbage = await post(
            url, content=b"{nope", headers={**AUTH, "Content-Type": "application/json"}
        )
        assert_envelope(garbage, 400, None)


# -- calls ---------------------------------------------------------------------------------------


async def test_call_with_ephemeral_key_answers_201_and_hangup_closes_the_peer() -> None:
    async with running_emulator() as emu:
        key = await mint(emu.url)
        client = RealtimeClient()
        offer = await client.offer()
        assert offer.endswith("\r\n")
        response = await post(
            emu.url + "/v1/realtime/calls",
            content=offer.encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
        )
        assert response.status_code == 201
        assert response.headers["content-type"] == "application/sdp"
        location = response.headers["location"]
        assert location.startswith("/v1/realtime/calls/rtc_")
        call_id = location.rsplit("/", 1)[1]
        assert "a=setup:active" in response.text
        await client.accept(response.text)
        assert (await client.next_event())["type"] == "session.created"
        call = emu.calls[call_id]
        assert call.connection_state == "connected"

        hangup = await post(
            emu.url + f"{location}/hangup", headers={"Authorization": f"Bearer {key}"}
        )
        assert hangup.status_code == 200
        assert call.closed and call.close_reason == "hung up by the client"
        await asyncio.wait_for(client.channel_closed.wait(), 5)
        await client.close()

        missing = await post(emu.url + "/v1/realtime/calls/rtc_nope/hangup", headers=AUTH)
        assert_envelope(missing, 404, "call_not_found")
        assert_envelope(await post(emu.url + f"{location}/hangup"), 401, None)


async def test_call_with_standard_key_and_sdp_body() -> None:
    async with running_emulator() as emu:
        client = RealtimeClient()
        await client.connect(emu.url, KEY)
        created = await client.next_event()
        assert created["session"]["model"] == "gpt-realtime"
        await client.close()


async def test_multipart_call_carries_the_session() -> None:
    async with running_emulator() as emu:
        client = RealtimeClient()
        offer = await client.offer()
        session = {
            "type": "realtime",
            "instructions": "Unified.",
            "audio": {"output": {"voice": "sage"}},
        }
        response = await post(
            emu.url + "/v1/realtime/calls",
            headers=AUTH,
            files={
                "sdp": (None, offer, "application/sdp"),
                "session": (None, json.dumps(session), "application/json"),
            },
        )
        assert response.status_code == 201, response.text
        await client.accept(response.text)
        created = await client.next_event()
        assert created["session"]["instructions"] == "Unified."
        assert created["session"]["audio"]["output"]["voice"] == "sage"
        await client.close()

        bad_session = await post(
            emu.url + "/v1/realtime/calls",
            headers=AUTH,
            files={
                "sdp": (None, await offer_sdp(), "application/sdp"),
                "session": (
                    None,
                    json.dumps({"type": "realtime", "audio": {"output": {"voice": "x"}}}),
                    "application/json",
                ),
            },
        )
        assert_envelope(bad_session, 400, "invalid_value", "session.audio.output.voice")


@pytest.mark.parametrize("case", ["garbage", "no-audio", "no-datachannel", "empty"])
async def test_unusable_offers_get_invalid_offer(case: str) -> None:
    async with running_emulator() as emu:
        body = {
            "garbage": "this is not sdp",
            "empty": "",
            "no-audio": await offer_sdp(audio=False),
            "no-datachannel": await offer_sdp(data=False),
        }[case]
        response = await post(
            emu.url + "/v1/realtime/calls",
            content=body.encode(),
            headers={**AUTH, "Content-Type": "application/sdp"},
        )
        error = assert_envelope(response, 400, "invalid_offer")
        expected = {"no-audio": "audio m-line", "no-datachannel": "data channel"}.get(case, "SDP")
        assert expected in error["message"]
        assert not emu.calls


async def test_unknown_and_expired_keys_get_401() -> None:
    now = [1_000_000.0]
    async with running_emulator(clock=lambda: now[0]) as emu:
        key = await mint(emu.url, expires_after={"seconds": 10})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"}
        url = emu.url + "/v1/realtime/calls"
        assert (
            await post(url, content=(await offer_sdp()).encode(), headers=headers)
        ).status_code == 201
        now[0] += 11  # the key has expired; the call it started would go on
        expired = await post(url, content=(await offer_sdp()).encode(), headers=headers)
        assert_envelope(expired, 401, "invalid_api_key")
        unknown = await post(
            url,
            content=(await offer_sdp()).encode(),
            headers={"Authorization": "Bearer ek_unknown", "Content-Type": "application/sdp"},
        )
        assert_envelope(unknown, 401, "invalid_api_key")
        anonymous = await post(url, content=b"v=0", headers={"Content-Type": "application/sdp"})
        assert_envelope(anonymous, 401, None)


# -- legacy beta ---------------------------------------------------------------------------------


async def test_beta_sessions_and_beta_call() -> None:
    async with running_emulator() as emu:
        response = await post(
            emu.url + "/v1/realtime/sessions",
            headers=AUTH,
            json={
                "model": "gpt-4o-realtime-preview-2024-12-17",
                "voice": "verse",
                "instructions": "Old.",
            },
        )
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "realtime.session"
        assert body["voice"] == "verse" and body["instructions"] == "Old."
        assert body["model"] == "gpt-4o-realtime-preview-2024-12-17"
        secret = body["client_secret"]
        assert secret["value"].startswith("ek_")
        assert secret["expires_at"] - int(time.time()) in range(58, 61)  # beta keys live 60 s

        bad = await post(emu.url + "/v1/realtime/sessions", headers=AUTH, json={"voice": "robot"})
        assert_envelope(bad, 400, "invalid_value", "audio.output.voice")

        client = RealtimeClient()
        await client.connect(
            emu.url, secret["value"], path="/v1/realtime?model=gpt-4o-realtime-preview-2024-12-17"
        )
        created = await client.next_event()
        assert created["session"]["model"] == "gpt-4o-realtime-preview-2024-12-17"
        await client.close()

        # With the standard key, ?model= picks the model.
        standard = RealtimeClient()
        await standard.connect(emu.url, KEY, path="/v1/realtime?model=gpt-realtime-mini")
        assert (await standard.next_event())["session"]["model"] == "gpt-realtime-mini"
        await standard.close()


async def test_healthz() -> None:
    async with running_emulator() as emu, httpx.AsyncClient() as http:
        response = await http.get(emu.url + "/healthz")
        assert response.json() == {"status": "ok", "open_calls": 0}


# -- the official SDK, unchanged -----------------------------------------------------------------


async def test_official_sdk_mints_and_calls() -> None:
    async with running_emulator() as emu:
        sdk = openai.OpenAI(base_url=emu.url + "/v1", api_key=KEY, max_retries=0)
        secret = await asyncio.to_thread(
            sdk.realtime.client_secrets.create,
            expires_after={"anchor": "created_at", "seconds": 300},
            session={
                "type": "realtime",
                "model": "gpt-realtime",
                "audio": {"output": {"voice": "ash"}},
            },
        )
        assert secret.value.startswith("ek_")
        assert secret.session.type == "realtime"
        assert secret.session.audio is not None and secret.session.audio.output.voice == "ash"

        client = RealtimeClient()
        offer = await client.offer()
        answer = await asyncio.to_thread(sdk.realtime.calls.create, sdp=offer)
        await client.accept(answer.text)
        created = await client.next_event()
        assert created["type"] == "session.created"
        await client.close()

        with pytest.raises(openai.BadRequestError) as caught:
            await asyncio.to_thread(
                sdk.realtime.client_secrets.create,
                session={"type": "realtime", "audio": {"output": {"voice": "robot"}}},
            )
        assert caught.value.code == "invalid_value"
        bad_key = openai.OpenAI(base_url=emu.url + "/v1", api_key="sk-nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(bad_key.realtime.client_secrets.create)
        sdk.close()
        bad_key.close()


# -- what a browser calling the API directly needs ------------------------------------------------

ORIGIN = {"Origin": "http://app.example:3000"}


@pytest.mark.parametrize("path", ["/v1/realtime/calls", "/v1/realtime/client_secrets"])
async def test_preflight_is_answered(path: str) -> None:
    async with running_emulator() as emu, httpx.AsyncClient(timeout=10) as http:
        response = await http.options(
            emu.url + path,
            headers={
                **ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert "POST" in response.headers["access-control-allow-methods"]
        allowed = response.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert not emu.calls


async def test_every_answer_carries_cors_headers_and_exposes_location() -> None:
    async with running_emulator() as emu:
        key = await mint(emu.url)
        client = RealtimeClient()
        offer = await client.offer()
        async with httpx.AsyncClient(timeout=10) as http:
            created = await http.post(
                emu.url + "/v1/realtime/calls",
                content=offer.encode(),
                headers={
                    **ORIGIN,
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "application/sdp",
                },
            )
            refused = await http.post(
                emu.url + "/v1/realtime/calls",
                content=offer.encode(),
                headers={
                    **ORIGIN,
                    "Authorization": "Bearer ek_wrong",
                    "Content-Type": "application/sdp",
                },
            )
            minted = await http.post(
                emu.url + "/v1/realtime/client_secrets", json={}, headers={**ORIGIN, **AUTH}
            )
            bad = await http.post(
                emu.url + "/v1/realtime/client_secrets",
                json={"expires_after": {"seconds": 1}},
                headers={**ORIGIN, **AUTH},
            )
        assert created.status_code == 201
        assert "location" in created.headers["access-control-expose-headers"].lower()
        for response in (created, refused, minted, bad):
            assert response.headers["access-control-allow-origin"] == "*", response.status_code
        assert_envelope(refused, 401, "invalid_api_key")
        assert_envelope(bad, 400, "integer_below_min_value", "expires_after.seconds")
        await client.close()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/realtime/nothing-here", 404),
        ("POST", "/v1/models/gpt-realtime", 404),
        ("GET", "/v1/realtime/client_secrets", 405),
        ("PUT", "/v1/realtime/calls", 405),
    ],
)
async def test_unknown_routes_and_methods_answer_in_the_error_envelope(
    method: str, path: str, status: int
) -> None:
    async with running_emulator() as emu, httpx.AsyncClient(timeout=10) as http:
        response = await http.request(method, emu.url + path, headers=ORIGIN)
        error = assert_envelope(response, status, None)
        assert error["type"] == "invalid_request_error"
        assert error["message"] == f"Invalid URL ({method} {path})"
        assert response.headers["access-control-allow-origin"] == "*"
        if status == 405:
            assert "POST" in response.headers["allow"]
