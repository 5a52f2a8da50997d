"""The playback queue's adaptive depth: the estimator (wakertc.playout) on arrival-time sequences,
and the queue (wakertc.audio) following it, both on a fake clock (no sleeping)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from wakertc import playout
from wakertc.audio import _BLOCK, PLAYBACK_RATE, _PlaybackQueue
from wakertc.jitter import HOLD
from wakertc.playout import CEILING_S, FLOOR_S, START_S, WINDOW_S, PlayoutDepth

FRAME_S = 0.02
FRAME = int(PLAYBACK_RATE * FRAME_S)
FADE = PLAYBACK_RATE // 200  # the queue's 5 ms ramps


def released(
    frames: int, *, delay: float, jitter: float, loss: float, seed: int, start: float = 0.0
) -> list[tuple[float, int]]:
    """When the receive buffer (jitter.py) hands the reply's frames on, and how many each time.

    Frame i is sent at `start + 20 ms * i` and delayed by `delay +- jitter` (uniform), or lost,
    as the emulator's `jitter` fault does; frames go out in order, a missing one counts as lost
    (concealed, so still one frame of audio) once more than `HOLD` frames wait behind it.
    """
    rng = random.Random(seed)
    arrivals = sorted(
        (start + FRAME_S * i + max(0.0, delay + rng.uniform(-1, 1) * jitter), i)
        for i in range(frames)
        if rng.random() >= loss
    )
    out: list[tuple[float, int]] = []
    waiting: set[int] = set()
    expected = 0
    for at, i in arrivals:
        waiting.add(i)
        count = 0
        while expected in waiting or sum(j > expected for j in waiting) > HOLD:
            waiting.discard(expected)
            expected += 1
            count += 1
        if count:
            out.append((at, count))
    return out


def clean(
    frames: int, start: float, seed: int = 1, noise: float = 0.003
) -> list[tuple[float, int]]:
    """On-time frames, each up to `noise` late (the machine's own scheduling)."""
    rng = random.Random(seed)
    return [(start + FRAME_S * i + rng.uniform(0, noise), 1) for i in range(frames)]


def feed(depth: PlayoutDepth, arrivals: list[tuple[float, int]]) -> list[tuple[float, float]]:
    """Each arrival's time and the target right after it."""
    targets = []
    for at, count in arrivals:
        depth.arrived(at, count * FRAME_S)
        targets.append((at, depth.target_s))
    return targets


def test_a_clean_path_keeps_the_target_at_the_floor():
    depth = PlayoutDepth()
    targets = feed(depth, clean(500, 0.0))
    assert all(t == FLOOR_S for at, t in targets if at > playout.LEARN_S)


def test_an_unknown_path_starts_a_little_deeper_until_it_is_measured():
    depth = PlayoutDepth()
    assert depth.target_s == START_S
    targets = feed(depth, clean(50, 0.0))
    assert targets[0][1] == START_S
    assert targets[-1][1] == FLOOR_S


def test_a_jittery_path_raises_the_target_beyond_its_lateness():
    depth = PlayoutDepth()
    arrivals = released(150, delay=0.03, jitter=0.02, loss=0.0, seed=3)  # 3 s: all in the window
    feed(depth, arrivals)
    # the target covers the worst lateness seen (one block to play meanwhile) ...
    position = np.cumsum([0] + [count for _, count in arrivals[:-1]]) * FRAME_S
    transit = np.array([at for at, _ in arrivals]) - position
    assert depth.target_s >= FLOOR_S + (transit.max() - transit.min())
    # ... and a loss's cost on top, bounded
    assert FLOOR_S + 0.03 + playout.LOSS_S <= depth.target_s <= CEILING_S
    assert depth.lateness_s == pytest.approx(transit.max() - transit.min())


def test_a_lone_late_chunk_costs_its_lateness_not_a_loss_allowance():
    # a loopback path with one hiccup: no loss, one chunk 25 ms late
    depth = PlayoutDepth()
    arrivals = clean(100, 0.0, noise=0.0)
    arrivals[60] = (arrivals[60][0] + 0.025, 1)
    feed(depth, arrivals)
    assert depth.lateness_s == pytest.approx(0.025)
    assert depth.target_s == pytest.approx(FLOOR_S + 0.025 + playout.TOLERANCE_S)
    # a second late chunk is a path that jitters, where losses come with it
    feed(depth, [(2.0 + 0.02, 1)])
    assert depth.target_s == pytest.approx(FLOOR_S + 0.025 + playout.LOSS_S + playout.TOLERANCE_S)


def test_a_chunk_held_behind_a_loss_brings_the_loss_allowance():
    # no jitter, one packet lost: the receive buffer holds the next ones until HOLD + 1 are
    # in, then releases them with the lost one concealed, as one chunk: the only late one
    arrivals = released(100, delay=0.03, jitter=0.0, loss=0.0, seed=1)
    lost = 50
    release = (arrivals[lost + HOLD + 1][0], HOLD + 2)
    arrivals = [*arrivals[:lost], release, *arrivals[lost + HOLD + 2 :]]
    depth = PlayoutDepth()
    feed(depth, arrivals)
    assert depth.lateness_s == pytest.approx((HOLD + 1) * FRAME_S)
    expected = FLOOR_S + depth.lateness_s + playout.LOSS_S + playout.TOLERANCE_S
    assert depth.target_s == pytest.approx(min(CEILING_S, expected))
    assert depth.target_s > FLOOR_S + depth.lateness_s + playout.TOLERANCE_S + 0.01


def test_the_target_never_exceeds_the_ceiling():
    depth = PlayoutDepth()
    feed(depth, released(200, delay=0.3, jitter=0.25, loss=0.05, seed=4))
    assert depth.target_s == CEILING_S


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_after_a_burst_of_jitter_the_target_returns_to_its_clean_value_within_5_s(seed: int):
    depth = PlayoutDepth()
    feed(depth, clean(250, 0.0, seed))
    clean_value = depth.target_s
    burst = released(250, delay=0.03, jitter=0.02, loss=0.01, seed=seed, start=5.0)
    feed(depth, burst)
    stopped = 10.0  # the first frame sent after the burst
    assert depth.target_s > clean_value + 0.05
    after = feed(depth, clean(400, stopped + 0.03, seed))  # 30 ms behind: the burst's base delay
    # the burst is remembered for a while (the next loss would find the queue shallow) ...
    assert all(t > clean_value + 0.01 for at, t in after if at < stopped + 1.0)
    # ... and forgotten within 5 s of the jitter stopping
    assert all(abs(t - clean_value) <= 0.01 for at, t in after if at >= stopped + 5.0)
    back = next(at for at, t in after if abs(t - clean_value) <= 0.01) - stopped
    assert back <= WINDOW_S + 0.1


def test_a_pause_between_replies_is_not_jitter_and_keeps_what_was_learned():
    depth = PlayoutDepth()
    feed(depth, released(250, delay=0.03, jitter=0.02, loss=0.0, seed=8))
    learned = depth.target_s
    assert learned > FLOOR_S
    # the next reply 4 s later: its first chunk is 4 s "late" on the old timeline
    feed(depth, clean(1, 9.0))
    assert depth.target_s == learned
    # and after a clean reply as long as the window, the floor again
    feed(depth, clean(int(WINDOW_S / FRAME_S) + 5, 9.02))
    assert depth.target_s == FLOOR_S


def test_a_cue_played_whole_is_not_measured():
    depth = PlayoutDepth()
    feed(depth, clean(100, 0.0))
    depth.arrived(2.0, 0.6)  # a chime, queued at once in the middle of the audio
    feed(depth, clean(100, 2.0))
    assert depth.target_s == FLOOR_S


def test_the_loss_allowance_is_what_the_receive_buffer_holds_behind_a_loss():
    allowance = (HOLD + 1) * FRAME_S
    assert allowance == pytest.approx(playout.LOSS_S)


def test_a_floor_above_the_ceiling_is_refused():
    with pytest.raises(ValueError, match=r"floor \(0.2\) <= ceiling \(0.15\)"):
        PlayoutDepth(floor_s=0.2)


# --- the queue following its target --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def speech(frames: int, pause_every: int = 10, pause: int = 3) -> np.ndarray:
    """Frames of a 300 Hz tone riding on a DC offset (never near zero) with pauses (digital
    silence) of `pause` frames every `pause_every` frames, as a reply's words and breaths."""
    t = np.arange(frames * FRAME) / PLAYBACK_RATE
    out = (8000 + 4000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    for i in range(pause_every - pause, frames, pause_every):
        out[i * FRAME : (i + pause) * FRAME] = 0
    return out


def play(
    queue: _PlaybackQueue, clock: Clock, audio: np.ndarray, arrivals: list[tuple[float, int]]
) -> tuple[np.ndarray, int, list[float]]:
    """Put `audio` as `arrivals` say while pulling 20 ms blocks: what played, the underruns
    before the audio's end and the queue's depth after each pull meanwhile."""
    pulls: list[np.ndarray] = []
    depths: list[float] = []
    pull_at = arrivals[0][0] + 0.0137  # the device's clock, out of phase with the network
    sent = 0
    dry = 0
    pending = list(arrivals)
    while pending or queue.queued_s > 0:
        while pending and pending[0][0] <= pull_at:
            at, count = pending.pop(0)
            clock.now = at
            queue.put(audio[sent * FRAME : (sent + count) * FRAME])
            sent += count
        clock.now = pull_at
        before = queue.ran_dry
        block, _ = queue.pull(_BLOCK)
        if pending:
            dry += queue.ran_dry - before
            depths.append(queue.queued_s)
        pulls.append(block)
        pull_at += FRAME_S
    return np.concatenate(pulls), dry, depths


def max_step(samples: np.ndarray) -> float:
    return float(np.abs(np.diff(samples)).max())


def sounds(samples: np.ndarray) -> np.ndarray:
    """The samples that are not a pause."""
    return samples[np.abs(samples) > 1e-6]


def assert_sounds_intact(out: np.ndarray, audio: np.ndarray) -> None:
    """Every sample of `audio` that is not a pause came out, in order (past the fade-in)."""
    sent = (sounds(audio) / 32768.0).astype(np.float32)[FADE:]
    assert np.array_equal(sounds(out)[-len(sent) :], sent)


@pytest.mark.parametrize("seed", range(5))
def test_the_queue_plays_a_minute_of_jittery_reply_with_at_most_one_underrun(seed: int):
    # The emulator's default `jitter` fault. Over 20 such minutes (seeds 0-19): 3 underrun
    # once (two packets lost close together), the others never.
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    audio = speech(3000)
    arrivals = released(3000, delay=0.03, jitter=0.02, loss=0.01, seed=seed)
    out, dry, _ = play(queue, clock, audio, arrivals)
    assert dry <= 1
    assert max_step(out) <= max_step(audio / 32768.0)


def test_a_stall_runs_the_queue_dry_once_without_a_click():
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    feed(queue.depth, clean(100, -10.0))  # a clean path learned: the reply starts at the floor
    audio = speech(60, pause=0)
    hole = 0.2  # then the path stalls: frames 30 on arrive 200 ms late (the same stream)
    arrivals = [(FRAME_S * i + (hole if i >= 30 else 0.0), 1) for i in range(60)]
    out, dry, _ = play(queue, clock, audio, arrivals)
    assert dry == 1 and queue.underruns == 1
    # the stall is measured: the target rises, and the frames after it, as late, find no gap
    assert queue.target_s > 0.1
    assert max_step(out) <= max_step(audio / 32768.0)  # ramps, no click


def test_the_depth_follows_a_falling_target_by_shortening_pauses_only():
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    # the path jittered before: this reply starts deep ...
    feed(queue.depth, released(250, delay=0.03, jitter=0.02, loss=0.0, seed=10, start=-10.0))
    deep = queue.target_s
    audio = speech(400)
    # ... and arrives on time: the target falls to the floor, the depth follows in the pauses
    out, dry, depths = play(queue, clock, audio, clean(400, 0.0, noise=0.0))
    assert dry == 0 and queue.target_s == FLOOR_S
    start = depths.index(max(depths[:10]))  # once the start-up depth is queued
    assert np.mean(depths[start : start + 25]) >= deep - 2 * FRAME_S
    assert max(depths[-50:]) <= FLOOR_S + 0.01
    # every sound played, in order: only pauses got shorter
    assert_sounds_intact(out, audio)
    assert max_step(out) <= max_step(audio / 32768.0)


def test_the_depth_follows_a_rising_target_by_lengthening_pauses_only():
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    feed(queue.depth, clean(100, -10.0))  # a clean path learned: the reply starts at the floor
    audio = speech(300)
    out, dry, depths = play(
        queue, clock, audio, released(300, delay=0.03, jitter=0.02, loss=0.0, seed=11)
    )
    # the first late chunks find the clean path's depth (they are what the jitter is learned
    # from); from then on the pauses deepen the queue
    assert dry <= 1
    assert queue.target_s > 0.08
    assert max(depths[-50:]) >= queue.depth.headroom_s - 0.03  # started at the floor
    assert_sounds_intact(out, audio)
    assert max_step(out) <= max_step(audio / 32768.0)


def test_a_deep_queue_is_still_cleared_at_once():
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    feed(queue.depth, released(250, delay=0.03, jitter=0.02, loss=0.0, seed=12, start=-10.0))
    audio = speech(20, pause=0)
    for i in range(20):  # a reply 400 ms deep, on time
        clock.now = FRAME_S * i
        queue.put(audio[i * FRAME : (i + 1) * FRAME])
    _, audible = queue.pull(_BLOCK)
    assert audible and queue.queued_s > queue.target_s  # playing, deeper than the target
    queue.clear()  # barge-in
    assert queue.queued_s == 0
    head, audible = queue.pull(_BLOCK)  # the next 5 ms, faded out, then silence
    assert audible and not head[FADE:].any() and abs(head[0] - audio[FRAME] / 32768) < 0.01
    assert not queue.pull(_BLOCK)[1]


def test_a_reply_whose_first_frame_came_late_does_not_make_the_clean_path_look_lossy():
    # a clean path learned, then a reply whose first frame comes 60 ms late (a loop busy as
    # the reply starts) and the rest on time: that one late frame is the spread, not a loss
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    feed(queue.depth, clean(100, -10.0))
    arrivals = [(0.06, 1)] + [(FRAME_S * i + 0.001, 1) for i in range(1, 100)]
    _, dry, _ = play(queue, clock, speech(100), arrivals)
    assert dry == 0
    assert queue.target_s <= FLOOR_S + 0.06 + 0.02  # no loss allowance on top


def test_frames_late_together_are_one_stall_not_a_loss():
    clock = Clock()
    queue = _PlaybackQueue(1.0, FLOOR_S, clock=clock)
    arrivals = [(0.06, 1)] * 4 + [(FRAME_S * i + 0.001, 1) for i in range(4, 100)]
    _, dry, _ = play(queue, clock, speech(100), arrivals)
    assert dry == 0
    assert queue.target_s <= FLOOR_S + 0.06 + 0.02
