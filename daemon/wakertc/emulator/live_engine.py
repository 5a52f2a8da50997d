"""The GPT-Live protocol of one WebRTC session: model-owned turns, transcripts, delegation.

Like `engine.RealtimeEngine` it knows nothing of WebRTC: it is given `send` for server events,
the outgoing `ReplyTrack`, and `hang_up` to end the call; it is fed parsed client events and
received audio. What differs from Realtime (GPT_LIVE_PROTOCOL.md): no audio events on the data
channel (audio is only on the track), transcripts as deltas with session-relative `start_ms` /
`end_ms` and no turn ids, turns the model owns (no commit, cancel or truncate; the user speaking
over a reply stops it), tools only through `responses` delegation (the call nested in
`response.event`, results as `response.item.create` + `response.create`), `session.close` ->
`session.closed` with usage, and per-second usage with a 15 s minimum per session.

The session's data-channel permissions (`live_permissions`) hold for everything: each server
event goes out through `_send`, which withholds what the channel may not carry, and a client
event the channel may not send gets an `error` and changes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .audio_buffer import InputAudioBuffer, Samples
from .events import event, new_id
from .live_permissions import INFO_CODE, INFO_MESSAGE, NOT_PERMITTED, DataChannelPermissions
from .live_session import delegation_type
from .playout import ReplyTrack
from .replies import Reply, SpeechSynth, echo, tone
from .responses import Send
from .script import ScriptTurn, TurnPlan
from .vad import EnergyVad, SpeechStarted, SpeechStopped, VadSettings
from .validation import ClientEventValidator

log = logging.getLogger(__name__)

RATE = 48000
PREPAID_S = 15  # a WebRTC session is billed at least this long
USAGE_EVERY_S = 60.0
SILENCE_MS = 500  # the model's own sense of the user's turn ending (no settings in Live)
# Client events that exist only on the primary WebSocket or the sideband.
NOT_ON_WEBRTC = ("session.start", "session.input_audio.append")
RESPONSES_ONLY = ("response.item.create", "response.create")
# How a backend response's stream ends (Responses streaming events; there is no `response.done`).
RESPONSE_END = "response.completed"


class LiveEngine:
    """Server side of the Live event protocol for one WebRTC session."""

    def __init__(
        self,
        *,
        session: dict[str, Any],
        send: Send,
        track: ReplyTrack,
        plan: TurnPlan,
        synth: SpeechSynth,
        reply_text: str,
        hang_up: Callable[[str], None],
        validator: ClientEventValidator | None = None,
        usage_every_s: float = USAGE_EVERY_S,
        never_replies: bool = False,
    ) -> None:
        self.session = session
        self._deliver = send
        # Told of each server event the data channel may not carry (the call's sidebands get all).
        self.on_withheld: Callable[[dict[str, Any]], None] | None = None
        self.permissions = DataChannelPermissions.of(session)
        self.withheld: Counter[str] = Counter()  # server events the channel may not carry
        self._never_replies = never_replies
        self._track = track
        self._plan = plan
        self._synth = synth
        self._reply_text = reply_text
        self._hang_up = hang_up
        self._validator = validator
        self._usage_every_s = usage_every_s
        self._began = time.monotonic()
        wake = session.get("wake_policy") or {}
        self._vad = EnergyVad(VadSettings(threshold=float(wake.get("vad_threshold", 0.5))))
        self.buffer = InputAudioBuffer()
        self._speech_start = 0
        self._last_utterance = np.zeros(0, dtype=np.int16)
        self.muted = False
        self._replies: dict[str, Reply] = {}
        self._played: dict[str, asyncio.Event] = {}
        self._speaking: str | None = None  # the reply whose audio is on the track
        self._waiting_calls: dict[str, dict[str, Any]] = {}  # delegation id -> its call
        self._outputs: dict[str, list[dict[str, Any]]] = {}  # delegation id -> results given
        self._sequence: dict[str, int] = {}  # backend response id -> its next sequence number
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._finished = False  # session.closed was sent
        track.listener = self

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """The event channel is open: the session has started."""
        self._send(event("session.started", session=copy.deepcopy(self.session)))
        if self.permissions.restricted:
            self._send(event("info", code=INFO_CODE, message=INFO_MESSAGE))
        self._spawn(self._report_usage(), "usage")

    def close(self) -> None:
        """Stop replies and timers; nothing is sent afterwards."""
        self._closed = True
        for task in self._tasks:
            task.cancel()

    def finish(self, reason: str, client_event_id: str | None = None) -> None:
        """Send `session.closed` (once) with the final usage; the call then closes."""
        if self._finished or self._closed:
            return
        self._finished = True
        fields: dict[str, Any] = {}
        if client_event_id is not None:
            fields["client_event_id"] = client_event_id
        self._send(
            event(
                "session.closed",
                reason=reason,
                session=copy.deepcopy(self.session),
                usage=self.usage(),
                **fields,
            )
        )

    def usage(self) -> dict[str, Any]:
        """Cumulative usage in whole seconds (SDK `SessionUsage`): the session's age, at least
        the prepaid minimum, all of it active (standby is not emulated), so the breakdown adds
        up to `seconds` as upstream's does."""
        seconds = max(PREPAID_S, int(time.monotonic() - self._began))
        return {"seconds": seconds, "active_seconds": seconds, "paused_seconds": 0}

    # -- client events -----------------------------------------------------------------------

    def handle_invalid(self, text: str, reason: str) -> None:
        """A message that is not a JSON object."""
        log.info("client sent an unparseable message (%s): %.80r", reason, text)
        self._error(f"Invalid JSON in client event: {reason}", "invalid_json")

    def handle_event(self, message: dict[str, Any], *, via_sideband: bool = False) -> None:
        """Dispatch one parsed client event; anything invalid gets an `error` event. The data
        channel's permissions do not bind the sideband (`client.data_channel`: "not the
        sideband", GPT_LIVE_PROTOCOL.md 1)."""
        if self._closed or self._finished:
            return
        client_event_id = message.get("event_id")
        client_event_id = client_event_id if isinstance(client_event_id, str) else None
        kind = message.get("type")
        permitted = via_sideband or not isinstance(kind, str)
        if not permitted and not self.permissions.allows_client(str(kind)):
            # The gate comes first: this frontend may not send the event at all.
            self._error(
                f"The client event '{kind}' is not permitted on this data channel "
                "(session.client.data_channel.allowed_client_events).",
                NOT_PERMITTED,
                "type",
                client_event_id,
            )
            return
        if kind in NOT_ON_WEBRTC:
            self._error(
                f"'{kind}' cannot be sent on a WebRTC data channel.",
                "invalid_event",
                "type",
                client_event_id,
            )
            return
        if self._validator is not None:
            problem = self._validator.check(message)
            if problem is not None:
                self._error(problem.message, problem.code, problem.param, client_event_id)
                return
        if kind in RESPONSES_ONLY and delegation_type(self.session) != "responses":
            self._error(
                f"'{kind}' requires responses delegation.",
                "invalid_delegation",
                "type",
                client_event_id,
            )
            return
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._error(f"Invalid value: {kind!r}.", "invalid_value", "type", client_event_id)
            return
        handler(self, message, client_event_id)

    def _on_close(self, message: dict[str, Any], client_event_id: str | None) -> None:
        self.finish("close_requested", client_event_id)
        self._hang_up("session.close")

    def _on_mute(self, message: dict[str, Any], client_event_id: str | None) -> None:
        self.muted = message["type"] == "session.input_audio.mute"
        kind = "session.input_audio.muted" if self.muted else "session.input_audio.unmuted"
        self._send(_correlated(event(kind), client_event_id))

    def _on_update(self, message: dict[str, Any], client_event_id: str | None) -> None:
        update = message.get("session") or {}
        for key in update:
            if key not in ("delegation", "triggers"):
                self._error(
                    f"'session.{key}' cannot change after startup.",
                    "immutable_field_update",
                    f"session.{key}",
                    client_event_id,
                )
                return
        if "delegation" in update and (
            (update["delegation"] or {}).get("type", "client") != delegation_type(self.session)
        ):
            self._error(
                "The delegation type cannot change after startup.",
                "immutable_field_update",
                "session.delegation.type",
                client_event_id,
            )
            return
        self.session.update(copy.deepcopy(update))
        self._send(_correlated(event("session.updated", session=self.session), client_event_id))

    def _on_append(self, message: dict[str, Any], client_event_id: str | None) -> None:
        at = self._now_ms()
        kind = message["type"].removesuffix("append") + "appended"
        self._send(_correlated(event(kind, start_ms=at, end_ms=at), client_event_id))
        if message["type"] == "session.commentary.append":
            # Commentary is spoken by the model (the real one may paraphrase; this one reads it).
            self._spawn(self._say(str(message["content"])), "commentary")

    async def _say(self, text: str) -> None:
        reply = await self._synth.say(text)
        if len(reply.audio):
            await self._speak(reply)

    def _on_item_create(self, message: dict[str, Any], client_event_id: str | None) -> None:
        item = message["item"]
        call_id = item.get("call_id") if isinstance(item, dict) else None
        for delegation_id, call in self._waiting_calls.items():
            if call["call_id"] == call_id:
                self._outputs.setdefault(delegation_id, []).append(item)
                return
        self._error(
            f"No function call with call_id '{call_id}' is waiting for its output.",
            "invalid_value",
            "item.call_id",
            client_event_id,
        )

    def _on_response_create(self, message: dict[str, Any], client_event_id: str | None) -> None:
        answered = [d for d in self._waiting_calls if d in self._outputs]
        if not answered:
            self._error(
                "There is no delegated response waiting for tool results.",
                "invalid_value",
                None,
                client_event_id,
            )
            return
        for delegation_id in answered:
            del self._waiting_calls[delegation_id]
            outputs = self._outputs.pop(delegation_id)
            self._spawn(self._continue(delegation_id, outputs), "continue")

    def _on_fixture(self, message: dict[str, Any], client_event_id: str | None) -> None:
        self._error(
            "'session.output_audio.fixture.play' is not supported by this emulator.",
            "unsupported",
            "type",
            client_event_id,
        )

    _HANDLERS: ClassVar[dict[str, Callable[[LiveEngine, dict[str, Any], str | None], None]]] = {
        "session.close": _on_close,
        "session.input_audio.mute": _on_mute,
        "session.input_audio.unmute": _on_mute,
        "session.update": _on_update,
        "session.instructions.append": _on_append,
        "session.thinking.append": _on_append,
        "session.commentary.append": _on_append,
        "response.item.create": _on_item_create,
        "response.create": _on_response_create,
        "session.output_audio.fixture.play": _on_fixture,
    }

    # -- input audio ------------------------------------------------------------------------

    def on_audio(self, samples: Samples) -> None:
        """Received audio (int16 mono 48 kHz), in order; muted, the model hears silence."""
        if self._closed or self._finished:
            return
        if self.muted:
            samples = np.zeros_like(samples)
        position = self.buffer.append(samples)
        for vad_event in self._vad.process(samples, position):
            if isinstance(vad_event, SpeechStarted):
                self._speech_start = vad_event.start
                self.buffer.discard_before(vad_event.start)
                if self._speaking is not None:
                    # The model yields its turn to the user: its reply stops at once.
                    for cut in self._track.clear():
                        self.playout_stopped(cut)
            elif isinstance(vad_event, SpeechStopped):
                self._last_utterance = self.buffer.slice(self._speech_start, vad_event.last_voiced)
                self.buffer.commit(vad_event.end)
                self._vad.set_floor(vad_event.end)
                said_ms = len(self._last_utterance) * 1000 // RATE
                start = self._position_ms(self._speech_start)
                self._send(
                    event(
                        "session.input_transcript.delta",
                        delta=f"[{said_ms} ms of audio]",
                        start_ms=start,
                        end_ms=self._position_ms(vad_event.last_voiced),
                    )
                )
                self._spawn(self._reply(self._plan.next()), "reply")

    # -- replies -----------------------------------------------------------------------------

    async def _reply(self, turn: ScriptTurn) -> None:
        if self._never_replies:
            return  # the no-reply fault: the model never takes its turn
        reply = await self._render(turn)
        if reply is not None and len(reply.audio):
            await self._speak(reply)
        if turn.call is not None:
            self._delegate(turn)

    async def _speak(self, reply: Reply) -> None:
        reply_id = new_id("reply")
        self._replies[reply_id] = reply
        played = self._played[reply_id] = asyncio.Event()
        self._track.feed(reply_id, reply.audio)
        self._track.finish(reply_id)
        # The next turn's audio waits for this one (model-owned turns do not overlap).
        await played.wait()

    def _delegate(self, turn: ScriptTurn) -> None:
        assert turn.call is not None
        target = delegation_type(self.session)
        delegation_id = new_id("deleg")
        delegation: dict[str, Any] = {"id": delegation_id, "type": "delegation", "target": target}
        if target != "responses":
            # Client delegation carries no task text: nothing for a tool-only device to do.
            self._send(
                event("session.delegation.created", offset_ms=self._now_ms(), delegation=delegation)
            )
            return
        response_id = new_id("resp")
        delegation["response_id"] = response_id
        self._send(
            event("session.delegation.created", offset_ms=self._now_ms(), delegation=delegation)
        )
        call = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": new_id("call"),
            "name": turn.call.name,
            "arguments": json.dumps(turn.call.arguments),
            "status": "completed",
        }
        self._backend(delegation_id, "response.created", response_id, "in_progress")
        self._backend_event(
            delegation_id,
            response_id,
            {"type": "response.output_item.done", "output_index": 0, "item": call},
        )
        self._backend(delegation_id, RESPONSE_END, response_id, "completed")
        self._waiting_calls[delegation_id] = call

    async def _continue(self, delegation_id: str, outputs: list[dict[str, Any]]) -> None:
        """The backend read the tool results: its answer is spoken by the Live model."""
        response_id = new_id("resp")
        self._backend(delegation_id, "response.created", response_id, "in_progress")
        self._backend(delegation_id, RESPONSE_END, response_id, "completed")
        await self._reply(self._plan.next())

    def _backend(self, delegation_id: str, kind: str, response_id: str, status: str) -> None:
        """A backend response's lifecycle event. Its snapshot is what upstream forwards (SDK
        `ResponseEvent`): no input, and instructions, tools and output cleared; the calls
        come only as their own `response.output_item.done`."""
        backend = (self.session.get("delegation") or {}).get("responses") or {}
        response = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "model": backend.get("model", ""),
            "status": status,
            "instructions": None,
            "output": [],
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": backend.get("parallel_tool_calls") is not False,
        }
        self._backend_event(delegation_id, response_id, {"type": kind, "response": response})
        if kind == RESPONSE_END:
            self._sequence.pop(response_id, None)

    def _backend_event(self, delegation_id: str, response_id: str, nested: dict[str, Any]) -> None:
        """One event of a backend response's stream, numbered in order, as `response.event`."""
        sequence = self._sequence.get(response_id, 0)
        self._sequence[response_id] = sequence + 1
        nested = {**nested, "sequence_number": sequence}
        self._send(event("response.event", delegation_id=delegation_id, event=nested))

    async def _render(self, turn: ScriptTurn) -> Reply | None:
        if turn.say is not None:
            return await self._synth.say(turn.say)
        if turn.reply == "echo":
            return echo(self._last_utterance)
        if turn.reply == "tone":
            return tone()
        if turn.reply == "speech":
            return await self._synth.say(self._reply_text)
        return None

    # -- playout (the track tells) -----------------------------------------------------------

    def playout_started(self, response_id: str) -> None:
        """A reply's audio began leaving: its transcript, timed on the session's timeline."""
        reply = self._replies.get(response_id)
        if reply is None or self._closed:
            return
        self._speaking = response_id
        start = self._now_ms()
        self._send(
            event(
                "session.output_transcript.delta",
                delta=reply.transcript,
                start_ms=start,
                end_ms=start + int(reply.duration_ms),
            )
        )

    def playout_stopped(self, response_id: str) -> None:
        """A reply's audio has all left (or was cut)."""
        self._replies.pop(response_id, None)
        played = self._played.pop(response_id, None)
        if played is not None:
            played.set()
        if self._speaking == response_id:
            self._speaking = None

    # -- helpers -----------------------------------------------------------------------------

    def _send(self, server_event: dict[str, Any]) -> None:
        """Every server event goes out here; what the data channel may not carry is withheld."""
        if self.permissions.allows_server(server_event):
            self._deliver(server_event)
            return
        if self.on_withheld is not None:
            self.on_withheld(server_event)  # the sideband still sees it
        kind = str(server_event.get("type"))
        if kind == "response.event":
            kind += f" {server_event.get('event', {}).get('type')}"
        if not self.withheld[kind]:
            log.info("withholding %s from the data channel (not permitted)", kind)
        self.withheld[kind] += 1

    async def _report_usage(self) -> None:
        while True:
            await asyncio.sleep(self._usage_every_s)
            if not self._finished:
                self._send(event("session.usage.updated", usage=self.usage()))

    def _error(
        self,
        message: str,
        code: str,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> None:
        error: dict[str, Any] = {"type": "invalid_request_error", "code": code, "message": message}
        if param is not None:
            error["param"] = param
        if client_event_id is not None:
            error["client_event_id"] = client_event_id
        self._send(_correlated(event("error", error=error), client_event_id))

    def _now_ms(self) -> int:
        return int((time.monotonic() - self._began) * 1000)

    def _position_ms(self, position: int) -> int:
        # Input positions count the audio received, which started with the session.
        return position * 1000 // RATE

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"live-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("live session task %s failed", task.get_name(), exc_info=task.exception())


def _correlated(server_event: dict[str, Any], client_event_id: str | None) -> dict[str, Any]:
    if client_event_id is not None:
        server_event["client_event_id"] = client_event_id
    return server_event
