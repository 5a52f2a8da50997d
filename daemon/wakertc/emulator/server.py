"""The emulator's HTTP side: key minting, call setup and hang-up, GA and legacy beta routes.

Routes (all under the API's own paths, so the official SDK works with `base_url=<emulator>/v1`):

    POST /v1/realtime/client_secrets       GA: mint an ek_ key (standard key)
    POST /v1/realtime/calls                GA: SDP offer -> 201 answer (ek_ or standard key;
                                           multipart sdp+session with the standard key)
    POST /v1/realtime/calls/{id}/hangup    GA: end a call
    POST /v1/realtime/sessions             beta: mint (flat fields, client_secret, 60 s)
    POST /v1/realtime?model=...            beta: SDP offer -> 201 answer
    POST /v1/live/sessions                 GPT-Live: JSON {session, transport: {webrtc, sdp}}
                                           -> 201 {session: {id}, transport: {sdp}} (standard key)
    GET  /v1/realtime?call_id=rtc_...      Realtime sideband: a WebSocket joining a call
    GET  /v1/live/sessions/{id}/attach     GPT-Live sideband (`?graceful_close=true`); both with
                                           the standard key, see `sideband.py`
    GET  /healthz                          liveness for scripts

Errors use the API's envelope `{"error": {"message", "type", "param", "code"}}`, the emulator's
own 404 and 405 included. Browsers may call the API directly (OpenAI's WebRTC sample posts the
offer from the page), so every answer carries CORS headers as upstream's do: a preflight
`OPTIONS` on `/v1/*` is answered, every response (errors too) has `Access-Control-Allow-Origin`,
and `Location` (the call id) is exposed to scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import sideband
from .call import CallContext, EmulatedCall, InvalidOffer
from .faults import Faults
from .live_session import check_create_body, session_resource
from .options import EmulatorOptions
from .replies import SpeechSynth
from .script import ScriptTurn, load_script
from .session import (
    BETA_KEY_SECONDS,
    SessionError,
    beta_view,
    create_session,
    key_seconds,
    session_from_beta,
)
from .validation import ClientEventValidator

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 256 * 1024
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_MAX_AGE_S = 600
STOP_TIMEOUT_S = 2.5
KEEP_CLOSED_CALLS = 50


@dataclass
class _Key:
    expires_at: int
    session: dict[str, Any]


class Emulator:
    """A local stand-in for the OpenAI Realtime API; `async with Emulator(options) as emu`."""

    def __init__(self, options: EmulatorOptions, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self._clock = clock  # wall clock for key expiry; tests pass a fake one
        self.faults = Faults.parse(options.faults)  # FaultError: bad --fault
        script: tuple[ScriptTurn, ...] = ()
        if options.script is not None:
            script = load_script(options.script)  # ScriptError: bad --script
        if options.reply not in ("echo", "tone", "speech"):
            raise ValueError(f"unknown reply policy {options.reply!r} (echo, tone or speech)")
        self.calls: dict[str, EmulatedCall] = {}
        self._keys: dict[str, _Key] = {}
        self._validator = ClientEventValidator()
        self._live_validator = ClientEventValidator("live")
        self._validator_task: asyncio.Task[None] | None = None
        self._script = script
        self._synth = SpeechSynth()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._new_call = asyncio.Condition()
        self.url = ""

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Listen; returns the base URL (`http://HOST:PORT`, the real port when port was 0)."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_cors, _api_errors])
        app.router.add_post("/v1/realtime/client_secrets", self._client_secrets)
        app.router.add_post("/v1/realtime/sessions", self._beta_sessions)
        app.router.add_post("/v1/realtime/calls", self._calls)
        app.router.add_post("/v1/realtime/calls/{call_id}/hangup", self._hangup)
        app.router.add_post("/v1/realtime", self._beta_calls)
        app.router.add_post("/v1/live/sessions", self._live_sessions)
        app.router.add_get("/v1/realtime", self._realtime_sideband)
        app.router.add_get("/v1/live/sessions/{session_id}/attach", self._live_attach)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.options.host}:{port}"
        self._validator_task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._load_validators), name="emulator-load-validator"
        )
        if self.faults.active:
            log.info("emulator faults on: %s", ", ".join(self.faults.active))
        return self.url

    async def stop(self) -> None:
        """Hang up every call and stop listening (bounded to a few seconds)."""
        self._stopping.set()
        open_calls = [call.close("emulator stopping") for call in self.calls.values()]
        if open_calls:
            done = asyncio.gather(*open_calls, return_exceptions=True)
            try:
                await asyncio.wait_for(done, STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("some calls did not close within %.1f s", STOP_TIMEOUT_S)
        if self._validator_task is not None:
            # A thread cannot be cancelled; the import finishes in well under a second.
            await asyncio.gather(self._validator_task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def next_call(self) -> EmulatedCall:
        """Wait for the next call to be answered (wrap in `asyncio.timeout` to bound it)."""
        async with self._new_call:
            count = len(self.calls)
            await self._new_call.wait_for(lambda: len(self.calls) > count)
            return list(self.calls.values())[-1]

    def _load_validators(self) -> None:
        self._validator.load()
        self._live_validator.load()

    def _now(self) -> int:
        return int(self._clock())

    async def _validator_ready(self) -> None:
        if self._validator_task is not None:
            await asyncio.shield(self._validator_task)

    # -- minting ---------------------------------------------------------------------------------

    async def _client_secrets(self, request: web.Request) -> web.StreamResponse:
        denied = self._require_standard_key(request)
        if denied is not None:
            return denied
        faulted = await self._mint_fault()
        if faulted is not None:
            return faulted
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            seconds = key_seconds(body.get("expires_after"))
            expires_at = self._now() + seconds
            session = create_session(body.get("session"), expires_at=expires_at)
        except SessionError as exc:
            return api_error(400, exc.message, code=exc.code, param=exc.param)
        value = self._mint(session, expires_at)
        log.info("minted a %s key for %s (%d s)", session["type"], session.get("model"), seconds)
        return web.json_response({"value": value, "expires_at": expires_at, "session": session})

    async def _beta_sessions(self, request: web.Request) -> web.StreamResponse:
        denied = self._require_standard_key(request)
        if denied is not None:
            return denied
        faulted = await self._mint_fault()
        if faulted is not None:
            return faulted
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        expires_at = self._now() + BETA_KEY_SECONDS
        try:
            session = create_session(session_from_beta(body), expires_at=expires_at)
        except SessionError as exc:
            param = exc.param.removeprefix("session.") if exc.param else None
            return api_error(400, exc.message, code=exc.code, param=param)
        value = self._mint(session, expires_at)
        log.info("minted a beta key for %s", session.get("model"))
        return web.json_response(beta_view(session, value, expires_at))

    def _mint(self, session: dict[str, Any], expires_at: int) -> str:
        now = self._now()
        for stale in [k for k, v in self._keys.items() if v.expires_at <= now]:
            del self._keys[stale]
        value = "ek_" + secrets.token_hex(16)
        self._keys[value] = _Key(expires_at=expires_at, session=session)
        return value

    async def _mint_fault(self) -> web.Response | None:
        if self.faults.mint_slow_s is not None:
            await self._sleep_unless_stopping(self.faults.mint_slow_s)
        if self.faults.mint_500:
            return _server_error()
        if self.faults.mint_429:
            return api_error(
                429,
                "Rate limit reached for requests. Please try again in 1s.",
                error_type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        return None

    # -- calls -------------------------------------------------------------------------------------

    async def _calls(self, request: web.Request) -> web.StreamResponse:
        return await self._create_call(request, model=None)

    async def _beta_calls(self, request: web.Request) -> web.StreamResponse:
        return await self._create_call(request, model=request.query.get("model"))

    async def _create_call(self, request: web.Request, *, model: str | None) -> web.StreamResponse:
        if self.faults.calls_hang:
            await self._stopping.wait()
            return api_error(503, "The emulator is stopping.", error_type="server_error")
        if self.faults.calls_401:
            return _invalid_key()
        if self.faults.calls_500:
            return _server_error()
        token = _bearer(request)
        standard = self._is_standard(token)
        key = self._keys.get(token or "")
        if not standard and (key is None or key.expires_at <= self._now()):
            return _invalid_key() if token else _missing_key()
        try:
            offer, session_part = await _read_offer(request)
        except InvalidOffer as exc:
            return api_error(400, f"Invalid offer: {exc}", code="invalid_offer")
        try:
            if key is not None and not standard:
                session = json.loads(json.dumps(key.session))
                if session_part is not None:
                    session = create_session({**session, **session_part})
            else:
                request_session = session_part or {"type": "realtime"}
                if model is not None and "model" not in request_session:
                    request_session = {**request_session, "model": model}
                session = create_session(request_session)
        except SessionError as exc:
            return api_error(400, exc.message, code=exc.code, param=exc.param)
        call = EmulatedCall(session, self._call_context(), on_closed=self._call_closed)
        try:
            answer = await call.answer(offer)
        except InvalidOffer as exc:
            await call.close("invalid offer")
            return api_error(400, f"Invalid offer: {exc}", code="invalid_offer")
        async with self._new_call:
            self.calls[call.id] = call
            self._new_call.notify_all()
        return web.Response(
            status=201,
            body=answer.encode(),
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call.id}"},
        )

    async def _live_sessions(self, request: web.Request) -> web.StreamResponse:
        """GPT-Live: the project key creates the session and relays the device's offer."""
        denied = self._require_standard_key(request)
        if denied is not None:
            return denied
        if self.faults.calls_hang:
            await self._stopping.wait()
            return api_error(503, "The emulator is stopping.", error_type="server_error")
        if self.faults.calls_401:
            return _invalid_key()
        if self.faults.calls_500:
            return _server_error()
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        await self._validator_ready()
        try:
            check_create_body(body)
        except SessionError as exc:
            return api_error(400, exc.message, code=exc.code, param=exc.param)
        session = session_resource(body["session"], now=self._now())
        call = EmulatedCall(session, self._call_context(), on_closed=self._call_closed, api="live")
        try:
            answer = await call.answer(body["transport"]["sdp"])
        except InvalidOffer as exc:
            await call.close("invalid offer")
            return api_error(
                400, f"Invalid offer: {exc}", code="invalid_offer", param="transport.sdp"
            )
        async with self._new_call:
            self.calls[call.id] = call
            self._new_call.notify_all()
        log.info("live session %s created for %s", call.id, session["model"])
        return web.json_response(
            {"session": {"id": call.id}, "transport": {"type": "webrtc", "sdp": answer}},
            status=201,
        )

    async def _hangup(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        if not self._is_standard(token) and token not in self._keys:
            return _invalid_key() if token else _missing_key()
        call = self.calls.get(request.match_info["call_id"])
        if call is None:
            return api_error(
                404, f"Call '{request.match_info['call_id']}' not found.", code="call_not_found"
            )
        await call.close("hung up by the client")
        return web.json_response({})

    # -- sidebands -------------------------------------------------------------------------------

    async def _realtime_sideband(self, request: web.Request) -> web.StreamResponse:
        """A backend joins a Realtime WebRTC call by its id (project key only)."""
        denied = self._require_standard_key(request)
        if denied is not None:
            return denied
        call_id = request.query.get("call_id")
        if call_id is None:
            if "model" in request.query:
                return api_error(
                    400,
                    "The emulator does not run WebSocket sessions: join a WebRTC call with "
                    "?call_id=<id>.",
                    code="unsupported",
                    param="model",
                )
            return api_error(
                400,
                "Missing required parameter: 'call_id' (or 'model').",
                code="missing_required_parameter",
                param="call_id",
            )
        call = self.calls.get(call_id)
        if call is None or call.api != "realtime" or call.closed:
            return api_error(
                404,
                "No session found for the provided call_id.",
                code="call_id_not_found",
                param="call_id",
            )
        return await self._serve_sideband(request, call, graceful=True)

    async def _live_attach(self, request: web.Request) -> web.StreamResponse:
        """A backend attaches to a GPT-Live session (project key only)."""
        denied = self._require_standard_key(request)
        if denied is not None:
            return denied
        flag = request.query.get("graceful_close", "false")
        if flag not in ("true", "false"):
            return api_error(
                400,
                f"Invalid value: '{flag}' for 'graceful_close'. Expected true or false.",
                code="invalid_value",
                param="graceful_close",
            )
        session_id = request.match_info["session_id"]
        call = self.calls.get(session_id)
        if call is None or call.api != "live" or call.closed:
            return api_error(
                404,
                f"No Live session found with id '{session_id}'.",
                code="session_not_found",
                param="session_id",
            )
        return await self._serve_sideband(request, call, graceful=flag == "true")

    async def _serve_sideband(
        self, request: web.Request, call: EmulatedCall, *, graceful: bool
    ) -> web.StreamResponse:
        if not web.WebSocketResponse().can_prepare(request).ok:
            return api_error(
                400,
                "This endpoint takes a WebSocket connection (Upgrade: websocket).",
                code="invalid_request",
            )
        await self._validator_ready()
        return await sideband.serve(
            request, call.sidebands, call.handle_sideband_message, graceful=graceful
        )

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        open_calls = sum(1 for call in self.calls.values() if not call.closed)
        return web.json_response({"status": "ok", "open_calls": open_calls})

    def _call_context(self) -> CallContext:
        return CallContext(
            faults=self.faults,
            script=self._script,
            reply=self.options.reply,
            reply_text=self.options.reply_text,
            synth=self._synth,
            validator=self._validator,
            validator_ready=self._validator_ready,
            record_dir=self.options.record_dir,
            connect_timeout_s=self.options.connect_timeout_s,
            live_validator=self._live_validator,
        )

    def _call_closed(self, call: EmulatedCall) -> None:
        log.debug("call %s is over (%s)", call.id, call.close_reason)
        # Keep recent calls for inspection, but a long-running emulator must not grow forever.
        closed = [key for key, value in self.calls.items() if value.closed]
        for key in closed[:-KEEP_CLOSED_CALLS]:
            del self.calls[key]

    # -- helpers -----------------------------------------------------------------------------------

    def _is_standard(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(
            token.encode(), self.options.api_key.encode()
        )

    def _require_standard_key(self, request: web.Request) -> web.Response | None:
        token = _bearer(request)
        if token is None:
            return _missing_key()
        if not self._is_standard(token):
            return _invalid_key()
        return None

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def api_error(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error in the API's envelope."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _cors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answer preflights; put the CORS headers on every response (errors included)."""
    if request.method == "OPTIONS" and request.path.startswith("/v1/"):
        requested = request.headers.get("Access-Control-Request-Headers", "")
        response: web.StreamResponse = web.Response(
            status=200,
            headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": requested or "authorization, content-type",
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
            },
        )
    else:
        response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Expose-Headers"] = "Location"
    return response


@web.middleware
async def _api_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route, wrong method, body too large) in the API's envelope."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"Invalid URL ({request.method} {request.path})"
        if exc.status == 413:
            message = f"The request body is too large (the limit is {MAX_BODY} bytes)."
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return api_error(exc.status, message, headers=headers)


def _invalid_key() -> web.Response:
    return api_error(
        401,
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def _missing_key() -> web.Response:
    return api_error(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    )


def _server_error() -> web.Response:
    return api_error(
        500,
        "The server had an error while processing your request. Sorry about that!",
        error_type="server_error",
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        return api_error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return api_error(400, "The request body must be a JSON object.")
    return body


async def _read_offer(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer (and, for multipart, the `session` part) from a calls request."""
    if request.content_type == "multipart/form-data":
        parts: dict[str, str] = {}
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = getattr(part, "name", None)
            if name in ("sdp", "session"):
                parts[name] = await part.text()  # type: ignore[union-attr]
        if "sdp" not in parts:
            raise InvalidOffer("the multipart body has no 'sdp' part")
        session = None
        if "session" in parts:
            try:
                session = json.loads(parts["session"])
            except ValueError:
                raise InvalidOffer("the 'session' part is not valid JSON") from None
            if not isinstance(session, dict):
                raise InvalidOffer("the 'session' part must be a JSON object")
        return parts["sdp"], session
    if request.content_type not in ("application/sdp", "text/plain", ""):
        raise InvalidOffer(
            f"unsupported Content-Type {request.content_type!r}; "
            "send application/sdp or multipart/form-data"
        )
    return await request.text(), None
