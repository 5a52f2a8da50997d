"""A private PulseAudio server with null sinks: real, real-time audio devices without hardware.

    from pulse import pulse_rig  # noqa: F401  (the fixture, imported into the test module)

    def test_something(pulse_rig):
        backend = PyAudioBackend(pulse_rig.audio_config(input_channel=1))
        with pulse_rig.record_speaker(tmp_path / "out.wav"):
            pulse_rig.play_into_mic(wav).wait()

What the rig is (all measured here with PortAudio 19.6 / PulseAudio 16):
- sink `mic` (48 kHz stereo): whatever is played into it (`play_into_mic`, i.e. `paplay
  --device=mic`) comes out of its monitor source `mic.monitor`, the microphone;
- sink `speaker` (44.1 kHz mono): what the program plays; `record_speaker` records its monitor.
- Both null sinks are loaded with `norewinds=1`: with rewinds, a low-latency client (PortAudio
  asks for 40 ms) underruns, the null sink rewinds on each underrun and loses time, and playback
  crawls at ~40 % of real time (1.2 s consumed in 3 s, measured); without, it is real time.
- PortAudio (through ALSA's `pulse` plugin) lists only `pulse` and `default`, which follow the
  server's defaults. The rig writes an ALSA config defining two named devices, `wakertc_mic`
  (-> `mic.monitor`) and `wakertc_speaker` (-> `speaker`), so tests select real devices by name
  (`rig.input_device`, `rig.output_device`); it also sets the server defaults to `speaker` and
  `mic.monitor`, so `pulse`/`default` (an empty device name in the config) reach the rig too.
  Each ALSA pulse device reports 32 channels and 44.1 kHz by default; pass the rig's rates and
  channel counts explicitly (`audio_config()` does) to exercise the conversions.
- The variables that point clients at it (`rig.env_vars`): `PULSE_SERVER` (libpulse: PyAudio's
  ALSA plugin, paplay, parecord), `XDG_CONFIG_HOME` (ALSA reads `$XDG_CONFIG_HOME/alsa/asoundrc`;
  ALSA re-reads its config when that changes, so setting it in-process after PyAudio was used
  still works), `PULSE_RUNTIME_PATH` and `XDG_RUNTIME_DIR`. The fixture sets them in `os.environ`
  for the test; `rig.env` is a complete environment for subprocesses (e.g. the daemon).

The fixture skips, saying why, only when the server cannot start (no `pulseaudio` binary, or it
fails). Running as root makes PulseAudio warn; that is harmless.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from wakertc.config import AudioConfig

MIC_RATE, MIC_CHANNELS = 48000, 2
SPEAKER_RATE, SPEAKER_CHANNELS = 44100, 1
INPUT_DEVICE, OUTPUT_DEVICE = "wakertc_mic", "wakertc_speaker"


class PulseUnavailable(Exception):
    """The PulseAudio server could not be started here."""


@dataclass
class Recording:
    """A running `parecord`; `stop()` ends it and leaves a complete WAV file."""

    path: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> Path:
        """Stop recording (SIGINT lets parecord finish the WAV header) and return the file."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.path

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class PulseRig:
    """A running private PulseAudio server and how to reach it."""

    root: Path
    env_vars: dict[str, str]
    input_device: str = INPUT_DEVICE
    output_device: str = OUTPUT_DEVICE
    mic_rate: int = MIC_RATE
    mic_channels: int = MIC_CHANNELS
    speaker_rate: int = SPEAKER_RATE
    speaker_channels: int = SPEAKER_CHANNELS
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """A complete environment for subprocesses that should use the rig."""
        return {**os.environ, **self.env_vars}

    def audio_config(self, **overrides: Any) -> AudioConfig:
        """An `AudioConfig` for the PyAudio backend on the rig's devices at their native formats."""
        config = AudioConfig(
            backend="pyaudio",
            input_device=self.input_device,
            output_device=self.output_device,
            input_rate=self.mic_rate,
            input_channels=self.mic_channels,
            output_rate=self.speaker_rate,
            output_channels=self.speaker_channels,
        )
        return replace(config, **overrides)

    def play_into_mic(self, wav: Path) -> subprocess.Popen[bytes]:
        """Start playing a WAV file into the microphone (real time); `.wait()` for its end."""
        process = subprocess.Popen(["paplay", "--device=mic", str(wav)], env=self.env)
        self._children.append(process)
        return process

    def record_speaker(self, path: Path) -> Recording:
        """Start recording what is played on the speaker into a WAV file at the sink's format."""
        process = subprocess.Popen(
            [
                "parecord",
                "--device=speaker.monitor",
                f"--rate={self.speaker_rate}",
                f"--channels={self.speaker_channels}",
                "--file-format=wav",
                str(path),
            ],
            env=self.env,
        )
        self._children.append(process)
        return Recording(path, process)

    def pactl(self, *args: str) -> str:
        """Run `pactl` against the rig's server."""
        done = subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def kill(self) -> None:
        """Stop the server (also how a test simulates the audio system going away)."""
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait()
        subprocess.run(
            ["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=10, check=False
        )
        deadline = time.monotonic() + 5
        while (self.root / "native").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


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
"""


@contextlib.contextmanager
def running_pulse() -> Iterator[PulseRig]:
    """Start a private server in a fresh directory, yield the rig, stop it and clean up."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        raise PulseUnavailable("`pulseaudio`/`pactl` not installed (Debian: pulseaudio-utils)")
    # A short path: the socket's must fit in sockaddr_un (108 bytes), which tmp_path may not.
    root = Path(tempfile.mkdtemp(prefix="wakertc-pulse-"))
    socket = root / "native"
    (root / "config" / "alsa").mkdir(parents=True)
    (root / "config" / "alsa" / "asoundrc").write_text(
        _ASOUNDRC.format(input=INPUT_DEVICE, output=OUTPUT_DEVICE, socket=socket)
    )
    (root / "home").mkdir()
    env_vars = {
        "PULSE_SERVER": f"unix:{socket}",
        "PULSE_RUNTIME_PATH": str(root / "run"),
        "XDG_RUNTIME_DIR": str(root),
        "XDG_CONFIG_HOME": str(root / "config"),
    }
    rig = PulseRig(root, env_vars)
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
                log = (root / "pulse.log").read_text() if (root / "pulse.log").exists() else ""
                raise PulseUnavailable(
                    f"pulseaudio exited {started.returncode}: {started.stderr.strip()} {log[-500:]}"
                )
            rig.pactl("info")
        except (OSError, subprocess.SubprocessError) as exc:
            raise PulseUnavailable(f"pulseaudio did not come up: {exc}") from exc
        rig.pactl("set-default-sink", "speaker")
        rig.pactl("set-default-source", "mic.monitor")
        yield rig
    finally:
        rig.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pulse_rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseRig]:
    """A fresh private PulseAudio (starts in ~20 ms), with this process's env pointed at it."""
    try:
        with running_pulse() as rig:
            for name, value in rig.env_vars.items():
                monkeypatch.setenv(name, value)
            yield rig
    except PulseUnavailable as exc:
        pytest.skip(f"PulseAudio cannot start here: {exc}")
