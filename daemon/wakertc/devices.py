"""Which audio devices exist, which can capture or play, and which ones the config means.

PortAudio's view of the machine, for the PyAudio backend (`audio.py`, which opens what
`find_device` resolves), `wakertc check-config` (can the chosen devices work here?), `wakertc
devices` (the listing) and the installer (`wakertc devices --write-input CONFIG`: the first
microphone into a config that names none).

What Raspberry Pi OS Lite offers out of the box is two outputs that cannot capture, HDMI and the
headphone jack; a USB microphone often appears seconds after boot. So a device that is not there
now (`DeviceMissing`) may yet come (the daemon waits for it, check-config warns), while a device
that is there and cannot do the job (an output chosen as input, an ambiguous name) is a mistake in
the config. Errors::

    AudioDeviceError        a device (or WAV file) cannot be found, opened or kept running
     └── DeviceMissing      not there now (not found, no default, unplugged): it may appear later
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .atomic import write_atomic

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]
_VERB = {"input": "capture", "output": "play"}


class AudioDeviceError(Exception):
    """An audio device (or WAV file standing in for one) cannot be found, opened or kept running."""


class DeviceMissing(AudioDeviceError):
    """The device is not there now (not found, no default, unplugged); it may appear later."""


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device, as `wakertc devices` lists it."""

    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_rate: float
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Kind) -> int:
        """How many channels it offers for `kind`."""
        return self.max_input_channels if kind == "input" else self.max_output_channels

    def is_default(self, kind: Kind) -> bool:
        """Whether it is the system's default for `kind`."""
        return self.default_input if kind == "input" else self.default_output

    def describe(self, kind: Kind) -> str:
        """`[3] USB Audio (2 ch, 48000 Hz)`, the form used in listings and errors."""
        return f"[{self.index}] {self.name} ({self.channels(kind)} ch, {self.default_rate:.0f} Hz)"


# --- PortAudio ------------------------------------------------------------------------------------


@contextlib.contextmanager
def native_stderr_to_debug_log(what: str) -> Iterator[None]:
    """Route C-level stderr to the debug log for a moment.

    PortAudio probing ALSA and JACK prints dozens of harmless lines straight to fd 2 (missing
    cards, no JACK server); under systemd they would bury the journal. Only used around
    PortAudio start-up and stream opening.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.debug("%s: native library messages:\n%s", what, text)


def pyaudio_module() -> Any:
    """The pyaudio module, imported only when real devices are used."""
    try:
        import pyaudio
    except ImportError as exc:
        raise AudioDeviceError(f"PyAudio is not available ({exc}); install portaudio19") from exc
    return pyaudio


def portaudio() -> Any:
    """A started PyAudio instance (call `terminate()` when done)."""
    pyaudio = pyaudio_module()
    with native_stderr_to_debug_log("PortAudio start-up"):
        return pyaudio.PyAudio()


def enumerate_devices(pa: Any) -> list[DeviceInfo]:
    """Every device a started PyAudio instance knows, in PortAudio's order."""

    def default_index(getter: Callable[[], dict[str, Any]]) -> int:
        try:
            return int(getter()["index"])
        except OSError:  # PortAudio's way of saying "there is none"
            return -1

    default_in = default_index(pa.get_default_input_device_info)
    default_out = default_index(pa.get_default_output_device_info)
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        devices.append(
            DeviceInfo(
                index=i,
                name=str(info["name"]),
                host_api=str(pa.get_host_api_info_by_index(info["hostApi"])["name"]),
                max_input_channels=int(info["maxInputChannels"]),
                max_output_channels=int(info["maxOutputChannels"]),
                default_rate=float(info["defaultSampleRate"]),
                default_input=i == default_in,
                default_output=i == default_out,
            )
        )
    return devices


def list_devices() -> list[DeviceInfo]:
    """Every PortAudio device, inputs and outputs alike."""
    pa = portaudio()
    try:
        return enumerate_devices(pa)
    finally:
        pa.terminate()


# --- which device the config means ------------------------------------------------------------


def _able(devices: Sequence[DeviceInfo], kind: Kind) -> list[DeviceInfo]:
    return [d for d in devices if d.channels(kind) > 0]


def _alternatives(devices: Sequence[DeviceInfo], kind: Kind) -> str:
    """`devices that can capture: [1] ...; set audio.input_device to ...`, for every message."""
    able = _able(devices, kind)
    if able:
        listing = "; ".join(d.describe(kind) for d in able)
    else:
        listing = "none" + (" (no microphone plugged in?)" if kind == "input" else "")
    return (
        f"devices that can {_VERB[kind]}: {listing}. Set audio.{kind}_device to an index or, "
        "steadier across reboots and plugging, a unique part of a name (see `wakertc devices`)"
    )


def find_device(devices: Sequence[DeviceInfo], spec: str | int, kind: Kind) -> DeviceInfo:
    """The device `spec` (index, name substring, or "" for the default) names for `kind`.

    Raises `DeviceMissing` when nothing matches now, `AudioDeviceError` when what matches cannot
    do `kind` or `spec` is ambiguous; both messages name the key, the value and the devices that
    can.
    """
    key = f"audio.{kind}_device = {spec!r}"
    verb = _VERB[kind]
    hint = _alternatives(devices, kind)
    able = _able(devices, kind)
    if spec == "":
        found = [d for d in able if d.is_default(kind)]
        if not found:
            nothing = f", and nothing here can {verb}" if not able else ""
            raise DeviceMissing(
                f"{key} (the default): there is no default {kind} device{nothing}; {hint}"
            )
        return found[0]
    if isinstance(spec, int):
        matches = [d for d in devices if d.index == spec]
        if not matches:
            raise DeviceMissing(f"{key}: no {kind} device has that index now; {hint}")
    else:
        needle = spec.lower()
        matches = [d for d in devices if needle in d.name.lower()]
        if not matches:
            raise DeviceMissing(f"{key}: no device's name contains it now; {hint}")
    usable = [d for d in matches if d.channels(kind) > 0]
    if not usable:
        named = ", ".join(d.describe(kind) for d in matches)
        raise AudioDeviceError(
            f"{key} is {named}, which cannot {verb} (no {kind} channels"
            + (": an output such as HDMI or a headphone jack" if kind == "input" else "")
            + f"); {hint}"
        )
    exact = [d for d in usable if d.name.lower() == str(spec).lower()]
    if len(exact) == 1 or len(usable) == 1:
        return (exact or usable)[0]
    names = ", ".join(d.describe(kind) for d in usable)
    raise AudioDeviceError(f"{key} is ambiguous: it matches {names}; {hint}")


def choose_input(devices: Sequence[DeviceInfo]) -> str | None:
    """What to write into `audio.input_device` for the first device that can capture, or None.

    A sound card's own device (ALSA `hw:`) comes first: on a Pi that is the USB microphone, while
    sound-server devices (pulse, pipewire) belong to a desktop session the service cannot reach.
    The name is written without its `(hw:N,M)`, which changes when cards are plugged in another
    order, unless that leaves it ambiguous.
    """
    able = _able(devices, "input")
    hardware = [d for d in able if re.search(r"\(hw:\d+,\d+\)$", d.name)]
    if not able:
        return None
    device = (hardware or able)[0]
    short = re.sub(r"\s*\(hw:\d+,\d+\)$", "", device.name)
    same = [d for d in able if short.lower() in d.name.lower()]
    return short if short and same == [device] else device.name


# --- the installer's choice --------------------------------------------------------------------


def write_input_device(path: Path, devices: Sequence[DeviceInfo]) -> str:
    """Set `[audio] input_device` in the config at `path` unless it is set; what was done.

    The file is edited as text (comments and layout kept): the commented-out default line of the
    example config is replaced, or the key goes right under `[audio]`, or a new `[audio]` table is
    appended. Written atomically with the file's mode and owner.
    """
    text = path.read_text(encoding="utf-8")
    try:
        audio = tomllib.loads(text).get("audio", {})
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML ({exc}); not changed") from exc
    if isinstance(audio, dict) and "input_device" in audio:
        return f"keeping audio.input_device = {audio['input_device']!r} in {path}"
    if isinstance(audio, dict) and audio.get("backend", "pyaudio") != "pyaudio":
        return f"{path} uses the {audio['backend']!r} audio backend: no device to choose"
    choice = choose_input(devices)
    if choice is None:
        return (
            f"no device can capture now: {path} keeps the default input; plug in a microphone, "
            "then set [audio] input_device (see `wakertc devices`)"
        )
    line = f"input_device = {json.dumps(choice)}  # the first microphone found at install"
    edited = _with_input_device(text, line)
    parsed = tomllib.loads(edited) if edited is not None else {}
    if parsed.get("audio", {}).get("input_device") != choice:
        raise ValueError(f"cannot add input_device to {path}'s [audio] table; set it by hand")
    _replace_file(path, edited or "")
    return f"set audio.input_device = {choice!r} in {path}"


def _with_input_device(text: str, line: str) -> str | None:
    lines = text.splitlines(keepends=True)
    header = next((i for i, s in enumerate(lines) if re.match(r"\s*\[audio\]\s*(#.*)?$", s)), None)
    if header is None:
        return text + ("" if text.endswith("\n") or not text else "\n") + f"\n[audio]\n{line}\n"
    end = next(
        (i for i in range(header + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines)
    )
    for i in range(header + 1, end):
        if re.match(r"\s*#\s*input_device\s*=", lines[i]):
            lines[i] = line + "\n"
            return "".join(lines)
    lines.insert(header + 1, line + "\n")
    return "".join(lines)


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, keeping its mode and owner (root:wakertc, 0640)."""
    st = path.stat()
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    write_atomic(path, text, st.st_mode & 0o7777, owner)


# --- `wakertc devices` ---------------------------------------------------------------------------


def devices_main(argv: list[str]) -> int:
    """`wakertc devices`: list inputs and outputs with index, name, channels and default rate."""
    parser = argparse.ArgumentParser(
        prog="wakertc devices",
        description="List audio inputs and outputs; set audio.input_device / audio.output_device "
        "to an index or a unique part of a name.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per device")
    parser.add_argument(
        "--write-input",
        metavar="CONFIG",
        type=Path,
        help="set [audio] input_device in CONFIG to the first device that can capture, "
        "unless CONFIG sets it already (used by install-pi.sh)",
    )
    args = parser.parse_args(argv)
    try:
        devices = list_devices()
    except AudioDeviceError as exc:
        print(f"wakertc devices: {exc}", file=sys.stderr)
        return 1
    if args.write_input is not None:
        try:
            print(write_input_device(args.write_input, devices))
        except (OSError, ValueError) as exc:
            print(f"wakertc devices: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.json:
        for device in devices:
            print(json.dumps(asdict(device)))
        return 0
    sections: tuple[tuple[Kind, str], ...] = (("input", "Inputs"), ("output", "Outputs"))
    for kind, title in sections:
        print(f"{title}:")
        shown = _able(devices, kind)
        for d in shown:
            mark = "*" if d.is_default(kind) else " "
            print(
                f" {mark}{d.index:3d}  {d.name}  ({d.channels(kind)} ch, "
                f"{d.default_rate:.0f} Hz, {d.host_api})"
            )
        if not shown:
            print("  (none)")
    print("* = default")
    if not devices:
        print(
            "no audio devices found: is the sound card's driver loaded (`aplay -l`), and is this "
            "user in the `audio` group?",
            file=sys.stderr,
        )
    return 0
