"""The microphone track hands aiortc whole 48 kHz frames, so no packet waits for the next frame.

aiortc's Opus encoder (the one its RTP sender uses) resamples anything that is not 48 kHz into
whole 960-sample frames; a 16 kHz track made each packet wait ~20 ms for the next frame. These
tests use that real encoder and a real decoder.
"""

from __future__ import annotations

import numpy as np
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from wakertc.audio import CAPTURE_RATE, FRAME_SAMPLES
from wakertc.webrtc import SEND_RATE, MicTrack

FRAMES = 25


def tone_with_onset(onset: int) -> np.ndarray:
    """16 kHz: silence, then a 1 kHz tone at half scale from sample `onset`."""
    t = np.arange(FRAMES * FRAME_SAMPLES - onset) / CAPTURE_RATE
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    return np.concatenate([np.zeros(onset, np.int16), tone])


async def sent_frames(samples: np.ndarray) -> list:
    mic = MicTrack()
    for start in range(0, len(samples), FRAME_SAMPLES):
        mic.push(samples[start : start + FRAME_SAMPLES])
    frames = [await mic.recv() for _ in range(len(samples) // FRAME_SAMPLES)]
    mic.stop()
    return frames


async def test_frames_leave_at_48khz_whole_and_in_time() -> None:
    onset = 10 * FRAME_SAMPLES + 123
    frames = await sent_frames(tone_with_onset(onset))
    assert [f.sample_rate for f in frames] == [SEND_RATE] * FRAMES
    assert [f.samples for f in frames] == [960] * FRAMES
    assert [f.pts for f in frames] == [960 * k for k in range(FRAMES)]
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64)
    # The tone starts where it did, give or take the resampler's filter (< 2 ms).
    first = int(np.argmax(np.abs(out) > 0.25 * 32767))
    assert abs(first / SEND_RATE - onset / CAPTURE_RATE) < 0.002
    # And it is the same tone: 1 kHz, at the level it had.
    steady = out[len(out) // 2 :]
    spectrum = np.abs(np.fft.rfft(steady))
    assert abs(np.argmax(spectrum) * SEND_RATE / len(steady) - 1000) < 5
    assert abs(np.sqrt(np.mean(steady**2)) / (0.5 * 32767 / np.sqrt(2)) - 1) < 0.05


async def test_aiortcs_encoder_sends_a_packet_for_every_frame_at_once() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    onset = 10 * FRAME_SAMPLES + 123
    decoded = []
    for k, frame in enumerate(await sent_frames(tone_with_onset(onset))):
        payloads, timestamp = encoder.encode(frame)
        # Every frame comes straight back as one packet: nothing waits for the next frame.
        assert len(payloads) == 1, f"frame {k} gave {len(payloads)} packets"
        for out in decoder.decode(JitterFrame(payloads[0], timestamp)):
            decoded.append(out.to_ndarray().reshape(-1, 2)[:, 0])
    audio = np.concatenate(decoded).astype(np.float64)
    first = int(np.argmax(np.abs(audio) > 0.25 * 32767))
    # What is left is Opus's own look-ahead (6.5 ms), not a frame (20 ms).
    late_ms = (first / SEND_RATE - onset / CAPTURE_RATE) * 1000
    assert 0 < late_ms < 10, late_ms
