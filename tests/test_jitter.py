"""The reply's receive buffer (wakertc.jitter) on real Opus RTP packets, decoded as aiortc does."""

from __future__ import annotations

import fractions
import logging

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from av import AudioFrame

from wakertc import jitter
from wakertc.jitter import HOLD, ReorderBuffer
from wakertc.webrtc import MicTrack

RATE = 48000
FRAME = 960  # 20 ms


def opus_packets(count: int) -> list[bytes]:
    """`count` 20 ms Opus packets of a gliding tone, from aiortc's own encoder."""
    t = np.arange(count * FRAME) / RATE
    tone = (9000 * np.sin(2 * np.pi * (300 + 200 * t) * t)).astype(np.int16)
    encoder = OpusEncoder()
    packets: list[bytes] = []
    for i in range(count):
        frame = AudioFrame.from_ndarray(
            tone[i * FRAME : (i + 1) * FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = i * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        packets += encoder.encode(frame)[0]
    assert len(packets) == count
    return packets


def rtp(payloads: list[bytes], first_seq: int = 1000) -> list[RtpPacket]:
    """RTP packets as aiortc's receiver hands them to its jitter buffer (payload depacketised)."""
    packets = []
    for i, payload in enumerate(payloads):
        packet = RtpPacket(
            payload_type=111,
            sequence_number=(first_seq + i) & 0xFFFF,
            timestamp=(7 + i * FRAME) & 0xFFFFFFFF,
            payload=payload,
        )
        packet._data = payload  # type: ignore[attr-defined]
        packets.append(packet)
    return packets


def feed(
    buffer: ReorderBuffer | JitterBuffer, packets: list[RtpPacket]
) -> list[JitterFrame | None]:
    """What `add` returned for each packet, in arrival order."""
    return [buffer.add(packet)[1] for packet in packets]


def decode(frames: list[JitterFrame | None]) -> np.ndarray:
    """The released frames through aiortc's Opus decoder: one channel, 48 kHz."""
    decoder = OpusDecoder()
    out = [np.zeros(0, np.int16)]
    for frame in frames:
        if frame is not None:
            for decoded in decoder.decode(frame):
                out.append(decoded.to_ndarray().reshape(-1)[::2])
    return np.concatenate(out)


def max_step(samples: np.ndarray) -> int:
    return int(np.abs(np.diff(samples.astype(np.int32))).max())


@pytest.fixture(scope="module")
def payloads() -> list[bytes]:
    return opus_packets(60)


def test_in_order_packets_come_out_at_once_and_unchanged(payloads: list[bytes]) -> None:
    packets = rtp(payloads)
    frames = feed(ReorderBuffer(), packets)
    assert all(f is not None for f in frames)
    assert [f.data for f in frames if f] == payloads
    assert [f.timestamp for f in frames if f] == [p.timestamp for p in packets]


def test_stock_buffer_holds_four_frames_and_one_loss_stalls_it(payloads: list[bytes]) -> None:
    # Why the daemon brings its own: aiortc's audio buffer (as RTCRtpReceiver builds it) hands
    # out frame k on packet k + 4, and after one loss releases nothing for 14 packets, then
    # stays that far behind.
    packets = rtp(payloads)
    stock = feed(JitterBuffer(capacity=16, prefetch=4), packets[:10] + packets[11:])
    assert stock[:4] == [None] * 4
    assert stock[4] is not None and stock[4].timestamp == packets[0].timestamp
    assert stock[10:24] == [None] * 14
    assert stock[-1] is not None and stock[-1].timestamp == packets[45].timestamp


def test_reordered_packets_decode_exactly_as_in_order(payloads: list[bytes]) -> None:
    packets = rtp(payloads)
    order = list(range(60))
    order[10], order[11] = 11, 10  # one overtakes
    order[20:23] = [22, 21, 20]  # two overtake one (HOLD = 2 wait for it)
    buffer = ReorderBuffer()
    frames = feed(buffer, [packets[i] for i in order])
    assert frames[10] is None and frames[11] is not None  # 10 and 11 together
    assert frames[20:22] == [None] * 2 and frames[22] is not None
    assert all(f is not None for f in frames[23:])  # no backlog left behind
    assert buffer.lost == 0
    reference = decode(feed(ReorderBuffer(), packets))
    assert np.array_equal(decode(frames), reference)


def test_a_lost_packet_is_concealed_without_a_click_and_adds_no_delay(
    payloads: list[bytes],
) -> None:
    packets = rtp(payloads)
    buffer = ReorderBuffer()
    arrivals = packets[:30] + packets[31:]
    frames = feed(buffer, arrivals)
    # Held while HOLD packets wait for 30, then released with it concealed.
    assert frames[30 : 30 + HOLD] == [None] * HOLD
    assert frames[30 + HOLD] is not None
    assert all(f is not None for f in frames[31 + HOLD :])  # back to one frame per packet
    assert buffer.lost == 1
    # A late arrival of the lost packet is dropped: its place was concealed.
    assert buffer.add(packets[30]) == (False, None)
    reference = decode(feed(ReorderBuffer(), packets))
    played = decode(frames)
    assert len(played) == len(reference)  # the concealment fills the 20 ms
    assert max_step(played) <= max_step(reference)
    # Everything after the concealed frame decodes as it would have (give the codec 40 ms).
    settled = 32 * FRAME
    assert np.abs(played[settled:].astype(int) - reference[settled:]).max() < 2000


def test_a_long_gap_is_faded_and_the_stream_resumes_in_order(payloads: list[bytes]) -> None:
    packets = rtp(payloads)
    buffer = ReorderBuffer()
    frames = feed(buffer, packets[:20] + packets[40:])
    assert buffer.lost == 20
    assert all(f is not None for f in frames[20 + HOLD :])
    played = decode(frames)
    reference = decode(feed(ReorderBuffer(), packets))
    # 60 ms concealed (MAX_CONCEAL_MS) of the 400 ms lost, the rest skipped; no click where
    # the audio resumes.
    assert len(played) == len(reference) - 20 * FRAME + 3 * FRAME
    assert max_step(played) <= max_step(reference)


def test_sequence_numbers_wrap_around(payloads: list[bytes]) -> None:
    packets = rtp(payloads, first_seq=65530)
    assert packets[6].sequence_number == 0
    order = list(range(60))
    order[5], order[6] = 6, 5  # 0 overtakes 65535
    del order[8]  # 2 is lost
    buffer = ReorderBuffer()
    frames = feed(buffer, [packets[i] for i in order])
    assert frames[5] is None and frames[6] is not None
    assert buffer.lost == 1 and buffer.late == 0
    assert frames[8 : 8 + HOLD] == [None] * HOLD  # waiting for 2
    assert all(f is not None for f in frames[8 + HOLD :])
    reference = decode(feed(ReorderBuffer(), packets))
    assert len(decode(frames)) == len(reference)


def test_a_restarted_stream_is_followed_not_held() -> None:
    payloads = opus_packets(10)
    buffer = ReorderBuffer()
    first = feed(buffer, rtp(payloads[:5], first_seq=100))
    second = feed(buffer, rtp(payloads[5:], first_seq=30000))
    assert all(f is not None for f in first + second)
    assert buffer.lost == 0


async def test_installed_on_the_receiver_aiortc_builds() -> None:
    # Fails should the pinned aiortc move its receiver's buffer: then install would only warn.
    pc = RTCPeerConnection()
    try:
        pc.addTrack(MicTrack())
        (transceiver,) = pc.getTransceivers()
        assert jitter.install(transceiver.receiver)
        assert isinstance(getattr(transceiver.receiver, jitter._ATTRIBUTE), ReorderBuffer)
    finally:
        await pc.close()


def test_other_internals_keep_aiortcs_buffer_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jitter, "_warned", False)

    class Receiver:
        pass

    with caplog.at_level(logging.WARNING, logger="wakertc.jitter"):
        assert not jitter.install(Receiver())  # type: ignore[arg-type]
        assert not jitter.install(Receiver())  # type: ignore[arg-type]
    assert len([r for r in caplog.records if "keeping aiortc's own" in r.getMessage()]) == 1
