"""The conversation chain under both session APIs, from one set of tests: wake, question,
reply, follow-up, tools (end_conversation included), barge-in, mute and idle end; every fault,
under both APIs alike, is in test_conversation_faults.py.

Each test runs the real daemon through `chain.run_chain(api=...)` against the emulator and the
companion, once with the Realtime API and once with GPT-Live, and asserts the same phases, LED
meanings, log lines and endings; only what goes over the wire differs, and `chain.WIRE` names
it.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from chain import BLUE, GREEN, STORY, WIRE, clip, run_chain
from wakertc.demo import make_default_input
from wakertc.state import Phase

# The companion offers the device's own tools to GPT-Live only where its policy allows.
LIVE_ALL_TOOLS = '\n[live]\ndevice_tools = ["*"]\n'
TOOL_CODE = (
    "import json, sys; args = json.load(sys.stdin); "
    "print(json.dumps({'city': args['city'], 'forecast': 'sunny, 21 degrees'}))"
)

pytestmark = pytest.mark.parametrize("api", ["realtime", "live"])


def sent_types(chain) -> list[str]:
    return [e["type"] for e in chain.sent()]


async def test_wake_word_question_reply_and_idle_end(tmp_path, models_dir, api):
    said = make_default_input(tmp_path / "in.wav")
    assert said.question_start_s is not None and said.question_end_s is not None
    async with run_chain(tmp_path / "chain", models_dir, input_audio=said.path, api=api) as chain:
        wake, connecting, live, thinking, speaking, listening, idle = await chain.expect(
            Phase.WAKE,
            Phase.CONNECTING,
            Phase.LISTENING,
            Phase.THINKING,
            Phase.SPEAKING,
            Phase.LISTENING,
            Phase.IDLE,
            timeout=25,
        )
        assert wake.reason == "wake word hey_jarvis"
        assert (live.reason, thinking.reason) == ("session live", "user stopped speaking")
        assert (speaking.reason, listening.reason) == ("reply audio", "reply finished")
        assert idle.reason == "conversation over (idle timeout)"
        idle_s = chain.config.session.idle_timeout_s
        assert idle_s - 0.1 <= idle.t - listening.t <= idle_s + 1.0
        ratio = chain.received_ratio((said.question_start_s, said.question_end_s))
        assert ratio >= 0.95, f"only {ratio:.0%} of the question reached the model"
        assert chain.daemon.last_wake_to_live_s is not None
        # The LEDs mean the same under both APIs.
        assert chain.leds(connecting).is_colour(BLUE)
        assert chain.leds(live).effect == "solid" and chain.leds(live).is_colour(BLUE)
        reading = chain.leds(speaking)
        assert reading.effect == "pulse" and reading.is_colour(GREEN), reading
        assert chain.leds(idle).effect == "off"
        played = chain.mic.audible_span(speaking.t, listening.t + 0.3)
        assert played > 0.5, played
        if WIRE[api].end is not None:
            assert sent_types(chain)[-1] == WIRE[api].end
            assert chain.received()[-1]["type"] == "session.closed"
            assert chain.received()[-1]["reason"] == "close_requested"
        else:
            assert chain.calls()[0].close_reason == "hung up by the client"
        assert chain.daemon.conversations == 1


async def test_follow_up_turn_in_the_same_session(tmp_path, models_dir, api):
    async with run_chain(tmp_path, models_dir, reply="tone", api=api) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("what is the weather like today"))
        await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING)
        await asyncio.sleep(0.5)  # a natural pause (see test_conversation.py's follow-up)
        follow_up = chain.mic.speak(clip("and what about tomorrow"))
        *_, idle = await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, Phase.IDLE)
        assert idle.reason == "conversation over (idle timeout)"
        assert len(chain.calls()) == 1 and chain.daemon.conversations == 1
        assert chain.received_ratio(follow_up) >= 0.95


async def test_model_ends_the_conversation_after_its_goodbye(tmp_path, models_dir, api):
    script = [{"reply": "tone", "call": {"name": "end_conversation"}}]
    async with run_chain(tmp_path, models_dir, script=script, api=api) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("thank you, that is all"))
        _, speaking, idle = await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.IDLE)
        assert idle.reason == "conversation over (model called end_conversation)"
        assert chain.mic.audible_span(speaking.t, idle.t) >= 0.7  # the 0.8 s tone, heard
        await chain.wait_log("the model ended the conversation")
        outputs = [e for e in chain.sent() if e["type"] == WIRE[api].tool_output]
        assert len(outputs) == 1 and json.loads(outputs[0]["item"]["output"]) == {"ok": True}
        assert "response.create" not in sent_types(chain)


async def test_command_tool_result_goes_back_and_the_model_answers(tmp_path, models_dir, api):
    tool = {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "command": [sys.executable, "-c", TOOL_CODE],
        "timeout_s": 5.0,
    }
    script = [
        {"reply": "tone", "call": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"reply": "tone"},
    ]
    async with run_chain(
        tmp_path,
        models_dir,
        script=script,
        device={"tools": [tool]},
        companion_extra=LIVE_ALL_TOOLS,
        api=api,
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("what is the weather in paris"))
        await chain.expect(Phase.THINKING, Phase.SPEAKING)
        await chain.wait_log("the model called get_weather")
        idle = await chain.wait_phase(Phase.IDLE, timeout=20)
        sent = chain.sent()
        index = next(i for i, e in enumerate(sent) if e["type"] == WIRE[api].tool_output)
        item = sent[index]["item"]
        assert json.loads(item["output"]) == {"city": "Paris", "forecast": "sunny, 21 degrees"}
        assert sent[index + 1]["type"] == "response.create"
        # The answer after the result (the script's second tone, 0.8 s) was heard.
        created_at = chain.calls()[-1].started + next(
            r["t"]
            for r in chain.events()
            if r["dir"] == "in" and r.get("event", {}).get("type") == "response.create"
        )
        assert chain.mic.audible_s(created_at, idle.t) >= 0.6


async def test_button_interrupts_the_reply(tmp_path, models_dir, api):
    async with run_chain(tmp_path, models_dir, script=[{"say": STORY}], api=api) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("tell me a story"))
        await chain.expect(Phase.THINKING, Phase.SPEAKING)
        await chain.press()
        (listening,) = await chain.expect(Phase.LISTENING)
        assert listening.reason == "interrupted by button"
        # The speaker falls silent at once, and stays silent for the rest of the story.
        assert chain.mic.audible_s(listening.t + 0.3, listening.t + 2.0) < 0.1
        assert WIRE[api].barge_in in sent_types(chain)
        (idle,) = await chain.expect(Phase.IDLE)
        assert idle.reason == "conversation over (idle timeout)"


async def test_mute_ends_the_conversation_and_tells_the_service(tmp_path, models_dir, api):
    async with run_chain(tmp_path, models_dir, reply="tone", api=api) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        muted = await chain.long_press(Phase.MUTED)
        assert muted.reason == "microphone muted by the button"
        await chain.wait_log("conversation ended: microphone muted")
        if WIRE[api].mute is not None:
            assert WIRE[api].mute in sent_types(chain)
