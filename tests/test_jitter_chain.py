"""The reply's audio over a bad path (the emulator's `jitter` fault), through the whole chain."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chain import STORY, clip, run_chain
from wakertc.audio import PLAYBACK_RATE
from wakertc.measure import read_wav
from wakertc.playout import CEILING_S, FLOOR_S, START_S
from wakertc.state import Phase

QUESTION = "tell me a story"
# A replayed reply, cues off: the speaker's file then holds the reply alone.
QUIET = {"sounds": {"enabled": False}}


def max_step(samples: np.ndarray) -> float:
    return float(np.abs(np.diff(samples)).max())


async def play_story(tmp_path: Path, models_dir: Path, faults: tuple[str, ...]) -> dict[str, float]:
    """One story told over the path; what the speaker played, how often it ran dry, and the
    playback queue's target and depth meanwhile."""
    async with run_chain(
        tmp_path, models_dir, reply="speech", reply_text=STORY, faults=faults, device=QUIET
    ) as chain:
        speaker = chain.mic.file
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip(QUESTION))
        await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=30)
        # (target, depth), every 20 ms of the reply
        seen = await chain.sample_until(
            Phase.LISTENING, lambda: (speaker.playback_target_s, speaker.playback_queued_s)
        )
        ran_dry = speaker.playback_ran_dry
        underruns = speaker.playback_underruns
        target = speaker.playback_target_s
        reply = read_wav(chain.record_dir / chain.calls()[0].id / "output.wav", PLAYBACK_RATE)
    played = read_wav(chain.output_wav, PLAYBACK_RATE)
    return {
        "ran_dry": ran_dry,
        "underruns": underruns,
        "target_end": target,
        "target_max": max(t for t, _ in seen),
        "depth_mean": float(np.mean([d for _, d in seen if d > 0])),
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
    # The playback queue's depth follows the jitter (playout.py): at the floor on the clean
    # path (above it only while the first half second is measured) ...
    assert clean["underruns"] == 0, (clean, jittery)
    assert clean["target_end"] == FLOOR_S and clean["target_max"] <= START_S, (clean, jittery)
    # ... and deep enough on the jittery one for none of its late or lost packets to leave a gap
    # (with the fixed 20 ms prebuffer: 1-2 underruns in this reply).
    assert jittery["underruns"] == 0, (clean, jittery)
    assert FLOOR_S + 0.06 < jittery["target_end"] <= CEILING_S, (clean, jittery)
