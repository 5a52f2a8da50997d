"""A recorded call's frame times (`frames.jsonl`, written by `recorder`), for latency measurements.

    timeline = load_timeline(record_dir / call.id)   # after the call has closed
    timeline.wire_time(k)   # when input.wav's sample k reached the emulator (estimated)
    timeline.sent_at(k)     # when output.wav's sample k left the emulator's outgoing track

Received frames are timed as they come out of aiortc's receiver, after its jitter buffer. aiortc
(1.16) releases an audio frame only once `RECEIVE_PREFETCH_FRAMES` later frames are in: on a
steady stream each frame waits ~80 ms there. That wait is the emulator's own (upstream's servers
have their own buffering), so `wire_time` undoes it: the release of frame `pts - 4 x 960`
happened on the arrival of the packet of frame `pts`. What remains on top of the true arrival is
aiortc's decode and the hop to the loop (~1 ms on an idle machine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

RATE = 48000
FRAME = RATE // 50
# aiortc.rtcrtpreceiver: JitterBuffer(capacity=16, prefetch=4) for audio.
RECEIVE_PREFETCH_FRAMES = 4


class TimelineError(ValueError):
    """A sample outside the recorded frames, or a frames.jsonl that cannot be read."""


@dataclass(frozen=True)
class FrameTimes:
    """One direction's frames, in order: monotonic time, first sample index, length, pts."""

    t: NDArray[np.float64]
    at: NDArray[np.int64]
    n: NDArray[np.int64]
    pts: NDArray[np.int64]  # received frames: RTP-derived pts (48 kHz units); -1 when unknown

    def frame_of(self, sample: int) -> int:
        """Index of the frame holding `sample` (TimelineError when no frame does)."""
        i = int(np.searchsorted(self.at, sample, side="right")) - 1
        if i < 0 or sample >= self.at[i] + self.n[i]:
            raise TimelineError(f"sample {sample} is not in any recorded frame")
        return i


@dataclass(frozen=True)
class CallTimeline:
    """Both directions of one call."""

    received: FrameTimes
    sent: FrameTimes

    def received_at(self, sample: int) -> float:
        """When the frame holding input.wav's `sample` came out of the emulator's receiver."""
        return float(self.received.t[self.received.frame_of(sample)])

    def wire_time(self, sample: int) -> float:
        """When the packet holding input.wav's `sample` reached the emulator (estimated)."""
        frames = self.received
        pts = int(frames.pts[frames.frame_of(sample)])
        if pts < 0:
            raise TimelineError(f"the frame holding sample {sample} has no pts")
        released_then = pts - RECEIVE_PREFETCH_FRAMES * FRAME
        j = int(np.searchsorted(frames.pts, released_then))
        if j >= len(frames.pts) or frames.pts[j] != released_then:
            raise TimelineError(
                f"no frame {RECEIVE_PREFETCH_FRAMES} frames before sample {sample} (pts {pts})"
            )
        return float(frames.t[j])

    def sent_at(self, sample: int) -> float:
        """When output.wav's `sample` left: its frame's hand-out time plus its place in it."""
        i = self.sent.frame_of(sample)
        return float(self.sent.t[i] + (sample - self.sent.at[i]) / RATE)


def load_timeline(call_dir: Path) -> CallTimeline:
    """Read `call_dir/frames.jsonl` (complete once the call has closed)."""
    path = call_dir / "frames.jsonl"
    rows: dict[str, list[tuple[float, int, int, int]]] = {"in": [], "out": []}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TimelineError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            pts = record.get("pts")
            row = (
                float(record["t"]),
                int(record["at"]),
                int(record["n"]),
                -1 if pts is None else int(pts),
            )
            rows[record["dir"]].append(row)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TimelineError(f"{path}:{number}: not a frame record ({exc!r})") from exc

    def frames(direction: str) -> FrameTimes:
        table = np.array(rows[direction], dtype=np.float64).reshape(-1, 4)
        return FrameTimes(
            t=table[:, 0],
            at=table[:, 1].astype(np.int64),
            n=table[:, 2].astype(np.int64),
            pts=table[:, 3].astype(np.int64),
        )

    return CallTimeline(received=frames("in"), sent=frames("out"))
