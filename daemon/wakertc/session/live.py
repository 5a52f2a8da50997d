"""How GPT-Live works: the companion creates the session, the model owns the turns.

`LiveSession` builds the offer (the `oai-events` channel and the microphone track first, ICE
gathering complete: `webrtc.RealtimeCall.negotiate`), sends it to the companion with the device
token (`POST /v1/live/session`; the companion holds the key and the owner's `[live]` policy),
applies the answer and is live at `session.started`. Nothing is retried blindly: every session
created upstream is billed (at least 15 s).

Live says less than Realtime about turns (GPT_LIVE_PROTOCOL.md 3-4): no speech or audio events,
only transcript deltas and the audio itself. The neutral events are made from those:

- the user speaking: the device's own voice-activity detection on its (echo-cancelled)
  microphone, or input transcript deltas; stopped once the transcript pauses for `USER_PAUSE_S`,
  the microphone is quiet for `USER_QUIET_S`, or as soon as the reply starts;
- the reply: audible received audio starts it; `REPLY_GAP_S` without any ends it, once the path
  has been heard from since (a path that died mid-reply is a stalled reply, not a finished one);
- barge-in: playback stops here at once, and the model is told (`session.instructions.append`);
  what it still sends of that reply is not played (the gap ends it);
- tools: responses delegation; the call arrives nested in `response.event` (as a Responses
  streaming `response.output_item.done`), runs once its backend response has ended
  `response.completed`, and its result goes back as `response.item.create`, then one
  `response.create`. Calls to the companion's server tools (named in its answer) are left to
  the companion, which answers them through its sideband (each backend response then holds
  one call: see `companion.config.LivePolicy.session_object`);
- the end: `session.close`, answered by `session.closed` (its reason becomes the log line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from ..audio import CAPTURE_RATE as MIC_RATE
from ..config import SessionConfig
from ..keys import CompanionClient, CompanionError, CompanionOverBudget
from ..tools import ToolRunner
from ..webrtc import HEARD_POLL_S, CallError, MicTrack, RealtimeCall
from . import events
from .events import EventSink, OverBudget, SessionFailed, ToolCall, clip

log = logging.getLogger(__name__)

# Received audio with a peak at least this high is the model speaking (about -54 dBFS).
AUDIBLE_PEAK = 64
# The model has finished its reply when nothing audible arrived for this long.
REPLY_GAP_S = 0.5
# The user has stopped when no input transcript arrived for this long.
USER_PAUSE_S = 0.3
# The device's own voice-activity detection: this loud (dBFS RMS) for this long is speech, and
# this long quiet after it is the end of the user's turn (unless the transcript says otherwise).
SPEECH_DBFS = -40.0
SPEECH_ONSET_S = 0.06
USER_QUIET_S = 0.8
# How long to wait for `session.closed` after `session.close` before hanging up anyway.
CLOSE_WAIT_S = 1.0
BARGE_IN_NOTE = "The user interrupted you: stop speaking and listen to them."
# How a delegated backend response ends (Responses streaming events, nested in `response.event`).
RESPONSE_ENDS = ("response.completed", "response.failed", "response.incomplete")
# Why the service closed a session (`session.closed.reason`): the log line, and whether it is a
# failure rather than an end.
CLOSE_REASONS = {
    "close_requested": ("the session was closed on request", False),
    "expired": ("the service ended the session", False),
    "remote_hangup": ("the service hung up", False),
    "content": ("the service ended the session for its content policy", True),
    "connection_lost": ("connection lost: the service lost the session", True),
}


class LiveSession:
    """One session with GPT-Live (see the module docstring); a `events.Session`."""

    def __init__(
        self,
        *,
        config: SessionConfig,
        companion: CompanionClient,
        http: httpx.AsyncClient,
        tools: ToolRunner,
        on_event: EventSink,
        on_audio: Callable[[NDArray[np.int16]], None],
        on_lost: Callable[[str], None],
        on_call: Callable[[RealtimeCall], None] | None = None,
    ) -> None:
        # `on_call` is shown the call as soon as it is built, before any negotiation, for
        # diagnostics that need its peer connection from the start (`wakertc selftest`).
        self._on_call = on_call
        self._config = config
        self._companion = companion
        self._http = http
        self._tools = tools
        self._on_event = on_event
        self._on_audio = on_audio
        self._on_lost = on_lost
        self.mic = MicTrack()
        self._call: RealtimeCall | None = None
        self.session_id: str | None = None
        self.stage = "starting"
        self.last_problem: str | None = None
        self._live = False
        self._closing = False
        self._closed = asyncio.Event()
        self._user_speaking = False
        self._user_timer: asyncio.TimerHandle | None = None
        self._loud_s = 0.0  # consecutive loud microphone audio
        self._mic_quiet_since: float | None = None
        self._replying = False
        self._ignoring_reply = False  # after a barge-in, until the reply's audio stops
        self._last_audible = 0.0
        self._gap_task: asyncio.Task[None] | None = None
        # Backend function calls by delegation, reported once the response they came in ended.
        self._calls: dict[str | None, list[ToolCall]] = {}
        self._server_tools: frozenset[str] = frozenset()  # the companion runs these
        self._transcript: list[str] = []
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.started": self._started,
            "session.closed": self._session_closed,
            "error": self._error,
            "session.input_transcript.delta": self._input_transcript,
            "session.output_transcript.delta": self._output_transcript,
            "response.event": self._response_event,
            "session.usage.updated": self._usage,
        }

    # -- the conversation's side -------------------------------------------------------------

    @property
    def heard_at(self) -> float | None:
        """When anything last arrived from the service (monotonic); None before a call."""
        return self._call.heard_at if self._call is not None else None

    @property
    def manual_turns(self) -> bool:
        """Never: the model owns the turns."""
        return False

    async def open(self) -> None:
        """Offer -> companion -> answer; raises SessionFailed. `Live` follows (session.started)."""
        self.stage = "creating a GPT-Live session through the companion"
        call = RealtimeCall(
            base_url=self._config.url,
            http=self._http,
            ice_servers=self._config.ice_servers,
            mic=self.mic,
            on_event=self.handle_message,
            on_audio=self._received_audio,
            on_lost=self._on_lost,
        )
        self._call = call
        if self._on_call is not None:
            self._on_call(call)
        try:
            await call.negotiate(self._exchange, "the companion (GPT-Live)")
        except CompanionOverBudget as exc:
            await call.close(hang_up=False)
            raise OverBudget(str(exc)) from exc
        except CompanionError as exc:
            await call.close(hang_up=False)
            raise SessionFailed(str(exc)) from exc
        except CallError as exc:
            await call.close(hang_up=False)
            raise SessionFailed(str(exc)) from exc
        self.stage = "waiting for session.started"
        self._gap_task = asyncio.get_running_loop().create_task(
            self._watch_reply_gap(), name="live-reply-gap"
        )

    def push_audio(self, samples: NDArray[np.int16]) -> None:
        """Microphone audio into the call (Live wants it all, silence included); its level
        tells when the user starts speaking, which Live does not say."""
        self.mic.push(samples)
        if not self._live or not samples.size:
            return
        rms = float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) or 1e-9
        loud = 20 * np.log10(rms / 32768.0) >= SPEECH_DBFS
        now = time.monotonic()
        if loud:
            self._loud_s += len(samples) / MIC_RATE
            self._mic_quiet_since = None
            if self._loud_s >= SPEECH_ONSET_S and not self._user_speaking:
                self._user_started()
        else:
            self._loud_s = 0.0
            if self._mic_quiet_since is None:
                self._mic_quiet_since = now
            elif self._user_speaking and now - self._mic_quiet_since >= USER_QUIET_S:
                self._user_stopped()

    def end_turn(self) -> None:
        """Nothing to do: the model decides when the user's turn is over."""

    def interrupt(self) -> None:
        """Tell the model it was interrupted; what it still sends of the reply is not played."""
        self._send(
            {"type": "session.instructions.append", "content": BARGE_IN_NOTE, "delegation_id": None}
        )
        self._ignoring_reply = self._replying or self._ignoring_reply
        self._replying = False

    def mute(self) -> None:
        """The model hears silence from now on (as well as the device's own gate)."""
        self._send({"type": "session.input_audio.mute"})

    def send_tool_output(self, call_id: str, output: str) -> None:
        """One function call's result for the Responses backend."""
        self._send(
            {
                "type": "response.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )

    def request_reply(self) -> None:
        """Let the backend continue with the results (one `response.create` per batch)."""
        self._send({"type": "response.create"})

    def say(self, text: str) -> bool:
        """`session.commentary.append`: the model speaks it (GPT-Live may paraphrase). Its reply
        is then seen as any other: by the received audio's level and the output transcript."""
        return self._send(
            {"type": "session.commentary.append", "content": text, "delegation_id": None}
        )

    async def close(self, *, graceful: bool = True) -> None:
        """`session.close`, a moment for `session.closed` (not after a failure: a lost path
        would only delay the error; nor before `session.started`: a service that has not
        started the session is not waited for again), then the peer connection."""
        if self._gap_task is not None:
            self._gap_task.cancel()
            await asyncio.gather(self._gap_task, return_exceptions=True)
        if self._user_timer is not None:
            self._user_timer.cancel()
        if self._call is None:
            self.mic.stop()
            return
        self._closing = True
        if self._send({"type": "session.close"}) and graceful and self._live:
            try:
                await asyncio.wait_for(self._closed.wait(), CLOSE_WAIT_S)
            except TimeoutError:
                log.info("no session.closed within %.1f s; hanging up", CLOSE_WAIT_S)
        await self._call.close(hang_up=False)

    # -- set-up ------------------------------------------------------------------------------

    async def _exchange(self, offer: str) -> str:
        definitions = self._tools.definitions()
        answer = await self._companion.create_live(offer, definitions)
        self.session_id = answer.session_id
        self._server_tools = answer.server_tools
        for tool in definitions:
            if tool["name"] in answer.server_tools:
                log.error(
                    "the tool %s is defined on this device and as a companion server tool: the "
                    "companion's is used; rename one of them",
                    clip(tool["name"], 60),
                )
        if self._call is not None:
            self._call.call_id = answer.session_id
        return answer.sdp

    def _send(self, event: dict[str, Any]) -> bool:
        if self._call is None or not self._call.send(event):
            log.debug("could not send %s: channel not open", clip(event["type"]))
            return False
        return True

    # -- received audio ----------------------------------------------------------------------

    def _received_audio(self, samples: NDArray[np.int16]) -> None:
        audible = bool(samples.size) and int(np.abs(samples).max()) >= AUDIBLE_PEAK
        if audible:
            self._last_audible = time.monotonic()
            if self._ignoring_reply:
                return  # the interrupted reply's tail
            if not self._replying:
                self._reply_started()
        self._on_audio(samples)

    def _reply_started(self) -> None:
        self._replying = True
        if self._user_speaking:
            self._user_stopped()
        self._on_event(events.ReplyStarted())
        self._on_event(events.ReplyAudioStarted())

    async def _watch_reply_gap(self) -> None:
        while True:
            await asyncio.sleep(REPLY_GAP_S / 5)
            quiet = time.monotonic() - self._last_audible > REPLY_GAP_S
            # Silence ends a reply only on a path still heard from after the audio stopped: on
            # one that died mid-reply the reply goes on, and the conversation fails it as a
            # stalled reply (as under Realtime), instead of a finished reply and then, seconds
            # later, a lost connection. Packets are counted every HEARD_POLL_S, so only what was
            # heard that much after the last audible audio came after it.
            alive = (self.heard_at or 0.0) > self._last_audible + HEARD_POLL_S
            if quiet and self._ignoring_reply:
                self._ignoring_reply = False
            elif quiet and alive and self._replying:
                self._replying = False
                self._on_event(events.ReplyAudioFinished())
                self._on_event(events.ReplyDone())

    # -- events ------------------------------------------------------------------------------

    def handle_message(self, raw: str) -> None:
        """Handle one message from the event channel; never raises."""
        try:
            event = json.loads(raw)
        except (ValueError, TypeError, RecursionError):
            log.warning("ignored a malformed event (%d characters)", len(raw))
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            log.warning("ignored an event without a type")
            return
        handler = self.handlers.get(event["type"])
        if handler is None:
            log.debug("event %s", clip(event["type"]))
            return
        try:
            handler(event)
        except Exception:
            log.exception("could not handle a %s event; ignored", clip(event["type"]))

    def _started(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if isinstance(session, dict):
            log.info(
                "GPT-Live session %s started (%s)",
                clip(str(session.get("id")), 80),
                clip(str(session.get("model")), 40),
            )
        self._live = True
        self._on_event(events.Live())

    def _session_closed(self, event: dict[str, Any]) -> None:
        self._closed.set()
        reason = event.get("reason")
        usage = event.get("usage")
        seconds = usage.get("seconds") if isinstance(usage, dict) else None
        log.info(
            "GPT-Live session closed: %s (%s s billed)",
            clip(str(reason), 40),
            seconds if isinstance(seconds, int | float) else "?",
        )
        if self._closing:
            return
        text, failed = CLOSE_REASONS.get(
            str(reason), (f"the service closed the session ({clip(str(reason), 40)})", True)
        )
        self._on_event(events.Closed(text, failed))

    def _error(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        details = error if isinstance(error, dict) else {}
        message = str(details.get("message", "no message"))[:300]
        code = clip(str(details.get("code") or details.get("type") or "error"), 100)
        if not self._live:
            self._on_event(events.Closed(f"GPT-Live refused the session ({code}: {message})", True))
        else:
            log.warning("GPT-Live error %s: %s", code, message)

    def _input_transcript(self, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, str):
            return
        self._transcript.append(delta)
        if not self._user_speaking:
            self._user_started()
        if self._user_timer is not None:
            self._user_timer.cancel()
        self._user_timer = asyncio.get_running_loop().call_later(USER_PAUSE_S, self._user_paused)

    def _user_started(self) -> None:
        self._user_speaking = True
        if self._replying:
            # The user talks over the reply: the model yields its turn (it owns barge-in), and
            # what it still sends of that reply is not played.
            self._replying = False
            self._ignoring_reply = True
        self._on_event(events.UserSpeaking())

    def _user_paused(self) -> None:
        self._user_timer = None
        if self._user_speaking:
            self._user_stopped()

    def _user_stopped(self) -> None:
        if self._user_timer is not None:
            self._user_timer.cancel()
            self._user_timer = None
        self._user_speaking = False
        text = "".join(self._transcript)
        self._transcript.clear()
        self._on_event(events.UserStopped())
        if text:
            self._on_event(events.Transcript("user", text))

    def _output_transcript(self, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str) and delta:
            self._on_event(events.Transcript("assistant", delta))

    def _usage(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict):
            log.debug("GPT-Live usage: %s s", clip(str(usage.get("seconds")), 20))

    def _response_event(self, event: dict[str, Any]) -> None:
        nested = event.get("event")
        if not isinstance(nested, dict):
            return
        # Nested events name no response (`response.output_item.done` has no response id); a
        # delegation's backend responses run one after another, so its calls are those of the
        # response of that delegation that ends next.
        delegation_id = event.get("delegation_id")
        key = delegation_id if isinstance(delegation_id, str) else None
        kind = nested.get("type")
        if kind == "response.output_item.done":
            item = nested.get("item")
            if not isinstance(item, dict) or item.get("type") != "function_call":
                return
            call = ToolCall.of(item)
            if call is None:
                log.warning("ignored a function call without a name or call_id")
                return
            self._calls.setdefault(key, []).append(call)
        elif kind in RESPONSE_ENDS:
            # The event's type says how it ended (the snapshot's `status` is optional).
            status = kind.removeprefix("response.")
            calls = self._calls.pop(key, [])
            theirs = [call for call in calls if call.name in self._server_tools]
            if theirs:
                # The companion answers these through its sideband; an output from here would
                # race its answer.
                log.debug("left %d call(s) to the companion's tools", len(theirs))
                calls = [call for call in calls if call.name not in self._server_tools]
            if status != "completed":
                for call in calls:
                    log.info(
                        "dropped the model's call to %s: its response was %s",
                        clip(call.name, 60),
                        clip(str(status), 40),
                    )
                calls = []
            if calls:
                self._on_event(events.ReplyDone(tuple(calls)))
