"""The config loader: valid files, every kind of invalid file, and `wakertc check-config`."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pulse import PulseRig, pulse_rig  # noqa: F401  (fixture)
from wakertc.cli import main
from wakertc.config import (
    DEFAULT_PATTERNS,
    Config,
    ConfigError,
    SessionConfig,
    config_path,
    load_config,
    read_token,
)

ROOT = Path(__file__).resolve().parent.parent


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value).splitlines()


def test_empty_file_gives_documented_defaults(write_config):
    config = load_config(write_config(""))
    assert config.audio.backend == "pyaudio"
    assert [w.name for w in config.wake.words] == ["hey_jarvis"]
    assert config.wake.words[0].threshold == 0.5
    assert config.session.reply_timeout_s == 15.0
    assert config.leds.patterns == DEFAULT_PATTERNS


def test_full_valid_file(write_config, tmp_path):
    (tmp_path / "in.wav").write_bytes(b"")
    path = write_config(
        """
[audio]
backend = "file"
input_file = "in.wav"
output_volume = 0.5
input_device = 2
[wake]
models_dir = "models"
[[wake.words]]
name = "hey_jarvis"
threshold = 0.4
[[wake.words]]
name = "custom"
model = "/opt/custom.tflite"
refractory_s = 1
[leds]
kind = "rgb"
pins = [5, 6, 13]
[leds.patterns.listening]
color = "#00ff00"
[[tools]]
name = "get_time"
description = "time"
command = ["date"]
"""
    )
    config = load_config(path)
    assert config.audio.input_file == tmp_path / "in.wav"  # relative to the config file
    assert config.audio.input_device == 2
    assert config.wake.models_dir == tmp_path / "models"
    assert [w.threshold for w in config.wake.words] == [0.4, 0.5]
    assert config.wake.words[1].model_path(config.wake.models_dir) == Path("/opt/custom.tflite")
    assert config.wake.words[0].model_path(config.wake.models_dir) == (
        tmp_path / "models" / "hey_jarvis_v0.1.tflite"
    )
    assert config.wake.words[1].refractory_s == 1.0  # an integer is accepted for a float
    # one overridden phase, the others keep their defaults
    assert config.leds.patterns["listening"].color == "#00ff00"
    assert config.leds.patterns["idle"] == DEFAULT_PATTERNS["idle"]
    assert config.tools[0].command == ("date",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[audio]\nvolum = 3\n", r"audio\.volum = 3: a known key \(backend, "),
        ("[audoi]\n", r"audoi = \{\}: a known key"),
        ('[audio]\ninput_rate = "fast"\n', r"audio\.input_rate = 'fast': an integer"),
        ('[audio]\nbackend = "alsa"\n', r"audio\.backend = 'alsa': one of 'pyaudio', 'file'"),
        ("[audio]\noutput_volume = 5.0\n", r"audio\.output_volume = 5\.0: a number from 0\.0 to 2"),
        ("[audio]\ninput_rate = -1\n", r"audio\.input_rate = -1: zero or a positive integer"),
        ("[audio]\noutput_buffer_ms = 0\n", r"audio\.output_buffer_ms = 0: a number from 20 to"),
        ("[audio]\noutput_buffer_ms = 5000\n", r"audio\.output_buffer_ms = 5000: a number from"),
        ("[audio]\noutput_buffer_ms = 40.5\n", r"audio\.output_buffer_ms = 40\.5: an integer"),
        ('[audio]\nbackend = "file"\n', r"audio\.input_file = \(missing\): a WAV file"),
        (
            "[audio]\ninput_channels = 2\ninput_channel = 2\n",
            r"audio\.input_channel = 2: a channel",
        ),
        ("[[wake.words]]\nthreshold = 1.5\n", r"wake\.words\[0\]\.threshold = 1\.5: a score"),
        ("[wake]\nwords = []\n", r"wake\.words = \[\]: at least one wake word"),
        ("[[wake.words]]\nname='a'\n[[wake.words]]\nname='a'\n", r"wake\.words\[1\]\.name = 'a'"),
        ("[wake]\nwords = 3\n", r"wake\.words = 3: a list of a table"),
        ('[leds]\nkind = "rgb"\npins = [1]\n', r"leds\.pins = \[1\]: 3 pin\(s\) for kind 'rgb'"),
        ('[leds.patterns.sleeping]\neffect = "solid"\n', r"leds\.patterns\.sleeping = 'sleeping'"),
        ('[leds.patterns.idle]\ncolor = "blue"\n', r"leds\.patterns\.idle\.color = 'blue'"),
        ("[button]\nlong_press_s = 0\n", r"button\.long_press_s = 0\.0: a positive number"),
        ("[button]\npull_up = 1\n", r"button\.pull_up = 1: true or false"),
        ("[session]\nurl = 'api.openai.com'\n", r"session\.url = 'api\.openai\.com': an http"),
        # URLs that once passed and then failed in every conversation (httpx.InvalidURL,
        # "missing protocol", a name with a space) or at every mint.
        ("[session]\nurl = 'http://[::1'\n", r"session\.url = 'http://\[::1': an http.*IPv6"),
        ("[session]\nurl = 'https://'\n", r"session\.url = 'https://': an http.*host"),
        ("[session]\nurl = 'http://exa mple.com'\n", r"session\.url = .*no spaces"),
        ("[session]\nurl = 'http://h:99999'\n", r"session\.url = 'http://h:99999': .*range"),
        ("[session]\nurl = 'http://h/?a=1'\n", r"session\.url = .*no query"),
        ("[companion]\nurl = 'http://:8780'\n", r"companion\.url = 'http://:8780': .*host"),
        ("[companion]\nurl = 'ftp://h'\n", r"companion\.url = 'ftp://h': .*scheme"),
        (
            "[session]\nice_servers = ['stun:stun.l.google.com:19302', 'stun.example.org']\n",
            r"session\.ice_servers\[1\] = 'stun\.example\.org': a STUN/TURN URL",
        ),
        (
            "[session]\nice_servers = ['stun:h:70000']\n",
            r"session\.ice_servers\[0\] = 'stun:h:70000': .*1 to 65535",
        ),
        (
            "[session]\nice_servers = ['stun:h?transport=udp']\n",
            r"session\.ice_servers\[0\] = .*only for TURN",
        ),
        ("[[tools]]\nname = 'x'\n", r"tools\[0\] = 'x': exactly one of 'command' or 'url'"),
        ("[session]\nreply_timeout_s = 0\n", r"session\.reply_timeout_s = 0\.0: a positive"),
        (
            "[[tools]]\nname = 'end_conversation'\ncommand = ['true']\n",
            r"tools\[0\]\.name = 'end_conversation': a name not already in use",
        ),
        ("[hook]\ncommand = 'notify'\n", r"hook\.command = 'notify': a list of a string"),
        ("audio = [\n", r"\(file\) = .*: not valid TOML"),
    ],
)
def test_each_kind_of_invalid_value_names_file_key_value_and_expectation(
    write_config, text, expected
):
    path = write_config(text)
    lines = problems_of(path)
    assert any(re.search(expected, line) for line in lines), lines
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_good_urls_pass(write_config, token_file):
    config = load_config(
        write_config(
            f"[companion]\ntoken_file = '{token_file}'\nurl = 'https://[fe80::1%25eth0]:8443/'\n"
            "[session]\nurl = 'http://192.168.1.20:8765/base'\n"
            "ice_servers = ['stun:stun.l.google.com:19302', 'turn:[2001:db8::1]?transport=tcp']\n"
        )
    )
    assert config.session.ice_servers[1] == "turn:[2001:db8::1]?transport=tcp"


def test_every_problem_is_reported_at_once(write_config):
    lines = problems_of(write_config("[audio]\nvolum = 3\ninput_rate = 'x'\n[wake]\nfoo = 1\n"))
    assert len(lines) == 3


def test_missing_file(tmp_path):
    assert problems_of(tmp_path / "nope.toml") == [
        f"{tmp_path / 'nope.toml'}: (file) = '{tmp_path / 'nope.toml'}': file not found"
    ]


def test_token_file_readable_by_others_is_refused(write_config, token_file):
    token_file.chmod(0o644)
    lines = problems_of(write_config(""))
    assert lines == [
        f"{token_file.parent / 'wakertc.toml'}: companion.token_file = '{token_file}': "
        f"a file not readable by others (chmod 600 {token_file})"
    ]


def test_missing_token_file_says_how_to_make_one(write_config, tmp_path):
    lines = problems_of(write_config(f'[companion]\ntoken_file = "{tmp_path}/none"\n'))
    assert "wakertc companion add-device" in lines[0]


def test_inline_token_needs_a_private_config(write_config):
    text = '[companion]\ntoken = "s3cret-token-value"\n'
    lines = problems_of(write_config(text, mode=0o644))
    assert "no token in a file readable by others" in lines[0]
    assert "s3cret" not in "\n".join(lines)  # the secret itself is never echoed
    config = load_config(write_config(text, mode=0o600))
    assert read_token(config.companion) == "s3cret-token-value"


def test_token_read_from_file(write_config):
    assert read_token(load_config(write_config("")).companion) == "device-token-for-tests"


def test_config_path_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("WAKERTC_CONFIG", raising=False)
    assert config_path(None) == Path("/etc/wakertc/wakertc.toml")
    monkeypatch.setenv("WAKERTC_CONFIG", str(tmp_path / "env.toml"))
    assert config_path(None) == tmp_path / "env.toml"
    assert config_path(str(tmp_path / "cli.toml")) == tmp_path / "cli.toml"


def _all_keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.name != "source"}


def test_example_config_documents_every_key_and_is_valid(tmp_path, token_file):
    text = (ROOT / "config" / "wakertc.toml").read_text()
    import wakertc.config as c

    sections = {
        "audio": c.AudioConfig,
        "wake": c.WakeConfig,
        "wake.words": c.WakeWordConfig,
        "button": c.ButtonConfig,
        "leds": c.LedsConfig,
        "sounds": c.SoundsConfig,
        "hook": c.HookConfig,
        "companion": c.CompanionConfig,
        "session": c.SessionConfig,
        "tools": c.ToolConfig,
        "state": c.StateConfig,
        "timers": c.TimersConfig,
        "mqtt": c.MqttConfig,
        "log": c.LogConfig,
    }
    for section, cls in sections.items():
        for key in _all_keys(cls):
            if key in {"words", "patterns"}:
                continue
            assert re.search(rf"^#? ?{key} = ", text, re.M), f"{section}.{key} undocumented"
    for phase in DEFAULT_PATTERNS:
        assert f"[leds.patterns.{phase}]" in text
    # The example itself is valid (given a token file where it expects one).
    copy = tmp_path / "wakertc.toml"
    copy.write_text(text.replace("[companion]", f'[companion]\ntoken_file = "{token_file}"', 1))
    config = load_config(copy)
    defaults = Config()
    expected = dataclasses.replace(
        defaults,
        source=copy,
        companion=dataclasses.replace(defaults.companion, token_file=token_file),
    )
    assert config == expected  # the example changes nothing: it states the defaults


def test_check_config_command(write_config, capsys):
    good = write_config("")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert f"{good}: OK" in out and "hey_jarvis" in out
    bad = write_config("[audio]\nvolum = 1\n[session]\nmode = 'chat'\n", name="bad.toml")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"{bad}: ") for line in err)


def test_check_config_as_a_process_uses_the_env_variable(write_config):
    path = write_config("[log]\nlevel = 'loud'\n")
    result = subprocess.run(
        [sys.executable, "-m", "wakertc.cli", "check-config"],
        env={"WAKERTC_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{path}: log.level = 'loud': one of 'debug', 'info', 'warning', 'error'"
    )


# -- check-config and the audio devices here ---------------------------------------------------

# Devices a Pi has beside its microphone, on the private PulseAudio server: an output that cannot
# capture (like HDMI or the headphone jack) and an input that cannot play.
PI_LIKE_DEVICES = """
pcm.wakertc_hdmi {
    type asym
    playback.pcm "wakertc_speaker"
}
pcm.wakertc_capture_only {
    type asym
    capture.pcm "wakertc_mic"
}
"""


def check_config_process(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`wakertc check-config PATH` as a process, with `env` (its audio devices) as given."""
    source = os.pathsep.join(filter(None, [str(ROOT / "daemon"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "wakertc.cli", "check-config", str(path)],
        env={**env, "PYTHONPATH": source},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def pi_like_rig(pulse_rig: PulseRig) -> PulseRig:  # noqa: F811
    """The PulseAudio rig plus ALSA devices that only play or only capture."""
    asoundrc = Path(pulse_rig.env_vars["XDG_CONFIG_HOME"]) / "alsa" / "asoundrc"
    asoundrc.write_text(asoundrc.read_text() + PI_LIKE_DEVICES)
    return pulse_rig


@pytest.mark.pulse
def test_check_config_reports_devices_that_cannot_capture_or_play_with_the_alternatives(
    write_config, pi_like_rig: PulseRig
):
    path = write_config("[audio]\ninput_device = 'hdmi'\noutput_device = 'capture_only'\n")
    result = check_config_process(path, pi_like_rig.env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    capture, play = result.stderr.splitlines()
    assert capture.startswith(f"{path}: audio.input_device = 'hdmi' is [")
    assert "] wakertc_hdmi (0 ch, " in capture and "), which cannot capture (no input" in capture
    assert "devices that can capture: " in capture and f"] {pi_like_rig.input_device} (" in capture
    assert "wakertc_hdmi" not in capture.split("devices that can capture: ")[1]
    assert play.startswith(f"{path}: audio.output_device = 'capture_only' is [")
    assert "which cannot play (no output channels)" in play
    assert "devices that can play: " in play and f"] {pi_like_rig.output_device} (" in play


@pytest.mark.pulse
def test_check_config_warns_of_a_device_not_there_now_and_passes_a_good_one(
    write_config, pi_like_rig: PulseRig
):
    """A microphone not plugged in is a warning (the daemon waits for it), not an error."""
    path = write_config("[audio]\ninput_device = 'USB PnP'\n")
    result = check_config_process(path, pi_like_rig.env)
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"{path}: OK\n")
    (warning,) = result.stderr.splitlines()
    assert warning.startswith(f"{path}: warning: audio.input_device = 'USB PnP': no device's ")
    assert f"] {pi_like_rig.input_device} (" in warning and "the daemon" in warning
    good = write_config(
        f"[audio]\ninput_device = '{pi_like_rig.input_device}'\n"
        f"output_device = '{pi_like_rig.output_device}'\n",
        name="good.toml",
    )
    result = check_config_process(good, pi_like_rig.env)
    assert (result.returncode, result.stderr) == (0, ""), result
    assert result.stdout.startswith(f"{good}: OK\n")


@pytest.mark.skipif(Path("/dev/snd").exists(), reason="this machine has sound cards")
def test_check_config_without_any_audio_devices_says_it_could_not_check_them(
    write_config, tmp_path
):
    """A build machine: no sound card and no audio server. The config is still checked."""
    path = write_config("[audio]\ninput_device = 'USB'\n")
    (tmp_path / "empty-config").mkdir()
    env = {"PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(tmp_path / "empty-config")}
    result = check_config_process(path, env)
    assert result.returncode == 0, result
    assert result.stdout.startswith(f"{path}: OK\n")
    assert result.stderr == (
        f"{path}: warning: audio devices not checked: PortAudio lists none here (no sound card "
        "or audio server, or this user is not in the `audio` group); check again on the device\n"
    )
    bad = write_config("[audio]\ninput_device = 'USB'\nvolume = 2\n", name="bad.toml")
    assert check_config_process(bad, env).returncode == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[session]\nmax_session_s = 3601\n",
            r"session\.max_session_s = 3601\.0: at most 3600 seconds",
        ),
    ],
)
def test_values_the_service_refuses_are_refused_at_load(write_config, text, expected):
    lines = problems_of(write_config(text))
    assert any(re.search(expected, line) for line in lines), lines


def test_values_at_the_service_limits_load(write_config):
    load_config(write_config("[session]\nmax_session_s = 3600\n"))


def test_session_api_is_realtime_or_live(write_config):
    assert load_config(write_config("")).session.api == "realtime"
    assert load_config(write_config('[session]\napi = "live"\n')).session.api == "live"
    (line,) = problems_of(write_config('[session]\napi = "gpt-live"\n'))
    assert "session.api = 'gpt-live'" in line
    (line,) = problems_of(write_config('[session]\napi = "live"\nmode = "transcription"\n'))
    assert "session.mode" in line and "api = 'live'" in line


def test_keys_the_companion_now_owns_are_ignored_with_a_warning(write_config, tmp_path: Path):
    """A config written for an earlier version sets turn detection and noise reduction on the
    device: they are the companion's policy now. The file still loads (an upgrade must not leave
    a working device unable to start), each such key is named with where it lives now, and a
    typo beside them is still an error."""
    path = write_config(
        "[session]\nturn_detection = 'none'\nnoise_reduction = 'near_field'\nvad_threshold = 0.6\n"
    )
    config = load_config(path)
    assert config.session == SessionConfig()
    assert len(config.warnings) == 3
    detection = next(w for w in config.warnings if "session.turn_detection" in w)
    assert detection == (
        f"{path}: session.turn_detection = 'none': ignored: the companion's policy sets it "
        "([session.turn_detection] type in its config); remove it here"
    )
    assert any("session.noise_reduction = 'near_field'" in w for w in config.warnings)
    result = subprocess.run(
        [sys.executable, "-m", "wakertc.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemon")},
        check=False,
    )
    assert result.returncode == 0, result
    assert f"{path}: warning: session.turn_detection = 'none': ignored" in result.stderr
    with pytest.raises(ConfigError, match=r"session\.turn_detectoin = 'none': a known key"):
        load_config(write_config("[session]\nturn_detectoin = 'none'\n", name="typo.toml"))
