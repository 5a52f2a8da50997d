"""The companion key server: the only place the standard OpenAI API key lives.

    from wakertc.companion import Companion, load_companion_config
    async with Companion(load_companion_config("companion.toml")) as companion:
        ...  # devices POST companion.url + "/v1/session" with their token

Modules: `config` (TOML -> frozen dataclasses), `store` (devices, usage ledger, memory and
rate-limit buckets in SQLite or PostgreSQL), `devices` (token hashes; the devices file of earlier
versions), `ratelimit`, `upstream` (client_secrets call), `server` (HTTP routes), `command` (CLI).
"""

from __future__ import annotations

from .command import main
from .config import (
    CompanionConfig,
    CompanionConfigError,
    LimitSettings,
    ServerSettings,
    SessionPolicy,
    StoreSettings,
    UpstreamSettings,
    load_companion_config,
    read_api_key,
)
from .devices import DeviceError, DeviceStore
from .server import Companion
from .store import Spend, Store, StoreError, Turn, UsageEntry, open_store

__all__ = [
    "Companion",
    "CompanionConfig",
    "CompanionConfigError",
    "DeviceError",
    "DeviceStore",
    "LimitSettings",
    "ServerSettings",
    "SessionPolicy",
    "Spend",
    "Store",
    "StoreError",
    "StoreSettings",
    "Turn",
    "UpstreamSettings",
    "UsageEntry",
    "load_companion_config",
    "main",
    "open_store",
    "read_api_key",
]
