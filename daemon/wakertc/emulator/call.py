"""One emulated WebRTC call: the aiortc answerer, its event channel, audio both ways, faults.

The call owns the peer connection and the plumbing around the protocol engine: it decodes received
audio to 48 kHz mono for the engine and the recorder, turns data-channel messages into parsed
client events (one task, in order), and sends the engine's events. Call-level faults (drop-after,
silent, bad-event, consent-stop, jitter) live here because they are about the transport, not the
protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription
from av import AudioResampler

from .. import limits
from . import sideband as sideband_module
from .audio_buffer import Samples
from .engine import RealtimeEngine
from .events import error_event, new_id
from .faults import Faults
from .live_engine import LiveEngine
from .netpath import JitteryPath
from .playout import ReplyTrack
from .recorder import CallRecorder
from .replies import SpeechSynth
from .script import ScriptTurn, TurnPlan
from .sideband import Sideband, SidebandHub
from .validation import ClientEventValidator

log = logging.getLogger(__name__)

EVENTS_LABEL = "oai-events"
RATE = 48000
CLOSE_TIMEOUT_S = 3.0
FLUSH_TIMEOUT_S = 1.0  # for the last event to leave before the peer connection closes
MAX_EARLY_EVENTS = 1000
BAD_JSON = '{"type": "response.output_audio_transcript.delta", "delta": "unterminated'


class InvalidOffer(ValueError):
    """An SDP offer the emulator cannot answer (upstream: 400 invalid_offer)."""


@dataclass(frozen=True)
class CallContext:
    """What every call of one emulator shares."""

    faults: Faults
    script: tuple[ScriptTurn, ...]
    reply: str
    reply_text: str
    synth: SpeechSynth
    validator: ClientEventValidator | None
    validator_ready: Callable[[], Awaitable[None]]
    record_dir: Path | None
    connect_timeout_s: float
    live_validator: ClientEventValidator | None = None


def check_offer(sdp: str) -> None:
    """Raise InvalidOffer unless `sdp` has an Opus audio m-line and a data channel."""
    if not sdp.lstrip().startswith("v=0"):
        raise InvalidOffer("the body is not an SDP offer (it must start with v=0)")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise InvalidOffer(f"the SDP could not be parsed: {exc}") from exc
    audio = [m for m in description.media if m.kind == "audio"]
    if not audio:
        raise InvalidOffer("the offer has no audio m-line")
    if not any(codec.mimeType.lower() == "audio/opus" for codec in audio[0].rtp.codecs):
        raise InvalidOffer("the audio m-line does not offer Opus")
    if not any(
        m.kind == "application" and "webrtc-datachannel" in m.fmt for m in description.media
    ):
        raise InvalidOffer("the offer has no data channel (m=application ... webrtc-datachannel)")


class EmulatedCall:
    """A call `rtc_<id>`: answer the offer, then run until hung up, dropped or closed."""

    def __init__(
        self,
        session: dict[str, Any],
        context: CallContext,
        *,
        on_closed: Callable[[EmulatedCall], None] | None = None,
        api: str = "realtime",
    ) -> None:
        self.api = api
        self.id = str(session["id"]) if api == "live" else new_id("rtc")
        self.started = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.received_samples = 0
        self.close_reason: str | None = None
        self._context = context
        self._faults = context.faults
        self._on_closed = on_closed
        self.record_path = context.record_dir / self.id if context.record_dir else None
        self._recorder = CallRecorder(self.record_path) if self.record_path else None
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._track = ReplyTrack(idle_audio=not self._faults.no_idle_audio)
        # Server-side connections to this call (Realtime sideband, Live attach).
        self.sidebands = SidebandHub(live=api == "live", started=self.started)
        self._origin: Sideband | None = None  # the sideband whose event is being handled
        if self._recorder is not None or api == "live":
            self._track.on_frame = self._frame_sent
        self.engine: RealtimeEngine | LiveEngine
        if api == "live":
            self.engine = LiveEngine(
                session=session,
                send=self._send_event,
                track=self._track,
                plan=TurnPlan(context.script, context.reply),
                synth=context.synth,
                reply_text=context.reply_text,
                hang_up=lambda why: self._spawn(self._close_after_flush(why), "close"),
                validator=context.live_validator,
                never_replies=self._faults.no_reply,
            )
            self.engine.on_withheld = self.sidebands.publish
        else:
            self.engine = RealtimeEngine(
                session=session,
                send=self._send_event,
                track=self._track,
                plan=TurnPlan(context.script, context.reply),
                synth=context.synth,
                reply_text=context.reply_text,
                validator=context.validator,
                transcription_fails=self._faults.transcription_failed,
                never_replies=self._faults.no_reply,
            )
        self._channel: Any = None
        self._inbox: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = False
        self._junk_turn = 0
        self._early: list[dict[str, Any]] = []
        self._path: JitteryPath | None = None
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_connection_state)

    @property
    def closed(self) -> bool:
        """Whether the call has ended."""
        return self._closed.is_set()

    @property
    def connection_state(self) -> str:
        """The answerer's RTCPeerConnection state."""
        return str(self._pc.connectionState)

    async def answer(self, offer: str) -> str:
        """Apply the client's offer and return the answer SDP (raises InvalidOffer)."""
        check_offer(offer)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc rejects bad offers with assorted exception types
            raise InvalidOffer(f"the offer was refused: {exc}") from exc
        sender = self._pc.addTrack(self._track)
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        if self._faults.jitter is not None and sender.transport is not None:
            self._path = JitteryPath(sender.transport, self._faults.jitter)
        self._spawn(self._watch_connect(), "connect-watchdog")
        self._spawn(self._expire(), "max-session")
        log.info("call %s answered", self.id)
        return str(self._pc.localDescription.sdp)

    async def wait_closed(self) -> None:
        """Wait until the call has ended (wrap in `asyncio.timeout` to bound it)."""
        await self._closed.wait()

    async def close(self, reason: str) -> None:
        """End the call (idempotent): stop the engine, close the peer, finish the recording."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        log.info(
            "call %s closed: %s (%.1f s, %.1f s of audio received)",
            self.id,
            reason,
            time.monotonic() - self.started,
            self.received_samples / RATE,
        )
        self.engine.close()
        self.sidebands.end()
        self._track.stop()
        current = asyncio.current_task()
        others = [task for task in self._tasks if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._path is not None:
            await self._path.close()
        try:
            await asyncio.wait_for(self._pc.close(), CLOSE_TIMEOUT_S)
        except Exception as exc:  # a half-dead transport may fail to close cleanly
            log.debug("call %s: peer close: %r", self.id, exc)
        if self._recorder is not None:
            self._recorder.close()
        self._closed.set()
        if self._on_closed is not None:
            self._on_closed(self)

    # -- peer connection events ------------------------------------------------------------------

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != EVENTS_LABEL or self._channel is not None:
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self._channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._spawn(self.close("event channel closed"), "close"))
        self._spawn(self._run_inbox(), "inbox")
        if not self._faults.silent:
            self.engine.start()
            early, self._early = self._early, []
            for event in early:
                self._send_on_channel(event)
        if self._faults.drop_after_s is not None:
            self._spawn(self._drop_after(self._faults.drop_after_s), "fault-drop")
        if self._faults.consent_stop_s is not None:
            self._spawn(self._consent_stop(self._faults.consent_stop_s), "fault-consent")

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        self._inbox.put_nowait(message)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._pump_audio(track), "audio-in")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        log.debug("call %s: peer connection %s", self.id, state)
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed") and not self._closing:
            self._spawn(self.close(f"peer connection {state}"), "close")

    # -- tasks -------------------------------------------------------------------------------

    async def _run_inbox(self) -> None:
        await self._context.validator_ready()
        while True:
            text = await self._inbox.get()
            try:
                message = json.loads(text)
            except ValueError as exc:
                message, reason = None, str(exc)
            else:
                reason = "not a JSON object"
            if isinstance(message, dict):
                self._record_in(message)
                if not self._faults.silent:
                    self.engine.handle_event(message)
            else:
                if self._recorder is not None:
                    self._recorder.raw("in", text)
                self.events.append({"t": self._t(), "dir": "in", "raw": text})
                if not self._faults.silent:
                    self.engine.handle_invalid(text, reason)

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrived = time.monotonic()
            self.sidebands.reflect_mic(frame)  # type: ignore[arg-type]  # Live: before muting
            for out in resampler.resample(frame):  # type: ignore[arg-type]
                samples: Samples = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                self.received_samples += len(samples)
                if self._recorder is not None:
                    self._recorder.audio(samples, arrived=arrived, pts=frame.pts)
                if not self._faults.silent:
                    self.engine.on_audio(samples)

    async def _watch_connect(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self._context.connect_timeout_s)
        except TimeoutError:
            await self.close(f"peer did not connect within {self._context.connect_timeout_s:g} s")

    async def _expire(self) -> None:
        """The service ends every session at its maximum length: an `error`, then hang-up."""
        seconds = self._faults.max_session_s
        if seconds is None:
            seconds = limits.MAX_SESSION_S
        await asyncio.sleep(max(0.0, self.started + seconds - time.monotonic()))
        length = f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"
        if isinstance(self.engine, LiveEngine):
            # Live ends a session with `session.closed` (reason `expired`), not an error.
            if not self._faults.silent:
                self.engine.finish("expired")
                await self._flush()
        elif not self._faults.silent:
            self._send_event(
                error_event(
                    f"Your session hit the maximum duration of {length}.", code="session_expired"
                )
            )
            await self._flush()
        await self.close(f"maximum session length ({seconds:g} s)")

    async def _close_after_flush(self, reason: str) -> None:
        await self._flush()
        await self.close(reason)

    async def _flush(self) -> None:
        """Until the event channel has handed everything queued to SCTP (bounded)."""
        channel = self._channel
        if channel is None:
            return
        if channel.bufferedAmount:
            drained = asyncio.Event()
            channel.once("bufferedamountlow", drained.set)  # threshold 0: all handed over
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), FLUSH_TIMEOUT_S)
        await asyncio.sleep(0.05)  # and SCTP to put it on the wire before the abort

    async def _drop_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.close(f"drop-after={seconds:g} fault")

    async def _consent_stop(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        # Stopping the ICE transports closes their UDP sockets without a DTLS close_notify or
        # SCTP ABORT: the client hears nothing more and only its consent checks notice.
        transports = {
            t.sender.transport.transport for t in self._pc.getTransceivers() if t.sender.transport
        }
        if self._pc.sctp is not None:
            transports.add(self._pc.sctp.transport.transport)
        log.info("call %s: consent-stop fault, ICE goes silent", self.id)
        for transport in transports:
            await transport.stop()

    # -- sending ---------------------------------------------------------------------------------

    def handle_sideband_message(self, sideband: Sideband, text: str) -> None:
        """A message from a sideband: parsed and handled as the data channel's, except that
        an `error` it provokes goes back to that sideband only (the device did not send it)."""
        try:
            message = json.loads(text)
        except ValueError as exc:
            message, reason = None, str(exc)
        else:
            reason = "not a JSON object"
        if not isinstance(message, dict):
            self.events.append({"t": self._t(), "dir": "in", "via": "sideband", "raw": text})
            sideband.send(sideband_module.invalid_json(self.api, reason))
            return
        self.events.append({"t": self._t(), "dir": "in", "via": "sideband", "event": message})
        if self._recorder is not None:
            self._recorder.event("in", message)
        refused = sideband_module.refusal(self.api, message)
        if refused is not None:
            sideband.send(refused)
            return
        if self._faults.silent or self._closing:
            return
        self._origin = sideband
        try:
            self.engine.handle_event(message, via_sideband=True)
        finally:
            self._origin = None

    def _send_event(self, event: dict[str, Any]) -> None:
        if self._closing:
            return
        origin = self._origin
        if origin is not None and event.get("type") == "error":
            origin.send(event)
            self.events.append({"t": self._t(), "dir": "out", "via": "sideband", "event": event})
            return
        self.sidebands.publish(event)
        self._send_on_channel(event)

    def _frame_sent(self, samples: Samples, handed: float) -> None:
        if self._recorder is not None:
            self._recorder.sent(samples, handed)
        if self._track.frame_audible:
            self.sidebands.reflect_reply(samples, handed)

    def _send_on_channel(self, event: dict[str, Any]) -> None:
        channel = self._channel
        if self._closing:
            return
        if channel is None:
            # Audio can arrive before the channel opens (a device's queued pre-roll goes out as
            # soon as DTLS is up); its VAD events wait for the channel, after session.created.
            if len(self._early) < MAX_EARLY_EVENTS:
                self._early.append(event)
            return
        if channel.readyState != "open":
            return
        channel.send(json.dumps(event))
        self.events.append({"t": self._t(), "dir": "out", "event": event})
        if self._recorder is not None:
            self._recorder.event("out", event)
        if self._faults.bad_event:
            self._send_junk(channel)

    def _send_junk(self, channel: Any) -> None:
        self._junk_turn += 1
        if self._junk_turn % 2:
            junk = BAD_JSON
        else:
            junk = json.dumps(
                {
                    "type": "emulator.unknown_event",
                    "event_id": new_id("event"),
                    "note": "sent by the bad-event fault",
                }
            )
        channel.send(junk)
        self.events.append({"t": self._t(), "dir": "out", "junk": junk})
        if self._recorder is not None:
            self._recorder.junk(junk)

    def _record_in(self, message: dict[str, Any]) -> None:
        self.events.append({"t": self._t(), "dir": "in", "event": message})
        if self._recorder is not None:
            self._recorder.event("in", message)

    def _t(self) -> float:
        return round(time.monotonic() - self.started, 4)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("call %s: task %s failed", self.id, task.get_name(), exc_info=error)
