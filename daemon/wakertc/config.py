"""The device's one configuration file: schema, defaults and validation.

`load_config(path)` reads TOML, checks every key against the dataclasses below and raises one
`ConfigError` listing every problem (file, key, value, what was expected). Unknown keys are
errors, so a typo never passes silently. `config/wakertc.toml` documents each key with its
default; the field docstrings here are the source it was written from.

Relative paths in the file are relative to the file's own directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import tomllib
import types
import typing
import urllib.parse
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import limits

DEFAULT_PATH = Path("/etc/wakertc/wakertc.toml")
# Functions the device itself provides; a configured tool may not take one of these names.
BUILTIN_TOOL_NAMES = frozenset(
    {"end_conversation", "set_timer", "set_alarm", "cancel_timer", "list_timers"}
)
ENV_VAR = "WAKERTC_CONFIG"

PHASES_WITH_PATTERNS = (
    "idle",
    "offline",
    "over_budget",
    "wake",
    "connecting",
    "listening",
    "thinking",
    "speaking",
    "muted",
    "error",
    "ringing",
)


OUTPUT_BUFFER_MIN_MS = 20  # one playback period
OUTPUT_BUFFER_MAX_MS = 1000


@dataclass(frozen=True)
class AudioConfig:
    """Microphone and speaker."""

    backend: Literal["pyaudio", "file"] = "pyaudio"
    """`pyaudio` for real devices; `file` reads `input_file`, writes `output_file`, in real time."""
    input_device: str | int = ""
    """Capture device: an index, or a substring of its name (`wakertc devices`); "" = default."""
    output_device: str | int = ""
    """Playback device, chosen the same way."""
    input_rate: int = 0
    """Capture rate in Hz; 0 = 16 kHz if the device takes it, else its default (soxr converts)."""
    input_channels: int = 0
    """Channels to open on the capture device; 0 = mono if offered, else the device default."""
    input_channel: int = 0
    """Which captured channel to use (0-based), e.g. one microphone of a ReSpeaker HAT."""
    output_rate: int = 0
    """Playback rate in Hz; 0 = the device's default."""
    output_channels: int = 0
    """Playback channels; 0 = the device's default (at most 2). Mono is copied to each."""
    output_volume: float = 1.0
    """Playback gain, 0.0 (silent) to 2.0."""
    output_buffer_ms: int = OUTPUT_BUFFER_MIN_MS
    """Audio still in the playback device when the next period goes in, at least (rounded up to
    20 ms periods): the least by default; the pacer keeps more by itself after a gap and for a
    device that plays more than a period at a time. At or above the device's whole buffer: a
    plain blocking writer, which keeps the buffer full."""
    input_file: Path | None = None
    """`file` backend: WAV file to read as the microphone (then silence after its end)."""
    output_file: Path | None = None
    """`file` backend: WAV file to which played audio is written."""


@dataclass(frozen=True)
class WakeWordConfig:
    """One wake word."""

    name: str = "hey_jarvis"
    """Name reported on detection; also picks the model `<models_dir>/<name>_v0.1.tflite`."""
    model: Path | None = None
    """Path of a custom openWakeWord `.tflite` model; unset = derived from `name`."""
    threshold: float = 0.5
    """Score (0..1) at or above which the word counts as spoken. Lower = more sensitive."""
    refractory_s: float = 2.0
    """After a detection, ignore this word for this many seconds."""

    def model_path(self, models_dir: Path) -> Path:
        """The model file this word runs."""
        return self.model if self.model is not None else models_dir / f"{self.name}_v0.1.tflite"


@dataclass(frozen=True)
class WakeConfig:
    """Wake-word detection."""

    models_dir: Path = Path("/var/lib/wakertc/models")
    """Directory with `melspectrogram.tflite`, `embedding_model.tflite` and the word models."""
    words: tuple[WakeWordConfig, ...] = (WakeWordConfig(),)
    """The wake words, as `[[wake.words]]` tables; several may run at once."""
    preroll_ms: int = 300
    """Audio kept from just before the detection and sent into the session, so no words are lost."""


@dataclass(frozen=True)
class ButtonConfig:
    """A push button: short press starts or ends a conversation, long press mutes the microphone."""

    pin: str | int = ""
    """GPIO pin (BCM number or gpiozero name like "GPIO17"); "" = no button."""
    pull_up: bool = True
    """True when the button connects the pin to ground."""
    long_press_s: float = 1.0
    """Hold at least this long to toggle mute."""
    bounce_s: float = 0.05
    """Debounce time."""


@dataclass(frozen=True)
class LedPattern:
    """How the LEDs show one phase."""

    effect: Literal["off", "solid", "blink", "pulse"] = "solid"
    """`pulse` fades in and out (needs a PWM or RGB LED; a plain LED blinks instead)."""
    color: str = "#ffffff"
    """RGB LED colour as `#rrggbb` (brightness for single/PWM LEDs is taken from it)."""
    period_s: float = 1.0
    """Length of one blink or pulse cycle."""


DEFAULT_PATTERNS: Mapping[str, LedPattern] = types.MappingProxyType(
    {
        "idle": LedPattern("off"),
        # A slow amber blink: noticeable, unlike the fast red of an error that just happened.
        "offline": LedPattern("blink", "#ff6000", 2.0),
        # A slow magenta pulse: nothing is broken, the owner's budget is used up for now.
        "over_budget": LedPattern("pulse", "#ff00c0", 3.0),
        "wake": LedPattern("solid", "#ffffff"),
        "connecting": LedPattern("blink", "#0040ff", 0.4),
        "listening": LedPattern("solid", "#0040ff"),
        "thinking": LedPattern("pulse", "#8000ff", 1.0),
        "speaking": LedPattern("pulse", "#00ff40", 0.6),
        "muted": LedPattern("solid", "#ff0000"),
        "error": LedPattern("blink", "#ff0000", 0.2),
        # A timer or alarm going off: a bright amber flash, unlike any conversation phase.
        "ringing": LedPattern("blink", "#ffb000", 0.5),
    }
)


@dataclass(frozen=True)
class LedsConfig:
    """Status LEDs."""

    kind: Literal["none", "single", "pwm", "rgb"] = "none"
    """`single` on/off LED, `pwm` dimmable LED, `rgb` three-pin LED."""
    pins: tuple[str | int, ...] = ()
    """One pin for single/pwm, three (red, green, blue) for rgb."""
    active_high: bool = True
    """False for LEDs wired to light when the pin is low (common-anode RGB)."""
    brightness: float = 1.0
    """Overall brightness 0..1 (PWM and RGB)."""
    patterns: Mapping[str, LedPattern] = field(default_factory=lambda: DEFAULT_PATTERNS)
    """Per-phase overrides, as `[leds.patterns.<phase>]`; unlisted phases keep their defaults."""


@dataclass(frozen=True)
class SoundsConfig:
    """Audible cues. Unset paths use the bundled chimes."""

    enabled: bool = True
    """Play cues at all."""
    volume: float = 0.6
    """Cue gain 0..1, on top of `audio.output_volume`."""
    wake: Path | None = None
    """Played when the wake word is heard or the button starts a conversation."""
    done: Path | None = None
    """Played when a conversation ends."""
    error: Path | None = None
    """Played when something fails."""
    mute: Path | None = None
    """Played when the microphone is muted."""
    unmute: Path | None = None
    """Played when the microphone is unmuted."""


@dataclass(frozen=True)
class HookConfig:
    """A command run on every phase change, with a JSON description of it on stdin."""

    command: tuple[str, ...] = ()
    """The command and its arguments, e.g. ["/usr/local/bin/on-phase"]; empty = no hook."""
    timeout_s: float = 5.0
    """Kill the hook if it runs longer than this."""


COMPANION_TIMEOUT_S = 12.0
"""The default of `companion.timeout_s`; the companion keeps its own upstream timeout below it."""


@dataclass(frozen=True)
class CompanionConfig:
    """The owner's companion server, which mints ephemeral keys for this device."""

    url: str = "http://127.0.0.1:8780"
    """Base URL of the companion server (`https://...` for TLS)."""
    token_file: Path = Path("/etc/wakertc/device-token")
    """File holding this device's token (from `wakertc companion add-device`); mode 0600."""
    token: str = ""
    """The token inline instead of `token_file`; then this file must not be readable by others."""
    ca_file: Path | None = None
    """CA certificate to trust for a self-signed companion; unset = the system's CAs."""
    timeout_s: float = COMPANION_TIMEOUT_S
    """Give up on one request to the companion after this long: longer than the companion's own
    `upstream.timeout_s` (10 s by default), so that a slow mint ends in its answer (a key, or a
    504 naming the cause), not in our timeout."""


@dataclass(frozen=True)
class SessionConfig:
    """The Realtime session the device opens after the wake word."""

    api: Literal["realtime", "live"] = "realtime"
    """`realtime` (ephemeral keys, the device calls OpenAI) or `live` (GPT-Live: the companion
    creates the session with the device's offer); see the README for how to choose."""
    url: str = "https://api.openai.com"
    """Realtime API base URL; `/v1/realtime/calls` is appended (not used by `live`)."""
    mode: Literal["conversation", "transcription"] = "conversation"
    """`transcription` writes what is said to the log and the hook instead of answering."""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs; empty is right for OpenAI, whose answers carry host candidates."""
    connect_timeout_s: float = 10.0
    """Give up connecting (offer, ICE, DTLS, first session.updated) after this long."""
    idle_timeout_s: float = 8.0
    """End the conversation after this long with nobody speaking since the last reply."""
    max_session_s: float = 300.0
    """End any conversation after this long (at most the service's own limit, 60 minutes)."""
    reply_timeout_s: float = 15.0
    """Give up waiting for a reply (or a transcript) this long after the user stopped speaking."""
    echo_cancellation: bool = True
    """Cancel the device's own voice from the microphone (WebRTC AEC3) when available."""
    half_duplex: bool = False
    """Mute the microphone path while the device speaks (fallback when AEC is unavailable)."""


@dataclass(frozen=True)
class ToolConfig:
    """A function the model may call; its action runs on the device."""

    name: str = ""
    """Function name the model sees."""
    description: str = ""
    """What the function does, for the model."""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: types.MappingProxyType({"type": "object", "properties": {}})
    )
    """JSON schema of the arguments."""
    command: tuple[str, ...] = ()
    """Run this command with the arguments as JSON on stdin; its stdout is the result."""
    url: str = ""
    """Or: send the arguments as JSON to this URL; the response body is the result."""
    method: Literal["GET", "POST", "PUT"] = "POST"
    """HTTP method for `url` (GET sends the arguments as query parameters)."""
    timeout_s: float = 10.0
    """Give up on the action after this long and tell the model it failed."""


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class StateConfig:
    """Where the device keeps what must survive a restart (timers and alarms)."""

    dir: Path = Path("/var/lib/wakertc")
    """Directory for state files; created on first write (systemd's StateDirectory=)."""


@dataclass(frozen=True)
class TimersConfig:
    """Timers and alarms: built-in tools of the model that ring on the device itself."""

    enabled: bool = True
    """Offer set_timer, set_alarm, cancel_timer and list_timers to the model."""
    timezone: str = ""
    """IANA zone alarms are set in, e.g. "Europe/Paris"; "" = the system's ($TZ, /etc/localtime)."""
    ring_timeout_s: float = 180.0
    """Stop ringing by itself after this long."""
    snooze_s: float = 540.0
    """A long press while ringing snoozes for this long."""
    missed_grace_s: float = 900.0
    """An alarm due while the device was off rings at start-up if at most this late; else logged."""
    ring_sound: Path | None = None
    """WAV played, repeated, while ringing; unset = the bundled ring."""
    ring_volume: float = 0.8
    """Ring gain 0..1, on top of `audio.output_volume`."""


@dataclass(frozen=True)
class MqttConfig:
    """Home Assistant over MQTT: discovery, state and commands."""

    url: str = ""
    """Broker as mqtt://host[:1883] or mqtts://host[:8883]; "" = no MQTT."""
    ca_file: Path | None = None
    """CA certificate for an mqtts:// broker with its own CA; unset = the system's CAs."""
    username: str = ""
    """User name at the broker; "" = anonymous."""
    password_file: Path | None = None
    """File holding the password (mode 0600: refused if readable by others)."""
    base_topic: str = ""
    """Prefix of this device's topics; "" = `wakertc/<device_id>`."""
    device_id: str = ""
    """Unique id of this device in Home Assistant; "" = the host name."""
    device_name: str = ""
    """Name shown in Home Assistant; "" = `wakertc <device_id>`."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix."""
    expose_transcript: bool = False
    """Publish what the user said as a sensor (privacy: off unless enabled)."""
    announce_dir: Path | None = None
    """Directory WAV files named by the announce command may come from; unset = URLs only."""


@dataclass(frozen=True)
class LogConfig:
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level written."""


@dataclass(frozen=True)
class Config:
    """The whole device configuration."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    button: ButtonConfig = field(default_factory=ButtonConfig)
    leds: LedsConfig = field(default_factory=LedsConfig)
    sounds: SoundsConfig = field(default_factory=SoundsConfig)
    hook: HookConfig = field(default_factory=HookConfig)
    companion: CompanionConfig = field(default_factory=CompanionConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    tools: tuple[ToolConfig, ...] = ()
    state: StateConfig = field(default_factory=StateConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = field(default=None, compare=False)
    """The file this was loaded from (not a key in the file)."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Lines about keys that are ignored (not a key in the file): logged at start-up and printed
    by `check-config`."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file."""

    key: str
    value: Any
    expected: str
    warning: bool = False
    """Ignored rather than refused: the file still loads."""

    def render(self, source: Path | str) -> str:
        """`FILE: KEY = VALUE: expected ...`, the line users see."""
        value = "(missing)" if self.value is _MISSING else _short_repr(self.value)
        return f"{source}: {self.key} = {value}: {self.expected}"


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; `problems` lists every issue found."""

    def __init__(self, source: Path | str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


# Session settings that are the companion's policy: it mints every key with them, and a device
# sending its own would silently replace the owner's choice (see the README). Configs written for
# earlier versions set them on the device: they are ignored with a warning, not refused, so that an
# upgrade does not leave a device that was working unable to start.
_COMPANION_POLICY = types.MappingProxyType(
    {
        "session.turn_detection": "[session.turn_detection] type",
        "session.vad_threshold": "[session.turn_detection] threshold",
        "session.prefix_padding_ms": "[session.turn_detection] prefix_padding_ms",
        "session.silence_duration_ms": "[session.turn_detection] silence_duration_ms",
        "session.eagerness": "[session.turn_detection] eagerness",
        "session.noise_reduction": "[session] noise_reduction",
        "session.transcription_model": "[session] transcription_model",
        "session.transcription_language": "[session] language",
    }
)

_MISSING = object()
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# A DNS name or IPv4 address (urlsplit strips the brackets of an IPv6 one, allowed too).
_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?")
_ICE_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)


def config_path(cli_path: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: `--config`, else `$WAKERTC_CONFIG`, else the default."""
    if cli_path:
        return Path(cli_path)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at `path`; raise `ConfigError` listing every problem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, [Problem("(file)", str(path), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [Problem("(file)", str(path), f"unreadable: {exc}")]) from exc
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise ConfigError(path, [Problem("(file)", str(path), f"not valid TOML: {exc}")]) from exc
    except RecursionError:
        # tomllib recurses once per nesting level: `a = [[[[...` thousands deep exhausts the stack.
        raise ConfigError(
            path, [Problem("(file)", str(path), "not valid TOML: arrays or tables nested too deep")]
        ) from None
    return config_from_dict(data, path)


def config_from_dict(data: Mapping[str, Any], source: Path) -> Config:
    """Validate already-parsed TOML `data` that came from `source`."""
    found: list[Problem] = []
    base = source.parent
    config = _convert(data, Config, "", base, found)
    problems = [p for p in found if not p.warning]
    if not problems:
        assert isinstance(config, Config)
        warnings = tuple(p.render(source) for p in found if p.warning)
        config = dataclasses.replace(config, source=source, warnings=warnings)
        problems.extend(_check_semantics(config, source))
    if problems:
        raise ConfigError(source, problems)
    assert isinstance(config, Config)
    return config


def read_token(config: CompanionConfig) -> str:
    """The device token, from the config or its file (whose permissions were checked on load)."""
    if config.token:
        return config.token
    return config.token_file.read_text(encoding="utf-8").strip()


def _check_semantics(config: Config, source: Path) -> list[Problem]:
    """Checks that span several keys or touch the file system."""
    problems: list[Problem] = []
    audio = config.audio
    if audio.backend == "file" and audio.input_file is None:
        problems.append(Problem("audio.input_file", _MISSING, "a WAV file (backend is 'file')"))
    if audio.input_channels and audio.input_channel >= audio.input_channels:
        problems.append(
            Problem(
                "audio.input_channel",
                audio.input_channel,
                f"a channel index below audio.input_channels ({audio.input_channels})",
            )
        )
    for name, value, low, high in (
        ("audio.output_volume", audio.output_volume, 0.0, 2.0),
        (
            "audio.output_buffer_ms",
            audio.output_buffer_ms,
            OUTPUT_BUFFER_MIN_MS,
            OUTPUT_BUFFER_MAX_MS,
        ),
        ("leds.brightness", config.leds.brightness, 0.0, 1.0),
        ("sounds.volume", config.sounds.volume, 0.0, 1.0),
        ("timers.ring_volume", config.timers.ring_volume, 0.0, 1.0),
    ):
        if not low <= value <= high:
            problems.append(Problem(name, value, f"a number from {low} to {high}"))
    for name, value in (
        ("audio.input_rate", audio.input_rate),
        ("audio.output_rate", audio.output_rate),
        ("audio.input_channels", audio.input_channels),
        ("audio.output_channels", audio.output_channels),
        ("audio.input_channel", audio.input_channel),
        ("wake.preroll_ms", config.wake.preroll_ms),
    ):
        if value < 0:
            problems.append(Problem(name, value, "zero or a positive integer"))
    if config.session.api == "live" and config.session.mode == "transcription":
        problems.append(
            Problem("session.mode", "transcription", "'conversation' with api = 'live'")
        )
    for name, value in (
        ("button.long_press_s", config.button.long_press_s),
        ("hook.timeout_s", config.hook.timeout_s),
        ("companion.timeout_s", config.companion.timeout_s),
        ("session.connect_timeout_s", config.session.connect_timeout_s),
        ("session.idle_timeout_s", config.session.idle_timeout_s),
        ("session.max_session_s", config.session.max_session_s),
        ("session.reply_timeout_s", config.session.reply_timeout_s),
        ("timers.ring_timeout_s", config.timers.ring_timeout_s),
        ("timers.snooze_s", config.timers.snooze_s),
    ):
        if value <= 0:
            problems.append(Problem(name, value, "a positive number of seconds"))
    problems += _check_service_limits(config.session)

    if not config.wake.words:
        problems.append(Problem("wake.words", [], "at least one wake word"))
    seen: set[str] = set()
    for i, word in enumerate(config.wake.words):
        key = f"wake.words[{i}]"
        if word.name in seen:
            problems.append(Problem(f"{key}.name", word.name, "a name not used by another word"))
        seen.add(word.name)
        if not 0.0 < word.threshold <= 1.0:
            problems.append(Problem(f"{key}.threshold", word.threshold, "a score in (0, 1]"))
        if word.refractory_s < 0:
            problems.append(Problem(f"{key}.refractory_s", word.refractory_s, "seconds >= 0"))

    leds = config.leds
    wanted = {"none": 0, "single": 1, "pwm": 1, "rgb": 3}[leds.kind]
    if len(leds.pins) != wanted:
        problems.append(
            Problem("leds.pins", list(leds.pins), f"{wanted} pin(s) for kind '{leds.kind}'")
        )
    for phase, pattern in leds.patterns.items():
        key = _join("leds.patterns", phase)
        if phase not in PHASES_WITH_PATTERNS:
            problems.append(Problem(key, phase, f"one of {', '.join(PHASES_WITH_PATTERNS)}"))
        if not _is_hex_colour(pattern.color):
            problems.append(Problem(f"{key}.color", pattern.color, "a colour like '#ff8800'"))
        if pattern.period_s <= 0:
            problems.append(Problem(f"{key}.period_s", pattern.period_s, "seconds > 0"))

    names: set[str] = set()
    for i, tool in enumerate(config.tools):
        key = f"tools[{i}]"
        if not tool.name or not tool.name.replace("_", "").replace("-", "").isalnum():
            problems.append(Problem(f"{key}.name", tool.name, "a name of letters, digits, _ or -"))
        if tool.name in names or tool.name in BUILTIN_TOOL_NAMES:
            problems.append(Problem(f"{key}.name", tool.name, "a name not already in use"))
        names.add(tool.name)
        if bool(tool.command) == bool(tool.url):
            problems.append(Problem(key, tool.name, "exactly one of 'command' or 'url'"))
        if tool.parameters.get("type") != "object":
            problems.append(
                Problem(f"{key}.parameters", dict(tool.parameters), "a JSON schema of type object")
            )

    companion = config.companion
    for name, url in (("companion.url", companion.url), ("session.url", config.session.url)):
        problem = _http_url_problem(url)
        if problem:
            problems.append(Problem(name, url, f"an http:// or https:// base URL ({problem})"))
    for i, url in enumerate(config.session.ice_servers):
        problem = _ice_url_problem(url)
        if problem:
            problems.append(
                Problem(
                    f"session.ice_servers[{i}]",
                    url,
                    f"a STUN/TURN URL like 'stun:host:3478' ({problem})",
                )
            )
    if companion.token:
        if _readable_by_others(source):
            problems.append(
                Problem(
                    "companion.token",
                    "(hidden)",
                    f"no token in a file readable by others: chmod 600 {source}, "
                    "or move the token to companion.token_file",
                )
            )
    else:
        problems.extend(_check_token_file(companion.token_file))
    if companion.ca_file is not None and not companion.ca_file.is_file():
        problems.append(Problem("companion.ca_file", str(companion.ca_file), "an existing file"))
    problems.extend(_check_timers(config.timers))
    problems.extend(_check_mqtt(config.mqtt))
    return problems


def _check_timers(timers: TimersConfig) -> list[Problem]:
    problems: list[Problem] = []
    if timers.timezone:
        try:
            zoneinfo.ZoneInfo(timers.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            problems.append(
                Problem("timers.timezone", timers.timezone, "an IANA zone like 'Europe/Paris'")
            )
    if timers.missed_grace_s < 0:
        problems.append(Problem("timers.missed_grace_s", timers.missed_grace_s, "seconds >= 0"))
    return problems


def _check_mqtt(mqtt: MqttConfig) -> list[Problem]:
    problems: list[Problem] = []
    if not mqtt.url:
        return problems
    if not re.fullmatch(r"mqtts?://[^/:@\s]+(:\d{1,5})?/?", mqtt.url):
        problems.append(Problem("mqtt.url", mqtt.url, "mqtt://host[:port] or mqtts://host[:port]"))
    if mqtt.ca_file is not None:
        if not mqtt.url.startswith("mqtts://"):
            problems.append(Problem("mqtt.ca_file", str(mqtt.ca_file), "only with an mqtts:// url"))
        elif not mqtt.ca_file.is_file():
            problems.append(Problem("mqtt.ca_file", str(mqtt.ca_file), "an existing file"))
    if mqtt.password_file is not None:
        if not mqtt.username:
            problems.append(Problem("mqtt.username", "", "a user name (password_file is set)"))
        try:
            mode = mqtt.password_file.stat().st_mode
        except OSError as exc:
            problems.append(
                Problem("mqtt.password_file", str(mqtt.password_file), f"a file ({exc.strerror})")
            )
        else:
            if mode & stat.S_IROTH:
                problems.append(
                    Problem(
                        "mqtt.password_file",
                        str(mqtt.password_file),
                        f"a file not readable by others (chmod 600 {mqtt.password_file})",
                    )
                )
    for key, value in (
        ("mqtt.base_topic", mqtt.base_topic),
        ("mqtt.discovery_prefix", mqtt.discovery_prefix),
        ("mqtt.device_id", mqtt.device_id),
    ):
        if any(c in value for c in "#+\0") or value.startswith("/") or value.endswith("/"):
            problems.append(Problem(key, value, "a topic without wildcards or edge slashes"))
    if not mqtt.discovery_prefix:
        problems.append(Problem("mqtt.discovery_prefix", "", "a topic prefix"))
    if mqtt.device_id and not re.fullmatch(r"[A-Za-z0-9_-]+", mqtt.device_id):
        problems.append(Problem("mqtt.device_id", mqtt.device_id, "letters, digits, _ or -"))
    if mqtt.announce_dir is not None and not mqtt.announce_dir.is_dir():
        problems.append(Problem("mqtt.announce_dir", str(mqtt.announce_dir), "a directory"))
    return problems


def read_mqtt_password(config: MqttConfig) -> str:
    """The broker password from its file ("" when none is configured)."""
    if config.password_file is None:
        return ""
    return config.password_file.read_text(encoding="utf-8").strip()


def _check_service_limits(session: SessionConfig) -> list[Problem]:
    """What the Realtime service itself would refuse, from the one table in `wakertc.limits`.

    The settings the service checks most (turn detection, transcription) are the companion's
    policy, checked in its config from the same table; the device has only the session length.
    """
    problems = []
    if session.max_session_s > limits.MAX_SESSION_S:
        problems.append(
            Problem(
                "session.max_session_s",
                session.max_session_s,
                f"at most {limits.MAX_SESSION_S} seconds: the service ends every session then",
            )
        )
    return problems


def _check_token_file(path: Path) -> list[Problem]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return [
            Problem(
                "companion.token_file",
                str(path),
                "an existing file (create one with `wakertc companion add-device`)",
            )
        ]
    except OSError as exc:
        return [Problem("companion.token_file", str(path), f"a readable file ({exc.strerror})")]
    if mode & stat.S_IROTH:
        return [
            Problem(
                "companion.token_file",
                str(path),
                f"a file not readable by others (chmod 600 {path})",
            )
        ]
    return []


def _http_url_problem(url: str) -> str:
    """What is wrong with an HTTP base URL, or "" when it will work as one."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "no spaces or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname or not _HOST.fullmatch(parts.hostname):
        return "a host name or address is missing or malformed"
    if port == 0:
        return "port 0"
    if parts.query or parts.fragment:
        return "no query or fragment"
    return ""


def _ice_url_problem(url: str) -> str:
    """What is wrong with a STUN/TURN URL (RFC 7064/7065 as aiortc parses them), or ""."""
    match = _ICE_URL.fullmatch(url)
    if match is None:
        return "stun:, stuns:, turn: or turns:, a host, an optional port; transport only for TURN"
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        return "a port from 1 to 65535"
    if match["transport"] and not match["scheme"].startswith("turn"):
        return "a transport only for TURN"
    return ""


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _is_hex_colour(text: str) -> bool:
    return (
        len(text) == 7 and text[0] == "#" and all(c in "0123456789abcdefABCDEF" for c in text[1:])
    )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a file path (string)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp) or origin in (Mapping, dict):
        return "a table"
    return str(tp)


def _convert(value: Any, tp: Any, key: str, base: Path, problems: list[Problem]) -> Any:
    """Check `value` against type `tp`, returning the converted value (or None after a problem)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        for option in options:
            attempt: list[Problem] = []
            result = _convert(value, option, key, base, attempt)
            if not attempt:
                return result
        problems.append(Problem(key, value, _describe(tp)))
        return None
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(Problem(key, value, _describe(tp)))
        return None
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list):
            problems.append(Problem(key, value, _describe(tp)))
            return None
        return tuple(
            _convert(item, item_type, f"{key}[{i}]", base, problems) for i, item in enumerate(value)
        )
    if origin in (Mapping, dict):
        _, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(Problem(key, value, "a table"))
            return None
        if value_type is Any:
            return types.MappingProxyType(dict(value))
        return types.MappingProxyType(
            {k: _convert(v, value_type, _join(key, k), base, problems) for k, v in value.items()}
        )
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(value, tp, key, base, problems)
    if tp is Any:
        return value
    if tp is float:
        # TOML allows nan and inf; no setting here means either (nan passes every `<=` check).
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is int or tp is str:
        if isinstance(value, tp) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is Path and isinstance(value, str) and value and "\0" not in value:
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # `~name/...` for a user that does not exist
            problems.append(Problem(key, value, "a file path whose ~user exists"))
            return None
        return path if path.is_absolute() else base / path
    problems.append(Problem(key, value, _describe(tp)))
    return None


def _convert_dataclass(
    value: Any, tp: type[Any], key: str, base: Path, problems: list[Problem]
) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(key or "(top level)", value, "a table"))
        return None
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.name != "source"}
    for unknown in sorted(set(value) - set(fields)):
        moved = _COMPANION_POLICY.get(_join(key, unknown))
        if moved is not None:
            expected = (
                f"ignored: the companion's policy sets it ({moved} in its config); remove it here"
            )
            problems.append(Problem(_join(key, unknown), value[unknown], expected, warning=True))
            continue
        known = ", ".join(sorted(fields))
        problems.append(Problem(_join(key, unknown), value[unknown], f"a known key ({known})"))
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], _join(key, name), base, problems)
    if tp is LedsConfig and isinstance(kwargs.get("patterns"), Mapping):
        # Overrides are merged over the defaults, so a user can change one phase's look alone.
        kwargs["patterns"] = types.MappingProxyType({**DEFAULT_PATTERNS, **kwargs["patterns"]})
    try:
        return tp(**kwargs)
    except TypeError:  # only reachable after a problem was recorded for a field
        return None


def _join(prefix: str, name: str) -> str:
    # A key as TOML would quote it: a user's `"a\nb" = 1` must not split the error across lines.
    if not _BARE_KEY.fullmatch(name):
        name = json.dumps(name)
    return f"{prefix}.{name}" if prefix else name


def summary(config: Config) -> str:
    """A few human-readable lines saying what this config will do."""
    audio = config.audio
    if audio.backend == "file":
        audio_line = f"file: {audio.input_file} -> {audio.output_file or '(discarded)'}"
    else:
        inp, out = audio.input_device or "default", audio.output_device or "default"
        audio_line = f"pyaudio: in {inp}, out {out}"
    words = ", ".join(f"{w.name} (threshold {w.threshold})" for w in config.wake.words)
    token = "inline" if config.companion.token else str(config.companion.token_file)
    leds = (
        config.leds.kind if config.leds.kind == "none" else f"{config.leds.kind} {config.leds.pins}"
    )
    tools = ", ".join(t.name for t in config.tools) or "none"
    return "\n".join(
        [
            f"{config.source}: OK",
            f"  audio:     {audio_line}",
            f"  wake:      {words}; models in {config.wake.models_dir}",
            f"  button:    {config.button.pin or 'none'}; leds: {leds}",
            f"  companion: {config.companion.url} (token {token})",
            f"  session:   {config.session.mode} via {config.session.url}; tools: {tools}",
        ]
    )
