"""What the daemon holds in memory after conversations: a call leaves nothing behind, so the
200th conversation's daemon holds what the first one's did (the full bench reads the RSS).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
from pathlib import Path

from chain import clip, run_chain
from wakertc.state import Phase

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


QUESTION = "what time is it"


def call_objects() -> collections.Counter[str]:
    """Live objects of the call's libraries and of wakertc's session layer, by type."""
    gc.collect()
    found: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        module = type(obj).__module__
        if isinstance(module, str) and module.startswith(
            ("aiortc", "aioice", "av", "wakertc.webrtc", "wakertc.session", "wakertc.conversation")
        ):
            found[f"{module}.{type(obj).__qualname__}"] += 1
    return found


async def test_conversations_leave_no_call_objects_behind(tmp_path, models_dir):
    """After each conversation, nothing of its call is left: no peer connection, transport, codec
    or session object (the emulator's side of each call closes too), so 200 conversations hold
    what one did."""
    async with run_chain(tmp_path, models_dir, reply="tone") as chain:
        # What earlier tests in this process may have left is not this daemon's.
        before = call_objects()
        after: list[collections.Counter[str]] = []
        for _ in range(3):
            await chain.press()
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            chain.mic.speak(clip(QUESTION))
            await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, timeout=20)
            await chain.press()
            await chain.expect(Phase.IDLE)
            await asyncio.sleep(1.0)  # both sides' closing tasks finish
            # The emulator keeps a record of every call (its peer connection included); it is
            # not the device's memory.
            assert chain.emulator is not None
            chain.emulator.calls.clear()
            after.append(call_objects() - before)
        assert chain.daemon.conversations == 3
    for census in after:
        left = {
            name: n
            for name, n in census.items()
            if "RTCPeerConnection" in name or name.startswith("wakertc.")
        }
        assert left == {}, left
    assert after[2] == after[0], (after[2] - after[0], after[0] - after[2])
