"""The companion's config file: the commented example, defaults, and one-line errors that name
the file, the key and what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wakertc.companion import (
    CompanionConfig,
    CompanionConfigError,
    SessionPolicy,
    load_companion_config,
    read_api_key,
)
from wakertc.emulator.session import create_session

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "companion.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "companion.toml"
    path.write_text(text)
    return path


def test_example_file_states_the_defaults(tmp_path: Path) -> None:
    example = load_companion_config(EXAMPLE)
    empty = load_companion_config(write(tmp_path, ""))
    # The devices file is in the service's state directory, where add-device writes it too.
    state = Path("/var/lib/wakertc-companion/devices.json")
    assert example == CompanionConfig(path=EXAMPLE, devices_file=state)
    assert empty == CompanionConfig(path=tmp_path / "companion.toml", devices_file=state)


def test_every_example_key_is_commented() -> None:
    lines = EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            assert lines[index - 1].startswith("#"), f"line {index + 1} ({line!r}) has no comment"


def test_browser_origin_is_kept_as_browsers_send_it(tmp_path: Path) -> None:
    text = '[server]\nbrowser_session = true\nbrowser_origin = "HTTPS://My.Page:8443/"\n'
    text += 'allowed_hosts = ["Pi.Home"]\n'
    server = load_companion_config(write(tmp_path, text)).server
    assert server.browser_origin == "https://my.page:8443"
    assert server.allowed_hosts == ("pi.home",)


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    cert_dir = tmp_path / "tls"
    config = load_companion_config(
        write(
            tmp_path,
            '[server]\ntls_cert = "tls/c.pem"\ntls_key = "/abs/k.pem"\n'
            '[upstream]\napi_key_file = "key"\n[devices]\nfile = "state/devices.json"\n',
        )
    )
    assert config.server.tls_cert == cert_dir / "c.pem"
    assert config.server.tls_key == Path("/abs/k.pem")
    assert config.upstream.api_key_file == tmp_path / "key"
    assert config.devices_file == tmp_path / "state" / "devices.json"
    # The store lives beside the devices file unless it is set.
    assert config.store.file == tmp_path / "state" / "companion.db"
    assert config.store.url == ""
    pg = load_companion_config(
        write(tmp_path, '[store]\nurl = "postgresql://w@db/w"\npassword_file = "pw"\n')
    )
    assert (pg.store.url, pg.store.password_file) == ("postgresql://w@db/w", tmp_path / "pw")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[server]\nport = 70000\n", "server.port", "an integer 0..65535"),
        ('[server]\nport = "80"\n', "server.port", "an integer"),
        ("[server]\nhots = 1\n", "server.hots", "unknown key"),
        ('[server]\ntls_cert = "c.pem"\n', "server.tls_cert", "tls_cert and tls_key"),
        ("[server]\nbrowser_session = true\n", "server.browser_origin", "required with"),
        ('[server]\nbrowser_origin = "my.page"\n', "server.browser_origin", "an origin such as"),
        (
            '[server]\nbrowser_origin = "https://my.page/app"\n',
            "server.browser_origin",
            "an origin such as",
        ),
        (
            '[server]\nbrowser_origin = "https://my.page:99999"\n',
            "server.browser_origin",
            "an origin such as",
        ),
        ('[server]\nallowed_hosts = "pi"\n', "server.allowed_hosts", "an array of host names"),
        (
            '[server]\nallowed_hosts = ["pi.home:8780"]\n',
            "server.allowed_hosts",
            "without ports",
        ),
        ('[upstream]\napi_key = "sk-123"\n', "upstream.api_key", "no key in the config file"),
        ('[upstream]\nurl = "api.openai.com"\n', "upstream.url", "an http(s) URL"),
        ("[upstream]\ntimeout_s = 0\n", "upstream.timeout_s", "a number 0.1..300"),
        ('[session]\nvoice = "robot"\n', "session.voice", "one of alloy"),
        ('[session]\ntype = "chat"\n', "session.type", "one of realtime, transcription"),
        ("[session]\nkey_lifetime_s = 5\n", "session.key_lifetime_s", "an integer 10..7200"),
        (
            '[session.turn_detection]\ntype = "loud"\n',
            "session.turn_detection.type",
            "one of server_vad",
        ),
        (
            "[session.turn_detection]\nthreshold = 1.5\n",
            "session.turn_detection.threshold",
            "a number 0..1",
        ),
        ('[[session.tools]]\ndescription = "x"\n', "session.tools[0].name", "a non-empty string"),
        (
            '[[session.tools]]\nname = "x"\nparameters = "{not json"\n',
            "session.tools[0].parameters",
            "a table or a JSON string",
        ),
        ('[devices]\nfile = ""\n', "devices.file", "a file path"),
        ('[store]\nfile = ""\n', "store.file", "a file path"),
        ('[store]\nuri = "x"\n', "store.uri", "unknown key"),
        ('[store]\nurl = "mysql://h/db"\n', "store.url", "a postgresql:// URL"),
        (
            '[store]\nurl = "postgresql://u:s3cret@h/db"\n',
            "store.url",
            "no password in the URL; put it in store.password_file",
        ),
        (
            '[store]\nfile = "c.db"\nurl = "postgresql://h/db"\n',
            "store.url",
            "either store.file (SQLite) or store.url, not both",
        ),
        ('[store]\npassword_file = "pw"\n', "store.password_file", "store.url set too"),
        (
            "[limits]\nper_device_per_minute = 0\n",
            "limits.per_device_per_minute",
            "an integer 1..10000",
        ),
        ("limits = 3\n", "limits", "a table"),
    ],
)
def test_errors_name_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CompanionConfigError) as caught:
        load_companion_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message
    assert "\n" not in message
    assert "sk-123" not in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CompanionConfigError, match="file not found"):
        load_companion_config(tmp_path / "nope.toml")
    with pytest.raises(CompanionConfigError, match="not valid TOML"):
        load_companion_config(write(tmp_path, "[server\n"))


def test_api_key_from_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    key_file.chmod(0o600)
    with_file = load_companion_config(write(tmp_path, '[upstream]\napi_key_file = "key"\n'))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert read_api_key(with_file) == "sk-from-file"  # the file wins
    with_env = load_companion_config(write(tmp_path, '[upstream]\napi_key_env = "MY_KEY"\n'))
    monkeypatch.setenv("MY_KEY", "sk-mine")
    assert read_api_key(with_env) == "sk-mine"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(
        CompanionConfigError, match=r"upstream\.api_key_env: environment variable MY_KEY is not set"
    ):
        read_api_key(with_env)
    key_file.write_text("\n")
    with pytest.raises(CompanionConfigError, match="is empty"):
        read_api_key(with_file)


def test_api_key_from_the_systemd_credential_and_file_modes(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "openai-api-key").write_text("sk-from-credential\n")
    (credentials / "openai-api-key").chmod(0o400)
    config = load_companion_config(write(tmp_path, ""))
    env = {"CREDENTIALS_DIRECTORY": str(credentials), "OPENAI_API_KEY": "sk-from-env"}
    assert read_api_key(config, env) == "sk-from-credential"  # the credential beats the env
    assert read_api_key(config, {"OPENAI_API_KEY": "sk-from-env"}) == "sk-from-env"
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    key_file.chmod(0o644)
    with_file = load_companion_config(write(tmp_path, '[upstream]\napi_key_file = "key"\n'))
    with pytest.raises(CompanionConfigError, match=r"readable by other users; chmod 600"):
        read_api_key(with_file, env)
    key_file.chmod(0o600)
    assert read_api_key(with_file, env) == "sk-from-file"  # an explicit file beats both


def test_policy_becomes_a_session_the_api_accepts(tmp_path: Path) -> None:
    config = load_companion_config(
        write(
            tmp_path,
            '[session]\nvoice = "cedar"\ninstructions = "Short."\nnoise_reduction = "near_field"\n'
            'transcription_model = "gpt-4o-transcribe"\nlanguage = "en"\n'
            "[session.turn_detection]\nsilence_duration_ms = 700\nidle_timeout_ms = 8000\n"
            '[[session.tools]]\nname = "lights"\ndescription = "Switch lights."\n'
            'parameters = { type = "object", properties = { on = { type = "boolean" } } }\n',
        )
    )
    session = config.session.session_object()
    effective = create_session(session)  # the emulator's GA validation
    assert effective["audio"]["output"]["voice"] == "cedar"
    audio_in = effective["audio"]["input"]
    assert audio_in["turn_detection"]["silence_duration_ms"] == 700
    assert audio_in["turn_detection"]["idle_timeout_ms"] == 8000
    assert audio_in["noise_reduction"] == {"type": "near_field"}
    assert audio_in["transcription"]["language"] == "en"
    assert effective["tools"][0]["parameters"]["properties"] == {"on": {"type": "boolean"}}

    manual = SessionPolicy(turn_detection=None, noise_reduction=None).session_object()
    assert create_session(manual)["audio"]["input"]["turn_detection"] is None
    transcription = SessionPolicy(type="transcription").session_object()
    effective = create_session(transcription)
    assert effective["type"] == "transcription"
    assert effective["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
    semantic = load_companion_config(
        write(tmp_path, '[session.turn_detection]\ntype = "semantic_vad"\neagerness = "high"\n')
    )
    td = create_session(semantic.session.session_object())["audio"]["input"]["turn_detection"]
    assert td["type"] == "semantic_vad" and td["eagerness"] == "high"


WHISPER = '[session]\ntype = "transcription"\ntranscription_model = "gpt-realtime-whisper"\n'


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (
            "[session.turn_detection]\nidle_timeout_ms = 4999\n",
            "session.turn_detection.idle_timeout_ms",
            "0 (off) or an integer 5000..30000",
        ),
        (
            "[session.turn_detection]\nidle_timeout_ms = 30001\n",
            "session.turn_detection.idle_timeout_ms",
            "0 (off) or an integer 5000..30000",
        ),
        ('[session]\nmodel = "gpt-4o"\n', "session.model", "one of gpt-realtime"),
        (
            '[session]\ntranscription_model = "whisper-9"\n',
            "session.transcription_model",
            "Supported values are: 'whisper-1'",
        ),
        (WHISPER, "session.turn_detection.type", "does not support turn detection"),
        ("[session]\nkey_lifetime_s = 7201\n", "session.key_lifetime_s", "an integer 10..7200"),
    ],
)
def test_values_the_service_refuses_are_refused_at_load(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CompanionConfigError) as caught:
        load_companion_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message


def test_values_at_the_service_limits_load_and_the_emulator_accepts_them(tmp_path: Path) -> None:
    for text in (
        "[session.turn_detection]\nidle_timeout_ms = 5000\nthreshold = 1.0\n",
        "[session.turn_detection]\nidle_timeout_ms = 30000\nthreshold = 0.0\n",
        WHISPER + '[session.turn_detection]\ntype = "none"\n',
        '[session]\nmodel = "gpt-realtime-mini"\nkey_lifetime_s = 7200\n',
    ):
        config = load_companion_config(write(tmp_path, text))
        create_session(config.session.session_object())  # raises if the service would refuse
