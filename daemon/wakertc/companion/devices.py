"""Device tokens: named, shown once, stored only as SHA-256 hashes.

The devices file is JSON (`{"devices": {"NAME": {"sha256": "...", "added_at": <unix s>}}}`),
written atomically with mode 0600 (written by root, as by `sudo wakertc companion add-device`, it
goes to the owner of its directory: the service's user for its state directory), and refused when
others may read it or others (or the group) may write it: whoever can write it can add a device.
The companion no longer serves from this file: its store (`store.py`) holds the devices and
imports a devices file of earlier versions once, at start (`DeviceStore.records`). The class
stays for that import and for tools that prepare a file before a companion first starts. Tokens
are compared with `hmac.compare_digest` against every stored hash, so timing reveals neither
which device nor how much of a hash matched."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from ..atomic import write_atomic

log = logging.getLogger(__name__)

TOKEN_PREFIX = "wkd_"  # noqa: S105 (a prefix, not a secret)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNSAFE_MODE = stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP
# The name `GET /session` mints under (its rate limit and its log lines): no device may take it.
BROWSER_DEVICE = "browser"


class DeviceError(ValueError):
    """A device name or devices file problem (message names the file or the device)."""


def token_hash(token: str) -> str:
    """Hex SHA-256 of a token, as stored."""
    # aiohttp decodes header bytes that are not UTF-8 to lone surrogates: hash those too (they
    # match no token) rather than fail the request.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> None:
    """Raise DeviceError unless `name` can be a device's name."""
    if not NAME_PATTERN.fullmatch(name):
        raise DeviceError(
            f"device name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    if name.lower() == BROWSER_DEVICE:
        raise DeviceError(
            f"device name {name!r} is reserved for the companion's browser route "
            "(GET /session); choose another name"
        )


class DeviceStore:
    """The devices file: add, remove, list, and look up a token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._devices: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int] | None = None

    def names(self) -> list[str]:
        """Registered device names, sorted."""
        self._refresh()
        return sorted(self._devices)

    def add(self, name: str) -> str:
        """Register `name` and return its new token (the only time it is ever visible)."""
        check_name(name)
        self._refresh()
        if name in self._devices:
            raise DeviceError(f"device {name!r} already exists in {self.path}; remove it first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._devices[name] = {"sha256": token_hash(token), "added_at": int(time.time())}
        self._save()
        return token

    def remove(self, name: str) -> None:
        """Revoke a device's token."""
        self._refresh()
        if name not in self._devices:
            raise DeviceError(f"no device {name!r} in {self.path}")
        del self._devices[name]
        self._save()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every device's record (`{"sha256": ..., "added_at": ...}`) by name, checked: what the
        companion's store imports from this file."""
        self._refresh()
        for name, record in self._devices.items():
            check_name(name)
            digest = record.get("sha256")
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise DeviceError(f"{self.path}: device {name!r} has no valid sha256")
        return {name: dict(record) for name, record in self._devices.items()}

    def identify(self, token: str) -> str | None:
        """The name of the device holding `token`, or None."""
        self._refresh()
        digest = token_hash(token).encode()
        found = None
        for name, record in self._devices.items():
            # No early exit: every stored hash is compared, whatever matches.
            if hmac.compare_digest(digest, str(record.get("sha256", "")).encode()):
                found = name
        return found

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._devices, self._stamp = {}, None
            return
        except OSError as exc:
            raise DeviceError(f"{self.path}: cannot read devices file: {exc.strerror}") from None
        if info.st_mode & UNSAFE_MODE:
            self._devices, self._stamp = {}, None
            mode = stat.S_IMODE(info.st_mode)
            raise DeviceError(
                f"{self.path}: devices file has mode {mode:04o} (readable by others or writable "
                f"by others or the group); chmod 600 {self.path}"
            )
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DeviceError(
                f"{self.path}: devices file is unreadable or not JSON: {exc}"
            ) from None
        devices = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(devices, dict) or not all(isinstance(v, dict) for v in devices.values()):
            raise DeviceError(f'{self.path}: expected {{"devices": {{NAME: {{"sha256": ...}}}}}}')
        self._devices = devices
        self._stamp = stamp
        log.debug("loaded %d devices from %s", len(devices), self.path)

    def _save(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        payload = json.dumps({"devices": self._devices}, indent=2, sort_keys=True) + "\n"
        write_atomic(self.path, payload, 0o600, self._owner())
        self._stamp = None  # re-read our own write next time, like anyone else's

    def _owner(self) -> tuple[int, int] | None:
        """Who should own the file when root writes it: the service reads it as its own user, so
        root must not take it over. The existing file's owner if that is not root (someone chose
        it), else the directory's owner (the service's state directory is the service's)."""
        if os.geteuid() != 0:
            return None  # written as ourselves; we could not give it away anyway
        try:
            info = self.path.stat()
            if info.st_uid != 0:
                return info.st_uid, info.st_gid
        except FileNotFoundError:
            pass
        info = self.path.parent.stat()
        return info.st_uid, info.st_gid
