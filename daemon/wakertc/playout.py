"""How deep the playback queue should be: a target that follows the reply's measured jitter.

Network audio reaches `play()` in 20 ms chunks (longer after the receive buffer held some behind a
loss, jitter.py), each ideally exactly its own duration after the previous one. Playback takes
20 ms blocks on the device's clock, so it must run behind the audio's on-time schedule by as much
as any chunk can be late, or that chunk finds the queue dry. `lag_s` is how far behind it runs,
`headroom_s` how far it should, and `target_s` the same plus one block: the depth to queue.

- transit = arrival time - position of the chunk's first sample in the stream; the smallest
  transit in the last `WINDOW_S` of received audio is the on-time schedule, and lateness is
  measured from it. Where RFC 3550's jitter smooths the deviations into a mean, the headroom is
  their extreme (the spread of the window's transits): one chunk later than the lag is a gap.
- A path that jitters also loses packets, and a lost packet holds the frames after it until
  `jitter.HOLD + 1` have arrived (60 ms): `LOSS_S` goes on top of the spread, so that the first
  loss after the window forgot the last one does not run the queue dry. Simulated with the
  emulator's default `jitter` fault (30 ms +-20 ms, 1 % loss; the queue and arrivals of
  tests/test_playout.py, 40 replies of 7 s from start-up and 20 minutes-long ones), the spread
  alone left 50 underruns in the 40 replies and 124 in the 20 minutes; with `LOSS_S`, 3 and 3,
  each where two packets were lost close together.
- ... but not on a path whose only lateness is one chunk, with no loss (a chunk longer than a
  packet: what the receive buffer releases after holding frames) in the window: that is a
  hiccup (the sender's or this machine's scheduling), not a lossy path, and it costs its own
  lateness for `WINDOW_S`, not 60 ms more. On a loopback path one such chunk raised the latency
  of everything played in the next 4 s from ~95 to ~165 ms (`scripts/bench_latency.py`). The
  cost, simulated as above: with +-10 ms of jitter and 1 % loss, the first loss of a reply
  finds the queue shallow a little more often, 11 underruns instead of 9 in 40 replies of 7 s
  from start-up (seeds 100-139); in 20 minutes, 3 either way (and with +-20 ms, unchanged).
- A spread within `TOLERANCE_S` is the machine's own scheduling noise, absorbed by the block's
  phase as before (0 underruns at the floor on a clean path; the clean path of
  tests/test_jitter_chain.py spreads 5-9 ms on this machine, lightly loaded): the target leaves
  the floor only beyond it (and then takes that noise on top), and never exceeds `CEILING_S`,
  beyond which waiting costs more than a gap.
- The window counts received audio, not wall time: between replies nothing arrives, and the
  path's jitter is remembered for the next reply; once the jitter stops, the late chunks leave
  the window within `WINDOW_S` of audio and the target is back at the floor; the depth follows
  at the reply's next pauses. The issue asks for the depth within 10 ms of the clean path's
  5 s after the jitter stops: `scripts/bench_jitter.py --quick` read 48 ms against 23. A 3 s
  window met it (24-27 ms against 22-24, three runs), and so did settling a shrinking queue in
  the middle of the start band instead of at its top (26 against 25), but each left a gap on
  the clean path of tests/test_jitter_chain.py in 1-2 of 8 runs on this machine, where 4 s and
  the top left none in 8: the shorter memory measures the machine's own scheduling noise as
  smaller than it is. A gap heard on every path costs more than a deep queue for a few
  seconds after a bad one, so the window stays 4 s.
- Until `LEARN_S` of audio has been measured the path is unknown: the target is at least
  `START_S`, so the first words of the first reply on a bad path do not break up while the
  window fills (without it, 23 underruns in the 40 replies). It costs 40 ms once, at the first
  reply after start-up.
- A chunk later than `GAP_S` is a pause in sending (a reply's end and the next one's start), not
  jitter: it starts a new stream, anchored as on time, and in between `lag_s` is None. A chunk
  longer than `MAX_CHUNK_S` was not a network packet (a cue, played whole) and is not measured.
"""

from __future__ import annotations

import collections
import itertools

FLOOR_S = 0.02
CEILING_S = 0.15
WINDOW_S = 4.0
TOLERANCE_S = 0.015
LOSS_S = 0.06  # (jitter.HOLD + 1) frames of 20 ms; not imported: audio does not pull in aiortc
LEARN_S = 0.5
START_S = 0.06
GAP_S = 0.3
MAX_CHUNK_S = 0.2
HELD_RATIO = 1.5  # a chunk this much longer than the median one: frames held behind a gap


class PlayoutDepth:
    """The target depth of a playback queue, from the arrival times of what it is given."""

    def __init__(self, floor_s: float = FLOOR_S, ceiling_s: float = CEILING_S) -> None:
        if not 0 < floor_s <= ceiling_s:
            raise ValueError(f"playout depth: need 0 < floor ({floor_s}) <= ceiling ({ceiling_s})")
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self._received = 0.0  # seconds of audio measured so far, across streams
        self._shift = 0.0  # added to the stream position at each new stream (re-anchoring)
        # (stream position at the chunk's start, transit, duration, arrival time) of the chunks
        # in the window
        self._window: collections.deque[tuple[float, float, float, float]] = collections.deque()
        self._stream_from = 0.0  # stream position where the current stream began
        self._earliest = 0.0  # smallest transit in the window
        self._spread = 0.0  # largest transit in the window minus `_earliest`
        self._lossy = False  # the window shows a loss, or chunks late at more than one time
        self._last_at = -float("inf")  # when the last measured chunk arrived

    @property
    def target_s(self) -> float:
        """The depth to queue before playing (a reply's start, or after running dry)."""
        target = self.floor_s
        if self._spread > TOLERANCE_S:
            loss = LOSS_S if self._lossy else 0.0
            target = min(self.ceiling_s, self.floor_s + self._spread + loss + TOLERANCE_S)
        return max(target, min(START_S, self.ceiling_s)) if self._received < LEARN_S else target

    @property
    def headroom_s(self) -> float:
        """How far behind the on-time schedule playback should run (what `lag_s` should be).

        On a clean path that is the scheduling noise measured (within `TOLERANCE_S`, which the
        target does not count): the window's earliest chunk may have been early (two sent
        back to back after a stall), and a lag cut to it alone left a gap in 1 of ~8 chain runs.
        """
        return max(self.target_s - self.floor_s, self._spread)

    def lag_s(self, now: float, queued_s: float) -> float | None:
        """How far behind the on-time schedule playback runs when `queued_s` is still queued:
        the lateness it absorbs. None when no network audio is arriving (a cue, a stream's end).

        Playing and lateness both count from the on-time schedule (the window's earliest
        transit): chunk at position m is on time at m + shift + earliest, and a chunk that late
        by L finds the queue dry only if L exceeds the lag.
        """
        if now - self._last_at > GAP_S:
            return None
        return now - (self._received + self._shift + self._earliest) + queued_s

    @property
    def lateness_s(self) -> float:
        """The spread of lateness in the window (0 on a perfectly clean path)."""
        return self._spread

    def arrived(self, at: float, seconds: float) -> bool:
        """`seconds` of audio arrived at monotonic time `at`; True if it continues a stream."""
        if seconds <= 0 or seconds > MAX_CHUNK_S:
            return False
        transit = at - (self._received + self._shift)
        continues = bool(self._window) and transit - self._earliest <= GAP_S
        if not continues:
            # a new stream: this chunk counts as on time, the window keeps the path's history
            self._shift += transit - self._earliest
            transit = self._earliest
            self._stream_from = self._received
        elif transit < self._earliest:
            # Earlier than any chunk in the window: this stream's first chunk, counted as on
            # time, was late. This stream's anchor moves, and its chunks so far are that much
            # later; the path's history is not made late by it (a reply that starts while the
            # loop is busy would otherwise look like a lossy path for the next 4 s).
            early = self._earliest - transit
            self._shift -= early
            transit = self._earliest
            self._window = collections.deque(
                (p, t + early if p >= self._stream_from else t, d, a) for p, t, d, a in self._window
            )
        self._window.append((self._received, transit, seconds, at))
        self._last_at = at
        self._received += seconds
        while self._window[0][0] < self._received - WINDOW_S:
            self._window.popleft()
        transits = [t for _, t, _, _ in self._window]
        self._earliest = min(transits)
        self._spread = max(transits) - self._earliest
        # a chunk longer than a packet: the receive buffer held frames behind a missing one
        durations = sorted(duration for _, _, duration, _ in self._window)
        held = durations[-1] > HELD_RATIO * durations[len(durations) // 2]
        # Chunks late at more than one time: a path that delays packets now and then. Chunks
        # that arrived late together are one stall (a loop busy for a while reads several
        # packets at once), no sign of loss.
        late = sorted(a for _, t, _, a in self._window if t - self._earliest > TOLERANCE_S)
        stalls = bool(late) + sum(b - a > TOLERANCE_S for a, b in itertools.pairwise(late))
        self._lossy = held or stalls > 1
        return continues
