"""Ephemeral keys from the owner's companion server, kept ready before they are needed.

The device never holds the standard API key: it shows its device token to the companion, which mints
a short-lived `ek_...` key with the owner's session policy. Minting costs a round trip to OpenAI, so
`KeyKeeper` keeps one valid key in hand and renews it before it expires; a conversation only waits
for the companion when no key is ready.

Exceptions::

    CompanionError            the companion did not give us a key
     +-- CompanionRejected    401/403: our token is wrong; retrying will not help
     +-- CompanionBusy        429: retry after the delay it asked for
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .config import CompanionConfig

log = logging.getLogger(__name__)

# Renew this long before expiry, so a key handed out always has time left to open a call.
RENEW_MARGIN_S = 60.0
# Never hand out a key with less than this left.
MIN_VALIDITY_S = 15.0
# With keys too short-lived to keep one ready, how often the keeper still asks for one (health).
SHORT_KEY_CHECK_S = 300.0


class CompanionError(Exception):
    """The companion server did not provide a key."""

    retryable = True


class CompanionRejected(CompanionError):
    """The companion refused this device's token."""

    retryable = False


class CompanionBusy(CompanionError):
    """The companion rate-limited us."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class _Unexpected(CompanionError):
    """Getting a key failed in a way no handler foresaw (a bug, a library error)."""


@dataclass(frozen=True)
class EphemeralKey:
    """A minted key and the session policy it carries."""

    value: str
    expires_at: float
    session: dict[str, Any]
    lifetime_s: float = 0.0
    """How long it was valid for when it arrived."""

    def __repr__(self) -> str:  # never show the key itself
        return f"EphemeralKey(expires_at={self.expires_at:.0f}, value=[redacted])"

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the key expires."""
        return self.expires_at - (time.time() if now is None else now)


class CompanionClient:
    """Asks the companion server for ephemeral keys (`POST /v1/session`)."""

    def __init__(
        self,
        config: CompanionConfig,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = config.url.rstrip("/") + "/v1/session"
        self._timeout = config.timeout_s
        # A self-signed home server is trusted only through the CA the config names.
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(config.ca_file))
            if config.ca_file is not None
            else True
        )
        self._client = httpx.AsyncClient(
            verify=verify,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(config.timeout_s),
        )

    async def mint(self) -> EphemeralKey:
        """One request for a new key; raises `CompanionError` with the reason on failure."""
        try:
            response = await self._client.post(self._url, json={})
        except httpx.TimeoutException as exc:
            raise CompanionError(f"companion did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise CompanionError(f"companion unreachable: {_describe_http_error(exc)}") from exc
        if response.status_code in (401, 403):
            raise CompanionRejected(
                f"companion refused this device's token ({response.status_code}); "
                "check companion.token_file"
            )
        if response.status_code == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"))
            raise CompanionBusy(f"companion rate limit (retry in {retry_after:g} s)", retry_after)
        if response.status_code != 200:
            raise CompanionError(
                f"companion answered {response.status_code}: {error_message(response)}"
            )
        try:
            body = response.json()
            expires_at = float(body["expires_at"])
            key = EphemeralKey(
                value=str(body["value"]),
                expires_at=expires_at,
                session=dict(body.get("session") or {}),
                lifetime_s=expires_at - time.time(),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CompanionError("companion answered 200 with an unexpected body") from exc
        if not key.value:
            raise CompanionError("companion answered 200 without a key")
        return key

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class KeyKeeper:
    """Keeps one ephemeral key ready; `get()` returns it or mints one on demand."""

    def __init__(
        self,
        client: CompanionClient,
        *,
        renew_margin_s: float = RENEW_MARGIN_S,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        min_validity_s: float = MIN_VALIDITY_S,
        on_health: Callable[[CompanionError | None], None] | None = None,
    ) -> None:
        """`on_health(error)` is called when minting starts failing (the error) or works again
        (None), whoever asked for the key: the background renewal or a conversation."""
        self._client = client
        self._on_health = on_health
        self._renew_margin_s = renew_margin_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._min_validity_s = min_validity_s
        self._key: EphemeralKey | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.last_error: CompanionError | None = None

    def ready_key(self) -> EphemeralKey | None:
        """The key in hand, if it is still good for a new call."""
        key = self._key
        if key is not None and key.seconds_left() > self._min_validity_s:
            return key
        return None

    async def get(self) -> EphemeralKey:
        """A usable key: the one in hand, else a freshly minted one (may raise CompanionError)."""
        key = self.ready_key()
        if key is not None:
            return key
        async with self._lock:
            key = self.ready_key()  # minted by someone else while we waited for the lock
            if key is None:
                key = await self._mint()
            return key

    def discard(self, key: EphemeralKey) -> None:
        """Forget `key` (the Realtime API refused it), so the next `get` mints afresh."""
        if self._key is key:
            self._key = None
            self._changed.set()

    async def run(self) -> None:
        """Background task: keep a key in hand, renewing before expiry, backing off on failure."""
        delay = self._retry_initial_s
        while True:
            key = self.ready_key()
            if key is None or key.seconds_left() <= self._renew_when_left(key):
                try:
                    async with self._lock:
                        key = await self._mint()
                    delay = self._retry_initial_s
                except CompanionError as exc:
                    wait = exc.retry_after_s if isinstance(exc, CompanionBusy) else delay
                    if not exc.retryable:
                        wait = self._retry_max_s
                    log.warning(
                        "could not renew the session key: %s (retrying in %.0f s)", exc, wait
                    )
                    delay = min(delay * 2, self._retry_max_s)
                    await self._sleep_or_change(wait * random.uniform(0.8, 1.2))
                    continue
            renew_when_left = self._renew_when_left(key)
            if renew_when_left <= 0:
                # Too short-lived to keep one ready (the companion's policy): each wake mints its
                # own. Check in now and then, so that a dead companion is still noticed.
                await self._sleep_or_change(SHORT_KEY_CHECK_S)
                continue
            await self._sleep_or_change(max(1.0, key.seconds_left() - renew_when_left))

    def _renew_when_left(self, key: EphemeralKey) -> float:
        """Seconds left at which `key` is renewed: the margin, or half its life if that is less
        (short-lived keys would otherwise be renewed in a loop, into the companion's rate
        limit); 0 when it cannot be kept ready at all."""
        half = key.lifetime_s / 2
        if half <= self._min_validity_s:
            return 0.0
        return min(self._renew_margin_s, half)

    async def _mint(self) -> EphemeralKey:
        started = time.monotonic()
        try:
            key = await self._client.mint()
        except CompanionError as exc:
            self._set_health(exc)
            raise
        except Exception as exc:
            # A bug or an error nobody foresaw must not end the keeper's task for good: it is a
            # failed attempt like any other, retried with backoff (traceback logged once).
            if not isinstance(self.last_error, _Unexpected):
                log.exception("unexpected error while getting a session key")
            error = _Unexpected(f"unexpected error: {type(exc).__name__}: {exc}")
            self._set_health(error)
            raise error from exc
        self._set_health(None)
        self._key = key
        log.info(
            "session key ready (valid %.0f s, minted in %.0f ms)",
            key.seconds_left(),
            (time.monotonic() - started) * 1000,
        )
        return key

    def _set_health(self, error: CompanionError | None) -> None:
        changed = (error is None) != (self.last_error is None)
        self.last_error = error
        if changed and self._on_health is not None:
            self._on_health(error)

    async def _sleep_or_change(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)


def _retry_after(header: str | None) -> float:
    try:
        return max(1.0, min(float(header or 5), 300.0))
    except ValueError:
        return 5.0


def error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style error envelope, bounded; else the HTTP reason."""
    try:
        message = response.json()["error"]["message"]
        return str(message)[:200]
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase or "no details"


def _describe_http_error(exc: httpx.HTTPError) -> str:
    # httpx messages can be empty for connection errors; fall back to the class name.
    return str(exc) or type(exc).__name__
