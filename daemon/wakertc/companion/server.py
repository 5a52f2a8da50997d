"""The companion's HTTP(S) server: devices trade their token for an ephemeral key.

    POST /v1/session   Authorization: Bearer <device token> -> 200 {value, expires_at, session,
                       client_secret: {value, expires_at}}; 401 unknown token; 429 + Retry-After;
                       502 upstream failed; 504 upstream timed out
    GET  /session      the same without a token, for browser pages (only if enabled)
    GET  /healthz      200 {"status": "ok"}

Errors use the OpenAI envelope `{"error": {"message", "type", "param", "code"}}`. Each mint
attempt logs one line naming the device and the outcome; no key or token is ever logged.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
from aiohttp import web

from .config import CompanionConfig, CompanionConfigError, read_api_key
from .devices import DeviceError, DeviceStore
from .ratelimit import RateLimiter
from .upstream import UpstreamClient, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

BROWSER_DEVICE = "browser"


class Companion:
    """The key server: `async with Companion(load_companion_config(path)) as companion`."""

    def __init__(
        self,
        config: CompanionConfig,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._api_key = api_key if api_key is not None else read_api_key(config)
        self._transport = transport
        self.devices = DeviceStore(config.devices_file)
        self.limiter = RateLimiter(
            config.limits.per_device_per_minute, config.limits.global_per_minute, clock=clock
        )
        self._ssl = _ssl_context(config)
        self._upstream: UpstreamClient | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Companion:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Listen; returns the base URL (http or https, with the real port)."""
        self.devices.names()  # a corrupt devices file should stop start-up, not the first mint
        self._upstream = UpstreamClient(
            self.config.upstream, self._api_key, transport=self._transport
        )
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/v1/session", self._device_session)
        app.router.add_get("/healthz", self._healthz)
        if self.config.server.browser_session:
            app.router.add_get("/session", self._browser_session)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        server = self.config.server
        site = web.TCPSite(self._runner, server.host, server.port, ssl_context=self._ssl)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self._ssl else "http"
        self.url = f"{scheme}://{server.host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and close the upstream connection pool."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._upstream is not None:
            await self._upstream.aclose()
            self._upstream = None

    async def _device_session(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        if token is None:
            log.info("mint refused: no device token (from %s)", request.remote)
            return _unauthorised("Missing device token: send Authorization: Bearer <token>.")
        try:
            device = self.devices.identify(token)
        except DeviceError as exc:
            log.error("mint failed: %s", exc)
            return api_error(500, "The companion's devices file is unreadable.", "server_error")
        if device is None:
            log.info("mint refused: unknown device token (from %s)", request.remote)
            return _unauthorised("Unknown device token.")
        return await self._mint(device)

    async def _browser_session(self, request: web.Request) -> web.StreamResponse:
        response = await self._mint(BROWSER_DEVICE)
        origin = self.config.server.browser_origin
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
        return response

    async def _mint(self, device: str) -> web.Response:
        wait = self.limiter.check(device)
        if wait:
            log.info("mint for device %s: rate limited (retry in %d s)", device, wait)
            return api_error(
                429,
                f"Too many key requests for device '{device}'; retry in {wait} s.",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        assert self._upstream is not None
        policy = self.config.session
        started = time.monotonic()
        try:
            minted = await self._upstream.mint(policy.session_object(), policy.key_lifetime_s)
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
        log.info(
            "mint for device %s: ok (valid %d s, %.0f ms)",
            device,
            minted["expires_at"] - int(time.time()),
            (time.monotonic() - started) * 1000,
        )
        body: dict[str, Any] = {
            **minted,
            "client_secret": {"value": minted["value"], "expires_at": minted["expires_at"]},
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


def _ssl_context(config: CompanionConfig) -> ssl.SSLContext | None:
    server = config.server
    if server.tls_cert is None or server.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CompanionConfigError(
            f"{config.path}: server.tls_cert: cannot load {server.tls_cert} with "
            f"{server.tls_key}: {exc}"
        ) from None
    return context
