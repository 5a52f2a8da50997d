"""The config loader: valid files, every kind of invalid file, and `wakertc check-config`."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wakertc.cli import main
from wakertc.config import (
    DEFAULT_PATTERNS,
    Config,
    ConfigError,
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
    assert config.session.turn_detection == "server_vad"
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
        ("[[tools]]\nname = 'x'\n", r"tools\[0\] = 'x': exactly one of 'command' or 'url'"),
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
