"""Choosing audio devices: what the config's names mean, and the installer's first microphone.

The device lists are what PortAudio reports on a Raspberry Pi OS Lite machine (ALSA only): the
headphone jack and HDMI, which cannot capture, the ALSA plugin devices, and a USB microphone when
one is plugged in. The same functions run on real devices in tests/test_config.py (check-config)
and tests/test_install.py (the installer), through a private PulseAudio server.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from wakertc.devices import (
    AudioDeviceError,
    DeviceInfo,
    DeviceMissing,
    choose_input,
    find_device,
    write_input_device,
)

ROOT = Path(__file__).resolve().parent.parent


def device(index: int, name: str, inputs: int, outputs: int, **flags: bool) -> DeviceInfo:
    return DeviceInfo(index, name, "ALSA", inputs, outputs, 48000.0, **flags)


HEADPHONES = device(0, "bcm2835 Headphones: - (hw:0,0)", 0, 8)
HDMI = device(1, "vc4-hdmi-0: MAI PCM i2s-hifi-0 (hw:1,0)", 0, 2)
USB_MIC = device(2, "USB PnP Sound Device: Audio (hw:2,0)", 1, 0, default_input=True)
SYSDEFAULT = device(3, "sysdefault", 0, 128)
DMIX = device(4, "dmix", 0, 2)
DEFAULT = device(5, "default", 0, 128, default_output=True)
PI_LITE = [HEADPHONES, HDMI, SYSDEFAULT, DMIX, DEFAULT]  # nothing plugged in
PI_LITE_USB = [HEADPHONES, HDMI, USB_MIC, SYSDEFAULT, DMIX, DEFAULT]


def test_an_output_chosen_as_input_is_an_error_naming_the_devices_that_can_capture() -> None:
    for spec in ("hdmi", 1, "Headphones"):
        with pytest.raises(AudioDeviceError) as caught:
            find_device(PI_LITE_USB, spec, "input")
        assert not isinstance(caught.value, DeviceMissing)
        message = str(caught.value)
        assert message.startswith(f"audio.input_device = {spec!r} is [")
        assert "which cannot capture (no input channels" in message
        assert "devices that can capture: [2] USB PnP Sound Device: Audio (hw:2,0)" in message


def test_a_device_not_there_now_is_missing_not_wrong() -> None:
    with pytest.raises(DeviceMissing) as default:
        find_device(PI_LITE, "", "input")
    message = str(default.value)
    assert "there is no default input device, and nothing here can capture" in message
    assert "devices that can capture: none (no microphone plugged in?)" in message
    with pytest.raises(DeviceMissing, match="no device's name contains it now"):
        find_device(PI_LITE, "USB PnP", "input")
    with pytest.raises(DeviceMissing, match="no input device has that index now"):
        find_device(PI_LITE, 7, "input")
    assert find_device(PI_LITE_USB, "USB PnP", "input") is USB_MIC
    assert find_device(PI_LITE_USB, "", "input") is USB_MIC


def test_a_microphone_chosen_as_output_cannot_play() -> None:
    with pytest.raises(AudioDeviceError, match=r"'USB' is .*, which cannot play") as caught:
        find_device(PI_LITE_USB, "USB", "output")
    assert "devices that can play: [0] bcm2835 Headphones" in str(caught.value)


def test_the_first_microphone_is_a_sound_card_named_without_its_card_number() -> None:
    assert choose_input(PI_LITE) is None
    assert choose_input(PI_LITE_USB) == "USB PnP Sound Device: Audio"
    # A sound server's device listed first does not win over the card: the service cannot
    # reach a desktop session's server.
    pulse = device(9, "pulse", 32, 32)
    assert choose_input([pulse, *PI_LITE_USB]) == "USB PnP Sound Device: Audio"
    assert choose_input([*PI_LITE, pulse]) == "pulse"
    # Two identical microphones: only the full name (with its card) tells them apart.
    twin = device(6, "USB PnP Sound Device: Audio (hw:3,0)", 1, 0)
    assert choose_input([*PI_LITE_USB, twin]) == USB_MIC.name


def test_writing_the_microphone_into_the_example_config(tmp_path: Path) -> None:
    """The example config's commented default is replaced; nothing else changes; the file keeps
    its mode; a second run keeps what the first wrote."""
    path = tmp_path / "wakertc.toml"
    example = (ROOT / "config/wakertc.toml").read_text()
    path.write_text(example)
    path.chmod(0o640)
    said = write_input_device(path, PI_LITE_USB)
    assert said == f"set audio.input_device = 'USB PnP Sound Device: Audio' in {path}"
    text = path.read_text()
    assert tomllib.loads(text)["audio"]["input_device"] == "USB PnP Sound Device: Audio"
    assert (
        text.replace(
            'input_device = "USB PnP Sound Device: Audio"  # the first microphone found at install',
            '# input_device = ""',
        )
        == example
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [p for p in os.listdir(tmp_path) if p != "wakertc.toml"]  # no temp file left
    again = write_input_device(path, [device(0, "other mic (hw:4,0)", 2, 0), *PI_LITE_USB])
    assert again == f"keeping audio.input_device = 'USB PnP Sound Device: Audio' in {path}"
    assert path.read_text() == text


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("[log]\nlevel = 'info'\n", "[log]\nlevel = 'info'\n\n[audio]\ninput_device = \"mic\""),
        ("[audio]\nbackend = 'pyaudio'\n", '[audio]\ninput_device = "mic"'),
        ("", '\n[audio]\ninput_device = "mic"'),
    ],
)
def test_writing_the_microphone_into_other_configs(tmp_path: Path, before: str, after: str) -> None:
    path = tmp_path / "wakertc.toml"
    path.write_text(before)
    write_input_device(path, [device(0, "mic", 1, 0)])
    assert path.read_text().startswith(after)
    assert tomllib.loads(path.read_text())["audio"]["input_device"] == "mic"


def test_a_users_choice_and_other_backends_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "wakertc.toml"
    for text, said in [
        ("[audio]\ninput_device = 3\n", "keeping audio.input_device = 3"),
        ("[audio]\nbackend = 'file'\ninput_file = 'a.wav'\n", "uses the 'file' audio backend"),
    ]:
        path.write_text(text)
        assert said in write_input_device(path, PI_LITE_USB)
        assert path.read_text() == text
    path.write_text("[audio]\n")
    assert "no device can capture now" in write_input_device(path, PI_LITE)
    assert path.read_text() == "[audio]\n"
    path.write_text("[audio\n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        write_input_device(path, PI_LITE_USB)


@pytest.mark.skipif(os.geteuid() != 0, reason="keeping another owner needs root")
def test_write_input_keeps_owner_and_follows_no_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    path = conf / "wakertc.toml"
    path.write_text("[audio]\n")
    path.chmod(0o640)
    os.chown(path, 0, 4322)
    for pid in range(os.getpid() - 50, os.getpid() + 50):
        (conf / f".wakertc.toml.{pid}.tmp").symlink_to(victim)
    write_input_device(path, PI_LITE_USB)
    assert "input_device" in path.read_text()
    assert victim.read_text() == "untouched\n"
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 4322)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
