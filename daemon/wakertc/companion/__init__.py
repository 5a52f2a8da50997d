"""The companion key server: the only place the standard OpenAI API key lives.

    from wakertc.companion import Companion, load_companion_config
    async with Companion(load_companion_config("companion.toml")) as companion:
        ...  # devices POST companion.url + "/v1/session" with their token

Modules: `config` (TOML -> frozen dataclasses), `devices` (token hashes), `ratelimit`,
`upstream` (client_secrets call), `server` (HTTP routes), `command` (CLI).
"""

from __future__ import annotations

from .command import main
from .config import (
    CompanionConfig,
    CompanionConfigError,
    LimitSettings,
    ServerSettings,
    SessionPolicy,
    UpstreamSettings,
    load_companion_config,
    read_api_key,
)
from .devices import DeviceError, DeviceStore
from .server import Companion

__all__ = [
    "Companion",
    "CompanionConfig",
    "CompanionConfigError",
    "DeviceError",
    "DeviceStore",
    "LimitSettings",
    "ServerSettings",
    "SessionPolicy",
    "UpstreamSettings",
    "load_companion_config",
    "main",
    "read_api_key",
]
