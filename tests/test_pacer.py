"""The playback thread's pacing (audio._RoomPacer): write each period just after the device has
room for it, keep as little in the device as it plays without running dry.

A simulated device (a fake clock that the pacer's sleeps advance, room growing a period at a
time as PortAudio reports it through PulseAudio) checks the pacing itself; the real backend
through the private PulseAudio server checks that it is what the daemon writes with.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from pulse import PulseRig, pulse_rig  # noqa: F401  (fixture)
from wakertc.audio import (
    _CALM_S,
    _LATE_S,
    _STALL_S,
    _STEPS_TRUSTED,
    AudioDeviceError,
    PyAudioBackend,
    _Refill,
    _RoomPacer,
    floor_periods,
)

RATE = 44100
FRAMES = 882  # 20 ms
CAPACITY = 3 * FRAMES  # what PortAudio's ALSA buffer holds through PulseAudio here


class Device:
    """A device that consumes a period every 20 ms of the fake clock, from a buffer of
    `CAPACITY` frames; it is also the pacer's stop event, whose `wait` (the pacer's only way
    to sleep) advances the clock."""

    def __init__(self, phase_s: float = 0.0123) -> None:
        self.now = 100.0
        self.phase_s = phase_s  # where in its period the device is when the clock starts
        self.written = 0
        self.dry = 0  # periods the device found empty
        self.consumed = 0
        self.room_calls = 0
        self.oversleep = 0.0  # added to the next sleep: a late wake
        self.level_at_write: list[int] = []
        self.late_by: list[float] = []  # how long the room had been there at each write
        self._room_since = self.now

    def clock(self) -> float:
        return self.now

    def _consume(self) -> None:
        due = int((self.now - 100.0 + self.phase_s) / 0.02)  # periods the device has played
        while self.consumed < due:
            if self.written - self.consumed * FRAMES <= 0:
                self.dry += 1
                self.written += FRAMES  # it played silence instead, and restarts empty
            self.consumed += 1
            if CAPACITY - (self.written - self.consumed * FRAMES) >= 2 * FRAMES:
                self._room_since = 100.0 + self.consumed * 0.02 - self.phase_s

    def room(self) -> int:
        self.room_calls += 1
        self._consume()
        return CAPACITY - (self.written - self.consumed * FRAMES)

    def write(self, blocking: bool = False) -> None:
        self._consume()
        level = self.written - self.consumed * FRAMES
        if blocking:  # PortAudio waits for the room
            while level + FRAMES > CAPACITY:
                self.now += 0.0005
                self._consume()
                level = self.written - self.consumed * FRAMES
        assert level + FRAMES <= CAPACITY, "the write would have blocked"
        self.level_at_write.append(level)
        self.late_by.append(self.now - self._room_since)
        self.written += FRAMES

    def wait(self, seconds: float) -> bool:
        self.now += seconds + self.oversleep
        self.oversleep = 0.0
        return False

    def is_set(self) -> bool:
        return False


def run(device: Device, pacer: _RoomPacer, periods: int, audible: bool = True) -> None:
    for _ in range(periods):
        assert pacer.wait(device, audible)  # type: ignore[arg-type]  # has wait(seconds)
        device.write(blocking=pacer.blocking)


def test_each_period_is_written_just_after_the_room_for_it_appears():
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    run(device, pacer, 3)  # start-up: two periods go at once, then the pacing settles
    device.level_at_write.clear()
    device.late_by.clear()
    calls = device.room_calls
    run(device, pacer, 500)

    assert device.dry == 0
    assert pacer.keep == 1
    # one period left in the device when the next is written: 20 ms of buffer, not 40
    assert set(device.level_at_write) == {FRAMES}
    # the wake follows the device's clock to within about a poll
    assert max(device.late_by) < 0.0025
    # most periods cost one look at the room; a miss costs a poll more
    assert (device.room_calls - calls) / 500 < 1.6


def test_a_gap_while_playing_keeps_a_period_more_until_calm_again():
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    run(device, pacer, 50)
    device.now += 0.07  # the playback thread held up (the GIL, the scheduler): a gap
    run(device, pacer, 20)
    assert device.dry >= 1
    # the step up waits for the reply's end: filling the device takes a block ahead of time
    assert (pacer.steps_up, pacer.keep) == (0, 1)
    run(device, pacer, 2, audible=False)
    assert (pacer.steps_up, pacer.keep) == (1, 2)
    run(device, pacer, 3)  # the device refilled at once
    device.level_at_write.clear()
    dry = device.dry
    run(device, pacer, 100)
    assert set(device.level_at_write) == {2 * FRAMES}  # a blocking writer's level
    assert device.dry == dry

    run(device, pacer, round(_CALM_S / 0.02) + 5)
    assert pacer.keep == 1
    device.level_at_write.clear()
    run(device, pacer, 10)
    assert set(device.level_at_write) == {FRAMES}


def test_a_wake_late_enough_to_starve_an_audio_server_counts_as_a_gap():
    """Through PulseAudio the client's buffer can look fine while the server's ran dry (it
    does not tell the client): a wake over `_LATE_S` late while playing steps up too."""
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    run(device, pacer, 50)
    device.oversleep = 0.005  # within the margin: nothing
    run(device, pacer, 5)
    assert (pacer.late, pacer.steps_up, pacer.keep) == (0, 0, 1)
    device.oversleep = _LATE_S + 0.002  # late, but the device still held something
    run(device, pacer, 5)
    assert device.dry == 0
    assert (pacer.ran_dry, pacer.late, pacer.keep) == (0, 1, 1)
    run(device, pacer, 2, audible=False)
    assert (pacer.steps_up, pacer.keep) == (1, 2)
    run(device, pacer, 5)
    device.oversleep = _LATE_S + 0.002  # the same in silence is not heard: no step
    run(device, pacer, 5, audible=False)
    assert (pacer.late, pacer.keep) == (1, 2)


def test_running_dry_in_silence_is_counted_but_keeps_the_short_buffer():
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    run(device, pacer, 50, audible=False)
    device.now += 0.045  # start-up's load, while the speaker plays silence
    run(device, pacer, 20, audible=False)
    assert (pacer.ran_dry, pacer.steps_up, pacer.keep) == (1, 0, 1)


def test_gap_after_gap_ends_at_the_blocking_writer_and_each_step_doubles_the_calm():
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    run(device, pacer, 5)
    for steps in (1, 2):
        device.now += 0.09
        run(device, pacer, 5)
        run(device, pacer, 2, audible=False)
        assert pacer.steps_up == steps
    # 3 periods of buffer: 1 or 2 kept short of blocking, then the blocking writer itself
    assert (pacer.keep, pacer.blocking) == (3, True)
    device.level_at_write.clear()
    dry = device.dry
    run(device, pacer, 50)
    assert set(device.level_at_write) == {2 * FRAMES}  # waits in the write with the rest full
    assert device.dry == dry
    device.now += 0.09  # a blocking writer can still be held up past its whole buffer
    run(device, pacer, 5)
    assert pacer.ran_dry == 3 and (pacer.steps_up, pacer.keep) == (2, 3)
    dry = device.dry

    # two steps up: each step down waits 2 calm minutes, not one
    calm = _CALM_S * 2
    run(device, pacer, round(0.9 * calm / 0.02))
    assert pacer.keep == 3
    run(device, pacer, round(0.2 * calm / 0.02))
    assert (pacer.keep, pacer.blocking) == (2, False)
    run(device, pacer, round(1.05 * calm / 0.02))
    assert pacer.keep == 1
    device.level_at_write.clear()
    run(device, pacer, 10)
    assert set(device.level_at_write) == {FRAMES}
    assert device.dry == dry


def test_a_floor_keeps_that_many_periods_and_calm_never_goes_below_it():
    """`[audio] output_buffer_ms`: 40 ms is two periods left in the device at each write, from
    the start; a gap still steps up, and the calm steps down to the floor, not below."""
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock, floor=2)
    assert (pacer.floor, pacer.keep, pacer.blocking) == (2, 2, False)
    run(device, pacer, 5)
    device.level_at_write.clear()
    run(device, pacer, 100)
    assert set(device.level_at_write) == {2 * FRAMES}
    assert device.dry == 0
    device.now += 0.09
    run(device, pacer, 5)
    run(device, pacer, 2, audible=False)
    assert (pacer.keep, pacer.blocking) == (3, True)
    run(device, pacer, round(3 * _CALM_S / 0.02))
    assert pacer.keep == 2
    device.level_at_write.clear()
    run(device, pacer, 10)
    assert set(device.level_at_write) == {2 * FRAMES}


def test_a_floor_beyond_the_device_buffer_is_the_blocking_writer():
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock, floor=50)
    assert (pacer.floor, pacer.blocking) == (3, True)
    run(device, pacer, 5)
    device.level_at_write.clear()
    run(device, pacer, round(2 * _CALM_S / 0.02))
    assert pacer.blocking and device.dry == 0
    assert set(device.level_at_write) == {2 * FRAMES}  # each write waited for its room


class CoarseDevice:
    """A device that plays `step` frames at a time (its own period, e.g. our 882 rounded up to
    896 by an ALSA driver), from a buffer of three of them; a period it has to play while
    holding less than a whole one is a break."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.capacity = 3 * step
        self.now = 100.0
        self.level = 0
        self.played = 0
        self.breaks: list[float] = []

    def clock(self) -> float:
        return self.now

    def _play(self) -> None:
        due = int((self.now - 100.0 + 0.0123) * RATE / self.step)
        while self.played < due:
            if self.played > 2 and self.level < self.step:
                self.breaks.append(self.now)
            self.level = max(0, self.level - self.step)
            self.played += 1

    def room(self) -> int:
        self._play()
        return self.capacity - self.level

    def write(self, blocking: bool) -> None:
        self._play()
        while blocking and self.level + FRAMES > self.capacity:
            self.now += 0.0005
            self._play()
        assert self.level + FRAMES <= self.capacity, "the write would have blocked"
        self.level += FRAMES

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        return False

    def is_set(self) -> bool:
        return False


def test_a_device_that_plays_more_than_our_period_at_a_time_gets_a_floor_that_covers_it():
    """One of our 882-frame periods written when the device holds one of them leaves less than
    its own 896 playing now and then: the pacer sees the room grow by 896 at a time and keeps
    two periods from then on (without it: a break every few seconds)."""
    device = CoarseDevice(896)
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    assert pacer.floor == 1
    for i in range(30_000):  # 10 minutes, phrases and pauses
        assert pacer.wait(device, i % 100 < 80)  # type: ignore[arg-type]  # has wait(seconds)
        device.write(pacer.blocking)
    assert pacer.device_step == 896
    assert (pacer.floor, pacer.keep) == (2, 2)
    assert pacer.report()["device_step_frames"] == 896
    assert [t for t in device.breaks if t > 101.0] == []  # none after the first second


def test_our_own_period_or_a_finer_one_keeps_the_one_period_floor():
    for step in (FRAMES, 441, 864):
        device = CoarseDevice(step)
        pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
        for i in range(3000):
            assert pacer.wait(device, i % 100 < 80)  # type: ignore[arg-type]
            device.write(pacer.blocking)
        assert 0 < pacer.device_step <= FRAMES, step
        assert (pacer.floor, pacer.keep) == (1, 1), step


def test_a_late_start_that_sees_two_device_periods_at_once_does_not_raise_the_floor():
    """Start-up's load can hold the thread up for two periods: the room then grows by two at
    once. The step is only acted on after `_STEPS_TRUSTED` growths, by then the least seen."""
    device = Device()
    pacer = _RoomPacer(device.room, FRAMES, RATE, clock=device.clock)
    run(device, pacer, 3)
    device.now += 0.04
    run(device, pacer, 3 * _STEPS_TRUSTED)
    assert pacer.device_step == FRAMES
    assert (pacer.floor, pacer.keep) == (1, 1)


def test_an_error_code_for_the_room_is_an_error_that_names_it():
    """PyAudio hands PortAudio's error codes through `get_write_available` as negative counts:
    not a device found empty, nor a stall two seconds later."""
    with pytest.raises(AudioDeviceError, match=r"error -9999"):
        _RoomPacer(lambda: -9999, FRAMES, RATE)
    rooms = iter([CAPACITY, -9988])
    pacer = _RoomPacer(lambda: next(rooms), FRAMES, RATE, clock=Device().clock)
    with pytest.raises(AudioDeviceError, match=r"error -9988"):
        pacer.wait(Device(), True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ms", "periods"), [(20, 1), (21, 2), (30, 2), (40, 2), (59, 3), (60, 3), (1000, 50)]
)
def test_output_buffer_ms_rounds_up_to_whole_periods(ms: int, periods: int):
    assert floor_periods(ms) == periods


def test_a_device_with_no_room_for_the_stall_time_is_an_error():
    device = Device()
    pacer = _RoomPacer(lambda: 0, FRAMES, RATE, clock=device.clock)
    with pytest.raises(AudioDeviceError, match="no room to play into"):
        pacer.wait(device, True)  # type: ignore[arg-type]
    assert device.now - 100.0 == pytest.approx(_STALL_S, abs=0.01)


def test_refill_hands_out_exact_counts_in_order():
    source = np.arange(10_000, dtype=np.int16)
    sizes = iter([881, 883, 0, 882, 880, 884] * 5)
    at = 0

    def more() -> np.ndarray:
        nonlocal at
        n = next(sizes)
        at += n
        return source[at - n : at]

    refill = _Refill()
    out = [refill.take(882, more) for _ in range(8)]
    assert all(len(o) == 882 for o in out)
    assert np.array_equal(np.concatenate(out), source[: 8 * 882])


@pytest.mark.pulse
@pytest.mark.parametrize("buffer_ms", [20, 40])
async def test_the_backend_writes_into_a_device_holding_one_period_without_blocking(
    pulse_rig: PulseRig,  # noqa: F811
    tmp_path: Path,
    buffer_ms: int,
):
    """Through PulseAudio: each write finds room for it (it returns at once) and leaves one
    period in the device when written (two with `output_buffer_ms = 40`); a blocking writer's
    block waits ~20 ms in each write with the device full."""
    backend = PyAudioBackend(pulse_rig.audio_config(output_buffer_ms=buffer_ms))
    backend.start(asyncio.get_running_loop(), lambda f: None)
    stream = backend._out_stream
    write = stream.write
    seen: list[tuple[int, float]] = []

    def timed(data: bytes) -> None:
        room = stream.get_write_available()
        t = time.perf_counter()
        write(data)
        seen.append((room, time.perf_counter() - t))

    try:
        await asyncio.sleep(0.3)
        stream.write = timed
        backend.play(np.full(PLAYBACK_RATE_2S, 3000, np.int16))
        await asyncio.sleep(2.5)
        pacer = backend._pacer
    finally:
        backend.close()
    period = round(backend.output_rate * 0.02)
    rooms = np.array([room for room, _ in seen])
    took = np.array([took for _, took in seen])
    assert len(rooms) > 100
    assert pacer is not None and pacer.steps_up == 0
    kept = buffer_ms // 20
    assert backend.device_playback["floor_periods"] == kept == pacer.keep
    # the device's buffer less `kept` periods was free at (nearly) every write (the pacer's
    # rule, so this fails only if the backend writes some other way), and not more
    capacity = pacer._capacity
    counts = np.unique(rooms, return_counts=True)
    assert np.mean(rooms >= capacity - kept * period) > 0.95, counts
    assert np.mean(rooms >= capacity - (kept - 1) * period) < 0.05, counts
    assert np.median(took) < 0.002


PLAYBACK_RATE_2S = 48000
