"""The companion as control plane: it joins every session a device opens (Realtime: the call id
the device reports; GPT-Live: the session it created), meters it to the token, runs its own tools
whose secrets never reach the device, reverts a device that changes the policy, and ends a session
after a spoken notice. Real emulator, real companion, real daemon (tests/chain.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from chain import clip, run_chain
from emulator_helpers import KEY, RealtimeClient, running_emulator
from wakertc.companion.config import CompanionConfigError, load_companion_config
from wakertc.companion.pricing import Pricing
from wakertc.companion.sideband import JOIN_ATTEMPTS, SessionWatcher
from wakertc.companion.store import UsageEntry
from wakertc.config import CompanionConfig as CompanionSettings
from wakertc.config import ToolConfig
from wakertc.keys import CompanionClient
from wakertc.session.realtime import session_update
from wakertc.state import Phase
from wakertc.tools import ToolRunner

DEVICE = "demo-device"
HA_TOKEN = "ha-secret-3f9c2d7b1e8a4c6d"
MEMORY = "Earlier you told me my name is Ada and that I like jazz."


async def joined(chain: Any, timeout: float = 10.0) -> SessionWatcher:
    """The companion's watcher of the device's running session, once it has joined."""
    async with asyncio.timeout(timeout):
        while not chain.companion.sidebands.sessions(DEVICE):
            await asyncio.sleep(0.02)
    (watcher,) = chain.companion.sidebands.sessions(DEVICE)
    assert await watcher.wait_joined(timeout)
    return watcher


def emitted(chain: Any, call: int = -1) -> list[dict[str, Any]]:
    """Server events of a call (what both the device and the sideband were sent)."""
    return chain.received(call)


def via_sideband(chain: Any, call: int = -1) -> list[dict[str, Any]]:
    """Client events the companion sent on its sideband (the emulator's in-memory record)."""
    return [
        e["event"]
        for e in chain.calls()[call].events
        if e["dir"] == "in" and e.get("via") == "sideband" and "event" in e
    ]


def via_device(chain: Any, call: int = -1) -> list[dict[str, Any]]:
    """Client events the device sent on its data channel."""
    return [
        e["event"]
        for e in chain.calls()[call].events
        if e["dir"] == "in" and e.get("via") != "sideband" and "event" in e
    ]


def token_sums(entries: list[UsageEntry]) -> dict[str, int]:
    return {
        "input_text": sum(e.input_text_tokens for e in entries),
        "input_audio": sum(e.input_audio_tokens for e in entries),
        "cached": sum(e.input_cached_tokens for e in entries),
        "output_text": sum(e.output_text_tokens for e in entries),
        "output_audio": sum(e.output_audio_tokens for e in entries),
    }


def reported_sums(events: list[dict[str, Any]]) -> dict[str, int]:
    sums = dict.fromkeys(("input_text", "input_audio", "cached", "output_text", "output_audio"), 0)
    for e in events:
        if e["type"] != "response.done":
            continue
        usage = e["response"]["usage"]
        sums["input_text"] += usage["input_token_details"]["text_tokens"]
        sums["input_audio"] += usage["input_token_details"]["audio_tokens"]
        sums["cached"] += usage["input_token_details"]["cached_tokens"]
        sums["output_text"] += usage["output_token_details"]["text_tokens"]
        sums["output_audio"] += usage["output_token_details"]["audio_tokens"]
    return sums


async def test_realtime_usage_is_metered_to_the_token(tmp_path, models_dir):
    """The device reports its call; the companion joins it and its entries add up, to the
    token, to the usage the emulator reported in every response.done, priced by the table."""
    pricing = """
[pricing.realtime.gpt-realtime]
input_text = 4.0
input_audio = 32.0
input_cached_text = 0.4
input_cached_audio = 0.4
output_text = 16.0
output_audio = 64.0
"""
    memory = f"[memory]\ndevices = [{DEVICE!r}]\n"
    async with run_chain(
        tmp_path, models_dir, reply="tone", companion_extra=pricing + memory
    ) as chain:
        # A turn remembered from an earlier conversation (the store's memory).
        await chain.companion.store.remember(DEVICE, "user", MEMORY, time.time() - 60)
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        watcher = await joined(chain)
        assert watcher.api == "realtime" and watcher.session_id == chain.calls()[0].id
        async with asyncio.timeout(5):  # the earlier turns went in before the user spoke
            while not [e for e in via_sideband(chain) if e["type"] == "conversation.item.create"]:
                await asyncio.sleep(0.02)
        (created,) = via_sideband(chain)
        assert created["item"]["content"][0]["text"] == MEMORY
        for text in ("what is the weather like today", "and what about tomorrow"):
            chain.mic.speak(clip(text))
            await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING)
        await chain.press()
        await chain.expect(Phase.IDLE)
        async with asyncio.timeout(5):
            await watcher.wait_over()
        assert not chain.companion.sidebands.sessions(DEVICE)
        await chain.companion.control.drain()
        ledger = await chain.companion.store.usage(DEVICE, 0.0)
    # The ledger: one entry per response, and the session's last stretch of time at its end.
    entries = [entry for entry in ledger if entry.event_id != "session_over"]
    (over,) = [entry for entry in ledger if entry.event_id == "session_over"]
    assert over.tokens == 0 and over.cost_usd == 0.0
    minutes = sum(entry.seconds for entry in ledger)
    assert 2.0 < minutes < 60.0, ledger  # the call's wall-clock time
    reported = reported_sums(emitted(chain))
    assert len(entries) == 2
    assert reported["input_audio"] > 0 and reported["output_audio"] > 0
    assert token_sums(entries) == reported
    assert {e.device for e in entries} == {DEVICE}
    # The remembered turn is part of what the first response read (and was billed for).
    instructions = chain.companion.config.session.instructions
    assert entries[0].input_text_tokens == len(instructions) // 4 + len(MEMORY) // 4
    assert len({e.event_id for e in entries}) == 2
    by_response = {
        e["response"]["id"]: e["response"]["usage"]
        for e in emitted(chain)
        if e["type"] == "response.done"
    }
    for entry in entries:
        usage = by_response[entry.event_id]
        details, cached = (
            usage["input_token_details"],
            usage["input_token_details"]["cached_tokens_details"],
        )
        expected = (
            (details["text_tokens"] - cached["text_tokens"]) * 4.0
            + (details["audio_tokens"] - cached["audio_tokens"]) * 32.0
            + cached["text_tokens"] * 0.4
            + cached["audio_tokens"] * 0.4
            + usage["output_token_details"]["text_tokens"] * 16.0
            + usage["output_token_details"]["audio_tokens"] * 64.0
        ) / 1e6
        assert entry.cost_usd == pytest.approx(expected, rel=1e-12)
        assert entry.cost_usd > 0


async def test_live_usage_deltas_add_up_to_the_closed_sessions_seconds(tmp_path, models_dir):
    """GPT-Live: the companion attaches to the session it created at once; its entries are
    deltas of the cumulative seconds and add up to what `session.closed` reported."""
    async with run_chain(tmp_path, models_dir, reply="tone", api="live") as chain:
        entries: list[UsageEntry] = []
        chain.companion.hooks.on_usage = entries.append
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        watcher = await joined(chain)
        assert watcher.api == "live"
        await asyncio.sleep(2.5)
        await chain.press()
        await chain.expect(Phase.IDLE)
        async with asyncio.timeout(5):
            await watcher.wait_over()
    closed = [e for e in emitted(chain) if e["type"] == "session.closed"]
    assert len(closed) == 1
    assert entries
    assert sum(e.seconds for e in entries) == closed[0]["usage"]["seconds"]
    assert sum(e.cost_usd for e in entries) == pytest.approx(
        closed[0]["usage"]["seconds"] / 60 * 0.06
    )


async def test_end_speaks_the_notice_then_hangs_up_within_3_s(tmp_path, models_dir):
    """`end(notice)` from the companion: the notice is played on the device, then the call is
    hung up, and the device is idle within 3 s."""
    script = [{"say": "Your allowance is used up."}]
    async with run_chain(tmp_path, models_dir, script=script) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        watcher = await joined(chain)
        started = time.monotonic()
        await watcher.end("Your allowance for today is used up.")
        idle = await chain.wait_phase(Phase.IDLE, timeout=5)
        assert idle.t - started <= 3.0, idle.t - started
        assert idle.reason == "conversation over (the companion ended the session)"
        notice = [e for e in via_sideband(chain) if e["type"] == "response.create"]
        assert "allowance" in notice[0]["response"]["instructions"]
        assert chain.calls()[0].close_reason == "hung up by the client"
        assert chain.mic.audible_s(started, idle.t) >= 1.0  # the notice was played
        assert watcher.over


class HomeAssistant:
    """A loopback REST server that, like Home Assistant, wants a long-lived bearer token."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/services/light/turn_on", self._turn_on)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _turn_on(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {HA_TOKEN}":
            self.refused += 1
            return web.json_response({"message": "unauthorized"}, status=401)
        body = await request.json()
        self.requests.append(body)
        return web.json_response([{"entity_id": body["entity_id"], "state": "on"}])


def light_tool(ha: HomeAssistant, tmp_path: Path) -> str:
    """The companion's `light_on` server tool, its bearer token in a secret file."""
    secret = tmp_path / "ha-token"
    secret.write_text(f"Bearer {HA_TOKEN}\n")
    secret.chmod(0o600)
    return f"""
[[server_tools]]
name = "light_on"
description = "Turn on a light."
parameters = '{{"type": "object", "properties": {{"entity_id": {{"type": "string"}}}}}}'
method = "POST"
url = "{ha.url}/api/services/light/turn_on"
header_files = {{ Authorization = "{secret}" }}
timeout_s = 5
"""


LIGHT_SCRIPT = [
    {
        "say": "One moment.",
        "call": {"name": "light_on", "arguments": {"entity_id": "light.kitchen"}},
    },
    {"say": "The kitchen light is on."},
]


async def test_a_server_tool_runs_on_the_companion_and_its_secret_stays_there(tmp_path, models_dir):
    """The model calls a server tool: the companion runs it with the secret header from its
    file, sends the output and asks for the reply through the sideband; the device leaves the
    call alone; the token is nowhere on the device's side."""
    ha = HomeAssistant()
    await ha.start()
    extra = light_tool(ha, tmp_path)
    script = LIGHT_SCRIPT
    try:
        async with run_chain(
            tmp_path / "chain", models_dir, script=script, companion_extra=extra
        ) as chain:
            turns: list[tuple[str, str, str]] = []
            chain.companion.hooks.on_turn = lambda *turn: turns.append(turn)
            await chain.press()
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            await joined(chain)
            chain.mic.speak(clip("turn on the kitchen light"))
            await chain.expect(Phase.THINKING, Phase.SPEAKING)
            # The second (scripted) reply is the one the tool's output asked for.
            async with asyncio.timeout(10):
                while len([e for e in emitted(chain) if e["type"] == "response.done"]) < 2:
                    await asyncio.sleep(0.05)
            await chain.wait_phase(Phase.LISTENING, timeout=10)
            token = chain.config.companion.token_file.read_text().strip()
            async with httpx.AsyncClient() as http:
                minted = await http.post(
                    f"{chain.companion.url}/v1/session",
                    headers={"Authorization": f"Bearer {token}"},
                )
            mint_text = minted.text
            device_config = chain.config.source.read_text()
        assert ha.requests == [{"entity_id": "light.kitchen"}] and ha.refused == 0
        assert (DEVICE, "assistant", "The kitchen light is on.") in turns
        call_id = next(
            e["call_id"]
            for e in emitted(chain)
            if e["type"] == "response.function_call_arguments.done"
        )
        sideband = via_sideband(chain)
        outputs = [
            i
            for i, e in enumerate(sideband)
            if e["type"] == "conversation.item.create" and e["item"]["call_id"] == call_id
        ]
        assert len(outputs) == 1
        assert json.loads(sideband[outputs[0]]["item"]["output"])[0]["state"] == "on"
        assert sideband[outputs[0] + 1]["type"] == "response.create"
        # The device declared the tool (kept the minted one) but left its call alone.
        device_sent = via_device(chain)
        update = next(e for e in device_sent if e["type"] == "session.update")
        assert "light_on" in {t["name"] for t in update["session"]["tools"]}
        assert not [
            e
            for e in device_sent
            if e["type"] == "conversation.item.create" and e["item"].get("call_id") == call_id
        ]
        statuses = [e["response"]["status"] for e in emitted(chain) if e["type"] == "response.done"]
        assert statuses[:2] == ["completed", "completed"]
        # The secret on the device's side: its log, its config, what its channel received,
        # what a mint answers.
        device_logs = "\n".join(
            record.getMessage()
            for _, record in chain.logs.records
            if not record.name.startswith(("wakertc.companion", "wakertc.emulator"))
        )
        received = json.dumps(emitted(chain))
        for where, text in {
            "device log": device_logs,
            "device config": device_config,
            "events to the device": received,
            "mint response": mint_text,
        }.items():
            assert HA_TOKEN not in text, where
        assert "light_on" in mint_text  # the tool is declared, only its secret is not there
    finally:
        await ha.stop()


async def test_a_live_server_tool_is_answered_through_the_sideband_as_the_device_would(
    tmp_path, models_dir
):
    """GPT-Live (responses delegation): the companion declares its server tool to the backend
    (one call per response) and names it in its answer; the model's call, nested in
    `response.event`, is run by the companion with the secret header and answered on the
    sideband with `response.item.create` and one `response.create`, which the emulator accepts;
    the reply uses the result; the device sent nothing for the call and never saw the secret."""
    ha = HomeAssistant()
    await ha.start()
    try:
        async with run_chain(
            tmp_path / "chain",
            models_dir,
            script=LIGHT_SCRIPT,
            companion_extra=light_tool(ha, tmp_path),
            api="live",
        ) as chain:
            await chain.press()
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            watcher = await joined(chain)
            assert watcher.api == "live"
            chain.mic.speak(clip("turn on the kitchen light"))
            await chain.expect(Phase.THINKING, Phase.SPEAKING)
            async with asyncio.timeout(10):
                while not [
                    e
                    for e in emitted(chain)
                    if e["type"] == "session.output_transcript.delta"
                    and "kitchen light is on" in e["delta"]
                ]:
                    await asyncio.sleep(0.05)
            await chain.wait_phase(Phase.LISTENING, timeout=10)
            device_config = chain.config.source.read_text()
        assert ha.requests == [{"entity_id": "light.kitchen"}] and ha.refused == 0
        server_events = emitted(chain)
        started = next(e for e in server_events if e["type"] == "session.started")
        backend = started["session"]["delegation"]["responses"]
        assert backend["tools"][0]["name"] == "light_on"
        assert backend["parallel_tool_calls"] is False
        (call,) = [
            e["event"]["item"]
            for e in server_events
            if e["type"] == "response.event"
            and e["event"]["type"] == "response.output_item.done"
            and e["event"]["item"].get("type") == "function_call"
        ]
        assert call["name"] == "light_on"
        sideband = via_sideband(chain)
        assert [e["type"] for e in sideband] == ["response.item.create", "response.create"]
        output = sideband[0]["item"]
        assert output["type"] == "function_call_output" and output["call_id"] == call["call_id"]
        assert json.loads(output["output"])[0]["state"] == "on"
        # The emulator took both (no error) and the backend went on: a second response.
        assert not [e for e in server_events if e["type"] == "error"]
        completed = [
            e
            for e in server_events
            if e["type"] == "response.event" and e["event"]["type"] == "response.completed"
        ]
        assert len(completed) == 2
        # The device left the call alone: nothing tool-related from its data channel.
        device_sent = {e["type"] for e in via_device(chain)}
        assert not device_sent & {"response.item.create", "response.create"}, device_sent
        device_logs = "\n".join(
            record.getMessage()
            for _, record in chain.logs.records
            if not record.name.startswith(("wakertc.companion", "wakertc.emulator"))
        )
        assert "the model called light_on" not in device_logs
        for where, text in {
            "device log": device_logs,
            "device config": device_config,
            "events to the device": json.dumps(server_events),
        }.items():
            assert HA_TOKEN not in text, where
    finally:
        await ha.stop()


async def test_a_device_that_changes_the_policy_is_reverted_then_hung_up(
    tmp_path, models_dir, caplog
):
    """A client (not our daemon) with a device token changes the instructions: reverted, and
    logged with the device and the field; the second time, hung up."""
    caplog.set_level(logging.INFO, logger="wakertc.companion")
    async with run_chain(tmp_path, models_dir) as chain:
        token = chain.config.companion.token_file.read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient() as http:
            minted = (await http.post(chain.companion.url + "/v1/session", headers=auth)).json()
            client = RealtimeClient()
            await client.connect(chain.emulator.url, minted["value"])
            try:
                await client.wait_for("session.created")
                assert client.call_id is not None
                bad = await http.post(
                    chain.companion.url + "/v1/calls", headers=auth, json={"call_id": "x"}
                )
                assert bad.status_code == 400
                stranger = await http.post(
                    chain.companion.url + "/v1/calls",
                    headers={"Authorization": "Bearer wkd_not-a-device-token-at-all"},
                    json={"call_id": client.call_id},
                )
                assert stranger.status_code == 401
                reported = await http.post(
                    chain.companion.url + "/v1/calls",
                    headers=auth,
                    json={"call_id": client.call_id},
                )
                assert reported.status_code == 202
                watcher = await joined(chain)
                policy = minted["session"]["instructions"]
                # What a device may do: add its own tools (as the daemon's session.update does).
                own = {"type": "function", "name": "set_timer", "description": "A timer."}
                own["parameters"] = {"type": "object", "properties": {}}
                client.send(
                    {"type": "session.update", "session": {"type": "realtime", "tools": [own]}}
                )
                allowed = await client.wait_for("session.updated")
                assert [t["name"] for t in allowed["session"]["tools"]] == ["set_timer"]
                await asyncio.sleep(0.3)
                assert not [r for r in caplog.records if "policy fixes" in r.getMessage()]
                client.send(
                    {
                        "type": "session.update",
                        "session": {"type": "realtime", "instructions": "Be rude."},
                    }
                )
                async with asyncio.timeout(5):
                    while True:
                        updated = await client.wait_for("session.updated")
                        if updated["session"]["instructions"] == policy:
                            break
                assert any(
                    "device demo-device changed what the policy fixes (instructions)"
                    in r.getMessage()
                    and "reverted" in r.getMessage()
                    for r in caplog.records
                )
                client.send(
                    {
                        "type": "session.update",
                        "session": {"type": "realtime", "instructions": "Be rude."},
                    }
                )
                async with asyncio.timeout(5):
                    await watcher.wait_over()
                assert chain.emulator.calls[client.call_id].close_reason == "hung up by the client"
                assert any("again (instructions)" in r.getMessage() for r in caplog.records)
            finally:
                await client.close()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "companion.toml"
    path.write_text(text)
    return path


def test_pricing_and_server_tools_are_read_and_checked(tmp_path: Path) -> None:
    """`[pricing]` lays over the defaults; `[[server_tools]]` read their secret header files;
    every mistake names the key, and the secret is in no message."""
    secret = tmp_path / "token"
    secret.write_text("Bearer s3cret-value\n")
    secret.chmod(0o600)
    tool = (
        '[[server_tools]]\nname = "{name}"\nurl = "http://127.0.0.1:9/x"\n'
        'header_files = {{ Authorization = "token" }}\n'
    )
    config = load_companion_config(
        write_config(tmp_path, "[pricing.live]\ngpt-live-1 = 0.1\n" + tool.format(name="light_on"))
    )
    assert config.pricing.live_per_minute["gpt-live-1"] == 0.1
    assert config.pricing.live_per_minute["gpt-live-1.1"] == 0.06  # the default stays
    (server_tool,) = config.server_tools
    assert server_tool.headers == {"Authorization": "Bearer s3cret-value"}
    assert "s3cret" not in repr(config)
    problems = {
        tool.format(name="set_timer"): "server_tools[0].name: 'set_timer' is a tool every device",
        tool.format(name="end_conversation"): "server_tools[0].name: 'end_conversation'",
        '[session]\n[[session.tools]]\nname = "light_on"\n'
        + tool.format(name="light_on"): "server_tools[0].name: expected a name not also in",
        "[pricing.realtime.gpt-realtime]\ninput_text = 1\n": "pricing.realtime.gpt-realtime.",
        "[pricing.live]\ngpt-live-1 = -1\n": "pricing.live.gpt-live-1: expected a number",
        tool.format(name="x").replace('"token"', '"missing"'): "header_files.Authorization",
    }
    for text, expected in problems.items():
        with pytest.raises(CompanionConfigError) as caught:
            load_companion_config(write_config(tmp_path, text))
        assert expected in str(caught.value)
        assert "s3cret" not in str(caught.value)
    secret.chmod(0o644)
    with pytest.raises(CompanionConfigError, match="readable by other users"):
        load_companion_config(write_config(tmp_path, tool.format(name="light_on")))


async def test_a_call_report_never_waits_and_a_failing_one_is_logged_once(caplog):
    """`report_call` returns at once whatever the companion does; a companion that cannot take
    reports (an older one: 404; a stalled one: timeout) costs one warning, not one per call."""
    stalled = asyncio.Event()

    async def calls(request: web.Request) -> web.Response:
        if (await request.json())["call_id"] == "rtc_slow":
            await stalled.wait()
        return web.json_response({"error": {"message": "Not Found."}}, status=404)

    app = web.Application()
    app.router.add_post("/v1/calls", calls)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    client = CompanionClient(CompanionSettings(url=url, timeout_s=0.5), "wkd_" + "t" * 30)
    caplog.set_level(logging.DEBUG, logger="wakertc.keys")
    try:
        started = time.monotonic()
        client.report_call("rtc_slow")
        client.report_call("rtc_gone")
        client.report_call("rtc_gone_again")
        assert time.monotonic() - started < 0.05
        await asyncio.sleep(1.0)  # past the timeout
        reports = [r for r in caplog.records if "could not report call" in r.getMessage()]
        assert len(reports) == 3
        assert [r.levelno for r in reports].count(logging.WARNING) == 1
        assert all("wkd_" not in r.getMessage() for r in reports)
    finally:
        stalled.set()
        await client.aclose()
        await runner.cleanup()


async def test_live_end_speaks_the_commentary_then_closes_the_session(tmp_path, models_dir):
    """GPT-Live: `end(notice)` appends the notice as commentary, lets it play, then sends
    `session.close`; the device's conversation is over within 3 s."""
    async with run_chain(tmp_path, models_dir, api="live") as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        watcher = await joined(chain)
        started = time.monotonic()
        await watcher.end("Your allowance is used up.")
        idle = await chain.wait_phase(Phase.IDLE, timeout=5)
        assert idle.t - started <= 3.0, idle.t - started
        sent = [e["type"] for e in via_sideband(chain)]
        assert sent == ["session.commentary.append", "session.close"]
        assert chain.mic.audible_s(started, idle.t) >= 1.0  # the notice was played
        assert watcher.over
        assert idle.reason == "conversation over (the session was closed on request)"


def test_a_device_tool_named_like_a_server_tool_is_an_error_and_the_companions_is_kept(
    caplog,
):
    """The device's session.update keeps the minted tools and adds its own; one named like a
    companion server tool is logged as an error and not sent (the companion's definition
    stays), while one named like a policy tool is the device implementing it (a warning)."""
    minted = {
        "type": "realtime",
        "tools": [
            {"type": "function", "name": "light_on", "description": "companion's"},
            {"type": "function", "name": "get_weather", "description": "policy's"},
        ],
    }
    device = ToolRunner(
        [
            ToolConfig(name="light_on", description="device's", url="http://127.0.0.1:9/"),
            ToolConfig(name="get_weather", description="device's", url="http://127.0.0.1:9/"),
        ]
    )
    caplog.set_level(logging.INFO, logger="wakertc.session")
    update = session_update(minted, device, frozenset({"light_on"}))
    tools = update["session"]["tools"]
    assert [t["name"] for t in tools][:2] == ["light_on", "get_weather"]
    assert [t["name"] for t in tools].count("light_on") == 1
    assert tools[0]["description"] == "companion's"
    assert "end_conversation" in {t["name"] for t in tools}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "light_on" in errors[0].getMessage()
    assert "companion server tool" in errors[0].getMessage()


async def test_a_failed_join_is_retried_then_given_up_and_a_gone_call_is_not_retried(caplog):
    """Nothing listening: each attempt is logged and retried with backoff, up to the bound, then
    one error; a call the service does not know (404) is over at once."""
    caplog.set_level(logging.INFO, logger="wakertc.companion")
    async with running_emulator() as emu, aiohttp.ClientSession() as http:
        common: dict[str, Any] = {
            "device": DEVICE,
            "api": "realtime",
            "model": "gpt-realtime",
            "api_key": KEY,
            "http": http,
            "pricing": Pricing(),
            "join_backoff_s": 0.01,
        }
        unreachable = SessionWatcher(session_id="rtc_x", base_url="http://127.0.0.1:9", **common)
        gone = SessionWatcher(session_id="rtc_nosuchcall", base_url=emu.url, **common)
        for watcher in (unreachable, gone):
            watcher.start()
        async with asyncio.timeout(10):
            await unreachable.wait_over()
            await gone.wait_over()
    retries = [
        r for r in caplog.records if "rtc_x" in r.getMessage() and "retrying" in r.getMessage()
    ]
    assert len(retries) == JOIN_ATTEMPTS - 1
    gave_up = [r for r in caplog.records if "gave up after" in r.getMessage()]
    assert len(gave_up) == 1 and gave_up[0].levelno == logging.ERROR
    assert not [
        r
        for r in caplog.records
        if "rtc_nosuchcall" in r.getMessage() and "retrying" in r.getMessage()
    ]
    assert any(
        "rtc_nosuchcall" in r.getMessage() and "(404)" in r.getMessage() for r in caplog.records
    )
