"""A private PulseAudio server with null sinks, and a click probe that times audio on it.

    with running_pulse() as rig:                      # PulseUnavailable if it cannot start
        probe = ClickProbe(rig, workdir)              # a child process: see below
        await probe.start()
        probe.clicks(5, 0.25)                         # five clicks into the microphone
        ...
        recording = await probe.stop()
        recording.mic.times_of(recording.mic.onsets())  # when each click entered the mic

The server is a minimal copy of tests/pulse.py's rig (scripts do not import from tests/): sink
`mic` (48 kHz stereo) whose monitor is the microphone, sink `speaker` (44.1 kHz mono) whose monitor
hears what is played, both with `norewinds=1`; ALSA devices `wakertc_mic` (-> mic.monitor),
`wakertc_speaker` (-> speaker), `wakertc_loopback` (-> speaker.monitor) for PortAudio.

The probe runs in its own process, so that the process being measured does not delay its
timestamps (and it does not load that process). It plays clicks into `mic` and records
`mic.monitor` and `speaker.monitor` through libpulse-simple in 2.5 ms reads, each stamped with
time.monotonic() on return. When a sample became available at a monitor (left the sink: entered
the microphone, or came out of the speaker) is then estimated from the lower envelope of those
stamps (`MonitorStream.times_of`): a read returns at the earliest when its last sample is there,
and the earliest reads show when. Resolution: the sinks render in chunks of the smallest latency
their clients ask for (the probe asks 2.5 ms), and a chunk's samples all appear together.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

MIC_RATE, MIC_CHANNELS = 48000, 2
SPEAKER_RATE, SPEAKER_CHANNELS = 44100, 1
INPUT_DEVICE, OUTPUT_DEVICE, LOOPBACK_DEVICE = "wakertc_mic", "wakertc_speaker", "wakertc_loopback"
READ_S = 0.0025  # the probe's read size and requested latency
WRITE_S = 0.005
CLICK_S = 0.04  # long enough for an energy VAD's onset (30 ms), short enough to stay a click
CLICK_HZ = 1000.0
CLICK_AMPLITUDE = 0.5
START_TIMEOUT_S = 10.0
THIS_FILE = Path(__file__).resolve()


class PulseUnavailable(Exception):
    """The PulseAudio server (or libpulse-simple) is not available here."""


@dataclass
class PulseRig:
    """A running private PulseAudio server and how to reach it."""

    root: Path
    env_vars: dict[str, str]
    input_device: str = INPUT_DEVICE
    output_device: str = OUTPUT_DEVICE
    loopback_device: str = LOOPBACK_DEVICE

    @property
    def env(self) -> dict[str, str]:
        """A complete environment for processes that should use the rig."""
        return {**os.environ, **self.env_vars}

    def pactl(self, *args: str) -> str:
        """Run `pactl` against the rig's server."""
        done = subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout


_ASOUNDRC = """\
pcm.{input} {{
    type pulse
    device "mic.monitor"
    server "unix:{socket}"
}}
pcm.{output} {{
    type pulse
    device "speaker"
    server "unix:{socket}"
}}
pcm.{loopback} {{
    type pulse
    device "speaker.monitor"
    server "unix:{socket}"
}}
"""


@contextlib.contextmanager
def running_pulse() -> Iterator[PulseRig]:
    """Start a private server in a fresh directory, yield the rig, stop it and clean up.

    The caller's `os.environ` is not changed; use `rig.env`/`rig.env_vars`.
    """
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        raise PulseUnavailable("`pulseaudio`/`pactl` not installed (Debian: pulseaudio-utils)")
    if ctypes.util.find_library("pulse-simple") is None:
        raise PulseUnavailable("libpulse-simple is not installed (Debian: libpulse0)")
    root = Path(tempfile.mkdtemp(prefix="wakertc-pulse-"))  # short: sockaddr_un holds 108 bytes
    socket = root / "native"
    (root / "config" / "alsa").mkdir(parents=True)
    (root / "config" / "alsa" / "asoundrc").write_text(
        _ASOUNDRC.format(
            input=INPUT_DEVICE, output=OUTPUT_DEVICE, loopback=LOOPBACK_DEVICE, socket=socket
        )
    )
    (root / "home").mkdir()
    rig = PulseRig(
        root,
        {
            "PULSE_SERVER": f"unix:{socket}",
            "PULSE_RUNTIME_PATH": str(root / "run"),
            "XDG_RUNTIME_DIR": str(root),
            "XDG_CONFIG_HOME": str(root / "config"),
        },
    )
    server_env = {**rig.env, "HOME": str(root / "home")}
    server_env.pop("PULSE_SERVER")
    argv = [
        "pulseaudio",
        "--daemonize=yes",
        "--exit-idle-time=-1",
        "-n",
        "--use-pid-file=yes",
        f"--log-target=newfile:{root / 'pulse.log'}",
        f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket}",
        f"--load=module-null-sink sink_name=mic rate={MIC_RATE} channels={MIC_CHANNELS} "
        "norewinds=1",
        f"--load=module-null-sink sink_name=speaker rate={SPEAKER_RATE} "
        f"channels={SPEAKER_CHANNELS} norewinds=1",
    ]
    try:
        try:
            started = subprocess.run(
                argv, env=server_env, capture_output=True, text=True, timeout=15
            )
            if started.returncode != 0:
                raise PulseUnavailable(
                    f"pulseaudio exited {started.returncode}: {started.stderr.strip()[-300:]}"
                )
            rig.pactl("info")
        except (OSError, subprocess.SubprocessError) as exc:
            raise PulseUnavailable(f"pulseaudio did not come up: {exc}") from exc
        rig.pactl("set-default-sink", "speaker")
        rig.pactl("set-default-source", "mic.monitor")
        yield rig
    finally:
        subprocess.run(
            ["pulseaudio", "--kill"], env=rig.env, capture_output=True, timeout=10, check=False
        )
        deadline = time.monotonic() + 5
        while socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        shutil.rmtree(root, ignore_errors=True)


def click(rate: int) -> NDArray[np.float32]:
    """One click: a CLICK_S tone burst starting at full slope, with a 2 ms fade-out."""
    t = np.arange(round(CLICK_S * rate)) / rate
    burst = CLICK_AMPLITUDE * np.sin(2 * np.pi * CLICK_HZ * t)
    fade = np.minimum(1.0, (CLICK_S - t) / 0.002)
    out: NDArray[np.float32] = (burst * fade).astype(np.float32)
    return out


def onsets(
    samples: NDArray[np.int16], rate: int, *, floor: int = 1000, gap_s: float = 0.1
) -> list[int]:
    """Sample indices where clicks begin: the first sample at 25 % of each burst's peak.

    A burst is a run of samples above `floor` (about -30 dBFS) with no pause of `gap_s`; the
    relative threshold makes the onset independent of the level each stage delivers.
    """
    level = np.abs(samples.astype(np.int32))
    loud = np.flatnonzero(level > floor)
    if not len(loud):
        return []
    starts = loud[np.insert(np.diff(loud) > gap_s * rate, 0, True)]
    found = []
    span = round(CLICK_S * rate)
    for start in starts:
        window = level[start : start + span]
        found.append(int(start + np.argmax(window >= 0.25 * window.max())))
    return found


@dataclass(frozen=True)
class MonitorStream:
    """What the probe recorded from one monitor: mono samples and when each read returned."""

    rate: int
    samples: NDArray[np.int16]
    read_t: NDArray[np.float64]  # time.monotonic() when each read returned
    read_end: NDArray[np.int64]  # samples recorded after that read

    def times_of(self, indices: list[int], window_s: float = 0.5) -> list[float]:
        """When each sample became available at the monitor (lower envelope of the reads)."""
        lead = self.read_t - self.read_end / self.rate  # >= the stream's start, per read
        out = []
        for index in indices:
            at = index / self.rate
            near = np.abs(self.read_end / self.rate - at) <= window_s
            out.append(at + float(lead[near].min() if near.any() else lead.min()))
        return out

    def onsets(self) -> list[int]:
        """Where the clicks begin in this stream (sample indices)."""
        return onsets(self.samples, self.rate)

    def late_reads_ms(self) -> float:
        """How far the slowest read lagged the envelope (how busy the probe was), in ms."""
        lead = self.read_t - self.read_end / self.rate
        return float((lead.max() - lead.min()) * 1000) if len(lead) else 0.0


@dataclass(frozen=True)
class ProbeRecording:
    """Both monitors and the click positions written into the microphone."""

    mic: MonitorStream
    speaker: MonitorStream


class ClickProbe:
    """The probe child process: clicks into `mic`, records both monitors with timestamps."""

    def __init__(self, rig: PulseRig, workdir: Path) -> None:
        self._rig = rig
        self._workdir = workdir
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Spawn the probe and wait until its streams run."""
        await asyncio.to_thread(self._workdir.mkdir, parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(THIS_FILE),
            "probe",
            str(self._workdir),
            env=self._rig.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await self._expect("ready", START_TIMEOUT_S)

    def clicks(self, count: int, spacing_s: float, seed: int = 0) -> float:
        """Play `count` clicks into the microphone from ~10 ms from now; returns their span (s).

        Each click lands 0-20 ms after its slot on the spacing grid (seeded), so the clicks fall
        at different phases of the 20 ms frames downstream.
        """
        self._send(f"clicks {count} {spacing_s} {seed}")
        return count * spacing_s + 0.03

    async def stop(self) -> ProbeRecording:
        """End the probe; it writes what it recorded, which is returned."""
        self._send("quit")
        await self._expect("done", 15.0)
        assert self._process is not None
        await self._process.wait()
        return ProbeRecording(
            mic=_load_stream(self._workdir / "mic.npz"),
            speaker=_load_stream(self._workdir / "speaker.npz"),
        )

    async def kill(self) -> None:
        """Stop the probe without waiting for its recording (error paths)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    def _send(self, line: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")

    async def _expect(self, word: str, within_s: float) -> None:
        assert self._process is not None and self._process.stdout is not None
        async with asyncio.timeout(within_s):
            line = (await self._process.stdout.readline()).decode().strip()
        if line != word:
            raise RuntimeError(f"the click probe said {line!r} instead of {word!r}")


def _load_stream(path: Path) -> MonitorStream:
    with np.load(path) as data:
        return MonitorStream(
            rate=int(data["rate"]),
            samples=data["samples"],
            read_t=data["read_t"],
            read_end=data["read_end"],
        )


# --- the probe process (libpulse-simple through ctypes) -----------------------------------------

_PA_SAMPLE_S16LE = 3
_PA_STREAM_PLAYBACK, _PA_STREAM_RECORD = 1, 2
_DEFAULT = 0xFFFFFFFF  # (uint32_t) -1: let the server choose


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")
    ]


class _Simple:
    """One libpulse-simple stream (mono s16)."""

    def __init__(self, direction: int, device: str, rate: int, latency_s: float) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("pulse-simple") or "libpulse-simple.so.0")
        lib.pa_simple_new.restype = ctypes.c_void_p
        lib.pa_simple_new.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.POINTER(_SampleSpec),
            ctypes.c_void_p,
            ctypes.POINTER(_BufferAttr),
            ctypes.POINTER(ctypes.c_int),
        ]
        for name in ("pa_simple_read", "pa_simple_write"):
            getattr(lib, name).argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.c_int),
            ]
        lib.pa_simple_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        size = round(rate * latency_s) * 2
        if direction == _PA_STREAM_RECORD:
            attr = _BufferAttr(_DEFAULT, _DEFAULT, _DEFAULT, _DEFAULT, size)
        else:
            attr = _BufferAttr(_DEFAULT, 2 * size, _DEFAULT, _DEFAULT, _DEFAULT)
        error = ctypes.c_int()
        self._handle = lib.pa_simple_new(
            None,
            b"wakertc-probe",
            direction,
            device.encode(),
            device.encode(),
            ctypes.byref(_SampleSpec(_PA_SAMPLE_S16LE, rate, 1)),
            None,
            ctypes.byref(attr),
            ctypes.byref(error),
        )
        if not self._handle:
            raise OSError(f"pa_simple_new({device}) failed: error {error.value}")
        self._error = ctypes.c_int()

    def read(self, buffer: ctypes.Array[ctypes.c_char]) -> None:
        if self._lib.pa_simple_read(self._handle, buffer, len(buffer), ctypes.byref(self._error)):
            raise OSError(f"pa_simple_read failed: error {self._error.value}")

    def write(self, data: bytes) -> None:
        if self._lib.pa_simple_write(self._handle, data, len(data), ctypes.byref(self._error)):
            raise OSError(f"pa_simple_write failed: error {self._error.value}")

    def free(self) -> None:
        self._lib.pa_simple_free(self._handle)


def _record(device: str, rate: int, stop: threading.Event, out: Path) -> None:
    stream = _Simple(_PA_STREAM_RECORD, device, rate, READ_S)
    n = round(rate * READ_S)
    buffer = ctypes.create_string_buffer(2 * n)
    chunks: list[bytes] = []
    times: list[float] = []
    try:
        while not stop.is_set():
            stream.read(buffer)
            times.append(time.monotonic())
            chunks.append(buffer.raw)
    finally:
        stream.free()
        np.savez(
            out,
            rate=rate,
            samples=np.frombuffer(b"".join(chunks), np.int16),
            read_t=np.array(times, np.float64),
            read_end=np.arange(1, len(times) + 1, dtype=np.int64) * n,
        )


class _ClickWriter:
    """Writes silence into `mic` without a break; `clicks()` mixes a click train into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tape = np.zeros(0, np.float32)
        self._click = click(MIC_RATE)

    def clicks(self, count: int, spacing_s: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        spacing = round(spacing_s * MIC_RATE)
        lead = round(0.01 * MIC_RATE)
        tape = np.zeros(lead + count * spacing + len(self._click), np.float32)
        for k in range(count):
            at = lead + k * spacing + int(rng.integers(0, round(0.02 * MIC_RATE)))
            tape[at : at + len(self._click)] += self._click
        with self._lock:
            self._tape = tape

    def run(self, stop: threading.Event) -> None:
        stream = _Simple(_PA_STREAM_PLAYBACK, "mic", MIC_RATE, WRITE_S)
        n = round(MIC_RATE * WRITE_S)
        try:
            while not stop.is_set():
                block = np.zeros(n, np.float32)
                with self._lock:
                    take = self._tape[:n]
                    self._tape = self._tape[n:]
                block[: len(take)] = take
                stream.write((block * 32767).astype("<i2").tobytes())
        finally:
            stream.free()


def probe_main(workdir: Path) -> int:
    """The probe process: commands on stdin (`clicks N SPACING SEED`, `quit`)."""
    stop = threading.Event()
    writer = _ClickWriter()
    threads = [
        threading.Thread(target=writer.run, args=(stop,), name="probe-writer"),
        threading.Thread(target=_record, args=("mic.monitor", MIC_RATE, stop, workdir / "mic.npz")),
        threading.Thread(
            target=_record,
            args=("speaker.monitor", SPEAKER_RATE, stop, workdir / "speaker.npz"),
        ),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.1)  # the streams are up and running steadily
    if not all(thread.is_alive() for thread in threads):
        stop.set()
        print("failed: a probe stream did not open (see stderr)", flush=True)
        return 1
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if words and words[0] == "clicks":
                writer.clicks(int(words[1]), float(words[2]), int(words[3]))
            elif words and words[0] == "quit":
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        sys.exit(probe_main(Path(sys.argv[2])))
    sys.exit(f"usage: {sys.argv[0]} probe WORKDIR  (run by ClickProbe)")
