"""Conversations end to end: the real daemon against the Realtime emulator, through the companion.

Each test drives one behaviour of issue 4 with real speech (espeak-ng), the real wake-word models,
real WebRTC over loopback and the file audio backend in real time, and checks the phase sequence,
the LEDs and what reached the "model" (the emulator's recording). Failures are in
test_conversation_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading

from chain import BLUE, GREEN, RED, STORY, clip, run_chain
from wakertc.demo import make_default_input
from wakertc.state import Phase

QUESTION = "what is the weather like today"


def reply_times(chain, call: int = -1) -> tuple[float, float]:
    """Monotonic times of the emulator's first output_audio_buffer.started and .stopped."""
    started_at = chain.calls()[call].started
    times = {}
    for record in chain.events(call):
        kind = record.get("event", {}).get("type")
        if kind in ("output_audio_buffer.started", "output_audio_buffer.stopped"):
            times.setdefault(kind, started_at + record["t"])
    return times["output_audio_buffer.started"], times["output_audio_buffer.stopped"]


async def test_wake_word_conversation_in_one_breath(tmp_path, models_dir):
    """Wake word and question in one breath: the whole question reaches the model, the echo is
    played, the phases and LEDs follow, and the idle timeout ends it."""
    said = make_default_input(tmp_path / "in.wav")
    assert said.question_start_s is not None and said.question_end_s is not None
    async with run_chain(tmp_path / "chain", models_dir, input_audio=said.path) as chain:
        wake, connecting, live, _thinking, speaking, listening, idle = await chain.expect(
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
        assert chain.daemon.last_detection is not None
        assert speaking.reason == "reply audio" and listening.reason == "reply finished"
        assert idle.reason == "conversation over (idle timeout)"
        # The idle timeout counts from the end of the reply.
        idle_s = chain.config.session.idle_timeout_s
        assert idle_s - 0.1 <= idle.t - listening.t <= idle_s + 1.0

        ratio = chain.received_ratio((said.question_start_s, said.question_end_s))
        assert ratio >= 0.95, f"only {ratio:.0%} of the question reached the model"
        assert chain.daemon.last_wake_to_live_s is not None
        assert chain.daemon.last_wake_to_live_s < 1.0

        # The echo reply is played in full while SPEAKING.
        started, stopped = reply_times(chain)
        played = chain.mic.audible_span(speaking.t, listening.t + 0.3)
        assert played >= 0.85 * (stopped - started), (played, stopped - started)

        assert chain.leds(connecting).is_colour(BLUE)
        for seen, effect, colour in ((live, "solid", BLUE), (listening, "solid", BLUE)):
            reading = chain.leds(seen)
            assert reading.effect == effect and reading.is_colour(colour), reading
        reading = chain.leds(speaking)
        assert reading.effect == "pulse" and reading.is_colour(GREEN), reading
        assert chain.leds(idle).effect == "off"
        # One call, hung up by the device.
        (call,) = chain.calls()
        assert call.close_reason == "hung up by the client"
        assert chain.daemon.conversations == 1


async def test_button_starts_and_ends_a_conversation(tmp_path, models_dir):
    """A short press opens a session without the wake word; a press while listening ends it."""
    async with run_chain(tmp_path, models_dir, reply="tone") as chain:
        await chain.press()
        wake, _, _live = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        assert wake.reason == "button"
        spoken = chain.mic.speak(clip(QUESTION))
        await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING)
        assert chain.received_ratio(spoken) >= 0.95
        await chain.press()
        (idle,) = await chain.expect(Phase.IDLE)
        assert idle.reason == "conversation over (button)"
        assert chain.calls()[0].close_reason == "hung up by the client"
        assert chain.daemon.last_detection is None  # no wake word was involved


async def test_the_loop_wakes_per_wake_word_chunk_while_idle_and_per_frame_in_a_conversation(
    tmp_path, models_dir
):
    """Listening for the wake word, the microphone's frames come to the loop four at a time
    (one wake-word chunk: the loop's wakes cost CPU); in a conversation each as it comes."""
    async with run_chain(tmp_path, models_dir, reply="tone") as chain:
        mic = chain.mic
        assert mic.loop is not None

        async def count(seconds: float) -> tuple[int, int]:
            # (from 0.3 s on: the detector's reset as listening begins moves its chunks)
            await asyncio.sleep(0.3)
            frames, wakes = mic.frames_heard, mic.loop.wakes
            await asyncio.sleep(seconds)
            return mic.frames_heard - frames, mic.loop.wakes - wakes

        frames, wakes = await count(1.0)
        assert frames >= 40 and wakes <= frames / 4 + 1, (frames, wakes)
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        spoken = chain.mic.speak(clip(QUESTION))
        frames, wakes = await count(1.0)
        # each as it comes (a loop busy with the call takes the ones that came meanwhile at once)
        assert frames >= 40 and wakes > frames / 2, (frames, wakes)
        await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING)
        assert chain.received_ratio(spoken) >= 0.95
        await chain.press()
        await chain.expect(Phase.IDLE)
        frames, wakes = await count(1.0)
        assert frames >= 40 and wakes <= frames / 4 + 1, (frames, wakes)


async def test_follow_up_turn_without_the_wake_word(tmp_path, models_dir):
    """After the reply, a second question without the wake word is answered in the same session."""
    said = make_default_input(tmp_path / "in.wav")
    async with run_chain(tmp_path / "chain", models_dir, input_audio=said.path) as chain:
        await chain.expect(
            Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, Phase.THINKING, Phase.SPEAKING
        )
        await chain.expect(Phase.LISTENING)
        # A natural pause. (Speech starting over the reply's last syllables loses ~0.3 s to the
        # echo canceller's double-talk suppression when, as here, no echo reaches the mic.)
        await asyncio.sleep(0.5)
        follow_up = chain.mic.speak(clip("and what about tomorrow"))
        _, _, _, idle = await chain.expect(
            Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, Phase.IDLE
        )
        assert idle.reason == "conversation over (idle timeout)"
        assert len(chain.calls()) == 1 and chain.daemon.conversations == 1
        replies = [e for e in chain.received() if e["type"] == "response.created"]
        assert len(replies) == 2
        assert chain.received_ratio(follow_up) >= 0.95


async def test_idle_timeout_ends_a_silent_conversation(tmp_path, models_dir):
    """Nobody speaks: the session ends `idle_timeout_s` after it went live; the call is hung up."""
    async with run_chain(
        tmp_path, models_dir, device={"session": {"idle_timeout_s": 1.0}}
    ) as chain:
        await chain.press()
        _, _, live, idle = await chain.expect(
            Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, Phase.IDLE
        )
        assert idle.reason == "conversation over (idle timeout)"
        assert 0.9 <= idle.t - live.t <= 2.0
        assert chain.calls()[0].close_reason == "hung up by the client"
        assert not [e for e in chain.received() if e["type"] == "response.created"]


async def test_max_session_length_ends_a_busy_conversation(tmp_path, models_dir):
    """Even mid-turn, the session ends `max_session_s` after it went live."""
    async with run_chain(
        tmp_path,
        models_dir,
        device={"session": {"idle_timeout_s": 30.0, "max_session_s": 1.5}},
    ) as chain:
        await chain.press()
        _, _, live = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("let me tell you a long story about my day at the office"))
        idle = await chain.wait_phase(Phase.IDLE, timeout=10)
        assert idle.reason == "conversation over (maximum session length)"
        assert 1.4 <= idle.t - live.t <= 2.5
        assert chain.calls()[0].close_reason == "hung up by the client"


async def test_model_ends_the_conversation_after_its_goodbye(tmp_path, models_dir):
    """The model calls end_conversation after its last words: they are played to the end, then
    the session is hung up at once. (The tone ends loud, so a cut-off tail would show.)"""
    script = [{"reply": "tone", "call": {"name": "end_conversation"}}]
    async with run_chain(tmp_path, models_dir, script=script) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("thank you, that is all"))
        _, speaking, idle = await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.IDLE)
        assert idle.reason == "conversation over (model called end_conversation)"
        started, stopped = reply_times(chain)
        played = chain.mic.audible_span(speaking.t, idle.t)
        assert played >= 0.95 * (stopped - started), (played, stopped - started)
        assert idle.t - stopped < 2.0  # and not kept open once it had played
        call_id = next(
            e["call_id"]
            for e in chain.received()
            if e["type"] == "response.function_call_arguments.done"
        )
        outputs = [
            e["item"]
            for e in chain.sent()
            if e["type"] == "conversation.item.create"
            and e["item"].get("type") == "function_call_output"
        ]
        assert [o["call_id"] for o in outputs] == [call_id]
        assert "response.create" not in [e["type"] for e in chain.sent()]
        assert chain.calls()[0].close_reason == "hung up by the client"


TOOL_CODE = (
    "import json, sys; args = json.load(sys.stdin); "
    "print(json.dumps({'city': args['city'], 'forecast': 'sunny, 21 degrees'}))"
)


async def test_command_tool_result_goes_back_to_the_model(tmp_path, models_dir):
    """A configured command tool runs with the model's arguments; its output goes back as
    function_call_output + response.create, and the conversation carries on."""
    tool = {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "command": [sys.executable, "-c", TOOL_CODE],
        "timeout_s": 5.0,
    }
    script = [
        {"call": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"reply": "tone"},
    ]
    async with run_chain(tmp_path, models_dir, script=script, device={"tools": [tool]}) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("what is the weather in paris"))
        _, _speaking, listening = await chain.expect(
            Phase.THINKING, Phase.SPEAKING, Phase.LISTENING
        )
        assert listening.reason == "reply finished"
        sent = chain.sent()
        declared = next(e for e in sent if e["type"] == "session.update")["session"]["tools"]
        assert {t["name"] for t in declared} == {
            "end_conversation",
            "set_timer",
            "set_alarm",
            "cancel_timer",
            "list_timers",
            "get_weather",
        }
        call_id = next(
            e["call_id"]
            for e in chain.received()
            if e["type"] == "response.function_call_arguments.done"
        )
        index = next(
            i
            for i, e in enumerate(sent)
            if e["type"] == "conversation.item.create"
            and e["item"].get("type") == "function_call_output"
        )
        item = sent[index]["item"]
        assert item["call_id"] == call_id
        assert json.loads(item["output"]) == {"city": "Paris", "forecast": "sunny, 21 degrees"}
        assert sent[index + 1]["type"] == "response.create"
        responses = [e for e in chain.received() if e["type"] == "response.done"]
        assert [r["response"]["status"] for r in responses] == ["completed", "completed"]
        # Still in the conversation: a follow-up is heard and answered.
        chain.mic.speak(clip("thank you"))
        await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, Phase.IDLE)


async def test_a_slow_tool_after_let_me_check_is_not_an_idle_user(tmp_path, models_dir):
    """The reply says something ("let me check") and calls a tool that outlasts the idle timeout:
    its response.done (which starts the tool) comes before its audio stops, and the device then
    waits for the tool, THINKING, instead of ending the conversation as idle and cancelling it."""
    tool = {
        "name": "slow_lookup",
        "description": "A lookup that takes a while.",
        "command": [sys.executable, "-c", "import time; time.sleep(3.0); print('found it')"],
        "timeout_s": 10.0,
    }
    script = [
        {"reply": "tone", "call": {"name": "slow_lookup", "arguments": {}}},
        {"reply": "tone"},
    ]
    device = {"tools": [tool], "session": {"idle_timeout_s": 1.5}}
    async with run_chain(tmp_path, models_dir, script=script, device=device) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("look that up for me"))
        _, _, waiting, _, listening = await chain.expect(
            Phase.THINKING,
            Phase.SPEAKING,
            Phase.THINKING,
            Phase.SPEAKING,
            Phase.LISTENING,
            timeout=15,
        )
        assert waiting.reason == "reply finished, tools running"
        assert listening.reason == "reply finished"
        kinds = [e["type"] for e in chain.received()]
        first_done = kinds.index("response.done")
        assert "output_audio_buffer.stopped" in kinds[first_done:]  # the service's order
        sent = chain.sent()
        output = next(
            e["item"]
            for e in sent
            if e["type"] == "conversation.item.create"
            and e["item"].get("type") == "function_call_output"
        )
        assert "found it" in output["output"]
        assert [e["type"] for e in sent].count("response.create") == 1
        idle = await chain.wait_phase(Phase.IDLE, timeout=5)
        assert idle.reason == "conversation over (idle timeout)"
        assert idle.t - listening.t >= 1.4  # the idle timer ran from the last reply only


async def test_button_interrupts_the_reply(tmp_path, models_dir):
    """Barge-in by button: response.cancel then output_audio_buffer.clear go up, the speaker
    falls silent at once, the device listens again."""
    async with run_chain(tmp_path, models_dir, script=[{"say": STORY}]) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("tell me a story"))
        _, speaking = await chain.expect(Phase.THINKING, Phase.SPEAKING)
        await asyncio.sleep(0.8)
        await chain.press()
        (listening,) = await chain.expect(Phase.LISTENING)
        assert listening.reason == "interrupted by button"
        assert listening.queued_s == 0.0  # the queue was dropped, not played out
        (idle,) = await chain.expect(Phase.IDLE)
        # Nothing of the story played after the press (the done cue comes with IDLE).
        assert chain.mic.audible_s(listening.t + 0.1, idle.t) == 0.0
        assert chain.mic.audible_span(speaking.t, listening.t) >= 0.5
        sent = [e["type"] for e in chain.sent()]
        cancel = sent.index("response.cancel")
        assert sent[cancel + 1] == "output_audio_buffer.clear"
        received = chain.received()
        assert "output_audio_buffer.cleared" in [e["type"] for e in received]
        done = [e["response"]["status"] for e in received if e["type"] == "response.done"]
        assert done == ["cancelled"]


async def test_wake_word_interrupts_the_reply(tmp_path, models_dir):
    """Barge-in by the wake word: "hey jarvis" said over the reply cancels it like the button.

    Half-duplex (the fallback without an echo canceller), so the server hears nothing during the
    reply: the wake word, spotted on the device, is the only voice that can interrupt it. (The
    speaker is not fed back into the microphone here: with an echo path, spotting the wake word
    depends on the echo canceller, whose double-talk behaviour is outside this test.)"""
    async with run_chain(
        tmp_path,
        models_dir,
        script=[{"say": STORY}],
        device={"session": {"half_duplex": True, "echo_cancellation": False}},
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("tell me a story"))
        _, _speaking = await chain.expect(Phase.THINKING, Phase.SPEAKING)
        await asyncio.sleep(0.5)
        chain.mic.speak(clip("hey jarvis"))
        (listening,) = await chain.expect(Phase.LISTENING, timeout=8)
        assert listening.reason == "interrupted by wake word"
        assert chain.daemon.last_detection is not None
        assert listening.queued_s == 0.0
        (idle,) = await chain.expect(Phase.IDLE)
        assert chain.mic.audible_s(listening.t + 0.1, idle.t) == 0.0
        sent = [e["type"] for e in chain.sent()]
        cancel = sent.index("response.cancel")
        assert sent[cancel + 1] == "output_audio_buffer.clear"
        assert chain.daemon.conversations == 1  # the wake word did not start another one


async def test_while_the_echo_canceller_learns_only_the_wake_word_hears_the_user(
    tmp_path, models_dir
):
    """The first reply after start-up, echo canceller on (the default): it is still learning the
    room (aec.py), so the session hears nothing while the speaker plays and its VAD cannot be
    fooled by a leak; the wake word hears the raw microphone meanwhile, and interrupts."""
    async with run_chain(tmp_path, models_dir, script=[{"say": STORY}]) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("tell me a story"))
        _, speaking = await chain.expect(Phase.THINKING, Phase.SPEAKING)
        await asyncio.sleep(0.5)
        chain.mic.speak(clip("hey jarvis"))
        (listening,) = await chain.expect(Phase.LISTENING, timeout=8)
        assert listening.reason == "interrupted by wake word"
        assert not chain.daemon._aec.learned
        await chain.expect(Phase.IDLE)
    events = chain.events()
    started = chain.calls()[-1].started
    vad_starts = [
        started + r["t"]
        for r in events
        if r["dir"] == "out" and r["event"].get("type") == "input_audio_buffer.speech_started"
    ]
    # The question was heard; "hey jarvis" over the reply never reached the server's VAD.
    assert len([t for t in vad_starts if t < speaking.t]) == 1
    assert [t for t in vad_starts if t > speaking.t] == []


async def test_long_press_mutes_and_unmutes(tmp_path, models_dir):
    """A long press ends the conversation and mutes: red LED, and the wake word is not even
    analysed; another long press unmutes and the wake word works again."""
    async with run_chain(tmp_path, models_dir) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        muted = await chain.long_press(expect=Phase.MUTED)
        assert muted.old is Phase.LISTENING
        assert muted.reason == "microphone muted by the button"
        assert chain.calls()[0].close_reason == "hung up by the client"
        await chain.mic.say(clip("hey jarvis, what time is it"))
        await asyncio.sleep(0.5)  # the detector's latency, had it been listening
        assert chain.phase is Phase.MUTED
        assert chain.daemon.last_detection is None
        assert len(chain.calls()) == 1
        unmuted = await chain.long_press(expect=Phase.IDLE)
        assert unmuted.reason == "microphone unmuted by the button"
        reading = chain.leds(muted)
        assert reading.effect == "solid" and reading.is_colour(RED), reading
        assert chain.leds(unmuted).effect == "off"
        chain.mic.speak(clip("hey jarvis"))
        wake, _, _ = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        assert wake.reason == "wake word hey_jarvis"
        await chain.press()
        await chain.wait_phase(Phase.IDLE, timeout=10)  # (or via a reply: see the faults' recovery)


async def test_half_duplex_closes_the_microphone_while_speaking(tmp_path, models_dir):
    """With no echo canceller and the speaker loud in the microphone, half_duplex keeps the reply
    (and anything said over it) out of the session: the reply is not interrupted by its own echo,
    and the words right after the wake word still all arrive."""
    said = make_default_input(tmp_path / "in.wav")
    assert said.question_start_s is not None and said.question_end_s is not None
    async with run_chain(
        tmp_path / "chain",
        models_dir,
        input_audio=said.path,
        script=[{"say": STORY}],
        device={"session": {"half_duplex": True, "echo_cancellation": False}},
        echo_gain=0.5,
    ) as chain:
        await chain.expect(
            Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, Phase.THINKING, Phase.SPEAKING
        )
        speaking = chain.current
        await asyncio.sleep(0.5)
        over_the_reply = chain.mic.speak(clip("stop talking please"))
        listening, _ = await chain.expect(Phase.LISTENING, Phase.IDLE)
        assert listening.reason == "reply finished"
        assert over_the_reply.end_s < chain.heard_position(listening.t)
        assert chain.received_ratio((said.question_start_s, said.question_end_s)) >= 0.95
        assert chain.received_ratio(over_the_reply) == 0.0
        reply = (chain.heard_position(speaking.t), chain.heard_position(listening.t))
        assert chain.received_ratio(reply) == 0.0  # its own echo never went up either
        events = [e["type"] for e in chain.received()]
        assert events.count("input_audio_buffer.speech_started") == 1


async def test_woken_while_the_echo_canceller_loads_the_reply_is_not_cut_by_its_echo(
    tmp_path, models_dir, monkeypatch
):
    """The canceller loads in the background after start-up (a second or two on a Pi Zero).
    A conversation opened before it is ready runs half-duplex: with the speaker loud in the
    microphone, the reply is not interrupted by its own echo."""
    import wakertc.daemon

    real_load = wakertc.daemon._load_heavy_parts
    release = threading.Event()

    def slow_load(echo_cancellation: bool):
        release.wait(20)  # a slow SD card: the first conversation comes first
        return real_load(echo_cancellation)

    monkeypatch.setattr(wakertc.daemon, "_load_heavy_parts", slow_load)
    async with run_chain(tmp_path, models_dir, script=[{"say": STORY}], echo_gain=0.5) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        assert chain.daemon._aec is None  # still loading
        chain.mic.speak(clip("tell me a story"))
        await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=10)
        listening = await chain.wait_phase(Phase.LISTENING, timeout=20)
        assert listening.reason == "reply finished"
        assert chain.daemon._aec is None  # the whole reply played before it loaded
        release.set()
        await chain.wait_phase(Phase.IDLE, timeout=15)
    assert chain.logs.find("echo canceller still loading: half-duplex for this conversation")
    events = [e["type"] for e in chain.received()]
    assert events.count("input_audio_buffer.speech_started") == 1  # the question only


HOOK_CODE = "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write(sys.stdin.read())\n"


async def test_transcription_mode_sends_transcripts_to_the_hook(tmp_path, models_dir):
    """session.mode = transcription with a companion minting transcription sessions: what is
    said is transcribed (no replies), logged, and handed to the hook command."""
    hook, received = tmp_path / "hook.py", tmp_path / "hook.jsonl"
    hook.write_text(HOOK_CODE)
    said = make_default_input(tmp_path / "in.wav")
    async with run_chain(
        tmp_path / "chain",
        models_dir,
        input_audio=said.path,
        companion_extra='\n[session]\ntype = "transcription"\n',
        device={
            "session": {"mode": "transcription"},
            "hook": {"command": [sys.executable, str(hook), str(received)]},
        },
    ) as chain:
        _, _, _, stopped, transcribed, idle = await chain.expect(
            Phase.WAKE,
            Phase.CONNECTING,
            Phase.LISTENING,
            Phase.THINKING,
            Phase.LISTENING,
            Phase.IDLE,
            timeout=20,
        )
        assert stopped.reason == "user stopped speaking"
        assert transcribed.reason == "transcript received"
        assert idle.reason == "conversation over (idle timeout)"
        update = next(e for e in chain.sent() if e["type"] == "session.update")
        assert update["session"]["type"] == "transcription"
        assert "response.create" not in [e["type"] for e in chain.sent()]
        (done,) = [
            e
            for e in chain.received()
            if e["type"] == "conversation.item.input_audio_transcription.completed"
        ]
        text = done["transcript"]
        assert chain.logs.find(f"user: {text}")
    # The hook runs off the loop; the daemon's shutdown waits for queued runs.
    payloads = [json.loads(line) for line in received.read_text().splitlines()]
    transcripts = [p for p in payloads if p["event"] == "transcript"]
    assert transcripts == [{"event": "transcript", "text": text, "item_id": done["item_id"]}]
    phases = [p["new"] for p in payloads if p["event"] == "phase"]
    assert phases[:4] == ["idle", "wake", "connecting", "listening"]


async def test_key_is_kept_ready_so_conversations_do_not_wait_for_the_companion(
    tmp_path, models_dir
):
    """The key is minted before anyone wakes the device, and reused: neither conversation waits
    for the companion."""
    async with run_chain(tmp_path, models_dir) as chain:
        minted, _ = await chain.wait_log("mint for device demo-device: ok")
        for _ in range(2):
            await chain.press()
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            await chain.press()
            await chain.expect(Phase.IDLE)
        wakes = [s for s in chain.seen if s.new is Phase.WAKE]
        assert minted < wakes[0].t
        assert len(chain.logs.find("mint for device demo-device: ok")) == 1
        assert len(chain.calls()) == 2
        assert chain.daemon.last_wake_to_live_s is not None
        assert chain.daemon.last_wake_to_live_s < 1.0


POLICY = """
[session]
noise_reduction = "near_field"

[session.turn_detection]
type = "server_vad"
threshold = 0.6
silence_duration_ms = 700
create_response = true

[[session.tools]]
name = "get_weather"
description = "Current weather for a city."
parameters = { type = "object", properties = { city = { type = "string" } } }
"""


async def test_the_device_adds_its_tools_and_keeps_the_companions_policy(tmp_path, models_dir):
    """The companion mints with its policy (turn detection, noise reduction, a tool); the
    device's session.update names only the tools (the policy's, then its own), so the session
    the service runs (its session.updated) still has the owner's settings."""
    device = {"tools": [{"name": "get_time", "description": "time", "command": ["date"]}]}
    async with run_chain(tmp_path, models_dir, companion_extra=POLICY, device=device) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.press()
        await chain.expect(Phase.IDLE)
        (update,) = [e for e in chain.sent() if e["type"] == "session.update"]
        assert set(update["session"]) == {"type", "tools"}
        names = [t["name"] for t in update["session"]["tools"]]
        assert names == [
            "get_weather",
            "end_conversation",
            "set_timer",
            "set_alarm",
            "cancel_timer",
            "list_timers",
            "get_time",
        ]
        updated = [e for e in chain.received() if e["type"] == "session.updated"][-1]["session"]
        audio_in = updated["audio"]["input"]
        assert audio_in["noise_reduction"] == {"type": "near_field"}
        detection = audio_in["turn_detection"]
        assert (detection["threshold"], detection["silence_duration_ms"]) == (0.6, 700)
        assert [t["name"] for t in updated["tools"]] == names


async def test_push_to_talk_follows_the_policys_manual_turns(tmp_path, models_dir):
    """The companion's policy has no turn detection: the device learns it from the session and
    a short press ends the user's turn (commit + response.create) instead of the conversation."""
    policy = '\n[session.turn_detection]\ntype = "none"\n'
    device = {"session": {"idle_timeout_s": 10.0}}  # no VAD: nothing says the user is talking
    async with run_chain(
        tmp_path, models_dir, companion_extra=policy, device=device, reply="tone"
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.mic.say(clip(QUESTION))
        await chain.press()
        (thinking,) = await chain.expect(Phase.THINKING)
        assert thinking.reason == "button ended the turn"
        await chain.expect(Phase.SPEAKING, Phase.LISTENING, timeout=10)
        kinds = [e["type"] for e in chain.sent()]
        assert kinds.index("input_audio_buffer.commit") < kinds.index("response.create")


async def test_push_to_talk_in_a_transcription_session_only_commits(tmp_path, models_dir):
    """Manual turns in a transcription session: a press commits the turn and asks for no reply
    (the service refuses response.create there); the transcript comes and listening resumes."""
    policy = '\n[session]\ntype = "transcription"\n\n[session.turn_detection]\ntype = "none"\n'
    device = {"session": {"mode": "transcription", "idle_timeout_s": 10.0}}
    async with run_chain(tmp_path, models_dir, companion_extra=policy, device=device) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.mic.say(clip(QUESTION))
        await chain.press()
        thinking, transcribed = await chain.expect(Phase.THINKING, Phase.LISTENING, timeout=10)
        assert thinking.reason == "button ended the turn"
        assert transcribed.reason == "transcript received"
        kinds = [e["type"] for e in chain.sent()]
        assert kinds.count("input_audio_buffer.commit") == 1
        assert "response.create" not in kinds
        assert not [e for e in chain.received() if e["type"] == "error"]
        assert not chain.logs.find("Realtime API error", logging.WARNING)


async def test_a_failed_transcription_is_logged_told_to_the_hook_and_listening_resumes(
    tmp_path, models_dir
):
    """The service cannot transcribe the turn (transcription.failed): a warning, the hook gets
    `transcription_failed`, and the device listens again at once (before: THINKING for good)."""
    hook, received = tmp_path / "hook.py", tmp_path / "hook.jsonl"
    hook.write_text(HOOK_CODE)
    async with run_chain(
        tmp_path / "chain",
        models_dir,
        faults=("transcription-failed",),
        companion_extra='\n[session]\ntype = "transcription"\n',
        device={
            "session": {"mode": "transcription", "idle_timeout_s": 5.0},
            "hook": {"command": [sys.executable, str(hook), str(received)]},
        },
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip(QUESTION))
        stopped, listening = await chain.expect(Phase.THINKING, Phase.LISTENING, timeout=10)
        assert listening.reason == "transcription failed"
        assert listening.t - stopped.t < 2.0
        (failed,) = [
            e
            for e in chain.received()
            if e["type"] == "conversation.item.input_audio_transcription.failed"
        ]
        message = failed["error"]["message"]
        assert chain.logs.find(f"the transcription of what the user said failed: {message}")
        await chain.press()
        await chain.expect(Phase.IDLE)
    payloads = [json.loads(line) for line in received.read_text().splitlines()]
    told = [p for p in payloads if p["event"] == "transcription_failed"]
    assert told == [
        {"event": "transcription_failed", "error": message, "item_id": failed["item_id"]}
    ]


MARK_CODE = "import sys; open(sys.argv[1], 'a').write('ran\\n'); print('sunny')"


async def test_a_call_from_a_cancelled_response_is_dropped(tmp_path, models_dir):
    """The model starts a tool call, the user talks over it and the server cancels that response
    (it still sends the call's arguments, as upstream does): the tool never runs, the call is
    dropped with a log line, and the user's new turn is answered."""
    marker = tmp_path / "ran.txt"
    tool = {
        "name": "get_weather",
        "description": "The weather forecast for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "command": [sys.executable, "-c", MARK_CODE, str(marker)],
    }
    script = [
        {"call": {"name": "get_weather", "arguments": {"city": "Paris"}, "stream_s": 4}},
        {"reply": "tone"},
    ]
    device = {"tools": [tool], "session": {"idle_timeout_s": 5.0}}
    async with run_chain(tmp_path / "chain", models_dir, script=script, device=device) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.mic.say(clip("what is the weather in paris"))
        await chain.wait_phase(Phase.THINKING)
        await asyncio.sleep(1.0)
        chain.mic.speak(clip("no wait, never mind"))
        await chain.wait_phase(Phase.SPEAKING, timeout=10)
        await chain.wait_phase(Phase.LISTENING, timeout=10)
        done = [e["response"] for e in chain.received() if e["type"] == "response.done"]
        assert [r["status"] for r in done] == ["cancelled", "completed"]
        assert [e for e in chain.received() if e["type"] == "response.function_call_arguments.done"]
        assert chain.logs.find(
            "dropped the model's call to get_weather: its response was cancelled"
        )
        sent = [e["type"] for e in chain.sent()]
        assert "conversation.item.create" not in sent and "response.create" not in sent
    assert not marker.exists()
