"""The reply's audio over a bad path (the emulator's `jitter` fault), through the whole chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chain import STORY, clip, run_chain
from wakertc.audio import PLAYBACK_RATE
from wakertc.measure import read_wav
from wakertc.state import Phase

QUESTION = "tell me a story"
# A replayed reply, cues off: the speaker's file then holds the reply alone.
QUIET = {"sounds": {"enabled": False}}


def max_step(samples: np.ndarray) -> float:
    return float(np.abs(np.diff(samples)).max())


async def play_story(tmp_path: Path, models_dir: Path, faults: tuple[str, ...]) -> dict[str, float]:
    """One story told over the path; what the speaker played, and how often it ran dry."""
    async with run_chain(
        tmp_path, models_dir, reply="speech", reply_text=STORY, faults=faults, device=QUIET
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip(QUESTION))
        await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=30)
        await chain.wait_phase(Phase.LISTENING, timeout=30)
        ran_dry = chain.mic.file.playback_ran_dry
        reply = read_wav(chain.record_dir / chain.calls()[0].id / "output.wav", PLAYBACK_RATE)
    played = read_wav(chain.output_wav, PLAYBACK_RATE)
    return {
        "ran_dry": ran_dry,
        "played_s": len(played) / PLAYBACK_RATE,
        "played_step": max_step(played),
        "reply_step": max_step(reply),
        "reply_peak": float(np.abs(reply).max()),
        "played_peak": float(np.abs(played).max()),
    }


async def test_jittery_path_plays_the_reply_whole_without_clicks(tmp_path, models_dir):
    clean = await play_story(tmp_path / "clean", models_dir, ())
    jittery = await play_story(tmp_path / "jitter", models_dir, ("jitter",))
    # Lost packets are concealed, not cut out: the reply is as long as on the clean path.
    assert jittery["played_s"] >= clean["played_s"] - 0.1, (clean, jittery)
    # No click: no sample-to-sample jump beyond the reply's own (relative to its peak, as the
    # speaker plays it at the device's volume).
    own = jittery["reply_step"] / jittery["reply_peak"]
    assert jittery["played_step"] / jittery["played_peak"] <= own, (clean, jittery)
    # The playback queue's 20 ms prebuffer does not cover +-20 ms of jitter or a 40 ms hold
    # behind a loss: 1-2 underruns measured in this 7 s reply (the target is 1 a
    # minute, which needs an adaptive playback depth); the bound leaves the scheduler room.
    assert clean["ran_dry"] == 0
    assert jittery["ran_dry"] <= 4, (clean, jittery)
