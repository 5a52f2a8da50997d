"""The companion's HTTP(S) server: devices trade their token for an ephemeral key.

    POST /v1/session   Authorization: Bearer <device token> -> 200 {value, expires_at, expires_in,
                       session, client_secret: {value, expires_at}, server_tools: [names of the
                       session's tools the companion runs]}; 401 unknown token; 429 +
                       Retry-After;
                       502 upstream failed; 504 upstream timed out
    GET  /session      the same without a token, for browser pages (only if enabled): only with
                       `Origin: <browser_origin>` and a `Host` of this machine, 403 otherwise (a
                       page elsewhere, or one using DNS rebinding, cannot mint); OPTIONS answers
                       the CORS preflight by the same rules
    POST /v1/calls     Authorization: Bearer <device token>, JSON {call_id: "rtc_..."} -> 202:
                       the device's Realtime call, which the companion then joins (`sideband.py`);
                       400 not a call id; 401 unknown token
    POST /v1/live/session  Authorization: Bearer <device token>, JSON {sdp, tools?} -> 201
                       {session: {id}, transport: {type: webrtc, sdp: <answer>}, server_tools:
                       [names]}: the companion creates the GPT-Live session upstream with the
                       `[live]` policy, its server tools (responses delegation) and the
                       device's tools the policy allows; 400 no offer; 401/429 as above; 502
                       naming upstream's status (never retried: each creation is billed); 504
    GET  /healthz      200 {"status": "ok"}

Errors use the OpenAI envelope `{"error": {"message", "type", "param", "code"}}`, including
404/405 from routing; only a request that is not HTTP at all gets aiohttp's plain 400. Each mint
attempt logs one line naming the device and the outcome; no key or token is ever logged, and a
malformed request is one log line without a traceback (its raw bytes may hold a token).

A device's body may be empty or a JSON object (at most `MAX_BODY` bytes); what it asks for is
ignored, because the session policy is the owner's. A client gets `client_timeout_s` to send a
complete request head, and again for the body: a stalled (slowloris) connection is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .config import (
    DEVICE_TIMEOUT_MARGIN_S,
    DEVICE_TIMEOUT_S,
    CompanionConfig,
    CompanionConfigError,
    LivePolicy,
    read_api_key,
)
from .control import ControlPlane, realtime_memory_items
from .devices import BROWSER_DEVICE
from .ratelimit import RateLimiter
from .server_tools import definitions as server_tool_definitions
from .server_tools import runner as server_tool_runner
from .sideband import CALL_ID, Hooks, Policy, SessionWatcher, Sidebands
from .store import Store, StoreError, open_store
from .tls import CHECK_S as CERT_CHECK_S
from .tls import Certificate, CertificateError
from .upstream import UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

# A device sends `{}`: anything near this size is not a device.
MAX_BODY = 16 * 1024
# Time a client gets for its request head (and again for a body) before the connection closes.
CLIENT_TIMEOUT_S = 15.0


class _OneLineProtocolErrors(logging.Filter):
    """aiohttp logs a malformed request with a traceback quoting the raw bytes, which may hold a
    device token: keep the event, one line, without them."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed HTTP request from %s (%s, status %d)"
            record.args = (remote, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.INFO:  # a stranger's garbage is not our error
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# aiohttp's per-connection messages go here instead of `aiohttp.server`.
http_log = logging.getLogger(f"{__name__}.http")
http_log.addFilter(_OneLineProtocolErrors())


class Companion:
    """The key server: `async with Companion(load_companion_config(path)) as companion`."""

    def __init__(
        self,
        config: CompanionConfig,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        wall_clock: Callable[[], float] = time.time,
        client_timeout_s: float = CLIENT_TIMEOUT_S,
        cert_check_s: float = CERT_CHECK_S,
    ) -> None:
        """`clock` drives the rate limits (wall-clock time: companion processes on one store
        share their buckets); `wall_clock` reads upstream's `expires_at`; the TLS certificate
        files are checked for a renewal every `cert_check_s` seconds. The store is opened by
        `start`."""
        self.config = config
        self._wall_clock = wall_clock
        self._client_timeout_s = client_timeout_s
        self._api_key = api_key if api_key is not None else read_api_key(config)
        self._transport = transport
        self._clock = clock
        self._store: Store | None = None
        self._limiter: RateLimiter | None = None
        self._certificate = _certificate(config)
        self._ssl = self._certificate.context if self._certificate else None
        self._cert_check_s = cert_check_s
        self._cert_watch: asyncio.Task[None] | None = None
        self._allowed_hosts = _allowed_hosts(config)
        self._upstream: UpstreamClient | None = None
        self._runner: web.AppRunner | None = None
        # The sessions devices open, joined server to server (usage, server tools, policy).
        self.sidebands = Sidebands()
        self.hooks = Hooks()
        self.control: ControlPlane | None = None  # usage, budgets, memory: opened by start()
        self._server_tools = server_tool_runner(config.server_tools)
        self._sideband_http: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> Companion:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Open the store (importing a devices file of earlier versions), listen; returns the
        base URL (http or https, with the real port)."""
        self._store = await open_store(self.config.store, devices_file=self.config.devices_file)
        self.control = ControlPlane(self.config, self._store, self.sidebands, clock=self._clock)
        self.hooks = self.control.hooks()
        limits = self.config.limits
        self._limiter = RateLimiter(
            self._store, limits.per_device_per_minute, limits.global_per_minute, clock=self._clock
        )
        try:
            return await self._listen()
        except BaseException:
            await self.stop()
            raise

    @property
    def store(self) -> Store:
        """The open store (between `start` and `stop`)."""
        if self._store is None:
            raise RuntimeError("the companion's store is open only while it runs")
        return self._store

    async def _listen(self) -> str:
        self._upstream = UpstreamClient(
            self.config.upstream, self._api_key, transport=self._transport
        )
        self._sideband_http = aiohttp.ClientSession()
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_error_envelope])
        app.router.add_post("/v1/session", self._device_session)
        app.router.add_post("/v1/live/session", self._device_live_session)
        app.router.add_post("/v1/calls", self._device_call)
        app.router.add_get("/v1/device", self._device_standing)
        app.router.add_get("/healthz", self._healthz)
        if self.config.server.browser_session:
            app.router.add_get("/session", self._browser_session)
            app.router.add_route("OPTIONS", "/session", self._browser_preflight)
        self._runner = web.AppRunner(
            app,
            shutdown_timeout=0.5,
            access_log=None,
            logger=http_log,
            # Also the deadline for a new connection's first request head (aiohttp arms it on
            # connect): a client trickling its headers is cut off, not kept for an hour.
            keepalive_timeout=self._client_timeout_s,
            # After an answer that did not need the rest of a body, drain it this long at most.
            lingering_time=self._client_timeout_s,
        )
        await self._runner.setup()
        server = self.config.server
        site = web.TCPSite(self._runner, server.host, server.port, ssl_context=self._ssl)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self._ssl else "http"
        self.url = f"{scheme}://{server.host}:{port}"
        if self._certificate is not None:
            self._cert_watch = asyncio.create_task(
                self._certificate.watch(self._cert_check_s), name="companion-cert-watch"
            )
        self._warn_about_setup()
        return self.url

    def _warn_about_setup(self) -> None:
        """One line for each setting that works but will hurt."""
        server, upstream = self.config.server, self.config.upstream
        if self._ssl is None and not _is_loopback(server.host):
            log.warning(
                "serving plain HTTP beyond this machine (%s): device tokens and keys cross the "
                "network readable by anyone on it; set server.tls_cert and server.tls_key",
                server.host,
            )
        if upstream.timeout_s > DEVICE_TIMEOUT_S - DEVICE_TIMEOUT_MARGIN_S:
            log.warning(
                "upstream.timeout_s is %g s: devices with the default companion.timeout_s "
                "(%g s) give up before a slow mint ends; set theirs above %g s",
                upstream.timeout_s,
                DEVICE_TIMEOUT_S,
                upstream.timeout_s + DEVICE_TIMEOUT_MARGIN_S,
            )

    async def stop(self) -> None:
        """Stop listening, close the upstream connection pool and the store."""
        if self._cert_watch is not None:
            self._cert_watch.cancel()
            await asyncio.gather(self._cert_watch, return_exceptions=True)
            self._cert_watch = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.sidebands.close()
        if self.control is not None:
            await self.control.drain()  # the ledger keeps what the service reported
            self.control = None
        if self._sideband_http is not None:
            await self._sideband_http.close()
            self._sideband_http = None
        if self._upstream is not None:
            await self._upstream.aclose()
            self._upstream = None
        if self._store is not None:
            await self._store.close()
            self._store = None
            self._limiter = None

    async def _device_session(self, request: web.Request) -> web.StreamResponse:
        device = await self._identify(request, "mint")
        if isinstance(device, web.Response):
            return device
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            log.info("mint for device %s: refused, %s", device, body.reason)
            return body
        return await self._mint(device)

    async def _device_live_session(self, request: web.Request) -> web.StreamResponse:
        device = await self._identify(request, "live session")
        if isinstance(device, web.Response):
            return device
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            log.info("live session for device %s: refused, %s", device, body.reason)
            return body
        sdp, tools = body.get("sdp"), body.get("tools", [])
        if not isinstance(sdp, str) or not sdp.strip():
            return _bad_request(400, "Missing 'sdp': the device's SDP offer.", "missing_offer")
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            return _bad_request(400, "'tools' must be an array of function tools.", "invalid_tools")
        return await self._create_live(device, sdp, tools)

    async def _device_call(self, request: web.Request) -> web.StreamResponse:
        device = await self._identify(request, "call report")
        if isinstance(device, web.Response):
            return device
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        call_id = body.get("call_id")
        if not isinstance(call_id, str) or not CALL_ID.fullmatch(call_id):
            log.info("call report from device %s refused: not a call id", device)
            return _bad_request(400, "'call_id' must be a call id (rtc_...).", "invalid_call_id")
        session = self.realtime_session()
        assert self.control is not None
        items = realtime_memory_items(await self.control.recall(device))
        self._watch(
            device, "realtime", call_id, self.config.session.model, Policy.of(session), items
        )
        return web.json_response({"call_id": call_id}, status=202)

    async def _device_standing(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/device`: how the device stands against its budgets (nothing upstream)."""
        device = await self._identify(request, "standing")
        if isinstance(device, web.Response):
            return device
        refused = await self._over_budget(device, "standing")
        if refused is not None:
            return refused
        assert self.control is not None
        standing = await self.control.standing(device)
        budget = standing.as_json() if standing is not None else {"state": "unknown"}
        return web.json_response(
            {"device": device, "budget": budget}, headers={"Cache-Control": "no-store"}
        )

    async def _over_budget(self, device: str, what: str) -> web.Response | None:
        """The 429 for a device whose budget (or the household's) is used up, or None."""
        assert self.control is not None
        standing = await self.control.refusal(device)
        if standing is None:
            return None
        wait = max(1, int(standing.resets_at - self._clock()) + 1)
        log.info("%s for device %s: over budget (%s)", what, device, standing.describe())
        return api_error(
            429,
            f"Budget used up for device '{device}' ({standing.describe()}); "
            f"sessions resume in {wait} s.",
            "insufficient_quota",
            code="insufficient_quota",
            headers={"Retry-After": str(wait)},
        )

    def _watch(
        self,
        device: str,
        api: str,
        session_id: str,
        model: str,
        policy: Policy | None,
        items: list[dict[str, Any]] | None = None,
    ) -> None:
        """Join a device's session in the background."""
        assert self._sideband_http is not None
        watcher = SessionWatcher(
            device=device,
            api=api,
            session_id=session_id,
            model=model,
            base_url=self.config.upstream.url,
            api_key=self._api_key,
            http=self._sideband_http,
            pricing=self.config.pricing,
            hooks=Hooks(self.hooks.on_usage, self.hooks.on_turn, self.hooks.on_over),
            policy=policy,
            initial_items=items or (),
            tools=self._server_tools,
            tool_names=frozenset(tool.name for tool in self.config.server_tools),
        )
        if self.sidebands.add(watcher):
            log.info("device %s: joining %s session %s", device, api, session_id)
            if self.control is not None:
                self.control.session_started(watcher)

    def realtime_session(self) -> dict[str, Any]:
        """The session a Realtime key is minted with: the policy, and the server tools."""
        session = self.config.session.session_object()
        if self.config.server_tools and session.get("type") == "realtime":
            session["tools"] = [
                *session.get("tools", []),
                *server_tool_definitions(self.config.server_tools),
            ]
        return session

    async def _identify(self, request: web.Request, what: str) -> str | web.Response:
        """The device a request's token names, or the 401/500 to send (asked of the store each
        time: a device removed through another process is refused at once)."""
        token = _bearer(request)
        if token is None:
            log.info("%s refused: no device token (from %s)", what, request.remote)
            return _unauthorised("Missing device token: send Authorization: Bearer <token>.")
        try:
            device = await self.store.identify(token)
        except StoreError as exc:
            log.error("%s failed: %s", what, exc)
            return api_error(500, "The companion's store is unavailable.", "server_error")
        if device is None:
            log.info("%s refused: unknown device token (from %s)", what, request.remote)
            return _unauthorised("Unknown device token.")
        return device

    async def _read_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The body as a JSON object ({} if empty), else the error to send. Read only after
        authentication, so strangers cannot make us buffer."""
        too_large = f"Request body over {MAX_BODY} bytes."
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return _bad_request(413, too_large, "request_too_large")
        if not request.body_exists:
            return {}
        if request.content_type != "application/json":
            message = (
                f"Unsupported Content-Type {request.content_type!r}: send application/json "
                "(the body is optional)."
            )
            return _bad_request(415, message, "unsupported_content_type")
        try:
            async with asyncio.timeout(self._client_timeout_s):
                raw = await request.read()
        except TimeoutError:
            return _bad_request(408, "Request body not received in time.", "request_timeout")
        except web.HTTPRequestEntityTooLarge:
            return _bad_request(413, too_large, "request_too_large")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            message = (
                "The body must be a JSON object (its fields are ignored: the companion sets the "
                "session)."
            )
            return _bad_request(400, message, "invalid_json")
        return body

    async def _browser_session(self, request: web.Request) -> web.StreamResponse:
        refused = self._check_browser(request)
        if refused is not None:
            return refused
        response = await self._mint(BROWSER_DEVICE)
        response.headers["Access-Control-Allow-Origin"] = self.config.server.browser_origin
        response.headers["Vary"] = "Origin"
        return response

    async def _browser_preflight(self, request: web.Request) -> web.StreamResponse:
        refused = self._check_browser(request)
        if refused is not None:
            return refused
        headers = {
            "Access-Control-Allow-Origin": self.config.server.browser_origin,
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
        requested = request.headers.get("Access-Control-Request-Headers")
        if requested:
            headers["Access-Control-Allow-Headers"] = requested[:200]
        return web.Response(status=204, headers=headers)

    def _check_browser(self, request: web.Request) -> web.Response | None:
        """None if the request comes from the configured page to this machine by a name of ours,
        else the 403 to send. The route has no token: what keeps other web pages out is that a
        browser always sends the page's true `Origin`, and a page using DNS rebinding reaches us
        under its own name, which is not one of ours."""
        host = request.headers.get("Host", "")
        if not self._is_our_host(host, request):
            log.info("browser session refused: Host %r is not this companion", host[:60])
            return api_error(
                403,
                "Host not allowed for /session.",
                "invalid_request_error",
                code="host_not_allowed",
            )
        origin = request.headers.get("Origin", "")
        if origin.lower() != self.config.server.browser_origin:
            log.info("browser session refused: Origin %r is not browser_origin", origin[:60])
            return api_error(
                403,
                "Origin not allowed for /session.",
                "invalid_request_error",
                code="origin_not_allowed",
            )
        return None

    def _is_our_host(self, host: str, request: web.Request) -> bool:
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:
            return False
        if not name:
            return False
        if name in self._allowed_hosts:
            return True
        # An IP address is ours when the request arrived on it; no rebinding uses a bare address.
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        if not sockname:
            return False
        try:
            return _same_address(name, str(sockname[0]))
        except ValueError:
            return False

    async def _rate_limited(self, device: str, what: str) -> web.Response | None:
        """The 429 (or 500) to send if the device is over its limit (keys and Live sessions
        together)."""
        assert self._limiter is not None
        try:
            wait = await self._limiter.check(device)
        except StoreError as exc:
            log.error("%s for device %s failed: %s", what, device, exc)
            return api_error(500, "The companion's store is unavailable.", "server_error")
        if not wait:
            return None
        log.info("%s for device %s: rate limited (retry in %d s)", what, device, wait)
        return api_error(
            429,
            f"Too many session requests for device '{device}'; retry in {wait} s.",
            "rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )

    async def _create_live(
        self, device: str, sdp: str, tools: list[dict[str, Any]]
    ) -> web.Response:
        limited = await self._rate_limited(device, "live session")
        if limited is not None:
            return limited
        refused = await self._over_budget(device, "live session")
        if refused is not None:
            return refused
        assert self._upstream is not None and self.control is not None
        policy: LivePolicy = self.config.live
        # Server tools only through a Responses backend (client delegation has no tools).
        server_tools = self.config.server_tools if policy.delegation == "responses" else ()
        session = policy.session_object(tools, server_tool_definitions(server_tools))
        remembered = realtime_memory_items(await self.control.recall(device))
        if remembered:
            session["input"] = remembered  # the same message shape as a Realtime item
        started = time.monotonic()
        try:
            created = await self._upstream.create_live(session, sdp)
        except UpstreamTimeout as exc:
            log.warning("live session for device %s: upstream timeout (%s)", device, exc)
            return api_error(
                504, f"Upstream timeout: {exc}.", "upstream_error", code="upstream_timeout"
            )
        except UpstreamError as exc:
            status = f"status {exc.status}" if exc.status else "no response"
            log.warning("live session for device %s: upstream failed, %s (%s)", device, status, exc)
            return api_error(
                502, f"Upstream error ({status}): {exc}.", "upstream_error", code="upstream_error"
            )
        log.info(
            "live session for device %s: ok (%s, %.0f ms)",
            device,
            created["id"],
            (time.monotonic() - started) * 1000,
        )
        self._watch(device, "live", created["id"], policy.model, None)
        body = {
            "session": {"id": created["id"]},
            "transport": {"type": "webrtc", "sdp": created["sdp"]},
            # The session's tools the companion runs itself: the device leaves their calls alone.
            "server_tools": [tool.name for tool in server_tools],
        }
        return web.json_response(body, status=201, headers={"Cache-Control": "no-store"})

    async def _mint(self, device: str) -> web.Response:
        limited = await self._rate_limited(device, "mint")
        if limited is not None:
            return limited
        refused = await self._over_budget(device, "mint")
        if refused is not None:
            return refused
        assert self._upstream is not None
        policy = self.config.session
        started = time.monotonic()
        try:
            minted = await self._upstream.mint(self.realtime_session(), policy.key_lifetime_s)
        except UpstreamTimeout as exc:
            log.warning("mint for device %s: upstream timeout (%s)", device, exc)
            return api_error(
                504, f"Upstream timeout: {exc}.", "upstream_error", code="upstream_timeout"
            )
        except UpstreamError as exc:
            status = f"status {exc.status}" if exc.status else "no response"
            log.warning("mint for device %s: upstream failed, %s (%s)", device, status, exc)
            return api_error(
                502, f"Upstream error ({status}): {exc}.", "upstream_error", code="upstream_error"
            )
        # What is left of the key: a device counts its life from this, not from `expires_at`
        # against its own wall clock, which may be far off after a boot without a real-time
        # clock. Ours may be too (a companion on the Pi itself): the key was created after we
        # asked, so it has at most its lifetime less the time we waited, whatever our clock says.
        waited = time.monotonic() - started
        expires_in = max(
            0.0,
            min(minted["expires_at"] - self._wall_clock(), policy.key_lifetime_s - waited),
        )
        log.info(
            "mint for device %s: ok (valid %.0f s, %.0f ms)",
            device,
            expires_in,
            (time.monotonic() - started) * 1000,
        )
        body: dict[str, Any] = {
            **minted,
            "expires_in": round(expires_in, 3),
            "client_secret": {"value": minted["value"], "expires_at": minted["expires_at"]},
            # The session's tools the companion runs itself: the device leaves their calls alone.
            "server_tools": [tool.name for tool in self.config.server_tools],
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})


def api_error(
    status: int,
    message: str,
    error_type: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error in the OpenAI envelope."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _error_envelope(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own 404/405/413 answers are plain text; clients of an OpenAI-style API expect
    the envelope."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # %r and a cut: the path is a stranger's text (newlines, or a token pasted into a URL).
        path = request.path if len(request.path) <= 60 else request.path[:60] + "..."
        log.info("refused %s %r: %d %s", request.method[:10], path, exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = exc.reason.lower().replace(" ", "_")
        return api_error(
            exc.status, f"{exc.reason}.", "invalid_request_error", code=code, headers=headers
        )


def _bad_request(status: int, message: str, code: str) -> web.Response:
    return api_error(status, message, "invalid_request_error", code=code)


def _unauthorised(message: str) -> web.Response:
    return api_error(
        401,
        message,
        "invalid_request_error",
        code="invalid_device_token",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _allowed_hosts(config: CompanionConfig) -> frozenset[str]:
    """Host names `GET /session` answers to: the configured ones, else ours."""
    server = config.server
    if server.allowed_hosts:
        return frozenset(server.allowed_hosts)
    hostname = socket.gethostname().lower()
    names = {"localhost", hostname, f"{hostname.split('.')[0]}.local"}
    try:
        wildcard = ipaddress.ip_address(server.host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False  # a name
    if not wildcard:
        names.add(server.host.lower().strip("[]"))
    return frozenset(names)


def _same_address(a: str, b: str) -> bool:
    """Whether two IP addresses are the same (IPv4 also when mapped into IPv6); ValueError if
    `a` is not an address."""
    first, second = ipaddress.ip_address(a), ipaddress.ip_address(b.split("%")[0])
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped:
        first = first.ipv4_mapped
    if isinstance(second, ipaddress.IPv6Address) and second.ipv4_mapped:
        second = second.ipv4_mapped
    return first == second


def _certificate(config: CompanionConfig) -> Certificate | None:
    server = config.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    try:
        return Certificate(server.tls_cert, server.tls_key)
    except CertificateError as exc:
        raise CompanionConfigError(f"{config.path}: server.tls_cert: {exc}") from None


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) listens on this machine alone."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may well resolve to a network address
