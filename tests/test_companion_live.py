"""The companion's GPT-Live side: a device's offer relayed to `POST /v1/live/sessions` with the
owner's `[live]` policy, against the real emulator as upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator_helpers import RealtimeClient, companion_config_file, running_emulator
from wakertc.companion import Companion, DeviceStore, load_companion_config
from wakertc.companion.config import CompanionConfigError

END = {"type": "function", "name": "end_conversation", "parameters": {"type": "object"}}
LIGHTS = {"type": "function", "name": "lights", "parameters": {"type": "object"}}


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting the requests that go upstream."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def live_session(url: str, token: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(
            url + "/v1/live/session", json=body, headers={"Authorization": f"Bearer {token}"}
        )


async def test_a_device_offer_becomes_a_live_session_with_the_owners_policy(
    tmp_path: Path,
) -> None:
    policy = '[live]\nvoice = "cedar"\ninstructions = "From the owner."\n'
    async with running_emulator() as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url, policy))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config) as companion:
            client = RealtimeClient()
            offer = await client.offer()
            response = await live_session(
                companion.url, token, {"sdp": offer, "tools": [END, LIGHTS]}
            )
            assert response.status_code == 201, response.text
            body = response.json()
            await client.accept(body["transport"]["sdp"])
            started = await client.wait_for("session.started")
            assert started["session"]["id"] == body["session"]["id"]
            session = started["session"]
            assert session["audio"]["output"]["voice"] == "cedar"
            assert session["instructions"] == "From the owner."
            backend = session["delegation"]["responses"]
            # Only the tools the policy allows (by default end_conversation) are offered.
            assert [t["name"] for t in backend["tools"]] == ["end_conversation"]
            channel = session["client"]["data_channel"]
            assert set(channel["allowed_client_events"]) == {
                "session.close",
                "session.input_audio.mute",
                "session.input_audio.unmute",
                "session.instructions.append",
                "session.commentary.append",
                "response.item.create",
                "response.create",
            }
            # Of the backend's stream, the calls and how their response ended (the Responses
            # API's names: the emulator refuses names that do not exist, e.g. `response.done`).
            nested = {
                s["response_event"]
                for s in channel["allowed_server_events"]
                if s["type"] == "response.event"
            }
            assert nested == {
                "response.output_item.done",
                "response.completed",
                "response.failed",
                "response.incomplete",
            }
            info = await client.next_event()  # the channel is restricted, and says so
            assert (info["type"], info["code"]) == ("info", "data_channel_permissions")
            await client.close()


async def test_upstream_failure_is_named_and_never_retried(tmp_path: Path) -> None:
    async with running_emulator(faults=("calls-500",)) as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url))
        token = DeviceStore(config.devices_file).add("kitchen")
        transport = CountingTransport()
        async with Companion(config, transport=transport) as companion:
            response = await live_session(companion.url, token, {"sdp": "v=0\r\n"})
        assert response.status_code == 502
        error = response.json()["error"]
        assert "status 500" in error["message"] and error["code"] == "upstream_error"
        assert transport.paths == ["/v1/live/sessions"]  # once: each creation is billed


async def test_bad_requests_and_tokens_are_refused_before_upstream(tmp_path: Path) -> None:
    async with running_emulator() as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url))
        token = DeviceStore(config.devices_file).add("kitchen")
        transport = CountingTransport()
        async with Companion(config, transport=transport) as companion:
            no_offer = await live_session(companion.url, token, {"tools": []})
            bad_tools = await live_session(companion.url, token, {"sdp": "v=0", "tools": "x"})
            stranger = await live_session(companion.url, "not-a-token", {"sdp": "v=0"})
        assert (no_offer.status_code, no_offer.json()["error"]["code"]) == (400, "missing_offer")
        assert (bad_tools.status_code, bad_tools.json()["error"]["code"]) == (400, "invalid_tools")
        assert stranger.status_code == 401
        assert transport.paths == []


async def test_rate_limits_count_keys_and_live_sessions_together(tmp_path: Path) -> None:
    extra = "[limits]\nper_device_per_minute = 2\n"
    async with running_emulator() as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url, extra))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config) as companion:
            async with httpx.AsyncClient(timeout=10) as http:
                key = await http.post(
                    companion.url + "/v1/session", headers={"Authorization": f"Bearer {token}"}
                )
            client = RealtimeClient()
            live = await live_session(companion.url, token, {"sdp": await client.offer()})
            third = await live_session(companion.url, token, {"sdp": await client.offer()})
            await client.close()
        assert (key.status_code, live.status_code) == (200, 201)
        assert third.status_code == 429 and int(third.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[live]\nmodel = "gpt-realtime"\n', "live.model"),
        ('[live]\nvoice = "robot"\n', "live.voice"),
        ('[live]\ndelegation = "decisions"\n', "live.delegation"),
        ("[live]\ndevice_tools = [1]\n", "live.device_tools"),
        ("[live]\nturn_detection = {}\n", "live.turn_detection"),
    ],
)
def test_live_policy_is_checked_at_load(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(CompanionConfigError, match=f": {key}: "):
        load_companion_config(companion_config_file(tmp_path, "http://127.0.0.1:9", extra))


@pytest.mark.parametrize("delegation", ["responses", "client"])
async def test_server_tools_go_to_the_backend_and_their_names_to_the_device(
    tmp_path: Path, delegation: str
) -> None:
    """Responses delegation: the companion's server tools are the backend's first tools (a
    device tool of the same name is dropped), one call per response, and the 201 names them;
    client delegation has no tools, so none are named. The secret is in neither."""
    secret = tmp_path / "ha-token"
    secret.write_text("Bearer ha-secret-0b7e\n")
    secret.chmod(0o600)
    async with running_emulator() as emu:
        path = companion_config_file(tmp_path, emu.url, f'[live]\ndelegation = "{delegation}"\n')
        path.write_text(
            path.read_text()
            + '\n[[server_tools]]\nname = "light_on"\ndescription = "Turn on a light."\n'
            + f'url = "http://127.0.0.1:9/x"\nheader_files = {{ Authorization = "{secret}" }}\n'
        )
        config = load_companion_config(path)
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config) as companion:
            client = RealtimeClient()
            light = {"type": "function", "name": "light_on", "description": "device's"}
            response = await live_session(
                companion.url, token, {"sdp": await client.offer(), "tools": [END, light]}
            )
            assert response.status_code == 201, response.text
            await client.accept(response.json()["transport"]["sdp"])
            started = await client.wait_for("session.started")
            await client.close()
    assert "ha-secret-0b7e" not in response.text + str(started)
    named = response.json()["server_tools"]
    session = started["session"]
    if delegation == "client":
        assert named == [] and session["delegation"] == {"type": "client"}
        return
    assert named == ["light_on"]
    backend = session["delegation"]["responses"]
    assert [t["name"] for t in backend["tools"]] == ["light_on", "end_conversation"]
    assert backend["tools"][0]["description"] == "Turn on a light."
    assert backend["parallel_tool_calls"] is False
