"""Tool calls at the level of the event handlers: what the chain's scripted emulator cannot
produce in one response (several calls at once, outputs ready while another response runs).

The conversation is real and its tools are real commands; only its call is a recorder of the
client events it would send (`RecordingCall`), put where `_connect` would put the RealtimeCall.
The end-to-end cases (one call, a cancelled response's call) are in test_conversation.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import httpx

from test_properties import RecordingAudio
from wakertc.config import CompanionConfig, Config, ToolConfig
from wakertc.conversation import Conversation
from wakertc.keys import CompanionClient, KeyKeeper
from wakertc.state import Phase, PhaseMachine
from wakertc.tools import ToolRunner

SLEEP_THEN_PRINT = "import sys, time; time.sleep(float(sys.argv[1])); print(sys.argv[2])"


def tool(name: str, delay_s: float) -> ToolConfig:
    return ToolConfig(
        name=name, command=(sys.executable, "-c", SLEEP_THEN_PRINT, str(delay_s), name)
    )


class RecordingCall:
    """Stands in for RealtimeCall.send: the client events, in order."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any]) -> bool:
        self.sent.append(event)
        return True

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.sent]


async def conversation_with(*tools: ToolConfig) -> tuple[Conversation, RecordingCall, Any]:
    config = Config(companion=CompanionConfig(url="http://127.0.0.1:9"), tools=tools)
    companion = CompanionClient(config.companion, "token")
    http = httpx.AsyncClient()
    conversation = Conversation(
        config=config,
        phases=PhaseMachine(Phase.LISTENING),
        keys=KeyKeeper(companion),
        http=http,
        audio=RecordingAudio(),
        tools=ToolRunner(config.tools),
        woke_at=0.0,
    )
    call = RecordingCall()
    conversation._api._call = call  # type: ignore[assignment]

    async def close() -> None:
        await companion.aclose()
        await http.aclose()

    return conversation, call, close


def feed(conversation: Conversation, *events: dict[str, Any]) -> None:
    for event in events:
        conversation.handle_event(json.dumps(event))


def calls_of(response_id: str, *names: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "response.function_call_arguments.done",
            "response_id": response_id,
            "call_id": f"call_{name}",
            "name": name,
            "arguments": "{}",
        }
        for name in names
    ]


def done(response_id: str, status: str) -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": response_id, "status": status}}


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_several_calls_in_one_response_all_outputs_then_one_create() -> None:
    conversation, call, close = await conversation_with(tool("a", 0.1), tool("b", 0.6))
    try:
        feed(
            conversation,
            {"type": "input_audio_buffer.speech_stopped"},
            {"type": "response.created", "response": {"id": "r1"}},
            *calls_of("r1", "a", "b"),
        )
        assert call.sent == []  # nothing runs before the response completed
        feed(conversation, done("r1", "completed"))
        await wait_for(lambda: "response.create" in call.kinds())
        await asyncio.sleep(0.3)
        outputs = [e["item"]["call_id"] for e in call.sent if e["type"] != "response.create"]
        assert sorted(outputs) == ["call_a", "call_b"]
        assert call.kinds() == ["conversation.item.create"] * 2 + ["response.create"]
        assert conversation._phases.phase is Phase.THINKING
    finally:
        await close()


async def test_outputs_ready_during_another_response_wait_for_it_to_finish() -> None:
    """The user spoke while the tool ran and the server started a response: a response.create
    now would get conversation_already_has_active_response; it goes once that one is done."""
    conversation, call, close = await conversation_with(tool("slow", 0.5))
    try:
        feed(
            conversation,
            {"type": "response.created", "response": {"id": "r1"}},
            *calls_of("r1", "slow"),
            done("r1", "completed"),
            {"type": "response.created", "response": {"id": "r2"}},
        )
        await wait_for(lambda: "conversation.item.create" in call.kinds())
        await asyncio.sleep(0.3)
        assert call.kinds() == ["conversation.item.create"]
        feed(conversation, done("r2", "completed"))
        assert call.kinds() == ["conversation.item.create", "response.create"]
    finally:
        await close()


async def test_calls_of_a_cancelled_or_incomplete_response_never_run(caplog) -> None:
    caplog.set_level(logging.INFO, logger="wakertc")
    conversation, call, close = await conversation_with(tool("a", 0.0))
    try:
        for response_id, status in (("r1", "cancelled"), ("r2", "incomplete")):
            feed(
                conversation,
                {"type": "response.created", "response": {"id": response_id}},
                *calls_of(response_id, "a"),
                done(response_id, status),
            )
        await asyncio.sleep(0.5)
        assert call.sent == []
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert dropped == [
            "dropped the model's call to a: its response was cancelled",
            "dropped the model's call to a: its response was incomplete",
        ]
    finally:
        await close()
