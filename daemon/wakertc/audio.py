"""Microphone and speaker: one small interface, a PyAudio backend and a WAV-file backend.

Everything past this module sees one format: capture is int16 mono at `CAPTURE_RATE` in frames
of `FRAME_SAMPLES` (20 ms); playback takes int16 mono at `PLAYBACK_RATE`. Devices run at whatever
rate and channel count they have; `soxr` streaming resamplers (state kept across chunks) convert
both ways.

Threads. Capture runs in PortAudio's callback thread (or the file backend's pacing thread); it only
converts and hands each frame to asyncio with `loop.call_soon_threadsafe`, the one hand-off place
(`_LoopHandoff`). While the daemon only listens for its wake word it asks for frames a few at a
time (`gather_frames`): each wake of the loop costs about as much as the wake word's 80 ms of
work, and the detector cannot use a frame before its chunk is whole anyway.
Playback runs in its own thread that pulls 20 ms blocks from a queue and writes them to the device,
silence included: the output stream stays open while the daemon runs so that `on_render` (the echo
canceller's reference) is continuous and aligned with what the speaker plays, and so no
open/close pops or start-up latency are paid at the start of each reply.

Latency, measured through PulseAudio here: a click played and captured back through the
speaker's monitor takes ~62 ms with no conversion. PortAudio's output buffer holds three 20 ms
periods there; a blocking writer keeps it full, so each sample waits behind two or three. The
playback thread writes each period only once the device is down to one (`_RoomPacer`), more
after the device ran dry while playing. On top come the playback queue's depth (20 ms on a
clean path, more on a jittery one: the jitter buffer for network audio, playout.py) and the
conversions (see `_QUALITY`). A capture device opened at 16 kHz skips the capture conversion
entirely.

Errors: `AudioDeviceError` for a device that cannot be found, opened or kept running (a message
naming the device, what was asked and what exists), `DeviceMissing` when it is not there now;
failures after `start` go to `on_error`. Which device the config means: `devices.py`.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import math
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import soxr

from .config import AudioConfig
from .devices import AudioDeviceError as AudioDeviceError  # the backends' errors, re-exported
from .devices import (
    DeviceInfo,
    Kind,
    enumerate_devices,
    find_device,
    list_devices,
    native_stderr_to_debug_log,
    portaudio,
    pyaudio_module,
)
from .devices import DeviceMissing as DeviceMissing
from .playout import PlayoutDepth

log = logging.getLogger(__name__)

CAPTURE_RATE = 16000
FRAME_SAMPLES = 320  # 20 ms at CAPTURE_RATE
PLAYBACK_RATE = 24000
RENDER_CHUNK = 160  # on_render delivers multiples of 10 ms at CAPTURE_RATE (what AEC3 consumes)

_BLOCK_S = 0.02  # playback threads pull this much at a time
_BLOCK = int(PLAYBACK_RATE * _BLOCK_S)
_FADE = int(PLAYBACK_RATE * 0.005)  # 5 ms ramps at every start, stop and clear: no clicks
# soxr presets. Measured here with 20 ms chunks: HQ adds ~21 ms of latency and keeps the band
# flat to 0.91 x Nyquist; LQ adds ~1 ms (24 -> 44.1 kHz) to ~11 ms (24 -> 48 kHz) and is flat
# (-0.3 dB) to 0.75 x Nyquist, 9 kHz for 24 kHz speech: more than a small speaker reproduces.
# Capture and the echo reference keep HQ (the wake word and AEC want the band up to 8 kHz; the
# reference only has to lead the echo); the speaker path uses LQ to cut reply latency.
_QUALITY = "HQ"
_PLAYBACK_QUALITY = "LQ"
_STALL_S = 2.0  # no capture callback, or no room to play into, for this long = the device is gone
_HUNG_S = 3.0  # the playback thread inside one PortAudio call this long: seen from the loop
# Below this (scaled sample, ~-54 dBFS at full volume) audio is a pause: the playback queue may
# drop or insert samples there to follow its target depth, the steps it makes being inaudible.
_QUIET = 0.002
_QUIET_PCM = round(_QUIET * 32768)  # the same on the device's int16 samples
_SHRINK_MARGIN_S = 0.005
_POLL_S = 0.001  # the playback thread looks for room this often once it is due
_PROBE_S = 0.0005  # ... and looks this much earlier each period it finds the room already there
_CALM_S = 60.0  # a device that ran dry while playing keeps a period more in it for this long
_CALM_MAX_S = 24 * 3600.0  # ... doubled at each further gap, up to this
_STEPS_TRUSTED = 25  # growths of the device's room seen before its step sets the floor
_LATE_S = 0.008  # a wake this late while playing counts as a gap (through an audio server: unseen)

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]
FrameCallback = Callable[[Int16Array], None]


class AudioBackend(abc.ABC):
    """A microphone and a speaker, as the daemon and the session code use them."""

    on_render: Callable[[Int16Array], None] | None
    """Called from the playback thread with exactly what goes to the speaker, as int16 mono at
    CAPTURE_RATE in multiples of 10 ms, silence included: the echo canceller's reference."""
    on_error: Callable[[Exception], None] | None
    """Called on the loop thread when a device fails after `start`."""

    @abc.abstractmethod
    def start(self, loop: asyncio.AbstractEventLoop, on_frame: FrameCallback) -> None:
        """Begin capture and playback; each 20 ms frame goes to `on_frame` on `loop`'s thread."""

    @abc.abstractmethod
    def play(self, samples: Int16Array) -> None:
        """Queue int16 mono samples at PLAYBACK_RATE; thread-safe, never blocks."""

    @abc.abstractmethod
    def clear_playback(self) -> None:
        """Drop everything queued (barge-in), with a few-ms fade so the speaker does not click."""

    @property
    @abc.abstractmethod
    def playback_queued_s(self) -> float:
        """Seconds of audio accepted by `play` and not yet handed to the device."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop threads and streams; idempotent, returns within a second."""

    def set_volume(self, gain: float) -> bool:
        """Change the playback gain (0..2) for audio queued from now on; False if not possible."""
        return False

    def gather_frames(self, n: int) -> None:
        """Hand the next capture frames to `on_frame` once `n` more have come (in one turn of
        the loop, in order), and after them each as it comes, the default, until asked again.
        On the loop thread, counted from the frames `on_frame` has had."""
        return None  # (a backend that cannot gather hands each frame over as it comes)


# --- conversion ---------------------------------------------------------------------------------


class _Chunker:
    """Re-cuts a stream of samples into whole chunks of a fixed size."""

    def __init__(self, size: int, dtype: type[np.generic]) -> None:
        self._size = size
        self._rest = np.zeros(0, dtype)

    def push(self, samples: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Append samples; return every complete chunk so far, concatenated."""
        buf = np.concatenate((self._rest, samples)) if len(self._rest) else samples
        whole = len(buf) // self._size * self._size
        self._rest = buf[whole:].copy()
        return buf[:whole]

    def flush(self) -> npt.NDArray[Any]:
        """The partial last chunk, zero-padded to full size (empty if none)."""
        if not len(self._rest):
            return self._rest
        out = np.zeros(self._size, self._rest.dtype)
        out[: len(self._rest)] = self._rest
        self._rest = self._rest[:0]
        return out


class CaptureConverter:
    """Interleaved int16 audio at any rate and channel count -> 20 ms frames of 16 kHz mono."""

    def __init__(self, rate: int, channels: int = 1, channel: int = 0) -> None:
        if not 0 <= channel < channels:
            raise ValueError(f"channel {channel} does not exist in {channels}-channel audio")
        self.rate, self.channels, self.channel = rate, channels, channel
        self._resampler = (
            None
            if rate == CAPTURE_RATE
            else soxr.ResampleStream(rate, CAPTURE_RATE, 1, dtype="int16", quality=_QUALITY)
        )
        self._framer = _Chunker(FRAME_SAMPLES, np.int16)

    def push(self, interleaved: Int16Array) -> list[Int16Array]:
        """Convert one chunk; returns the complete frames it finished (possibly none)."""
        mono = interleaved
        if self.channels > 1:
            mono = np.ascontiguousarray(interleaved.reshape(-1, self.channels)[:, self.channel])
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        return list(self._framer.push(mono).reshape(-1, FRAME_SAMPLES))

    def flush(self) -> list[Int16Array]:
        """End of the stream: the resampler's tail and the last frame, zero-padded."""
        tail: list[Int16Array] = []
        if self._resampler is not None:
            tail = list(
                self._framer.push(
                    self._resampler.resample_chunk(np.zeros(0, np.int16), last=True)
                ).reshape(-1, FRAME_SAMPLES)
            )
        last = self._framer.flush()
        return [*tail, last] if len(last) else tail


def _to_int16(x: Float32Array) -> Int16Array:
    out: Int16Array = np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)
    return out


# --- WAV files ----------------------------------------------------------------------------------


def _read_wav_raw(path: Path) -> tuple[Int16Array, int, int]:
    """Whole file as interleaved int16, its rate and channel count."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise AudioDeviceError(
            f"cannot read WAV file {path}: {exc} (16/24/32-bit integer PCM expected; "
            "convert others with `sox IN -b 16 OUT.wav`)"
        ) from exc
    return _pcm_to_int16(raw, width), rate, channels


def _pcm_to_int16(raw: bytes, width: int) -> Int16Array:
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.int16)
    if width == 1:  # 8-bit WAV is unsigned
        return ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width == 3:  # keep the two most significant bytes of each little-endian 24-bit sample
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        return np.ascontiguousarray(b[:, 1:]).view("<i2").reshape(-1).astype(np.int16)
    if width == 4:
        return (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
    raise AudioDeviceError(f"unsupported WAV sample width {width} bytes")


def read_wav(path: Path, rate: int, channel: int = 0) -> Int16Array:
    """A whole WAV file as int16 mono at `rate` (e.g. a chime at PLAYBACK_RATE)."""
    data, file_rate, channels = _read_wav_raw(path)
    if not 0 <= channel < channels:
        raise AudioDeviceError(f"{path} has {channels} channel(s); channel {channel} asked")
    mono = np.ascontiguousarray(data.reshape(-1, channels)[:, channel])
    if file_rate == rate or not len(mono):
        return mono
    return np.asarray(soxr.resample(mono, file_rate, rate, quality=_QUALITY), np.int16)


def iter_wav_frames(path: Path, channel: int = 0) -> Iterator[Int16Array]:
    """A WAV file as capture frames, converted exactly as a device's audio would be (not paced)."""
    data, rate, channels = _read_wav_raw(path)
    try:
        converter = CaptureConverter(rate, channels, channel)
    except ValueError as exc:
        raise AudioDeviceError(f"{path}: {exc}") from exc
    step = rate // 50 * channels
    for start in range(0, len(data), step):
        yield from converter.push(data[start : start + step])
    yield from converter.flush()


def write_wav(path: Path, samples: Int16Array, rate: int) -> None:
    """Write int16 mono samples as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(samples, "<i2").tobytes())


# --- playback queue, shared by both backends ----------------------------------------------------


class _PlaybackQueue:
    """Audio waiting to be played, pulled in blocks by one playback thread.

    Every edge is ramped: a start fades in, running dry fades out (or ramps from the last sample
    to zero), and `clear` keeps only the next 5 ms, played faded out.

    The queue's depth absorbs network jitter, following the arrivals' measured jitter
    (playout.py): from `prebuffer_s` on a clean path up to a ceiling on a bad one. Network audio
    starts playing (a reply's start, or resuming after running dry) once a block is queued and
    playback runs as far behind the audio's on-time schedule as the jitter needs; anything else
    (a cue) once the target depth is queued; either once it has waited that long. While
    playing, the depth follows a changed target only inside a pause (every sample concerned
    below `_QUIET`): a smaller target drops a few ms of that pause, a larger one plays a few ms
    of silence into it. Speech is never cut or stretched (that would be heard, where a pause a
    few ms shorter or longer is not): a reply without pauses keeps the depth it started with
    until it ends, and the next one starts at the new target. A deep queue costs nothing on a
    barge-in: `clear` drops it all.
    """

    def __init__(
        self, volume: float, prebuffer_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._gain = volume / 32768.0
        self._clock = clock  # arrival times and the start-up wait (tests pass a fake clock)
        self.depth = PlayoutDepth(floor_s=prebuffer_s)
        self._lock = threading.Lock()
        self._chunks: collections.deque[Float32Array] = collections.deque()
        self._queued = 0
        self._waiting_since = 0.0
        self._fade_head: Float32Array | None = None  # set by clear(): the last bit to play
        self._playing = False  # the last block ended in queued audio, not in silence
        self._last = 0.0
        self._audio_queued = threading.Event()
        self.ran_dry = 0
        """Times the queue ran out while playing (each reply's end, and any underrun in it)."""
        self.underruns = 0
        """Times the queue ran out while playing and the same stream went on: gaps in a reply."""
        self._dry_in_stream = False  # ran out while network audio was arriving

    @property
    def queued_s(self) -> float:
        """Seconds queued and not yet played: the queue's depth."""
        return self._queued / PLAYBACK_RATE

    @property
    def target_s(self) -> float:
        """The depth the queue builds before playing, from the measured jitter."""
        return self.depth.target_s

    def set_volume(self, volume: float) -> None:
        # One float assignment: the playback thread sees the old or the new gain, either is fine.
        self._gain = volume / 32768.0

    def put(self, samples: Int16Array) -> None:
        if not isinstance(samples, np.ndarray) or samples.dtype != np.int16 or samples.ndim != 1:
            shape = getattr(samples, "shape", None)
            dtype = getattr(samples, "dtype", type(samples).__name__)
            raise ValueError(
                f"play() takes a 1-D int16 array at {PLAYBACK_RATE} Hz; got {dtype} {shape}"
            )
        if not len(samples):
            return
        scaled = samples.astype(np.float32) * np.float32(self._gain)
        with self._lock:
            now = self._clock()
            if not self._queued:
                self._waiting_since = now
            if self.depth.arrived(now, len(scaled) / PLAYBACK_RATE) and self._dry_in_stream:
                self.underruns += 1
            self._dry_in_stream = False
            self._chunks.append(scaled)
            self._queued += len(scaled)
        self._audio_queued.set()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing still sounding (the last block ended in silence)."""
        return not self._queued and not self._playing and self._fade_head is None and not self._last

    def wait_for_audio(self, stop: threading.Event) -> None:
        """Block until `put` queues audio or `stop` is set."""
        while not stop.is_set():
            if self._audio_queued.wait(0.25):
                self._audio_queued.clear()
                if self._queued:
                    return

    def clear(self) -> None:
        with self._lock:
            if self._playing:
                # the continuation of what is sounding now, faded, so the cut is click-free
                self._fade_head = np.zeros(min(_FADE, self._queued), np.float32)
                self._take(self._fade_head)
            self._chunks.clear()
            self._queued = 0

    def pull(self, n: int) -> tuple[Float32Array, bool]:
        """The next `n` samples (zeros when idle) and whether any queued audio is in them."""
        out = np.zeros(n, np.float32)
        with self._lock:
            if self._fade_head is not None:
                head, self._fade_head = self._fade_head, None
                out[: len(head)] = head
                return self._edges(out, len(head), starting=False, ran_dry=True)
            now = self._clock()
            target_s = self.depth.target_s
            lag = self.depth.lag_s(now, self.queued_s)
            starting = not self._playing
            silence = 0
            if starting:
                if lag is None:  # not network audio (a cue): the target or its wait
                    ready = self._queued >= PLAYBACK_RATE * target_s
                else:  # as far behind the on-time schedule as the jitter needs, one block in
                    ready = self._queued >= n and lag >= self.depth.headroom_s
                if not self._queued or not (ready or now - self._waiting_since >= target_s):
                    return out, False
            elif lag is not None:
                silence = self._follow(lag, n)
            took = silence + self._take(out[silence : silence + min(n - silence, self._queued)])
            if took < n:
                self.ran_dry += 1
                self._dry_in_stream = lag is not None
            return self._edges(out, took, starting=starting, ran_dry=took < n)

    def _follow(self, lag: float, n: int) -> int:
        """Inside a pause, bring the lag behind the on-time schedule to the headroom the jitter
        needs, or down to a block above it (where a start may leave it: the block's phase,
        which the scheduling noise moves by a few ms, hence the margin); returns the silence
        to play before the queued audio."""
        headroom = self.depth.headroom_s
        top = headroom + _BLOCK_S
        if (
            headroom <= lag <= top + _SHRINK_MARGIN_S
            or abs(self._last) > _QUIET
            or not self._queued
        ):
            return 0
        ahead = self._peek(min(self._queued, n + 1))
        if lag < headroom:
            return min(round((headroom - lag) * PLAYBACK_RATE), n) if abs(ahead[0]) <= _QUIET else 0
        shrink = min(round((lag - top) * PLAYBACK_RATE), n, len(ahead) - 1)
        if shrink > 0 and np.abs(ahead[: shrink + 1]).max() <= _QUIET:
            self._take(np.empty(shrink, np.float32))
        return 0

    def _peek(self, m: int) -> Float32Array:
        """The next `m` queued samples, left in the queue (m <= queued)."""
        parts: list[Float32Array] = []
        need = m
        for chunk in self._chunks:
            parts.append(chunk[:need])
            need -= len(parts[-1])
            if not need:
                break
        return np.concatenate(parts)

    def _edges(
        self, out: Float32Array, took: int, *, starting: bool, ran_dry: bool
    ) -> tuple[Float32Array, bool]:
        if starting:
            m = min(_FADE, took)
            out[:m] *= np.linspace(0.0, 1.0, m, endpoint=False, dtype=np.float32)
        ramped = False
        if ran_dry and took:
            m = min(_FADE, took)
            out[took - m : took] *= np.linspace(1.0, 0.0, m, dtype=np.float32)
        elif ran_dry and self._last:
            # the previous block ended exactly where the audio did: continue from its last sample
            out[:_FADE] = np.linspace(self._last, 0.0, _FADE, dtype=np.float32)
            ramped = True
        self._playing = not ran_dry
        self._last = float(out[-1])
        return out, bool(took) or ramped

    def _take(self, dest: Float32Array) -> int:
        filled = _fill_from(self._chunks, dest)
        self._queued -= filled
        return filled


def _fill_from(chunks: collections.deque[Any], dest: npt.NDArray[Any]) -> int:
    """Fill `dest` from the front of `chunks` (which must hold enough), consuming what it
    takes; returns len(dest)."""
    filled = 0
    while filled < len(dest):
        chunk = chunks[0]
        k = min(len(chunk), len(dest) - filled)
        dest[filled : filled + k] = chunk[:k]
        if k == len(chunk):
            chunks.popleft()
        else:
            chunks[0] = chunk[k:]
        filled += k
    return filled


class _Refill:
    """Exactly `n` samples at a time from blocks of varying length (a resampler's output)."""

    def __init__(self) -> None:
        self._blocks: collections.deque[Int16Array] = collections.deque()
        self._have = 0

    def take(self, n: int, more: Callable[[], Int16Array]) -> Int16Array:
        """The next `n` samples, calling `more` for blocks while fewer are held."""
        while self._have < n:
            block = more()
            self._blocks.append(block)
            self._have += len(block)
        out = np.empty(n, np.int16)
        self._have -= _fill_from(self._blocks, out)
        return out


def floor_periods(buffer_ms: int) -> int:
    """`[audio] output_buffer_ms` as playback periods, rounded up (at least one)."""
    return max(1, math.ceil(buffer_ms / (_BLOCK_S * 1000) - 1e-9))


class _RoomPacer:
    """When to write the next period to a blocking output stream, and how much to keep queued in
    the device: as little as it plays without running dry.

    A blocking write pulled as soon as the previous one returned keeps the device's buffer full
    (3 periods through PulseAudio here, 60 ms): every sample waits behind all of it. Here the
    queue is pulled once the device holds only `keep` periods (from PortAudio's
    `get_write_available`, which grows a period at a time), and the write returns at once: a
    sample reaches the device's buffer 1-2 periods from its end instead of 2-3. The cost is
    the margin: a wake later than `keep` periods runs the device dry, where the blocking
    writer's next block waits inside PortAudio, ready, with the whole buffer to spare.

    So `keep` starts at `floor` (1, or what `[audio] output_buffer_ms` asks for) and grows by
    one each time the device is found empty while it played
    audio, or the thread woke over `_LATE_S` late then (this machine's scheduling, the GIL), to
    the blocking writer itself at the top (`blocking`: `wait` returns at once and the write
    waits). A step up waits for a pause (a period under `_QUIET`): filling the device takes a
    block ahead of time, which in the middle of a word would leave the queue a block short.
    After `_CALM_S` without a gap or a late wake it comes down one step, never below `floor`;
    each step up doubles that wait (up to `_CALM_MAX_S`), so a machine that keeps running late
    settles on the safe end instead of being probed every minute. Running dry in a pause
    (start-up's load, listening for the wake word) is not heard and only counted.

    The wake: sleep until due, look once; most of the time the room is there. The due time
    follows the device's clock: it moves `_PROBE_S` earlier at each hit, and a miss (polled
    every `_POLL_S` until the room is there) sets it to just after the room appeared.
    """

    def __init__(
        self,
        room: Callable[[], int],
        frames: int,
        rate: int,
        clock: Callable[[], float] = time.monotonic,
        floor: int = 1,
    ) -> None:
        self._room_of_device = room
        self._frames = frames
        self._period_s = frames / rate
        self._clock = clock
        self._last_room: int | None = None  # what the device should show now, after our writes
        self.device_step = 0
        """The least the room was seen to grow by between two looks (our writes accounted; 0
        until seen): the device's own period, if it plays a period at a time. Acted on once
        `_STEPS_TRUSTED` growths were seen, so a late start-up's double step misleads nobody."""
        self._grown = 0
        self._capacity = max(self._room(), frames)  # before the first write: the whole buffer
        self._most = max(1, self._capacity // frames - 1)  # the most `keep` short of blocking
        self._asked = max(1, floor)
        self._floor = min(self._asked, self._most + 1)  # above `_most`: a blocking writer
        self.keep = self._floor
        """Periods still in the device when the next one is written (above `_most`: blocking)."""
        self.ran_dry = 0
        """Times the device was found empty."""
        self.late = 0
        """Wakes over `_LATE_S` late while playing: a gap through an audio server, which does
        not tell the client when its own buffer ran dry."""
        self.steps_up = 0
        """Times `keep` went up (one for each pause that followed a gap or a late wake)."""
        self._started = False
        self._pending = False  # a step up waiting for a pause
        self._due: float | None = None
        self._anchored = False  # a poll has seen the room appear: `_due` follows the device
        self._calm_since = clock()

    @property
    def floor(self) -> int:
        """The fewest periods kept: `[audio] output_buffer_ms`, or more for a device that plays
        more than one of our periods at a time (`device_step`); above `_most`: blocking."""
        return self._floor

    def report(self) -> dict[str, int | bool]:
        """One consistent reading for `device_playback` (from another thread: `keep` is read
        once)."""
        keep = self.keep
        return {
            "floor_periods": self._floor,
            "keep_periods": keep,
            "blocking": keep > self._most,
            "device_step_frames": self.device_step,
            "ran_dry": self.ran_dry,
            "late": self.late,
            "steps_up": self.steps_up,
        }

    def _room(self) -> int:
        """The device's room now, checked, and what it tells of the device's own period."""
        room = self._room_of_device()
        if room < 0:  # PyAudio hands PortAudio's error codes through
            raise AudioDeviceError(f"the device reports no room to play into (error {room})")
        last, self._last_room = self._last_room, room
        if last is not None and room > last:
            self._grown += 1
            smaller = not self.device_step or room - last < self.device_step
            if smaller:
                self.device_step = room - last
            if self._grown == _STEPS_TRUSTED or (smaller and self._grown > _STEPS_TRUSTED):
                self._follow_device_step()
        return room

    def _follow_device_step(self) -> None:
        """One of our periods written when the device holds `keep` only works if it plays at
        most that much at a time: a device that rounds our 882 frames up to 896 would break up
        every few seconds at one period. The floor covers its period (never less than asked)."""
        needed = -(-self.device_step // self._frames)
        floor = min(max(self._asked, needed), self._most + 1)
        if floor == self._floor:
            return
        self._floor = floor
        if self.keep < floor:
            self.keep = floor
            self._due, self._anchored = None, False
            log.info(
                "playback: the device plays %d frames at a time, our periods %d: %s",
                self.device_step,
                self._frames,
                self.holding,
            )

    @property
    def holding(self) -> str:
        """How the device is kept now, for the log."""
        if self.blocking:
            return "a blocking writer"
        return f"keeping {round(self.keep * self._period_s * 1000)} ms in the device"

    @property
    def blocking(self) -> bool:
        """Writing as a blocking writer does: each block pulled as soon as the last was taken."""
        return self.keep > self._most

    def wait(self, stop: threading.Event, audible: bool) -> bool:
        """Return True once the next period should be written (it will not block unless
        `blocking`), False once `stop` is set; `audible`: the last period written was above
        `_QUIET` (not a pause). The caller writes exactly one period after each True.
        Raises AudioDeviceError when the device has had no room for `_STALL_S` (not when
        `blocking`: then the write waits for the room inside PortAudio, as a blocking writer's
        always did) or reports an error instead of its room."""
        self._calm_down()
        if self._pending and not audible:
            self._raise_keep()
        if self.blocking:
            if stop.is_set():
                return False
            self._count_dry(self._room(), audible)
            self._last_room = None  # the write waits for room: what it leaves is not known
            return True
        due = self._due
        if due is not None and stop.wait(max(0.0, due - self._clock())):
            return False
        late = due is not None and self._anchored and self._clock() - due > _LATE_S and audible
        if late:
            self._late_wake()  # a gap here or, through an audio server, in the server
        want = max(self._frames, self._capacity - self.keep * self._frames)
        since = self._clock()
        missed = False
        while (room := self._room()) < want:
            missed = True
            if self._clock() - since > _STALL_S:
                raise AudioDeviceError(f"no room to play into for {_STALL_S:.0f} s")
            if stop.wait(_POLL_S):
                return False
        now = self._clock()
        if missed:
            self._due = now + self._period_s  # the room appeared within the last poll
            self._anchored = True
        elif room >= want + self._frames or not self._anchored or self._due is None:
            self._due = now  # behind (or where the device's periods fall is not known yet)
        else:
            self._due += self._period_s - _PROBE_S
        self._count_dry(room, audible and not late)  # one step up for one late wake
        self._last_room = room - self._frames  # after the write the caller makes now
        return True

    def _count_dry(self, room: int, audible: bool) -> None:
        """Count a device found empty; after a gap, keep a period more."""
        if self._started and room >= self._capacity:
            self.ran_dry += 1
            if audible:
                self._step_up("the device ran dry while playing")
        self._started = True

    def _late_wake(self) -> None:
        self.late += 1
        self._step_up(f"the playback thread woke over {_LATE_S * 1000:.0f} ms late while playing")

    def _step_up(self, why: str) -> None:
        self._calm_since = self._clock()
        if not self._pending and not self.blocking:
            self._pending = True
            log.info("playback: %s; a period more in the device at the next pause", why)

    def _raise_keep(self) -> None:
        """Apply the step up in a pause: the writes that fill the device take a block ahead of
        time, which in the middle of a word would leave the queue a block short."""
        self.keep += 1
        self._pending = False
        self.steps_up += 1
        self._due, self._anchored = None, False
        log.info("playback: %s from now on", self.holding)

    def _calm_down(self) -> None:
        """After a calm as long as the steps up so far call for, keep a period less."""
        now = self._clock()
        if self.keep > self._floor and now - self._calm_since > self._calm_s:
            self.keep -= 1
            self._calm_since = now
            self._due, self._anchored = None, False

    @property
    def _calm_s(self) -> float:
        return min(_CALM_S * (1 << min(max(0, self.steps_up - 1), 20)), _CALM_MAX_S)


class _RenderTap:
    """Feeds `on_render`: what was played, converted to 16 kHz, in 10 ms multiples."""

    def __init__(self, backend: AudioBackend) -> None:
        self._backend = backend
        self._resampler: Any = None  # made when a listener attaches: no stale tail, no idle cost
        self._chunker = _Chunker(RENDER_CHUNK, np.float32)
        self._failures = 0

    def push(self, block: Float32Array) -> None:
        callback = self._backend.on_render
        if callback is None:
            self._resampler = None
            return
        if self._resampler is None:
            self._resampler = soxr.ResampleStream(PLAYBACK_RATE, CAPTURE_RATE, 1, quality=_QUALITY)
            self._chunker = _Chunker(RENDER_CHUNK, np.float32)
        ready = self._chunker.push(self._resampler.resample_chunk(block))
        if not len(ready):
            return
        try:
            callback(_to_int16(ready))
        except Exception:
            self._failures += 1
            if self._failures == 1:  # it would repeat 50 times a second
                log.exception("on_render callback failed (further failures not logged)")


class _LoopHandoff:
    """The one place where worker threads hand things to the event loop."""

    def __init__(self, backend: AudioBackend, what: str) -> None:
        self._backend = backend
        self._what = what
        self.loop: asyncio.AbstractEventLoop | None = None
        self._frames: collections.deque[Int16Array] = collections.deque()
        """Capture frames not yet handed to `on_frame` (appended by the capture thread, taken
        on the loop's)."""
        self._waking = False
        """A hand-off of `_frames` is on its way to the loop: later frames go with it."""
        self._captured = 0
        """Frames captured (capture thread)."""
        self._processed = 0
        """Frames handed to `on_frame` (loop thread)."""
        self._due = 0
        """Hand over once this many frames are captured (set on the loop thread)."""

    def gather(self, n: int) -> None:
        """Wake the loop once the frame `n` after those it has processed is captured (on the
        loop thread: counted from there, a request made between the frames of one hand-off
        means the same frame as one made after them)."""
        self._due = self._processed + max(1, n)

    def frame(self, on_frame: FrameCallback, frame: Int16Array) -> bool:
        """Hand a capture frame to `on_frame`, with the ones gathered before it once it is the
        one due; False once the loop is gone."""
        self._frames.append(frame)
        self._captured += 1
        if self._captured < self._due:
            return self.loop is not None
        return self.flush(on_frame)

    def flush(self, on_frame: FrameCallback) -> bool:
        """Hand over the frames gathered so far, if any: one wake of the loop, unless one is
        already on its way (a busy loop then takes them all at once); False once it is gone."""
        if self._waking or not self._frames:
            return self.loop is not None
        self._waking = True
        return self.call(self._hand_over, on_frame)

    def _hand_over(self, on_frame: FrameCallback) -> None:
        self._waking = False  # (first: a frame captured meanwhile wakes the loop again)
        frames = self._frames
        for _ in range(len(frames)):
            self._processed += 1
            on_frame(frames.popleft())

    def call(self, func: Callable[..., object], *args: object) -> bool:
        """Schedule `func(*args)` on the loop; False once the loop is gone."""
        if self.loop is None:
            return False
        try:
            self.loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # loop closed: the daemon is shutting down
            return False
        return True

    def error(self, exc: Exception) -> None:
        """Report a failure from a worker thread: logged here, `on_error` on the loop."""
        log.error("%s: %s", self._what, exc)
        self.call(self._deliver, exc)

    def _deliver(self, exc: Exception) -> None:
        if self._backend.on_error is not None:
            self._backend.on_error(exc)


class _QueuedPlayback:
    """Playback through a `_PlaybackQueue`, as both backends do it."""

    _queue: _PlaybackQueue

    def play(self, samples: Int16Array) -> None:
        """Queue int16 mono samples at PLAYBACK_RATE."""
        self._queue.put(samples)

    def set_volume(self, gain: float) -> bool:
        """Change the playback gain for audio queued from now on."""
        self._queue.set_volume(gain)
        return True

    def clear_playback(self) -> None:
        """Drop everything queued, fading out over 5 ms."""
        self._queue.clear()

    @property
    def playback_ran_dry(self) -> int:
        """Times playback ran out of queued audio while playing (ends of replies, underruns)."""
        return self._queue.ran_dry

    @property
    def playback_underruns(self) -> int:
        """Times playback ran out of queued audio inside a reply (a gap, not its end)."""
        return self._queue.underruns

    @property
    def playback_target_s(self) -> float:
        """The depth playback builds before it plays, from the measured jitter (playout.py)."""
        return self._queue.target_s

    @property
    def playback_queued_s(self) -> float:
        """Seconds queued and not yet written to the device (a device's own ~40 ms buffer
        excluded)."""
        return self._queue.queued_s


# --- file backend -------------------------------------------------------------------------------


class FileBackend(_QueuedPlayback, AudioBackend):
    """Reads a WAV file as the microphone and writes what is played to a WAV file, in real time.

    Capture delivers frame n at t0 + (n+1) * 20 ms on a monotonic clock (no drift), then silence
    once the file ends; playback consumes the queue at real-time speed, so `playback_queued_s`
    behaves as with a device. The output file holds only played audio, not idle silence, while
    `on_render` still sees the silence in between.
    """

    def __init__(
        self,
        input_file: Path | None,
        output_file: Path | None = None,
        *,
        input_channel: int = 0,
        output_volume: float = 1.0,
        prebuffer_s: float = 0.02,
    ) -> None:
        self.on_render = None
        self.on_error = None
        self.input_file, self.output_file = input_file, output_file
        self._queue = _PlaybackQueue(output_volume, prebuffer_s)
        self._render = _RenderTap(self)
        self._handoff = _LoopHandoff(self, "file audio")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._input_finished = False
        self._input_done = asyncio.Event()
        self._closed = False
        self._reader: wave.Wave_read | None = None
        self._writer: wave.Wave_write | None = None
        self._out_file: BinaryIO | None = None
        if input_file is not None:
            self._reader = self._open_input(input_file, input_channel)
        if output_file is not None:
            try:
                # Held open for the backend's lifetime, closed in close(). Opened here rather
                # than by wave.open(path), whose half-built writer errors again in __del__.
                self._out_file = open(output_file, "wb")  # noqa: SIM115
            except OSError as exc:
                self.close()
                raise AudioDeviceError(f"cannot write output_file {output_file}: {exc}") from exc
            self._writer = wave.open(self._out_file, "wb")  # noqa: SIM115
            self._writer.setnchannels(1)
            self._writer.setsampwidth(2)
            self._writer.setframerate(PLAYBACK_RATE)

    def _open_input(self, path: Path, channel: int) -> wave.Wave_read:
        try:
            reader = wave.open(str(path), "rb")  # noqa: SIM115 (read as capture runs)
        except (OSError, EOFError, wave.Error) as exc:
            raise AudioDeviceError(f"cannot read input_file {path}: {exc}") from exc
        try:
            _pcm_to_int16(b"", reader.getsampwidth())
            self._converter = CaptureConverter(
                reader.getframerate(), reader.getnchannels(), channel
            )
        except (AudioDeviceError, ValueError) as exc:
            reader.close()
            raise AudioDeviceError(f"input_file {path}: {exc}") from exc
        return reader

    @property
    def input_finished(self) -> bool:
        """True once every frame of the input file has been passed to `on_frame`."""
        return self._input_finished

    async def wait_input_finished(self) -> None:
        """Return once every frame of the input file has been passed to `on_frame`."""
        await self._input_done.wait()

    def gather_frames(self, n: int) -> None:
        self._handoff.gather(n)

    def start(self, loop: asyncio.AbstractEventLoop, on_frame: FrameCallback) -> None:
        """Start the capture and playback pacing threads."""
        if self._threads or self._closed:
            raise RuntimeError("FileBackend.start() called twice or after close()")
        self._handoff.loop = loop
        self._threads = [
            threading.Thread(target=self._capture, args=(on_frame,), name="wakertc-file-capture"),
            threading.Thread(target=self._playback, name="wakertc-file-playback"),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def close(self) -> None:
        """Stop both threads and finish the output file."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        deadline = time.monotonic() + 0.9
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._reader is not None:
            self._reader.close()
        if any(t.is_alive() for t in self._threads):
            log.warning("file audio threads did not stop within 0.9 s; output file left open")
            return
        if self._writer is not None:
            self._writer.close()
        if self._out_file is not None:
            self._out_file.close()

    def _next_file_frames(self) -> list[Int16Array]:
        assert self._reader is not None
        raw = self._reader.readframes(self._reader.getframerate() // 10)
        if raw:
            return self._converter.push(_pcm_to_int16(raw, self._reader.getsampwidth()))
        self._reader.close()
        self._reader = None
        return self._converter.flush()

    def _capture(self, on_frame: FrameCallback) -> None:
        pending: collections.deque[Int16Array] = collections.deque()
        silence = np.zeros(FRAME_SAMPLES, np.int16)
        finish_sent = False
        t0 = time.monotonic()
        n = 0
        try:
            while True:
                while not pending and self._reader is not None:
                    pending.extend(self._next_file_frames())
                if not pending and not finish_sent:
                    # queued behind the last file frame's on_frame call, so it runs after it
                    finish_sent = self._handoff.flush(on_frame) and self._handoff.call(
                        self._finish_input
                    )
                n += 1
                if self._stop.wait(max(0.0, t0 + n * _BLOCK_S - time.monotonic())):
                    return
                frame = pending.popleft() if pending else silence.copy()
                if not self._handoff.frame(on_frame, frame):
                    return
        except Exception as exc:
            self._handoff.error(AudioDeviceError(f"reading {self.input_file} failed: {exc}"))

    def _finish_input(self) -> None:
        self._input_finished = True
        self._input_done.set()

    def _playback(self) -> None:
        t0 = time.monotonic()
        n = 0
        try:
            while True:
                if self._queue.idle and self.on_render is None:
                    # Nothing to play and nobody listening: sleep until play() instead of
                    # ticking 50 times a second while the daemon waits for its wake word.
                    self._queue.wait_for_audio(self._stop)
                    t0, n = time.monotonic() - _BLOCK_S, 0
                n += 1
                if self._stop.wait(max(0.0, t0 + n * _BLOCK_S - time.monotonic())):
                    return
                block, audible = self._queue.pull(_BLOCK)
                self._render.push(block)
                if audible and self._writer is not None:
                    self._writer.writeframes(_to_int16(block).astype("<i2").tobytes())
        except Exception as exc:
            self._handoff.error(AudioDeviceError(f"writing {self.output_file} failed: {exc}"))


# --- PortAudio devices (which ones: devices.py) -------------------------------------------------


def _check_format(pa: Any, device: DeviceInfo, kind: Kind, rate: int, channels: int) -> None:
    pyaudio = pyaudio_module()
    arguments: dict[str, Any] = {
        f"{kind}_device": device.index,
        f"{kind}_channels": channels,
        f"{kind}_format": pyaudio.paInt16,
    }
    try:
        pa.is_format_supported(rate, **arguments)
    except ValueError as exc:
        reason = exc.args[0] if exc.args else exc
        code = exc.args[1] if len(exc.args) > 1 else None
        if code not in (
            pyaudio.paInvalidSampleRate,
            pyaudio.paInvalidChannelCount,
            pyaudio.paSampleFormatNotSupported,
        ):
            # Not a format problem: the device is gone (unplugged, its sound server sink
            # unloaded) or busy. Config advice would send the user the wrong way.
            raise DeviceMissing(
                f"{kind} device {device.describe(kind)} (audio.{kind}_device) is not available "
                f"({reason}): is it connected?"
            ) from exc
        raise AudioDeviceError(
            f"{kind} device {device.describe(kind)} cannot {('record', 'play')[kind == 'output']} "
            f"{rate} Hz x {channels} ch int16 ({reason}); set audio.{kind}_rate / "
            f"audio.{kind}_channels to what it supports"
        ) from exc


def _supports(pa: Any, device: DeviceInfo, kind: Kind, rate: int, channels: int) -> bool:
    try:
        _check_format(pa, device, kind, rate, channels)
    except AudioDeviceError:
        return False
    return True


class PyAudioBackend(_QueuedPlayback, AudioBackend):
    """Real devices through PortAudio.

    Capture uses PortAudio's callback thread (the callback only converts and hands frames to the
    loop). Playback has its own thread writing 20 ms periods, silence when idle, each when the
    device has room for it (`_RoomPacer`: the writes do not block unless it has stepped up to
    a blocking writer, and the queue is read at the last moment). The playback thread also
    watches capture: no callback for 2 s means the input device is gone, reported to
    `on_error`; and the loop watches the playback thread: no write returned for 3 s means it is
    stuck inside PortAudio, reported the same way. PortAudio's callback mode was tried for playback:
    it keeps the device's whole buffer full (89 ms wire to speaker, as the blocking writer).
    """

    def __init__(self, config: AudioConfig, *, prebuffer_s: float = 0.02) -> None:
        self.on_render = None
        self.on_error = None
        self._pyaudio = pyaudio_module()
        self._pa = portaudio()
        try:
            devices = enumerate_devices(self._pa)
            self.input_device = find_device(devices, config.input_device, "input")
            self.output_device = find_device(devices, config.output_device, "output")
            # Probing a device that is away makes ALSA print to fd 2, at every retry.
            with native_stderr_to_debug_log("checking audio formats"):
                self.input_rate, self.input_channels = self._capture_format(config)
                self.output_rate, self.output_channels = self._playback_format(config)
            self._converter = CaptureConverter(
                self.input_rate, self.input_channels, config.input_channel
            )
        except BaseException:
            self._pa.terminate()
            raise
        self._queue = _PlaybackQueue(config.output_volume, prebuffer_s)
        self._buffer_ms = config.output_buffer_ms
        self._floor_periods = floor_periods(config.output_buffer_ms)
        self._render = _RenderTap(self)
        self._handoff = _LoopHandoff(self, "audio device")
        self._out_resampler = (
            None
            if self.output_rate == PLAYBACK_RATE
            else soxr.ResampleStream(PLAYBACK_RATE, self.output_rate, 1, quality=_PLAYBACK_QUALITY)
        )
        self._stop = threading.Event()
        self._in_stream: Any = None
        self._out_stream: Any = None
        self._thread: threading.Thread | None = None
        self._on_frame: FrameCallback | None = None
        self._last_capture = 0.0
        self._last_write = 0.0  # the playback thread's last completed write (or start)
        self._ending = threading.Lock()  # the playback thread's end against `close`
        self._thread_done = False
        self._left_behind = False
        self._hang_check: asyncio.TimerHandle | None = None
        self._device_blocks = _Refill()
        self._pacer: _RoomPacer | None = None
        self._closed = False

    @property
    def device_playback(self) -> dict[str, int | bool]:
        """How the playback thread kept the device (`_RoomPacer`): the fewest periods it keeps
        (`[audio] output_buffer_ms`), the periods left in it at each write now (or writing as a
        blocking writer), times it was found empty, late wakes while playing, steps up."""
        pacer = self._pacer
        if pacer is None:
            return {
                "floor_periods": self._floor_periods,
                "keep_periods": 0,
                "blocking": False,
                "device_step_frames": 0,
                "ran_dry": 0,
                "late": 0,
                "steps_up": 0,
            }
        return pacer.report()

    def _capture_format(self, config: AudioConfig) -> tuple[int, int]:
        dev = self.input_device
        rate = config.input_rate or self._preferred_capture_rate(dev)
        channels = config.input_channels
        if not channels:  # mono if offered, else the smallest count that works
            options = sorted({1, 2, dev.max_input_channels})
            channels = next((c for c in options if _supports(self._pa, dev, "input", rate, c)), 1)
        if not 0 <= config.input_channel < channels:
            raise AudioDeviceError(
                f"audio.input_channel = {config.input_channel}, but input device "
                f"{dev.describe('input')} is opened with {channels} channel(s) "
                f"(channels are numbered from 0)"
            )
        _check_format(self._pa, dev, "input", rate, channels)
        return rate, channels

    def _preferred_capture_rate(self, dev: DeviceInfo) -> int:
        # 16 kHz straight from the device saves a resampling stage (~20 ms of latency, CPU).
        if any(_supports(self._pa, dev, "input", CAPTURE_RATE, c) for c in (1, 2)):
            return CAPTURE_RATE
        return round(dev.default_rate)

    def _playback_format(self, config: AudioConfig) -> tuple[int, int]:
        dev = self.output_device
        rate = config.output_rate or round(dev.default_rate)
        channels = config.output_channels or min(dev.max_output_channels, 2)
        if not config.output_channels and not _supports(self._pa, dev, "output", rate, channels):
            channels = 1
        _check_format(self._pa, dev, "output", rate, channels)
        return rate, channels

    def gather_frames(self, n: int) -> None:
        self._handoff.gather(n)

    def start(self, loop: asyncio.AbstractEventLoop, on_frame: FrameCallback) -> None:
        """Open both streams and start capture and the playback thread."""
        pyaudio = self._pyaudio
        if self._thread is not None or self._closed:
            raise RuntimeError("PyAudioBackend.start() called twice or after close()")
        self._handoff.loop = loop
        self._on_frame = on_frame
        self._last_capture = time.monotonic()
        try:
            with native_stderr_to_debug_log("opening audio streams"):
                self._out_stream = self._pa.open(
                    format=pyaudio.paInt16,
                    channels=self.output_channels,
                    rate=self.output_rate,
                    output=True,
                    output_device_index=self.output_device.index,
                    frames_per_buffer=round(self.output_rate * _BLOCK_S),
                )
                self._in_stream = self._pa.open(
                    format=pyaudio.paInt16,
                    channels=self.input_channels,
                    rate=self.input_rate,
                    input=True,
                    input_device_index=self.input_device.index,
                    frames_per_buffer=round(self.input_rate * _BLOCK_S),
                    stream_callback=self._on_capture,
                )
        except OSError as exc:
            self.close()
            raise AudioDeviceError(
                f"cannot open input {self.input_device.describe('input')} at {self.input_rate} Hz "
                f"x {self.input_channels} ch or output {self.output_device.describe('output')} at "
                f"{self.output_rate} Hz x {self.output_channels} ch: {exc}"
            ) from exc
        log.info(
            "audio: capture %s at %d Hz x %d ch (channel %d), playback %s at %d Hz x %d ch, "
            "latency in %.0f ms / out %.0f ms",
            self.input_device.name,
            self.input_rate,
            self.input_channels,
            self._converter.channel,
            self.output_device.name,
            self.output_rate,
            self.output_channels,
            self._in_stream.get_input_latency() * 1000,
            self._out_stream.get_output_latency() * 1000,
        )
        self._last_write = time.monotonic()
        self._thread = threading.Thread(target=self._playback, name="wakertc-playback", daemon=True)
        self._thread.start()
        self._hang_check = loop.call_later(1.0, self._check_hung, loop)

    def _check_hung(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the loop, once a second: a playback thread stuck inside PortAudio (a write or a
        look at the room that never returns: an audio server that hangs) watches nothing, not
        even capture, so it is reported from here, once, and the daemon reopens the device."""
        thread = self._thread
        if self._closed or thread is None or not thread.is_alive() or self._stop.is_set():
            return
        stuck_s = time.monotonic() - self._last_write
        if stuck_s > _HUNG_S:
            self._handoff.error(
                AudioDeviceError(
                    f"playback on [{self.output_device.index}] {self.output_device.name} hung: "
                    f"no write returned for {stuck_s:.0f} s"
                )
            )
            return
        self._hang_check = loop.call_later(1.0, self._check_hung, loop)

    def _on_capture(
        self, data: bytes | None, frame_count: int, time_info: Any, status: int
    ) -> tuple[None, int]:
        pyaudio = self._pyaudio
        self._last_capture = time.monotonic()
        if status & pyaudio.paInputOverflow:
            log.debug("capture overflow: the loop or the machine fell behind")
        if data is None or self._stop.is_set() or self._on_frame is None:
            return None, pyaudio.paComplete
        try:
            for frame in self._converter.push(np.frombuffer(data, np.int16)):
                if not self._handoff.frame(self._on_frame, frame):
                    return None, pyaudio.paComplete
        except Exception as exc:
            self._handoff.error(AudioDeviceError(f"capture conversion failed: {exc}"))
            return None, pyaudio.paAbort
        return None, pyaudio.paContinue

    def _playback(self) -> None:
        period = round(self.output_rate * _BLOCK_S)
        stall_reported = False
        audible = False
        try:
            pacer = self._pacer = _RoomPacer(
                self._out_stream.get_write_available,
                period,
                self.output_rate,
                floor=self._floor_periods,
            )
            if pacer.keep > 1:
                log.info(
                    "playback: %s (audio.output_buffer_ms = %d)", pacer.holding, self._buffer_ms
                )
            while pacer.wait(self._stop, audible):
                out = self._device_blocks.take(period, self._next_device_block)
                audible = bool(np.abs(out).max() > _QUIET_PCM)
                self._out_stream.write(np.repeat(out, self.output_channels).tobytes())
                self._last_write = time.monotonic()
                stalled = self._last_write - self._last_capture > _STALL_S
                if stalled and not stall_reported:
                    self._handoff.error(
                        AudioDeviceError(
                            f"capture from [{self.input_device.index}] {self.input_device.name} "
                            f"stalled: no audio for {_STALL_S:.0f} s"
                        )
                    )
                stall_reported = stalled
        except Exception as exc:
            if not self._stop.is_set():
                self._handoff.error(
                    AudioDeviceError(
                        f"playback on [{self.output_device.index}] {self.output_device.name} "
                        f"failed: {exc}"
                    )
                )
        finally:
            with self._ending:
                self._thread_done = True
                if self._left_behind:  # `close` gave up on this thread: finish its work
                    self._release_portaudio()

    def _next_device_block(self) -> Int16Array:
        """The queue's next block, fed to the echo reference, at the device's rate."""
        block, _ = self._queue.pull(_BLOCK)
        self._render.push(block)
        if self._out_resampler is not None:
            block = self._out_resampler.resample_chunk(block)
        return _to_int16(block)

    def close(self) -> None:
        """Stop capture, then the playback thread, then PortAudio."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._hang_check is not None:
            self._hang_check.cancel()
        # Pa_CloseStream on a running stream discards its buffers (no drain wait): prompt.
        if self._in_stream is not None:
            self._in_stream.close()
        if self._thread is not None:
            self._thread.join(0.5)
            with self._ending:
                if not self._thread_done:
                    self._left_behind = True
                    log.warning(
                        "playback thread did not stop within 0.5 s; leaving it behind "
                        "(it closes PortAudio if it ever returns)"
                    )
                    return
        self._release_portaudio()

    def _release_portaudio(self) -> None:
        # While one PyAudio instance lives, PortAudio keeps the device list it made at start:
        # a stuck thread's instance is released when the thread returns, so a device plugged
        # in later is seen by the next one.
        if self._out_stream is not None:
            self._out_stream.close()
        self._pa.terminate()


# --- entry points -------------------------------------------------------------------------------


def open_backend(config: AudioConfig) -> AudioBackend:
    """The backend `config.backend` names, devices resolved and checked (or AudioDeviceError)."""
    if config.backend == "file":
        return FileBackend(
            config.input_file,
            config.output_file,
            input_channel=config.input_channel,
            output_volume=config.output_volume,
        )
    return PyAudioBackend(config)


def check_devices(config: AudioConfig) -> tuple[list[str], list[str]]:
    """What `check-config` says of the configured devices on this machine: (errors, warnings).

    A device that is there and cannot do its job is an error; one that is not there now is a
    warning (a USB microphone may be plugged in later: the daemon waits for it); so is a machine
    with no audio devices at all, such as a build machine, where nothing can be checked.
    """
    if config.backend != "pyaudio":
        return [], []
    try:
        devices = list_devices()
    except AudioDeviceError as exc:
        return [], [f"audio devices not checked: {exc}"]
    if not devices:
        return [], [
            "audio devices not checked: PortAudio lists none here (no sound card or audio "
            "server, or this user is not in the `audio` group); check again on the device"
        ]
    errors: list[str] = []
    warnings: list[str] = []
    waits = "; until it appears, the daemon shows the error and waits for it"
    chosen: tuple[tuple[Kind, str | int], ...] = (
        ("input", config.input_device),
        ("output", config.output_device),
    )
    for kind, spec in chosen:
        try:
            find_device(devices, spec, kind)
        except DeviceMissing as exc:
            warnings.append(f"{exc}{waits}")
        except AudioDeviceError as exc:
            errors.append(str(exc))
    if errors or warnings:
        return errors, warnings
    try:  # the rates and channel counts, exactly as start-up will choose them
        PyAudioBackend(config).close()
    except DeviceMissing as exc:
        warnings.append(f"{exc}{waits}")
    except AudioDeviceError as exc:
        errors.append(str(exc))
    return errors, warnings
