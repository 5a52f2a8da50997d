"""Ephemeral keys from the owner's companion server, kept ready before they are needed.

The device never holds the standard API key: it shows its device token to the companion, which mints
a short-lived `ek_...` key with the owner's session policy. Minting costs a round trip to OpenAI, so
`KeyKeeper` keeps one valid key in hand and renews it before it expires; a conversation only waits
for the companion when no key is ready.

A key's remaining life is kept on the monotonic clock from the moment it was asked for, with its
lifetime measured by the companion's clock (`expires_in`, which our companion sends, else its
`Date` header): a device without a real-time clock boots with a wrong wall clock that NTP later
steps, and neither must make it keep an expired key or throw away a fresh one.

Exceptions::

    CompanionError            the companion did not give us a key (`retry_after_s` if it said when
     |                        to come back: a 503 with Retry-After)
     +-- CompanionRejected    401/403: our token is wrong; retrying will not help
     +-- CompanionBusy        429: retry after the delay it asked for
     +-- CompanionOverBudget  429 `insufficient_quota`: the owner's budget is used up until the
                              period resets (`retry_after_s`, bounded); no retry helps before
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
# The longest Retry-After honoured (a companion asking for more is wrong or hostile).
MAX_RETRY_AFTER_S = 300.0
# Retry-After when a 429 gives none (or one that cannot be read).
DEFAULT_RETRY_AFTER_S = 5.0


class CompanionError(Exception):
    """The companion server did not provide a key."""

    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """Seconds the companion asked us to wait before the next attempt, if it said."""


class CompanionRejected(CompanionError):
    """The companion refused this device's token."""

    retryable = False


class CompanionBusy(CompanionError):
    """The companion rate-limited us."""

    retry_after_s: float


class CompanionOverBudget(CompanionError):
    """The companion refuses sessions: this device's or the household's budget is used up."""

    retryable = False


class _Unexpected(CompanionError):
    """Getting a key failed in a way no handler foresaw (a bug, a library error)."""


@dataclass(frozen=True)
class EphemeralKey:
    """A minted key and the session policy it carries."""

    value: str
    expires_at: float
    """Expiry as the server wrote it (its wall clock; informational, the device's may differ)."""
    session: dict[str, Any]
    lifetime_s: float = 0.0
    """How long it was valid for when it arrived (by the companion's clock)."""
    received_at: float | None = None
    """`clock()` when it was asked for: its life is counted from there (None: a key made
    without one, counted from `expires_at` on this device's wall clock)."""
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    """A clock that wall-clock steps do not move (time.monotonic)."""
    server_tools: frozenset[str] = frozenset()
    """Tools of the session the companion runs itself: their calls are not the device's."""

    def __repr__(self) -> str:  # never show the key itself
        return f"EphemeralKey(expires_at={self.expires_at:.0f}, value=[redacted])"

    def seconds_left(self, now: float | None = None) -> float:
        """Seconds until the key expires (`now` from `clock`)."""
        if self.received_at is None:
            return self.expires_at - (time.time() if now is None else now)
        return self.received_at + self.lifetime_s - (self.clock() if now is None else now)


def companion_tls(config: CompanionConfig) -> ssl.SSLContext | bool:
    """What the device trusts as the companion's certificate (httpx's `verify`)."""
    # A self-signed home server is trusted only through the CA the config names.
    if config.ca_file is not None:
        return ssl.create_default_context(cafile=str(config.ca_file))
    return True


class CompanionClient:
    """Asks the companion server for ephemeral keys (`POST /v1/session`), or to create a GPT-Live
    session with this device's offer (`POST /v1/live/session`)."""

    def __init__(
        self,
        config: CompanionConfig,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock` counts the keys' lives (monotonic); `wall_clock` is the device's own time,
        used only with a companion that sends neither `expires_in` nor a `Date` header."""
        self._clock = clock
        self._wall_clock = wall_clock
        self._url = config.url.rstrip("/") + "/v1/session"
        self._live_url = config.url.rstrip("/") + "/v1/live/session"
        self._device_url = config.url.rstrip("/") + "/v1/device"
        self._calls_url = config.url.rstrip("/") + "/v1/calls"
        self._reports: set[asyncio.Task[None]] = set()
        self._report_failed = False  # a failing report is logged once, then at DEBUG
        self._timeout = config.timeout_s
        self._client = httpx.AsyncClient(
            verify=companion_tls(config),
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(config.timeout_s),
        )

    async def mint(self) -> EphemeralKey:
        """One request for a new key; raises `CompanionError` with the reason on failure."""
        # The key's life is counted from before we asked: never longer than it really has.
        asked_at = self._clock()
        response = await self._request("POST", self._url, json={})
        _raise_refusal(response)
        retry_after = _retry_after(response)
        if response.status_code != 200:
            raise CompanionError(
                f"companion answered {response.status_code}: {error_message(response)}",
                retry_after,
            )
        try:
            body = response.json()
            expires_at = float(body["expires_at"])
            key = EphemeralKey(
                value=str(body["value"]),
                expires_at=expires_at,
                session=dict(body.get("session") or {}),
                lifetime_s=self._lifetime(body, expires_at, response),
                received_at=asked_at,
                clock=self._clock,
                server_tools=_names(body.get("server_tools")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CompanionError("companion answered 200 with an unexpected body") from exc
        if not key.value:
            raise CompanionError("companion answered 200 without a key")
        return key

    async def create_live(self, offer: str, tools: list[dict[str, Any]]) -> LiveAnswer:
        """One Live session for this offer. Never retried here: the companion bills a session
        upstream for every request that reaches it."""
        response = await self._request("POST", self._live_url, json={"sdp": offer, "tools": tools})
        _raise_refusal(response)
        if response.status_code != 201:
            raise CompanionError(
                f"companion answered {response.status_code}: {error_message(response)}"
            )
        try:
            body = response.json()
            session_id, answer = body["session"]["id"], body["transport"]["sdp"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CompanionError("companion answered 201 with an unexpected body") from exc
        if not isinstance(session_id, str) or not isinstance(answer, str):
            raise CompanionError("companion answered 201 without a session id and answer")
        return LiveAnswer(session_id, answer, _names(body.get("server_tools")))

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request to the companion; a timeout or a network failure is a `CompanionError`."""
        try:
            return await self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise CompanionError(f"companion did not answer within {self._timeout:g} s") from exc
        except httpx.HTTPError as exc:
            raise CompanionError(f"companion unreachable: {_describe_http_error(exc)}") from exc

    async def standing(self) -> dict[str, Any]:
        """How this device stands against the owner's budgets (`GET /v1/device`: no upstream
        call, nothing billed); raises `CompanionOverBudget` when it is over."""
        response = await self._request("GET", self._device_url)
        _raise_refusal(response)
        if response.status_code == 404:  # a companion from before budgets: none are kept
            return {"state": "ok"}
        if response.status_code != 200:
            raise CompanionError(
                f"companion answered {response.status_code}: {error_message(response)}"
            )
        try:
            budget = response.json()["budget"]
            if not isinstance(budget, dict) or not isinstance(budget.get("state"), str):
                raise TypeError(budget)
        except (ValueError, KeyError, TypeError) as exc:
            raise CompanionError("companion answered 200 with an unexpected body") from exc
        return budget

    def report_call(self, call_id: str) -> None:
        """Tell the companion the id of a call just made, so that it joins it (usage, its own
        tools); in the background: the conversation never waits for it, nor fails by it."""
        task = asyncio.get_running_loop().create_task(
            self._report_call(call_id), name=f"report-call-{call_id}"
        )
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report_call(self, call_id: str) -> None:
        try:
            response = await self._client.post(self._calls_url, json={"call_id": call_id})
            problem = None if response.status_code < 300 else f"answered {response.status_code}"
        except httpx.HTTPError as exc:
            problem = _describe_http_error(exc)
        except Exception as exc:  # a report must never take anything down with it
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            log.debug("reported call %s to the companion", call_id)
            return
        level = logging.DEBUG if self._report_failed else logging.WARNING
        self._report_failed = True
        log.log(
            level,
            "could not report call %s to the companion (%s): it cannot meter or steer it "
            "(further failures are logged at DEBUG)",
            call_id,
            problem,
        )

    def _lifetime(self, body: dict[str, Any], expires_at: float, response: httpx.Response) -> float:
        """Seconds the key had left when the companion answered, by the companion's clock: its
        `expires_in`, else `expires_at` less its `Date` (whole seconds, so one is taken off),
        else, for a companion that sends neither, by this device's wall clock."""
        expires_in = body.get("expires_in")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            return float(expires_in)
        sent = _http_date(response.headers.get("Date"))
        if sent is not None:
            return expires_at - sent - 1.0
        return expires_at - self._wall_clock()

    async def aclose(self) -> None:
        """Close the connection pool (a report still on its way is dropped)."""
        for task in list(self._reports):
            task.cancel()
        await asyncio.gather(*self._reports, return_exceptions=True)
        await self._client.aclose()


def _names(value: Any) -> frozenset[str]:
    """A list of tool names from the companion (anything else: none)."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(name for name in value if isinstance(name, str))


@dataclass(frozen=True)
class LiveAnswer:
    """The companion's answer to a Live offer."""

    session_id: str
    sdp: str
    server_tools: frozenset[str] = frozenset()
    """Tools of the session the companion runs itself: their calls are not the device's."""


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

    @property
    def companion(self) -> CompanionClient:
        """The companion client keys come from (GPT-Live sessions are created through it)."""
        return self._client

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

    def refuse(self, error: CompanionError) -> None:
        """The companion says no session may start now (the budget): drop the key in hand, so
        that a wake asks again instead of opening a call, and report it as the keeper's health
        until a key can be had again."""
        self._key = None
        self._set_health(error)
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
                    # The companion's Retry-After (bounded when read) beats our own backoff.
                    if exc.retry_after_s is not None:
                        wait = exc.retry_after_s
                    elif exc.retryable:
                        wait = delay
                    else:
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
        last = self.last_error
        # Failing to get a key and being refused for the budget show differently: a change
        # between the two is news too.
        changed = (error is None) != (last is None) or isinstance(
            error, CompanionOverBudget
        ) != isinstance(last, CompanionOverBudget)
        self.last_error = error
        if changed and self._on_health is not None:
            self._on_health(error)

    async def _sleep_or_change(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)


def _raise_refusal(response: httpx.Response) -> None:
    """Raise what a 401/403 (our token) or a 429 (rate limit, or the budget) means."""
    status = response.status_code
    if status in (401, 403):
        raise CompanionRejected(
            f"companion refused this device's token ({status}); check companion.token_file"
        )
    if status != 429:
        return
    retry_after = _retry_after(response)
    if _error_code(response) == "insufficient_quota":
        wait = MAX_RETRY_AFTER_S if retry_after is None else retry_after
        raise CompanionOverBudget(f"over budget: {error_message(response)}", wait)
    wait = DEFAULT_RETRY_AFTER_S if retry_after is None else retry_after
    raise CompanionBusy(f"companion rate limit (retry in {wait:g} s)", wait)


def _error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the companion asks us to wait (Retry-After: seconds, or an HTTP date read against
    its own Date header, not our clock), within 1..MAX_RETRY_AFTER_S; None if it says nothing
    usable."""
    header = response.headers.get("Retry-After")
    if not header:
        return None
    try:
        seconds = float(header)
    except ValueError:
        then, now = _http_date(header), _http_date(response.headers.get("Date"))
        if then is None or now is None:
            return None
        seconds = then - now
    if seconds != seconds:  # NaN
        return None
    return max(1.0, min(seconds, MAX_RETRY_AFTER_S))


def _http_date(header: str | None) -> float | None:
    """An HTTP date as a Unix time, or None."""
    if not header:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


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
