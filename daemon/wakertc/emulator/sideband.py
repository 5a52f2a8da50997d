"""Server-side connections to a running call: the Realtime sideband and GPT-Live attach.

A backend that holds the project key joins a WebRTC call the device made and sees and steers it
over a WebSocket (GPT_LIVE_PROTOCOL.md 2; REALTIME_PROTOCOL.md):

    GET /v1/realtime?call_id=rtc_...                  Realtime: the call's server events, and
                                                      client events validated as on the channel
    GET /v1/live/sessions/{id}/attach[?graceful_close=true]
                                                      GPT-Live: the same, plus the mic as server
                                                      `session.input_audio.append` and the
                                                      reply as `session.output_audio.delta`
                                                      (both mono PCM16LE 24 kHz, base64), and the
                                                      last ~3 s replayed on attach

`SidebandHub` belongs to one call: the call publishes every server event and the reflected audio
to it, and it fans them out to the attached `Sideband`s. A sideband writes from its own queue, so
publishing never waits on a slow backend; one that falls `MAX_QUEUED` messages behind is closed
(1011) rather than allowed to grow without bound. When the call ends the hub ends its sidebands
after what was queued (`session.closed` included) has been written: a Realtime sideband and a Live
one with `graceful_close=true` get a close frame (1000); a Live one without it loses its TCP
connection with no close frame, which is what the flag's opt-in leaves a client to handle.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web
from av import AudioFrame, AudioResampler

from .audio_buffer import Samples
from .events import error_event, event

log = logging.getLogger(__name__)

REFLECT_RATE = 24000  # sideband audio is mono PCM16LE at 24 kHz whatever the transport carries
REPLAY_S = 3.0  # GPT-Live replays about this much on attach
MAX_QUEUED = 5000  # messages a sideband may fall behind (~100 s of reflected audio)
CLOSE_TIMEOUT_S = 2.0
HEARTBEAT_S = 20.0
MAX_MESSAGE = 16 * 1024 * 1024  # a fixture of 30 s of 24 kHz PCM16 is ~2 MB of base64


class Sideband:
    """One attached WebSocket: a writer task drains its queue; `end()` closes it after that."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, *, graceful: bool) -> None:
        self.ws = ws
        self._request = request
        self._graceful = graceful
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._ended = False
        self._close_task: asyncio.Task[None] | None = None
        self._writer = asyncio.get_running_loop().create_task(
            self._write(), name=f"sideband-writer-{id(self):x}"
        )

    def send_text(self, text: str) -> None:
        """Queue one message (a serialised server event)."""
        if self._ended:
            return
        if self._queue.qsize() >= MAX_QUEUED:
            log.warning("sideband fell %d messages behind: closing it", MAX_QUEUED)
            self._ended = True
            self._writer.cancel()
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(WSCloseCode.INTERNAL_ERROR, b"sideband too slow"),
                name="sideband-close",
            )
            return
        self._queue.put_nowait(text)

    def send(self, event: dict[str, Any]) -> None:
        """Queue one server event."""
        self.send_text(json.dumps(event))

    def end(self) -> None:
        """The call is over: close after everything queued has been written."""
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)

    async def wait_written(self) -> None:
        """Until the writer has finished (the connection is closing or closed)."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def stop(self) -> None:
        """The client went away: stop writing."""
        self._ended = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write(self) -> None:
        try:
            while True:
                text = await self._queue.get()
                if text is None:
                    break
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-write
            log.debug("sideband write failed: %r", exc)
            return
        if self._graceful:
            await self._close(WSCloseCode.OK, b"")
        else:
            transport = self._request.transport
            if transport is not None:
                transport.abort()  # no close frame: the opt-in was not given

    async def _close(self, code: int, message: bytes) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self.ws.close(code=code, message=message), CLOSE_TIMEOUT_S)


class SidebandHub:
    """The sidebands of one call; for Live also the reflected audio and the replay window."""

    def __init__(self, *, live: bool, started: float) -> None:
        self.live = live
        self._started = started  # monotonic start of the session's timeline
        self.attached: list[Sideband] = []
        self._recent: collections.deque[tuple[float, str]] = collections.deque()
        self._ended = False
        self._mic = AudioResampler(format="s16", layout="mono", rate=REFLECT_RATE)
        self._reply = AudioResampler(format="s16", layout="mono", rate=REFLECT_RATE)

    @property
    def ended(self) -> bool:
        """Whether the call has ended (no more attaches)."""
        return self._ended

    def attach(self, sideband: Sideband) -> None:
        """A new sideband: Live first replays the last `REPLAY_S` of events."""
        if self.live:
            self._prune(time.monotonic())
            for _, text in self._recent:
                sideband.send_text(text)
        self.attached.append(sideband)
        if self._ended:
            sideband.end()

    def detach(self, sideband: Sideband) -> None:
        """The sideband's connection closed."""
        with contextlib.suppress(ValueError):
            self.attached.remove(sideband)

    def publish(self, event: dict[str, Any]) -> None:
        """A server event of the call, for every sideband (and Live's replay window)."""
        if self._ended or not (self.attached or self.live):
            return
        self._publish_text(json.dumps(event))

    def reflect_mic(self, frame: AudioFrame) -> None:
        """Live: a decoded mic frame as `session.input_audio.append` (before muting)."""
        if not self.live or self._ended:
            return
        audio = _pcm(self._mic, frame)
        if audio:
            # Upstream's reflected mic carries no event_id (SDK SessionInputAudioAppend).
            self._publish_text(
                json.dumps({"type": "session.input_audio.append", "audio": _b64(audio)})
            )

    def reflect_reply(self, samples: Samples, handed: float) -> None:
        """Live: a reply frame leaving the track, as `session.output_audio.delta`."""
        if not self.live or self._ended:
            return
        frame = AudioFrame.from_ndarray(
            samples.astype(np.int16, copy=False).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        audio = _pcm(self._reply, frame)
        if not audio:
            return
        start = int((handed - self._started) * 1000)
        end = start + len(samples) * 1000 // 48000
        self._publish_text(
            json.dumps(
                {
                    "type": "session.output_audio.delta",
                    "delta": _b64(audio),
                    "start_ms": start,
                    "end_ms": end,
                }
            )
        )

    def end(self) -> None:
        """The call is over: every sideband closes after what it has queued."""
        self._ended = True
        self._recent.clear()
        for sideband in list(self.attached):
            sideband.end()

    def _publish_text(self, text: str) -> None:
        if self.live:
            now = time.monotonic()
            self._recent.append((now, text))
            self._prune(now)
        for sideband in list(self.attached):
            sideband.send_text(text)

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - REPLAY_S:
            self._recent.popleft()


def invalid_json(api: str, reason: str) -> dict[str, Any]:
    """The `error` a sideband gets for a message that is not a JSON object."""
    message = f"Invalid JSON in client event: {reason}"
    if api == "live":
        return live_error(message, "invalid_json", None, None)
    return error_event(message, code="invalid_json")


def refusal(api: str, message: dict[str, Any]) -> dict[str, Any] | None:
    """The `error` for a client event a sideband may not send, or None.

    GPT-Live's sideband sends anything but audio and `session.start` (SDK `ConnectClientEvent`);
    `transport.dtmf.send` is in that union but is for SIP calls only. A Realtime sideband is
    checked by the engine exactly as the data channel is.
    """
    if api != "live":
        return None
    kind = message.get("type")
    client_event_id = message.get("event_id")
    client_event_id = client_event_id if isinstance(client_event_id, str) else None
    if kind in ("session.start", "session.input_audio.append"):
        text = f"'{kind}' cannot be sent on a sideband: the session has started and its audio "
        text += "comes from the WebRTC transport."
        return live_error(text, "invalid_event", "type", client_event_id)
    if kind == "transport.dtmf.send":
        text = "'transport.dtmf.send' is supported only for SIP calls."
        return live_error(text, "invalid_event", "type", client_event_id)
    return None


def live_error(
    message: str, code: str, param: str | None, client_event_id: str | None
) -> dict[str, Any]:
    """A GPT-Live `error` event (the engine's shape: `client_event_id` in and beside `error`)."""
    error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
    if param is not None:
        error["param"] = param
    fields: dict[str, Any] = {}
    if client_event_id is not None:
        error["client_event_id"] = client_event_id
        fields["client_event_id"] = client_event_id
    return event("error", error=error, **fields)


def _pcm(resampler: AudioResampler, frame: AudioFrame) -> bytes:
    resampled = resampler.resample(frame)
    return b"".join(out.to_ndarray().reshape(-1).astype("<i2").tobytes() for out in resampled)


def _b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


async def serve(
    request: web.Request,
    hub: SidebandHub,
    on_message: Callable[[Sideband, str], None],
    *,
    graceful: bool,
) -> web.WebSocketResponse:
    """Run one sideband connection until either side ends it (the request is authorised)."""
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    sideband = Sideband(ws, request, graceful=graceful)
    hub.attach(sideband)
    log.info("sideband attached to %s", request.path_qs.split("?")[0])
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                on_message(sideband, message.data)
            elif message.type == WSMsgType.BINARY:
                on_message(sideband, message.data.decode("utf-8", "replace"))
            elif message.type == WSMsgType.ERROR:
                log.info("sideband connection error: %r", ws.exception())
    finally:
        hub.detach(sideband)
        if hub.ended:
            await sideband.wait_written()
        else:
            await sideband.stop()
        log.info("sideband detached (close code %s)", ws.close_code)
    return ws
