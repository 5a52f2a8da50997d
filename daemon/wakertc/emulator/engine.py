"""The Realtime protocol of one call: session config, input audio + VAD, responses and tools.

The engine knows nothing of WebRTC. It is given a `send` function for server events and the
outgoing `ReplyTrack`, fed client events (already parsed) and received audio (48 kHz mono), and
told by the track when reply audio starts and stops leaving. All state of the conversation lives
here, in one object, on the event loop; only speech synthesis leaves the loop (subprocess).

A response is one task (`_run_response`): it renders the turn's reply and hands it to
`responses.ResponseWriter`, which feeds audio at real-time pace a little ahead of playout, so
`response.done` comes shortly before `output_audio_buffer.stopped`, as upstream, and
`response.cancel` during a reply finds the response still active. Starting, finishing and
cancelling responses happens only here (`_start_response`, `_finish`, `_cancel`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .. import limits
from .audio_buffer import RATE, InputAudioBuffer, Samples, ms
from .conversation import Conversation
from .events import (
    error_event,
    event,
    new_id,
    user_audio_item,
)
from .playout import ReplyTrack
from .replies import Reply, SpeechSynth, echo, tone
from .responses import OutOfTokens, Response, ResponseWriter, Send, response_view
from .script import ScriptTurn, TurnPlan
from .session import SessionError, turn_detection, update_session
from .usage import Tokens, context_tokens
from .vad import EnergyVad, SpeechStarted, SpeechStopped, VadEvent, VadSettings
from .validation import ClientEventValidator

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100  # upstream refuses to commit less
GAP_SLACK_S = 0.1
# A gap timer that fires this late means the event loop itself was held up: frames that arrived
# meanwhile may still be waiting behind it, so the quiet is not yet evidence of a client that
# stopped sending (the emulator shares its loop with whatever else runs in the process).
GAP_LATE_S = 0.05
GAP_RECHECK_S = 0.1


class RealtimeEngine:
    """Server side of the Realtime event protocol for one session."""

    def __init__(
        self,
        *,
        session: dict[str, Any],
        send: Send,
        track: ReplyTrack,
        plan: TurnPlan,
        synth: SpeechSynth,
        reply_text: str,
        validator: ClientEventValidator | None = None,
        transcription_fails: bool = False,
        never_replies: bool = False,
    ) -> None:
        self.session = session
        self._send = send
        self._track = track
        self._plan = plan
        self._synth = synth
        self._reply_text = reply_text
        self._validator = validator
        self._transcription_fails = transcription_fails
        self._never_replies = never_replies
        self.conversation_id = new_id("conv")
        self.buffer = InputAudioBuffer()
        self._vad: EnergyVad | None = None
        self._speech_item: str | None = None
        self._speech_start = 0
        self._last_utterance = np.zeros(0, dtype=np.int16)
        self.conversation = Conversation()
        self._writer = ResponseWriter(send=send, track=track, conversation=self.conversation)
        self._responses: dict[str, Response] = {}
        self._active: Response | None = None
        self._last_response_id: str | None = None
        self._audio_ms: dict[str, float] = {}  # item id -> audio it holds (for usage)
        self._previous_context = Tokens()  # the last response's input: what a cache holds
        self._voice_locked = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._gap_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._configure_vad()
        track.listener = self

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """The event channel is open: announce the session."""
        self._send(event("session.created", session=copy.deepcopy(self.session)))

    def close(self) -> None:
        """Stop responses and timers; nothing is sent afterwards."""
        self._closed = True
        self.buffer = InputAudioBuffer()  # up to minutes of audio: free it with the call
        for timer in (self._idle_timer, self._gap_timer):
            if timer is not None:
                timer.cancel()
        for response in self._responses.values():
            if response.task is not None and not response.task.done():
                response.task.cancel()

    async def wait_idle(self) -> None:
        """Wait until no response task is running (for orderly shutdown)."""
        tasks = [r.task for r in self._responses.values() if r.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def active_response_id(self) -> str | None:
        """The response being generated, if any."""
        return self._active.id if self._active is not None else None

    # -- client events -----------------------------------------------------------------------

    def handle_invalid(self, text: str, reason: str) -> None:
        """A message that is not a JSON object."""
        log.info("client sent an unparseable message (%s): %.80r", reason, text)
        self._send(error_event(f"Invalid JSON in client event: {reason}", code="invalid_json"))

    def handle_event(self, message: dict[str, Any], *, via_sideband: bool = False) -> None:
        """Dispatch one parsed client event; anything invalid gets an `error` event. A sideband
        may send what the data channel may (`via_sideband` changes nothing under Realtime)."""
        if self._closed:
            return
        client_event_id = message.get("event_id")
        client_event_id = client_event_id if isinstance(client_event_id, str) else None
        kind = message.get("type")
        if self._validator is not None:
            problem = self._validator.check(message)
            if problem is not None:
                self._refuse(kind, problem.message, problem.code, problem.param, client_event_id)
                return
        handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            message_text = f"Invalid value: {kind!r}. Unknown client event type."
            self._refuse(kind, message_text, "invalid_value", "type", client_event_id)
            return
        try:
            handler(self, message)
        except _ClientError as exc:
            self._refuse(kind, exc.message, exc.code, exc.param, client_event_id)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # Shapes the SDK check would have caught; without the SDK, answer, never crash.
            log.info("malformed %s event: %r", kind, exc)
            self._refuse(
                kind, f"Invalid '{kind}' event: {exc}", "invalid_value", None, client_event_id
            )

    def _refuse(
        self, kind: Any, message: str, code: str, param: str | None, client_event_id: str | None
    ) -> None:
        """Answer a client event the service would not accept; logged, since a client that
        sends one has a bug a real call would show too."""
        log.info("refused a %s event: %s (param %s): %s", kind, code, param, message)
        self._send(error_event(message, code=code, param=param, client_event_id=client_event_id))

    def _on_session_update(self, message: dict[str, Any]) -> None:
        try:
            self.session = update_session(
                self.session, message.get("session"), voice_locked=self._voice_locked
            )
        except SessionError as exc:
            raise _ClientError(exc.message, exc.code, exc.param) from None
        self._configure_vad()
        self._disarm_idle()
        self._send(event("session.updated", session=copy.deepcopy(self.session)))

    def _on_commit(self, message: dict[str, Any]) -> None:
        pending = self.buffer.pending_ms()
        if pending < MIN_COMMIT_MS:
            raise _ClientError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {pending:.2f}ms of audio.",
                "input_audio_buffer_commit_empty",
            )
        start = self.buffer.base
        self._last_utterance = self.buffer.slice(start, self.buffer.total)
        self._commit(new_id("item"))

    def _on_clear(self, message: dict[str, Any]) -> None:
        self.buffer.clear()
        self._speech_item = None
        self._configure_vad(reset=True)
        self._send(event("input_audio_buffer.cleared"))

    def _on_append(self, message: dict[str, Any]) -> None:
        raise _ClientError(
            "input_audio_buffer.append is not used over WebRTC: send audio on the media track.",
            "invalid_value",
            "type",
        )

    def _on_item_create(self, message: dict[str, Any]) -> None:
        item = copy.deepcopy(message["item"])
        if not isinstance(item, dict):
            raise _ClientError("Invalid 'item': expected an object.", "invalid_value", "item")
        item.setdefault("id", new_id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if self.conversation.find(item["id"]) is not None:
            raise _ClientError(
                f"Item with id '{item['id']}' already exists.", "item_already_exists", "item.id"
            )
        previous = message.get("previous_item_id")
        if previous is not None and previous != "root" and self.conversation.find(previous) is None:
            raise _ClientError(
                f"Item with id '{previous}' not found.", "item_not_found", "previous_item_id"
            )
        previous = self.conversation.insert_after(item, previous)
        if item.get("type") == "function_call_output":
            log.info("function output for %s: %.80r", item.get("call_id"), item.get("output"))
        self._send(event("conversation.item.added", previous_item_id=previous, item=item))
        self._send(
            event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item))
        )

    def _on_item_retrieve(self, message: dict[str, Any]) -> None:
        item = self._require_item(message["item_id"])
        self._send(event("conversation.item.retrieved", item=copy.deepcopy(item)))

    def _on_item_delete(self, message: dict[str, Any]) -> None:
        item = self._require_item(message["item_id"])
        self.conversation.remove(item)
        self._send(event("conversation.item.deleted", item_id=item["id"]))

    def _on_item_truncate(self, message: dict[str, Any]) -> None:
        item = self._require_item(message["item_id"])
        if item.get("role") != "assistant":
            raise _ClientError(
                "Only assistant messages can be truncated.", "invalid_value", "item_id"
            )
        audio_end_ms = int(message["audio_end_ms"])
        for part in item.get("content", []):
            if part.get("type") == "output_audio":
                part["transcript"] = ""
        self._send(
            event(
                "conversation.item.truncated",
                item_id=item["id"],
                content_index=int(message.get("content_index", 0)),
                audio_end_ms=audio_end_ms,
            )
        )

    def _on_response_create(self, message: dict[str, Any]) -> None:
        if self.session["type"] != "realtime":
            raise _ClientError(
                "Responses are not available in a transcription session.", "invalid_value", "type"
            )
        if self._active is not None:
            raise _ClientError(
                "Conversation already has an active response in progress: "
                f"{self._active.id}. Wait until the response is finished before creating a new "
                "one.",
                "conversation_already_has_active_response",
            )
        params = message.get("response") or {}
        voice = (params.get("audio") or {}).get("output", {}).get("voice")
        for path, value in (
            ("max_output_tokens", params.get("max_output_tokens")),
            ("audio.output.voice", voice),
        ):
            problem = limits.check(path, value, prefix="response.") if value is not None else None
            if problem is not None:
                raise _ClientError(problem.message, problem.code, problem.param)
        self._start_response(
            modalities=params.get("output_modalities"),
            metadata=params.get("metadata"),
            max_tokens=params.get("max_output_tokens"),
        )

    def _on_response_cancel(self, message: dict[str, Any]) -> None:
        active = self._active
        wanted = message.get("response_id")
        if active is None or (wanted is not None and wanted != active.id):
            raise _ClientError(
                "Cancellation failed: no active response found.", "response_cancel_not_active"
            )
        self._cancel(active, "client_cancelled")

    def _on_output_clear(self, message: dict[str, Any]) -> None:
        cut = self._track.clear()
        active = self._active
        if active is not None:
            self._cancel(active, "client_cancelled")
        if not cut and self._last_response_id is not None:
            cut = [self._last_response_id]  # acknowledge even when it had already drained
        for response_id in cut:
            self._send(event("output_audio_buffer.cleared", response_id=response_id))

    _HANDLERS: ClassVar[dict[str, Callable[[RealtimeEngine, dict[str, Any]], None]]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "input_audio_buffer.append": _on_append,
        "conversation.item.create": _on_item_create,
        "conversation.item.retrieve": _on_item_retrieve,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.truncate": _on_item_truncate,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
        "output_audio_buffer.clear": _on_output_clear,
    }

    # -- input audio and VAD ------------------------------------------------------------------

    def on_audio(self, samples: Samples) -> None:
        """Received audio (int16 mono 48 kHz), in order."""
        if self._closed:
            return
        position = self.buffer.append(samples)
        if self._vad is None:
            return
        for vad_event in self._vad.process(samples, position):
            self._on_vad(vad_event)
        self._arm_gap()

    def _on_vad(self, vad_event: VadEvent) -> None:
        td = turn_detection(self.session)
        if td is None:
            return
        if isinstance(vad_event, SpeechStarted):
            self._disarm_idle()
            self._speech_item = new_id("item")
            self._speech_start = vad_event.start
            self.buffer.discard_before(vad_event.start)
            self._send(
                event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=ms(vad_event.start),
                    item_id=self._speech_item,
                )
            )
            if td.get("interrupt_response"):
                self._interrupt()
            return
        assert isinstance(vad_event, SpeechStopped)
        item_id = self._speech_item or new_id("item")
        self._speech_item = None
        self._send(
            event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=ms(vad_event.end),
                item_id=item_id,
            )
        )
        self._last_utterance = self.buffer.slice(self._speech_start, vad_event.last_voiced)
        self._commit(item_id, end=vad_event.end)
        if (
            td.get("create_response")
            and self.session["type"] == "realtime"
            and self._active is None
        ):
            self._start_response()

    def _configure_vad(self, *, reset: bool = False) -> None:
        td = turn_detection(self.session)
        if td is None:
            self._vad = None
            return
        settings = VadSettings.from_turn_detection(td)
        if not reset and self._vad is not None and self._vad.settings == settings:
            return
        self._vad = EnergyVad(settings, floor=self.buffer.base)

    def _arm_gap(self) -> None:
        """Speech with no frames arriving counts as silence (a client that stops sending)."""
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        if self._vad is None or not self._vad.speaking:
            return
        delay = self._vad.settings.silence_duration_ms / 1000 + GAP_SLACK_S
        loop = asyncio.get_running_loop()
        self._gap_timer = loop.call_later(delay, self._on_gap, loop.time() + delay)

    def _on_gap(self, due: float) -> None:
        self._gap_timer = None
        if self._vad is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        late = loop.time() - due
        if late > GAP_LATE_S:
            log.info("no input frames, but the loop was held up %.2f s; looking again", late)
            # Held up: look again once what queued behind the stall has run.
            self._gap_timer = loop.call_later(
                GAP_RECHECK_S, self._on_gap, loop.time() + GAP_RECHECK_S
            )
            return
        stopped = self._vad.silence(self.buffer.total)
        if stopped is not None:
            self._on_vad(stopped)

    def _commit(self, item_id: str, *, end: int | None = None) -> None:
        start, end = self.buffer.commit(end)
        self._audio_ms[item_id] = (end - start) * 1000 / RATE
        if self._vad is not None:
            self._vad.set_floor(end)
        item = user_audio_item(item_id)
        previous = self.conversation.append(item)
        self._send(
            event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        )
        self._send(
            event("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))
        )
        self._send(
            event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item))
        )
        self._transcribe(item_id, (end - start) / RATE)

    def _transcribe(self, item_id: str, seconds: float) -> None:
        """Transcribe a committed user turn, when the session asks for it."""
        if self.session["audio"]["input"]["transcription"] is None:
            return
        if self._transcription_fails:
            self._send(
                event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=item_id,
                    content_index=0,
                    error={
                        "type": "transcription_error",
                        "code": "audio_unintelligible",
                        "message": "Audio file might be corrupted or unsupported",
                        "param": "file",
                    },
                )
            )
            return
        self._send(
            event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=f"[{seconds * 1000:.0f} ms of audio]",
                usage={"type": "duration", "seconds": round(seconds, 3)},
            )
        )

    # -- idle timeout --------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._disarm_idle()
        td = turn_detection(self.session)
        if td is None or td.get("type") != "server_vad" or not td.get("idle_timeout_ms"):
            return
        delay = td["idle_timeout_ms"] / 1000
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._on_idle)

    def _disarm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._closed or self._active is not None or (self._vad and self._vad.speaking):
            return
        item_id = new_id("item")
        self._send(
            event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=ms(self.buffer.base),
                audio_end_ms=ms(self.buffer.total),
                item_id=item_id,
            )
        )
        self._commit(item_id)
        self._start_response()

    # -- responses -----------------------------------------------------------------------------

    def _start_response(
        self, *, modalities: Any = None, metadata: Any = None, max_tokens: Any = None
    ) -> None:
        self._disarm_idle()
        if self._never_replies:
            return  # the `no-reply` fault: a service that takes the turn and never answers
        if modalities not in (["audio"], ["text"]):
            modalities = list(self.session.get("output_modalities") or ["audio"])
        if max_tokens is None:
            max_tokens = self.session.get("max_output_tokens", "inf")
        context = context_tokens(
            self.session.get("instructions") or "",
            self.conversation.items,
            lambda item_id: self._audio_ms.get(item_id, 0.0),
        )
        response = Response(
            id=new_id("resp"),
            turn=self._plan.next(),
            modalities=modalities,
            metadata=metadata,
            input_tokens=context,
            cached_tokens=self._previous_context.capped(context),
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        )
        self._responses[response.id] = response
        self._previous_context = context
        self._active = response
        self._last_response_id = response.id
        self._send(event("response.created", response=self._view(response, "in_progress")))
        response.task = asyncio.get_running_loop().create_task(
            self._run_response(response), name=f"emulator-response-{response.id}"
        )

    async def _run_response(self, response: Response) -> None:
        try:
            reply = await self._render(response.turn)
            if response.done:
                return
            if reply is not None and response.modalities == ["audio"]:
                self._voice_locked = True  # upstream fixes the voice once audio was produced
            declared = {tool.get("name") for tool in self.session.get("tools") or []}
            await self._writer.write(response, reply, declared)
            self._finish(response, "completed")
        except OutOfTokens:
            self._finish(response, "incomplete", "max_output_tokens")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("response %s failed", response.id)
            self._finish(response, "failed")

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

    def _cancel(self, response: Response, reason: str) -> None:
        if response.task is not None and not response.task.done():
            response.task.cancel()
        self._writer.cut_short(response)
        for item in response.output:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
                if item.get("type") == "message":
                    key = "transcript" if response.modalities == ["audio"] else "text"
                    kind = "output_audio" if key == "transcript" else "output_text"
                    item["content"] = [{"type": kind, key: response.text}]
        self._finish(response, "cancelled", reason)

    def _interrupt(self) -> None:
        """Barge-in: the user spoke over the reply."""
        cut = self._track.clear()
        if self._active is not None:
            self._cancel(self._active, "turn_detected")
        for response_id in cut:
            self._send(event("output_audio_buffer.cleared", response_id=response_id))

    def _finish(self, response: Response, status: str, reason: str | None = None) -> None:
        if response.done:
            return
        response.done = True
        if self._active is response:
            self._active = None
        for item in response.output:
            if item.get("type") == "message" and response.modalities == ["audio"]:
                self._audio_ms[item["id"]] = response.audio_ms
        self._send(event("response.done", response=self._view(response, status, reason)))
        self._track.finish(response.id)
        if (
            status == "completed"
            and not self._track.is_playing(response.id)
            and response.turn.call is None
        ):
            self._arm_idle()

    def _view(self, response: Response, status: Any, reason: str | None = None) -> dict[str, Any]:
        return response_view(
            response,
            status,
            session=self.session,
            conversation_id=self.conversation_id,
            reason=reason,
        )

    # -- playout (ReplyTrack listener) ---------------------------------------------------------

    def playout_started(self, response_id: str) -> None:
        """First frame of a response left: `output_audio_buffer.started`."""
        if self._closed:
            return
        response = self._responses.get(response_id)
        if response is not None:
            response.started.set()
        self._send(event("output_audio_buffer.started", response_id=response_id))

    def playout_stopped(self, response_id: str) -> None:
        """Last frame of a response left: `output_audio_buffer.stopped`."""
        if self._closed:
            return
        self._send(event("output_audio_buffer.stopped", response_id=response_id))
        response = self._responses.get(response_id)
        if self._active is None and (response is None or response.turn.call is None):
            self._arm_idle()

    # -- conversation items --------------------------------------------------------------------

    def _require_item(self, item_id: Any) -> dict[str, Any]:
        item = self.conversation.find(item_id)
        if item is None:
            raise _ClientError(
                f"Item with item_id '{item_id}' not found.", "item_not_found", "item_id"
            )
        return item


class _ClientError(Exception):
    """A client event the engine refuses; becomes an `error` event."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
