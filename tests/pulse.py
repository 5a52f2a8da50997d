"""A private PulseAudio server with null sinks: real, real-time audio devices without hardware.

    from pulse import PulseRig, pulse_rig  # noqa: F401  (the fixture, imported into the module)

    async def test_something(pulse_rig: PulseRig, tmp_path):  # noqa: F811
        backend = PyAudioBackend(pulse_rig.audio_config(input_channel=1))
        with pulse_rig.record_speaker(tmp_path / "out.wav"):
            pulse_rig.play_into_mic(wav).wait()

For a subprocess (the daemon itself), pass `env=pulse_rig.env` and a config with
`input_device = "wakertc_mic"`, `output_device = "wakertc_speaker"` (or leave both empty: the
server's defaults are the rig's mic and speaker too).

What the rig is (measured here with PortAudio 19.6 and PulseAudio 16):
- sink `mic` (48 kHz stereo): what `play_into_mic` plays (`paplay --device=mic`) comes out of its
  monitor source `mic.monitor`, the microphone.
- sink `speaker` (44.1 kHz mono): where the program plays; `record_speaker` records its monitor
  (`parecord --device=speaker.monitor`).
- Both null sinks are loaded with `norewinds=1`. With rewinds, a low-latency client such as
  PortAudio (40 ms) underruns, the sink rewinds at each underrun and loses time: playback crawled
  at ~40 % of real time (1.2 s consumed in 3 s). Without, it is real time.
- PortAudio, through ALSA's `pulse` plugin, lists only `pulse` and `default` by itself. The rig
  writes an ALSA config with named devices: `wakertc_mic` (-> `mic.monitor`, `rig.input_device`),
  `wakertc_speaker` (-> `speaker`, `rig.output_device`) and `wakertc_loopback` (->
  `speaker.monitor`, `rig.loopback_device`: captures what the program plays, e.g. to time a
  click's round trip; ~65-80 ms with no conversions, PulseAudio's buffering included). It also
  makes `speaker` and `mic.monitor` the server's defaults, so `pulse`/`default` reach the rig.
  Every ALSA pulse device claims 32 channels at 44.1 kHz; `audio_config()` asks for the sinks'
  real formats (48 kHz x 2 in, 44.1 kHz x 1 out) so the conversions are exercised.
- What points clients at it (`rig.env_vars`): `PULSE_SERVER` (libpulse: PyAudio's ALSA plugin,
  paplay, parecord, pactl) and `XDG_CONFIG_HOME` (ALSA reads `$XDG_CONFIG_HOME/alsa/asoundrc`, and
  re-reads its config when that changes, so setting it after PyAudio was first used works);
  `PULSE_RUNTIME_PATH` and `XDG_RUNTIME_DIR` are set too. The fixture puts them in `os.environ` for
  the test's duration; `rig.env` is a complete environment for subprocesses.

Each test gets a fresh server (it starts in ~20 ms). The fixture skips, saying why, only when the
server cannot start (no `pulseaudio`, or it fails). As root PulseAudio warns; that is harmless.
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
# The `[audio]` keys that say which devices to open and how.
AUDIO_TABLE_KEYS = (
    "backend",
    "input_device",
    "output_device",
    "input_rate",
    "input_channels",
    "input_channel",
    "output_rate",
    "output_channels",
)
LOOPBACK_DEVICE = "wakertc_loopback"  # captures what the speaker plays (latency measurements)


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
    loopback_device: str = LOOPBACK_DEVICE
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

    def audio_table(self, **overrides: Any) -> dict[str, Any]:
        """`audio_config()` as the device config's `[audio]` table (for `run_chain`'s `device`)."""
        config = self.audio_config(**overrides)
        table = {name: getattr(config, name) for name in AUDIO_TABLE_KEYS}
        return {k: v for k, v in table.items() if v is not None}

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
pcm.{loopback} {{
    type pulse
    device "speaker.monitor"
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
        _ASOUNDRC.format(
            input=INPUT_DEVICE, output=OUTPUT_DEVICE, loopback=LOOPBACK_DEVICE, socket=socket
        )
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
