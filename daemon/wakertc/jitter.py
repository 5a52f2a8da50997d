"""The receive jitter buffer for the reply's audio: frames out as soon as they are in order.

aiortc's own audio buffer (`JitterBuffer(capacity=16, prefetch=4)`) holds every frame until four
more have arrived (80 ms), and a single lost packet stalls it until 16 have piled up, after
which it hands out one frame per arriving packet: that one loss leaves ~300 ms of extra delay for
the rest of the call. The daemon's playback queue absorbs jitter already, so this buffer only
restores order:

- an in-order packet is released at once;
- a packet that arrives ahead of a missing one is held, at most `HOLD` of them; once more wait,
  the missing ones count as lost (a late arrival is then dropped) and are concealed;
- everything in order is released together.

aiortc takes at most one encoded frame per `add()` (one arriving packet), so a buffer that releases
one frame at a time would keep whatever it had held as a permanent backlog. Instead, the ready
frames are joined into one Opus packet (RFC 6716 3.2.5, "code 3": up to 120 ms of frames sharing
one configuration), which the decoder decodes exactly as it would the frames one by one. A lost
frame goes into that packet as a zero-length frame, which libopus conceals (its packet loss
concealment continues the signal and fades it): a loss does not click and does not shorten the
stream. Nothing is dropped to drain a backlog: there is none beyond the frames still waiting
behind a hole, and those are at most `HOLD`.

The buffer replaces aiortc's through the receiver's private attribute (`install`); should aiortc
change it, a warning is logged once and aiortc's own buffer stays.
"""

from __future__ import annotations

import logging

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer as AiortcJitterBuffer
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

# Packets held behind a missing one before it counts as lost (20 ms each with Opus as sent):
# a packet overtaken by two (delays differing by up to 40 ms) still finds its place.
HOLD = 2
# A packet this far ahead of the expected one is a new stream (a sender restart), not a gap.
RESYNC_AHEAD = 100
# At most this much audio concealed for one gap: beyond it the stream resumes after a fade.
MAX_CONCEAL_MS = 60.0
# RFC 6716 3.2.5: a code 3 packet holds at most 120 ms of audio.
MAX_PACKET_MS = 120.0
OPUS_RATE = 48000
# aiortc's name-mangled attribute in RTCRtpReceiver (aiortc 1.16).
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"

_warned = False


def frame_ms(toc: int) -> float:
    """Duration of each frame in an Opus packet, from its TOC byte (RFC 6716 3.1)."""
    config = toc >> 3
    if config < 12:  # SILK-only
        return (10.0, 20.0, 40.0, 60.0)[config % 4]
    if config < 16:  # hybrid
        return (10.0, 20.0)[config % 2]
    return (2.5, 5.0, 10.0, 20.0)[config % 4]  # CELT-only


def _length_bytes(n: int) -> bytes:
    """A frame length as a code 2/3 packet codes it (RFC 6716 3.2.1)."""
    if n < 252:
        return bytes([n])
    low = 252 + (n & 3)
    return bytes([low, (n - low) >> 2])


def join_frames(toc: int, bodies: list[bytes]) -> bytes:
    """One VBR code 3 Opus packet of `bodies` (frames without TOC; b"" = lost) under `toc`."""
    header = bytes([(toc & 0xFC) | 3, 0x80 | len(bodies)])
    lengths = b"".join(_length_bytes(len(body)) for body in bodies[:-1])
    return header + lengths + b"".join(bodies)


def _ahead(a: int, b: int) -> int:
    """How far sequence number `a` is ahead of `b` (negative: behind), across wrap-around."""
    d = (a - b) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


class ReorderBuffer:
    """What aiortc's receiver calls as its jitter buffer (`add`, `capacity`), for Opus audio."""

    def __init__(self, hold: int = HOLD) -> None:
        self._hold = hold
        self._next: int | None = None  # the sequence number to release next
        self._held: dict[int, RtpPacket] = {}
        self.lost = 0
        """Packets given up as lost (and concealed or skipped), for logs and tests."""
        self.late = 0
        """Packets that arrived after their place was given up, or twice."""

    @property
    def capacity(self) -> int:
        return self._hold + 1

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Take one packet; return (no picture loss to report, the frames now in order)."""
        seq = packet.sequence_number
        if self._next is None:
            self._next = seq
        ahead = _ahead(seq, self._next)
        if ahead < 0 and ahead > -RESYNC_AHEAD:
            self.late += 1
            return False, None
        if ahead < 0 or ahead >= RESYNC_AHEAD:
            log.debug("RTP sequence jumped from %d to %d: starting over", self._next, seq)
            self._held.clear()
            self._next = seq
        if seq in self._held:
            self.late += 1
            return False, None
        self._held[seq] = packet
        if self._next not in self._held and len(self._held) <= self._hold:
            return False, None
        return False, self._release()

    def _release(self) -> JitterFrame | None:
        """Everything in order from `_next` (giving up on a hole first), as one frame."""
        assert self._next is not None
        missing = 0
        if self._next not in self._held:
            first = min(self._held, key=lambda s: _ahead(s, self._next or 0))
            missing = _ahead(first, self._next)
            self.lost += missing
            self._next = first
        head = self._held.pop(self._next)
        self._next = (self._next + 1) & 0xFFFF
        if not _joinable(head, head, 0):
            # not a single-frame Opus packet: passed on alone, without concealment
            return JitterFrame(data=head._data, timestamp=head.timestamp)  # type: ignore[attr-defined]
        ms = frame_ms(head._data[0])  # type: ignore[attr-defined]
        conceal = min(missing, int(MAX_CONCEAL_MS // ms), int(MAX_PACKET_MS // ms) - 1)
        run = [head]
        while self._next in self._held and _joinable(
            head, self._held[self._next], conceal + len(run)
        ):
            run.append(self._held.pop(self._next))
            self._next = (self._next + 1) & 0xFFFF
        timestamp = (head.timestamp - conceal * int(ms * OPUS_RATE / 1000)) & 0xFFFFFFFF
        data: list[bytes] = [p._data for p in run]  # type: ignore[attr-defined]
        if not conceal and len(run) == 1:
            return JitterFrame(data=data[0], timestamp=timestamp)
        bodies = [b""] * conceal + [d[1:] for d in data]
        return JitterFrame(data=join_frames(data[0][0], bodies), timestamp=timestamp)


def _joinable(first: RtpPacket, packet: RtpPacket, frames_before: int) -> bool:
    """Whether `packet` is a single-frame Opus packet that can follow `frames_before` frames
    in a packet with `first`'s configuration."""
    data: bytes = packet._data  # type: ignore[attr-defined]
    head: bytes = first._data  # type: ignore[attr-defined]
    if len(data) < 2 or data[0] & 3 != 0 or (data[0] ^ head[0]) & 0xFC:
        return False
    return (frames_before + 1) * frame_ms(data[0]) <= MAX_PACKET_MS


def install(receiver: RTCRtpReceiver) -> bool:
    """Give an audio receiver a `ReorderBuffer`; False (warned once) when aiortc's internals
    are not the ones this was written against, and aiortc's own buffer stays."""
    global _warned
    current = getattr(receiver, _ATTRIBUTE, None)
    if type(current) is not AiortcJitterBuffer:
        if not _warned:
            _warned = True
            log.warning(
                "aiortc's receiver has no jitter buffer where expected (%s): keeping aiortc's "
                "own, which adds ~80 ms to the reply's audio",
                _ATTRIBUTE,
            )
        return False
    setattr(receiver, _ATTRIBUTE, ReorderBuffer())
    return True
