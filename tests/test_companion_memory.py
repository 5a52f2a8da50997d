"""Memory across conversations, through the whole chain (the real daemon, companion and
emulator): what was said in one conversation, as text, is given to the device's next session;
a device that has not opted in is remembered nothing; `forget` empties it."""

from __future__ import annotations

import asyncio
from typing import Any

from chain import clip, run_chain
from emulator_helpers import run_command
from wakertc.state import Phase

DEVICE = "demo-device"  # the name the chain's companion knows its device by
TRANSCRIBED = '[session]\ntranscription_model = "gpt-4o-transcribe"\n'


def memory_items(chain: Any, call: int) -> list[dict[str, Any]]:
    """The conversation items the companion put into a call through its sideband."""
    return [
        e["event"]["item"]
        for e in chain.calls()[call].events
        if e["dir"] == "in"
        and e.get("via") == "sideband"
        and e.get("event", {}).get("type") == "conversation.item.create"
    ]


async def converse(chain: Any, question: str) -> None:
    await chain.press()
    await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
    chain.mic.speak(clip(question))
    await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, timeout=20)
    await chain.press()
    await chain.expect(Phase.IDLE)


async def test_the_next_session_is_given_the_last_ones_turns(tmp_path, models_dir):
    memory = f'[memory]\ndevices = ["{DEVICE}"]\nturns = 4\n'
    async with run_chain(
        tmp_path, models_dir, reply="tone", companion_extra=TRANSCRIBED + memory
    ) as chain:
        assert chain.companion is not None
        await converse(chain, "my name is ada and i like jazz")
        assert memory_items(chain, 0) == []  # nothing remembered yet
        # What the service transcribed, and what it replied, as the sideband saw them.
        said = [
            e["transcript"]
            for e in chain.received(0)
            if e["type"] == "conversation.item.input_audio_transcription.completed"
        ]
        replied = [
            e["transcript"]
            for e in chain.received(0)
            if e["type"] == "response.output_audio_transcript.done"
        ]
        assert said and replied
        async with asyncio.timeout(5):
            while len(await chain.companion.store.recall(DEVICE, 10, 3600)) < 2:
                await asyncio.sleep(0.05)
        await converse(chain, "what music do i like")
        async with asyncio.timeout(5):
            while not memory_items(chain, 1):
                await asyncio.sleep(0.05)
        items = memory_items(chain, 1)
        assert [(i["role"], i["content"][0]["text"]) for i in items] == [
            ("user", said[0]),
            ("assistant", replied[0]),
        ]
        assert [i["content"][0]["type"] for i in items] == ["input_text", "output_text"]
        # Forgotten through the command line, on the same store: the next session gets none.
        code, _, err = await run_command(
            "companion", "forget", "--device", DEVICE, "--config", str(chain.companion.config.path)
        )
        assert code == 0, err
        await converse(chain, "do you remember me")
        await asyncio.sleep(0.5)  # the join has happened by the time the reply is over
        assert memory_items(chain, 2) == []


async def test_a_device_that_has_not_opted_in_is_remembered_nothing(tmp_path, models_dir):
    memory = '[memory]\ndevices = ["another-device"]\n'
    async with run_chain(
        tmp_path, models_dir, reply="tone", companion_extra=TRANSCRIBED + memory
    ) as chain:
        assert chain.companion is not None
        await converse(chain, "my name is ada")
        await converse(chain, "what is my name")
        assert await chain.companion.store.recall(DEVICE, 10, 3600) == []
        assert memory_items(chain, 1) == []
