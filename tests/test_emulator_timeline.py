"""The emulator's frame timeline (`--record`: output.wav and frames.jsonl), for latency figures.

Real aiortc peers on loopback: a device-like client whose microphone notes when it handed each
frame to its encoder. What the emulator records must cover both WAVs frame by frame, and
`wire_time` (which undoes aiortc's receive jitter buffer) must land within a few ms of the
client's send, while the raw receive time is ~80 ms later: if aiortc changed its buffering, the
correction would be wrong and this test says so.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from av import AudioFrame

from emulator_helpers import RATE, MicTrack, RealtimeClient, mint, running_emulator
from wakertc.emulator.playout import FRAME, ReplyTrack
from wakertc.emulator.timeline import (
    RECEIVE_PREFETCH_FRAMES,
    TimelineError,
    load_timeline,
)

CLICK_SPACING = RATE // 4
CLICKS = 5  # the medians below hold on a loaded machine, single clicks may not


class TimedMic(MicTrack):
    """The helper's paced microphone, noting when each frame left for the encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, int]] = []  # (monotonic time, pts)

    async def recv(self) -> AudioFrame:
        frame = await super().recv()
        self.sent.append((time.monotonic(), int(frame.pts)))
        return frame


def clicks(count: int) -> np.ndarray:
    """Tone bursts of 40 ms, CLICK_SPACING apart, starting at full slope."""
    t = np.arange(RATE // 25) / RATE
    burst = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    train = np.zeros(count * CLICK_SPACING, np.int16)
    for k in range(count):
        train[k * CLICK_SPACING : k * CLICK_SPACING + len(burst)] = burst
    return train


def onsets(samples: np.ndarray) -> list[int]:
    """First sample at a quarter of full scale after each quiet stretch of 100 ms."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 8000)
    if not len(loud):
        return []
    return [int(i) for i in loud[np.insert(np.diff(loud) > RATE // 10, 0, True)]]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), np.int16)


async def test_recorded_frame_times_cover_both_directions_and_find_the_wire(
    tmp_path: Path,
) -> None:
    async with running_emulator(record_dir=tmp_path, reply="echo") as emu:
        client = RealtimeClient()
        mic = TimedMic()
        client.pc.getSenders()[0].replaceTrack(mic)
        client.mic = mic
        await client.connect(emu.url, await mint(emu.url))
        assert (await client.next_event())["type"] == "session.created"
        mic.play(np.zeros(RATE // 2, np.int16))
        position = mic.play(clicks(CLICKS))
        await client.wait_for("output_audio_buffer.stopped")
        call = emu.calls[client.call_id or ""]
        await client.close()
        await asyncio.wait_for(call.wait_closed(), 5)

    folder = tmp_path / call.id
    timeline = load_timeline(folder)
    heard = read_wav(folder / "input.wav")
    said = read_wav(folder / "output.wav")
    for frames, audio in ((timeline.received, heard), (timeline.sent, said)):
        # Every sample of each WAV is in exactly one frame, in order, and the times only grow.
        assert frames.at[0] == 0
        assert (frames.at[1:] == frames.at[:-1] + frames.n[:-1]).all()
        assert frames.at[-1] + frames.n[-1] == len(audio)
        assert (np.diff(frames.t) >= 0).all()
    assert (np.diff(timeline.received.pts) == FRAME).all()  # no loss on loopback
    # The outgoing track is paced in real time: 20 ms per frame, silence included.
    assert (timeline.sent.n == FRAME).all()
    pace = (timeline.sent.t[-1] - timeline.sent.t[0]) / (len(timeline.sent.t) - 1)
    assert abs(pace - 0.02) < 0.002
    assert timeline.sent.t[0] >= call.started

    # Each click: sent by the client in the frame holding it, found in what the emulator heard.
    sent_at = {pts: t for t, pts in mic.sent}
    heard_clicks = onsets(heard)
    assert len(heard_clicks) == CLICKS
    wire_ms, buffered_ms = [], []
    for k, at in enumerate(heard_clicks):
        pts = position + k * CLICK_SPACING
        left = sent_at[pts - pts % FRAME]
        wire_ms.append((timeline.wire_time(at) - left) * 1000)
        buffered_ms.append((timeline.received_at(at) - left) * 1000)
    assert 0 < np.median(wire_ms) < 20, wire_ms
    # What wire_time undoes: aiortc holding each frame until 4 later ones are in.
    assert np.median(buffered_ms) > (RECEIVE_PREFETCH_FRAMES - 1) * 20, buffered_ms

    # The echo left in the frames the recording says, then reached the client (after its own
    # jitter buffer) a little later.
    echoed = onsets(said)
    assert len(echoed) == CLICKS
    arrivals = [t for t, samples in client.audio if np.abs(samples.astype(np.int32)).max() > 8000]
    first_arrival = arrivals[0]
    first_left = timeline.sent_at(echoed[0])
    assert 0 < first_arrival - first_left < 0.25
    # 250 ms later in the stream, give or take the pacing of a busy loop (frames leave late).
    assert abs(timeline.sent_at(echoed[1]) - first_left - 0.25) < 0.02


def test_wire_time_takes_the_frame_released_when_the_packet_arrived(tmp_path: Path) -> None:
    lines = [
        {"dir": "in", "t": 10.0 + 0.02 * k, "at": FRAME * k, "n": FRAME, "pts": FRAME * (k + 7)}
        for k in range(8)
    ] + [{"dir": "out", "t": 20.0, "at": 0, "n": FRAME}]
    (tmp_path / "frames.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    timeline = load_timeline(tmp_path)
    assert timeline.received_at(FRAME * 5 + 3) == pytest.approx(10.1)
    assert timeline.wire_time(FRAME * 5 + 3) == pytest.approx(10.02)  # released with frame 1
    assert timeline.sent_at(480) == pytest.approx(20.01)
    with pytest.raises(TimelineError, match="no frame 4 frames before"):
        timeline.wire_time(FRAME * 2)
    with pytest.raises(TimelineError, match="not in any recorded frame"):
        timeline.received_at(FRAME * 8)
    (tmp_path / "frames.jsonl").write_text('{"dir": "in", "t": 1}\n')
    with pytest.raises(TimelineError, match=r"frames\.jsonl:1: not a frame record"):
        load_timeline(tmp_path)


async def test_reply_track_reports_each_frame_only_when_asked() -> None:
    track = ReplyTrack()
    assert track.on_frame is None
    await track.recv()  # nobody listening: nothing to call
    seen: list[tuple[np.ndarray, float]] = []
    track.on_frame = lambda samples, t: seen.append((samples.copy(), t))
    tone = np.full(FRAME, 1234, np.int16)
    track.feed("resp_1", tone)
    frame = await track.recv()
    after = time.monotonic()
    assert len(seen) == 1
    samples, t = seen[0]
    assert (samples == frame.to_ndarray().reshape(-1)).all()
    assert (samples == tone).all()
    assert after - 0.01 < t <= after
    track.stop()
