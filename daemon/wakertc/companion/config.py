"""The companion's config file (TOML), validated up front into frozen dataclasses.

Every problem is reported as one `CompanionConfigError` whose message names the file, the key and
what was expected. Relative paths in the file are relative to the file's own directory. The
standard API key is never in this file: it comes from an environment variable or a key file,
read by `read_api_key` only when the server starts.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import limits
from ..config import COMPANION_TIMEOUT_S
from .pricing import Pricing, PricingError, parse_pricing
from .server_tools import ServerTool, ServerToolError, parse_server_tools

VOICES = limits.VOICES
DEFAULT_PORT = 8780
# Devices give up on the companion after their `companion.timeout_s`, 12 s by default: a mint
# must end (with a key or a 504) before that, so upstream.timeout_s stays this far below it.
DEVICE_TIMEOUT_S = COMPANION_TIMEOUT_S
DEVICE_TIMEOUT_MARGIN_S = 2.0
# The state directory of wakertc-companion.service (StateDirectory=), which its user owns.
DEFAULT_DEVICES_FILE = "/var/lib/wakertc-companion/devices.json"
# The SQLite store's file name, beside the devices file (the state directory) unless set.
STORE_FILE_NAME = "companion.db"
DEFAULT_INSTRUCTIONS = (
    "You are a friendly voice assistant on a small speaker. Keep answers short and spoken-style."
)


class CompanionConfigError(ValueError):
    """The config file is unusable; the message says where and why."""


@dataclass(frozen=True)
class ServerSettings:
    """Where and how the companion listens."""

    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 for all interfaces)."""
    port: int = DEFAULT_PORT
    """TCP port (0 picks a free one)."""
    tls_cert: Path | None = None
    """PEM certificate (chain); with `tls_key`, the server speaks HTTPS."""
    tls_key: Path | None = None
    """PEM private key for `tls_cert`."""
    browser_session: bool = False
    """Serve `GET /session` for browser pages: anyone who reaches the server can mint keys."""
    browser_origin: str = ""
    """The origin of the page allowed to use `GET /session` (e.g. `https://my.page`); its
    `Origin` header must match (required with `browser_session`)."""
    allowed_hosts: tuple[str, ...] = ()
    """Names accepted in the `Host` header of `GET /session` (against DNS rebinding); empty =
    `localhost`, this machine's host name (and NAME.local) and the listen address. An IP
    address the request arrived on is always accepted."""


@dataclass(frozen=True)
class UpstreamSettings:
    """The Realtime API the companion mints keys from."""

    url: str = "https://api.openai.com"
    """Base URL; `/v1/realtime/client_secrets` is appended."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the standard API key."""
    api_key_file: Path | None = None
    """File holding the standard API key instead (takes precedence over the variable)."""
    timeout_s: float = 10.0
    """Give up on one mint request after this long (the device then gets 504); keep it at least
    `DEVICE_TIMEOUT_MARGIN_S` below the devices' `companion.timeout_s` (12 s by default)."""


@dataclass(frozen=True)
class SessionPolicy:
    """The session every device gets; devices cannot ask for more."""

    type: str = "realtime"
    """`realtime` (conversation) or `transcription`."""
    model: str = "gpt-realtime"
    """Realtime model (realtime sessions)."""
    instructions: str = DEFAULT_INSTRUCTIONS
    """System instructions (realtime sessions)."""
    voice: str = "marin"
    """Output voice (realtime sessions)."""
    key_lifetime_s: int = limits.KEY_SECONDS_DEFAULT
    """Lifetime of each minted key, 10..7200 s (a started session outlives it)."""
    turn_detection: dict[str, Any] | None = field(
        default_factory=lambda: {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        }
    )
    """The `turn_detection` object sent upstream, or None for manual turns."""
    noise_reduction: str | None = "far_field"
    """`near_field`, `far_field`, or None (off)."""
    transcription_model: str = ""
    """Input transcription model ("" = none; transcription sessions use gpt-4o-transcribe)."""
    language: str = ""
    """ISO-639-1 hint for transcription ("" = auto)."""
    tools: tuple[dict[str, Any], ...] = ()
    """Function tools declared in the session."""

    def session_object(self) -> dict[str, Any]:
        """The GA `session` object for `POST /v1/realtime/client_secrets`."""
        audio_in: dict[str, Any] = {
            "turn_detection": self.turn_detection,
            "noise_reduction": {"type": self.noise_reduction} if self.noise_reduction else None,
        }
        model = self.transcription_model or (
            "gpt-4o-transcribe" if self.type == "transcription" else ""
        )
        if model:
            transcription = {"model": model}
            if self.language:
                transcription["language"] = self.language
            audio_in["transcription"] = transcription
        if self.type == "transcription":
            return {"type": "transcription", "audio": {"input": audio_in}}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "audio": {"input": audio_in, "output": {"voice": self.voice}},
        }
        if self.tools:
            session["tools"] = [dict(tool) for tool in self.tools]
        return session


LIVE_MODELS = ("gpt-live-1", "gpt-live-1.1")
LIVE_VOICES = (
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo",
    "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone",
    "tempo", "verse", "vesper", "willow",
)  # fmt: skip
# What a device's data channel needs, and no more (GPT_LIVE_PROTOCOL.md 3): its commands (close,
# mute) and, under responses delegation, the tool results; the events its phases come from.
LIVE_DEVICE_CLIENT_EVENTS = (
    "session.close",
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.instructions.append",
    "session.commentary.append",  # announcements: the model says a text
)
LIVE_TOOL_CLIENT_EVENTS = ("response.item.create", "response.create")
LIVE_DEVICE_SERVER_EVENTS = (
    "session.started", "session.closed", "session.input_transcript.delta",
    "session.output_transcript.delta", "session.usage.updated", "session.input_audio.muted",
    "session.input_audio.unmuted", "session.delegation.created", "error", "info",
)  # fmt: skip
# Nested Responses streaming events: the calls, and how their response ended (it has no `done`).
LIVE_RESPONSE_EVENTS = (
    "response.output_item.done", "response.completed", "response.failed", "response.incomplete",
)  # fmt: skip


@dataclass(frozen=True)
class LivePolicy:
    """The GPT-Live session every device gets (`[live]`); the companion creates it upstream."""

    model: str = "gpt-live-1.1"
    """`gpt-live-1` or `gpt-live-1.1`."""
    instructions: str = DEFAULT_INSTRUCTIONS
    """Frontend instructions (voice, conversation, when to delegate)."""
    voice: str = "marin"
    """Output voice, fixed for the session."""
    delegation: str = "responses"
    """`responses` (the device's tools run through a Responses backend) or `client` (no tools)."""
    backend_model: str = "gpt-5-mini"
    """The Responses model delegated tasks go to (responses delegation)."""
    backend_instructions: str = ""
    """The backend prompt for delegated tasks ("" = none)."""
    device_tools: tuple[str, ...] = ("end_conversation",)
    """Names of the device's tools that may be offered to the model (`*` = all of them)."""

    def session_object(
        self, device_tools: list[dict[str, Any]], server_tools: Sequence[dict[str, Any]] = ()
    ) -> dict[str, Any]:
        """The `session` of `POST /v1/live/sessions`, with the device's tools the policy allows.

        Under responses delegation the companion's `server_tools` come first (a device tool of
        the same name is dropped: the device logs that as its configuration error), and the
        backend may call one tool per response (`parallel_tool_calls: false`): each round then
        has one call and one owner, who sends its output and the round's one `response.create`
        (neither side sees the other's outputs, GPT_LIVE_PROTOCOL.md 2-3). Client delegation
        has no tools.
        """
        ours = {tool.get("name") for tool in server_tools}
        allowed = [dict(tool) for tool in server_tools] + [
            tool
            for tool in device_tools
            if ("*" in self.device_tools or tool.get("name") in self.device_tools)
            and tool.get("name") not in ours
        ]
        session: dict[str, Any] = {
            "model": self.model,
            "instructions": self.instructions,
            "audio": {"output": {"voice": self.voice}},
        }
        client_events = list(LIVE_DEVICE_CLIENT_EVENTS)
        server_events: list[dict[str, str]] = [{"type": t} for t in LIVE_DEVICE_SERVER_EVENTS]
        if self.delegation == "responses":
            backend: dict[str, Any] = {"model": self.backend_model, "tools": allowed}
            if server_tools:
                backend["parallel_tool_calls"] = False
            if self.backend_instructions:
                backend["instructions"] = self.backend_instructions
            session["delegation"] = {"type": "responses", "responses": backend}
            client_events += LIVE_TOOL_CLIENT_EVENTS
            server_events += [
                {"type": "response.event", "response_event": kind} for kind in LIVE_RESPONSE_EVENTS
            ]
        else:
            session["delegation"] = {"type": "client"}
        session["client"] = {
            "data_channel": {
                "allowed_client_events": client_events,
                "allowed_server_events": server_events,
            }
        }
        return session


@dataclass(frozen=True)
class LimitSettings:
    """How many keys may be minted."""

    per_device_per_minute: int = 10
    """Per device token (burst up to this many, then this rate)."""
    global_per_minute: int = 60
    """For all devices together."""


@dataclass(frozen=True)
class StoreSettings:
    """Where the companion keeps devices, the usage ledger, memory and rate limits (`[store]`)."""

    file: Path = field(
        default_factory=lambda: Path(DEFAULT_DEVICES_FILE).with_name(STORE_FILE_NAME)
    )
    """The SQLite file (default: `companion.db` beside `devices.file`, the state directory)."""
    url: str = ""
    """A `postgresql://user@host:port/db` URL instead: one store for several companions."""
    password_file: Path | None = None
    """File holding the PostgreSQL password (never in the URL: this file may be readable)."""


@dataclass(frozen=True)
class MemorySettings:
    """What the companion remembers of a device's conversations for its next one (`[memory]`)."""

    devices: tuple[str, ...] = ()
    """Devices whose conversations are remembered (opt-in; `["*"]` = all)."""
    turns: int = 20
    """How many of the latest turns (the user's and the assistant's) a new session is given."""
    max_age_h: float = 24.0
    """Turns older than this are not given back."""
    max_chars: int = 1000
    """A longer turn is kept cut to this many characters."""

    def keeps(self, device: str) -> bool:
        """Whether `device`'s turns are remembered."""
        return "*" in self.devices or device in self.devices


@dataclass(frozen=True)
class BudgetLimits:
    """What one device, or the whole household, may spend; 0 = no limit on that figure."""

    day_usd: float = 0.0
    """US dollars per day (the companion's local midnight to midnight), by `[pricing]`."""
    month_usd: float = 0.0
    """US dollars per calendar month."""
    day_minutes: float = 0.0
    """Minutes of conversation per day."""
    month_minutes: float = 0.0
    """Minutes of conversation per calendar month."""

    @property
    def any(self) -> bool:
        """Whether any figure is limited."""
        return any((self.day_usd, self.month_usd, self.day_minutes, self.month_minutes))


@dataclass(frozen=True)
class BudgetSettings:
    """Spending limits, enforced by the companion through the ledger and the sideband."""

    household: BudgetLimits = BudgetLimits()
    """All devices together."""
    devices: Mapping[str, BudgetLimits] = field(default_factory=dict)
    """Per device name."""
    warn_at: float = 0.8
    """Share of a limit from which the device is told it is near (log line, hook event)."""
    notice: str = "I have to stop here: the budget for talking to me is used up for now."
    """What the device says before a conversation over the limit is ended."""

    @property
    def any(self) -> bool:
        """Whether any budget is set."""
        return self.household.any or any(limits.any for limits in self.devices.values())


@dataclass(frozen=True)
class CompanionConfig:
    """The whole companion configuration."""

    path: Path
    """The file this came from (relative paths were resolved against its directory)."""
    devices_file: Path
    """Where device token hashes are stored (JSON, mode 0600); by default in the service's state
    directory, `/var/lib/wakertc-companion/devices.json`. Since the store holds the devices, this
    file is only imported into it, once, if it exists."""
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    session: SessionPolicy = SessionPolicy()
    live: LivePolicy = LivePolicy()
    limits: LimitSettings = LimitSettings()
    store: StoreSettings = StoreSettings()
    budgets: BudgetSettings = BudgetSettings()
    memory: MemorySettings = MemorySettings()
    pricing: Pricing = field(default_factory=Pricing)
    """What usage costs (`[pricing]`, laid over the defaults in `pricing.py`)."""
    server_tools: tuple[ServerTool, ...] = ()
    """Tools the companion runs itself over the sideband (`[[server_tools]]`)."""


def load_companion_config(path: str | os.PathLike[str]) -> CompanionConfig:
    """Read and validate the config file; raises CompanionConfigError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompanionConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise CompanionConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CompanionConfigError(f"{path}: not valid TOML: {exc}") from None
    return _Reader(path, data).config()


SYSTEMD_CREDENTIAL = "openai-api-key"


def read_api_key(config: CompanionConfig, environ: Mapping[str, str] | None = None) -> str:
    """The standard API key (never logged), from the first of: `upstream.api_key_file`, the
    systemd credential `openai-api-key` (LoadCredential= in wakertc-companion.service), or the
    environment variable `upstream.api_key_env`."""
    env = os.environ if environ is None else environ
    upstream = config.upstream
    key_file, key_name = upstream.api_key_file, "upstream.api_key_file"
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if key_file is None and credentials and (Path(credentials) / SYSTEMD_CREDENTIAL).is_file():
        key_file, key_name = Path(credentials) / SYSTEMD_CREDENTIAL, "systemd credential"
    if key_file is not None:
        try:
            mode = key_file.stat().st_mode
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CompanionConfigError(
                f"{config.path}: {key_name}: cannot read {key_file}: {exc.strerror or exc}"
            ) from None
        if mode & stat.S_IROTH:
            raise CompanionConfigError(
                f"{config.path}: {key_name}: {key_file} is readable by other users; "
                f"chmod 600 {key_file}"
            )
        if not key:
            raise CompanionConfigError(f"{config.path}: {key_name}: {key_file} is empty")
        return key
    key = env.get(upstream.api_key_env, "").strip()
    if not key:
        raise CompanionConfigError(
            f"{config.path}: upstream.api_key_env: environment variable "
            f"{upstream.api_key_env} is not set (or set upstream.api_key_file)"
        )
    return key


# Where each session parameter the limits table checks comes from in this file.
_CONFIG_KEYS = {
    "model": "session.model",
    "audio.output.voice": "session.voice",
    "audio.input.turn_detection": "session.turn_detection.type",
    "audio.input.turn_detection.threshold": "session.turn_detection.threshold",
    "audio.input.turn_detection.idle_timeout_ms": "session.turn_detection.idle_timeout_ms",
    "audio.input.turn_detection.eagerness": "session.turn_detection.eagerness",
    "audio.input.noise_reduction.type": "session.noise_reduction",
    "audio.input.transcription.model": "session.transcription_model",
}


class _Reader:
    """Walks the parsed TOML, checking each key against what it may hold."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.base = path.parent

    def config(self) -> CompanionConfig:
        """The whole validated configuration."""
        sections = {"server", "upstream", "session", "live", "devices", "limits", "store"}
        self._only(self.data, "", sections | {"budgets", "memory", "pricing", "server_tools"})
        devices = self._table("devices")
        self._only(devices, "devices.", {"file"})
        devices_file = self._required_path(devices, "devices.file", DEFAULT_DEVICES_FILE)
        session = self._session()
        return CompanionConfig(
            path=self.path,
            devices_file=devices_file,
            server=self._server(),
            upstream=self._upstream(),
            session=session,
            live=self._live(),
            limits=self._limits(),
            store=self._store(devices_file),
            budgets=self._budgets(),
            memory=self._memory(),
            pricing=self._pricing(),
            server_tools=self._server_tools(session),
        )

    def _store(self, devices_file: Path) -> StoreSettings:
        table = self._table("store")
        self._only(table, "store.", {"file", "url", "password_file"})
        if "file" in table and "url" in table:
            raise self._error("store.url", "either store.file (SQLite) or store.url, not both")
        url = self._str(table, "store.url", "")
        if url:
            try:
                parsed = urlparse(url)
                password = parsed.password
            except ValueError:
                parsed, password = None, None
            if parsed is None or parsed.scheme not in ("postgresql", "postgres"):
                scheme = parsed.scheme if parsed is not None else "?"
                # Not the URL itself: it may hold a password.
                raise self._error("store.url", f"a postgresql:// URL (got scheme {scheme!r})")
            if password is not None:
                raise self._error(
                    "store.url", "no password in the URL; put it in store.password_file"
                )
        password_file = self._path(table, "store.password_file", "")
        if password_file is not None and not url:
            raise self._error("store.password_file", "store.url set too (a PostgreSQL password)")
        default_file = str(devices_file.with_name(STORE_FILE_NAME))
        return StoreSettings(
            file=self._required_path(table, "store.file", default_file),
            url=url,
            password_file=password_file,
        )

    def _pricing(self) -> Pricing:
        try:
            return parse_pricing(self.data.get("pricing", {}))
        except PricingError as exc:
            raise CompanionConfigError(f"{self.path}: {exc}") from None

    def _server_tools(self, session: SessionPolicy) -> tuple[ServerTool, ...]:
        try:
            tools = parse_server_tools(self.data.get("server_tools", []), self.base)
        except ServerToolError as exc:
            raise CompanionConfigError(f"{self.path}: {exc}") from None
        declared = {tool.get("name") for tool in session.tools}
        for index, tool in enumerate(tools):
            if tool.name in declared:
                raise self._error(
                    f"server_tools[{index}].name",
                    f"a name not also in session.tools (both define {tool.name!r})",
                )
        return tools

    def _server(self) -> ServerSettings:
        table = self._table("server")
        keys = {
            "host", "port", "tls_cert", "tls_key", "browser_session", "browser_origin",
            "allowed_hosts",
        }  # fmt: skip
        self._only(table, "server.", keys)
        cert = self._path(table, "server.tls_cert", "")
        key = self._path(table, "server.tls_key", "")
        if (cert is None) != (key is None):
            raise self._error("server.tls_cert", "tls_cert and tls_key set together (or neither)")
        port = self._int(table, "server.port", DEFAULT_PORT, 0, 65535)
        browser_session = self._bool(table, "server.browser_session", False)
        origin = self._origin(self._str(table, "server.browser_origin", ""))
        if browser_session and not origin:
            raise self._error(
                "server.browser_origin",
                'the origin of the page that may use GET /session (e.g. "https://my.page"), '
                "required with browser_session = true",
            )
        return ServerSettings(
            host=self._str(table, "server.host", "127.0.0.1", nonempty=True),
            port=port,
            tls_cert=cert,
            tls_key=key,
            browser_session=browser_session,
            browser_origin=origin,
            allowed_hosts=self._hosts(table.get("allowed_hosts", [])),
        )

    def _origin(self, value: str) -> str:
        """A web origin as browsers send it: scheme://host[:port], lower case, nothing after."""
        if not value:
            return ""
        origin = value.strip().lower().rstrip("/")
        try:
            parsed = urlparse(origin)
            parsed.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            parsed = None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.username is not None
            or parsed.path
            or parsed.query
            or parsed.fragment
        ):
            raise self._error(
                "server.browser_origin", f"an origin such as https://my.page:8443, got {value!r}"
            )
        return origin

    def _hosts(self, value: Any) -> tuple[str, ...]:
        key = "server.allowed_hosts"
        if not isinstance(value, list) or not all(
            isinstance(host, str) and host.strip() and not any(c in host for c in "/:@ ")
            for host in value
        ):
            raise self._error(key, 'an array of host names without ports, e.g. ["pi.home"]')
        return tuple(host.strip().lower().strip("[]") for host in value)

    def _upstream(self) -> UpstreamSettings:
        table = self._table("upstream")
        self._only(
            table, "upstream.", {"url", "api_key_env", "api_key_file", "timeout_s", "api_key"}
        )
        if "api_key" in table:
            raise self._error(
                "upstream.api_key",
                "no key in the config file; use api_key_env or api_key_file",
            )
        url = self._str(table, "upstream.url", "https://api.openai.com", nonempty=True)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise self._error("upstream.url", f"an http(s) URL, got {url!r}")
        return UpstreamSettings(
            url=url.rstrip("/"),
            api_key_env=self._str(table, "upstream.api_key_env", "OPENAI_API_KEY", nonempty=True),
            api_key_file=self._path(table, "upstream.api_key_file", ""),
            timeout_s=self._float(table, "upstream.timeout_s", 10.0, 0.1, 300.0),
        )

    def _session(self) -> SessionPolicy:
        table = self._table("session")
        keys = {
            "type", "model", "instructions", "voice", "key_lifetime_s", "turn_detection",
            "noise_reduction", "transcription_model", "language", "tools",
        }  # fmt: skip
        self._only(table, "session.", keys)
        kind = self._choice(table, "session.type", "realtime", ("realtime", "transcription"))
        noise = self._choice(
            table, "session.noise_reduction", "far_field", ("near_field", "far_field", "off")
        )
        policy = SessionPolicy(
            type=kind,
            model=self._choice(table, "session.model", "gpt-realtime", limits.REALTIME_MODELS),
            instructions=self._str(table, "session.instructions", DEFAULT_INSTRUCTIONS),
            voice=self._choice(table, "session.voice", "marin", VOICES),
            key_lifetime_s=self._int(
                table,
                "session.key_lifetime_s",
                limits.KEY_SECONDS_DEFAULT,
                limits.KEY_SECONDS_MIN,
                limits.KEY_SECONDS_MAX,
            ),
            turn_detection=self._turn_detection(table.get("turn_detection", {})),
            noise_reduction=None if noise == "off" else noise,
            transcription_model=self._str(table, "session.transcription_model", ""),
            language=self._str(table, "session.language", ""),
            tools=self._tools(table.get("tools", [])),
        )
        self._check_limits(policy)
        return policy

    def _live(self) -> LivePolicy:
        table = self._table("live")
        keys = {
            "model", "instructions", "voice", "delegation", "backend_model",
            "backend_instructions", "device_tools",
        }  # fmt: skip
        self._only(table, "live.", keys)
        tools = table.get("device_tools", ["end_conversation"])
        if not isinstance(tools, list) or not all(isinstance(t, str) and t for t in tools):
            raise self._error("live.device_tools", 'an array of tool names (or ["*"])')
        return LivePolicy(
            model=self._choice(table, "live.model", "gpt-live-1.1", LIVE_MODELS),
            instructions=self._str(table, "live.instructions", DEFAULT_INSTRUCTIONS),
            voice=self._choice(table, "live.voice", "marin", LIVE_VOICES),
            delegation=self._choice(table, "live.delegation", "responses", ("responses", "client")),
            backend_model=self._str(table, "live.backend_model", "gpt-5-mini", nonempty=True),
            backend_instructions=self._str(table, "live.backend_instructions", ""),
            device_tools=tuple(tools),
        )

    def _check_limits(self, policy: SessionPolicy) -> None:
        """What the service would refuse in the session this policy sends, by config key."""
        for problem in limits.check_session(policy.session_object(), prefix=""):
            key = _CONFIG_KEYS.get(problem.param, "session")
            raise CompanionConfigError(f"{self.path}: {key}: {problem.message}")

    def _turn_detection(self, table: Any) -> dict[str, Any] | None:
        where = "session.turn_detection"
        if not isinstance(table, dict):
            raise self._error(where, "a table")
        keys = {
            "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms",
            "create_response", "interrupt_response", "eagerness",
        }  # fmt: skip
        self._only(table, f"{where}.", keys)
        kind = self._choice(
            table, f"{where}.type", "server_vad", ("server_vad", "semantic_vad", "none")
        )
        if kind == "none":
            return None
        result: dict[str, Any] = {
            "type": kind,
            "create_response": self._bool(table, f"{where}.create_response", True),
            "interrupt_response": self._bool(table, f"{where}.interrupt_response", True),
        }
        if kind == "semantic_vad":
            result["eagerness"] = self._choice(
                table, f"{where}.eagerness", "auto", ("low", "medium", "high", "auto")
            )
            return result
        result["threshold"] = self._float(table, f"{where}.threshold", 0.5, 0.0, 1.0)
        result["prefix_padding_ms"] = self._int(table, f"{where}.prefix_padding_ms", 300, 0, 10_000)
        result["silence_duration_ms"] = self._int(
            table, f"{where}.silence_duration_ms", 500, 0, 10_000
        )
        idle = table.get("idle_timeout_ms", 0)
        if idle != 0:  # 0 = off; else within the service's range
            idle_range = limits.LIMITS["audio.input.turn_detection.idle_timeout_ms"]
            if idle_range.problem(f"{where}.idle_timeout_ms", idle) is not None:
                expected = f"0 (off) or an integer {idle_range.describe()} (got {idle!r})"
                raise self._error(f"{where}.idle_timeout_ms", expected)
            result["idle_timeout_ms"] = idle
        return result

    def _tools(self, tools: Any) -> tuple[dict[str, Any], ...]:
        if not isinstance(tools, list):
            raise self._error("session.tools", "an array of tables ([[session.tools]])")
        result = []
        for index, tool in enumerate(tools):
            where = f"session.tools[{index}]"
            if not isinstance(tool, dict):
                raise self._error(where, "a table with name, description, parameters")
            self._only(tool, f"{where}.", {"name", "description", "parameters"})
            name = self._str(tool, f"{where}.name", "", nonempty=True)
            parameters = tool.get("parameters", {"type": "object", "properties": {}})
            if isinstance(parameters, str):
                try:
                    parameters = json.loads(parameters)
                except ValueError:
                    raise self._error(f"{where}.parameters", "a table or a JSON string") from None
            if not isinstance(parameters, dict):
                raise self._error(f"{where}.parameters", "a JSON schema table")
            result.append(
                {
                    "type": "function",
                    "name": name,
                    "description": self._str(tool, f"{where}.description", ""),
                    "parameters": parameters,
                }
            )
        return tuple(result)

    def _limits(self) -> LimitSettings:
        table = self._table("limits")
        self._only(table, "limits.", {"per_device_per_minute", "global_per_minute"})
        return LimitSettings(
            per_device_per_minute=self._int(table, "limits.per_device_per_minute", 10, 1, 10_000),
            global_per_minute=self._int(table, "limits.global_per_minute", 60, 1, 100_000),
        )

    def _budgets(self) -> BudgetSettings:
        table = self._table("budgets")
        self._only(table, "budgets.", {"household", "devices", "warn_at", "notice"})
        devices = table.get("devices", {})
        if not isinstance(devices, dict):
            raise self._error("budgets.devices", "a table of device names")
        limits = {}
        for name, entry in devices.items():
            if not isinstance(entry, dict):
                raise self._error(f"budgets.devices.{name}", "a table")
            limits[name] = self._budget_limits(entry, f"budgets.devices.{name}")
        household = table.get("household", {})
        if not isinstance(household, dict):
            raise self._error("budgets.household", "a table")
        return BudgetSettings(
            household=self._budget_limits(household, "budgets.household"),
            devices=types.MappingProxyType(limits),
            warn_at=self._float(table, "budgets.warn_at", 0.8, 0.1, 1.0),
            notice=self._str(table, "budgets.notice", BudgetSettings.notice, nonempty=True),
        )

    def _memory(self) -> MemorySettings:
        table = self._table("memory")
        self._only(table, "memory.", {"devices", "turns", "max_age_h", "max_chars"})
        devices = table.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
            raise self._error("memory.devices", 'a list of device names (or ["*"])')
        return MemorySettings(
            devices=tuple(devices),
            turns=self._int(table, "memory.turns", 20, 1, 128),
            max_age_h=self._float(table, "memory.max_age_h", 24.0, 0.1, 24 * 365),
            max_chars=self._int(table, "memory.max_chars", 1000, 20, 8000),
        )

    def _budget_limits(self, table: dict[str, Any], prefix: str) -> BudgetLimits:
        names = ("day_usd", "month_usd", "day_minutes", "month_minutes")
        self._only(table, f"{prefix}.", set(names))
        values = {name: self._float(table, f"{prefix}.{name}", 0.0, 0.0, 1e9) for name in names}
        return BudgetLimits(**values)

    # -- typed getters ---------------------------------------------------------------------------

    def _error(self, key: str, expected: str) -> CompanionConfigError:
        return CompanionConfigError(f"{self.path}: {key}: expected {expected}")

    def _table(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise self._error(name, "a table")
        return value

    def _only(self, table: dict[str, Any], prefix: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise CompanionConfigError(
                    f"{self.path}: {prefix}{key}: unknown key (known: {', '.join(sorted(allowed))})"
                )

    def _str(self, table: dict[str, Any], key: str, default: str, *, nonempty: bool = False) -> str:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, str) or (nonempty and not value.strip()):
            raise self._error(key, "a non-empty string" if nonempty else "a string")
        return value

    def _choice(
        self, table: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]
    ) -> str:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if value not in allowed:
            raise self._error(key, f"one of {', '.join(allowed)} (got {value!r})")
        return str(value)

    def _bool(self, table: dict[str, Any], key: str, default: bool) -> bool:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, bool):
            raise self._error(key, f"true or false (got {value!r})")
        return value

    def _int(self, table: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._error(key, f"an integer {low}..{high} (got {value!r})")
        return value

    def _float(
        self, table: dict[str, Any], key: str, default: float, low: float, high: float
    ) -> float:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise self._error(key, f"a number {low:g}..{high:g} (got {value!r})")
        return float(value)

    def _required_path(self, table: dict[str, Any], key: str, default: str) -> Path:
        path = self._path(table, key, default)
        if path is None:
            raise self._error(key, "a file path")
        return path

    def _path(self, table: dict[str, Any], key: str, default: str) -> Path | None:
        value = self._str(table, key, default)
        if not value:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path
