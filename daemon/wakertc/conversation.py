"""One conversation: from the wake word to the hang-up.

`Conversation.run()` gets a key, opens the call, configures the session and then lets the
server's events drive the phase (listening, thinking, speaking) until something ends it: the idle
timeout, the model calling `end_conversation`, the button, the maximum length, or a failure. It
returns the reason the conversation ended, or raises `SessionFailed` saying what went wrong.

Malformed or unexpected events are logged and ignored: nothing the server sends can crash the
daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from .audio import AudioBackend
from .config import Config
from .keys import CompanionError, KeyKeeper
from .state import Phase, PhaseMachine
from .tools import END_CONVERSATION, ToolRunner
from .webrtc import CallError, CallRejected, MicTrack, RealtimeCall

log = logging.getLogger(__name__)

# Half-duplex: keep the microphone closed this long after the speaker stops (room reverb).
HALF_DUPLEX_TAIL_S = 0.3
# Received audio quieter than this peak (about -54 dBFS) outside a reply is not played.
SILENCE_PEAK = 64
# Longest piece of server-supplied text put into one log line (a journal on an SD card).
LOG_TEXT_LIMIT = 500
# When the server says a reply's output stopped, its last ~100 ms are still in the network and the
# jitter buffer: the reply has been heard once nothing audible has arrived for this long.
REPLY_TAIL_S = 0.25
# Nothing at all from the peer for this long (no packet of any kind, and no answer to the call's
# probes: see webrtc.py) means the path died without a word; ICE consent checks would only notice
# after ~30 s. Mid-reply the user hears it stop, so sooner; otherwise they would talk to no one.
REPLY_STALL_S = 2.0
PATH_STALL_S = 5.0
# The `error` code with which the service ends a session at its maximum length, before it closes
# the call.
SESSION_EXPIRED = "session_expired"


class SessionFailed(Exception):
    """The conversation could not start or was cut off; the message says why, for the log."""


def session_update(minted: dict[str, Any], tools: ToolRunner) -> dict[str, Any]:
    """The `session.update` event: only what the device owns, on top of the minted session.

    The companion minted the key with the owner's policy (model, voice, instructions, turn
    detection, noise reduction, transcription, tools) and returned that session; an update
    replaces every field it names, so it names only the tools, the device's own: the policy's
    tools first, then the device's (end_conversation and `[[tools]]`) under names not taken.
    A transcription session has nothing of the device's: the update only names its type, and
    its answer (`session.updated`) says the session is ready.
    """
    kind = minted.get("type")
    if kind == "transcription":
        return {"type": "session.update", "session": {"type": "transcription"}}
    policy_tools = minted.get("tools")
    merged = (
        [t for t in policy_tools if isinstance(t, dict)] if isinstance(policy_tools, list) else []
    )
    taken = {t.get("name") for t in merged}
    for tool in tools.definitions():
        if tool["name"] in taken:
            log.warning(
                "the session policy already has a tool %s: the device's is not sent",
                _clip(tool["name"], 60),
            )
        else:
            merged.append(tool)
    return {"type": "session.update", "session": {"type": "realtime", "tools": merged}}


class Conversation:
    """Runs one session against the Realtime API and maps its events onto phases."""

    def __init__(
        self,
        *,
        config: Config,
        phases: PhaseMachine,
        keys: KeyKeeper,
        http: httpx.AsyncClient,
        audio: AudioBackend,
        tools: ToolRunner,
        woke_at: float,
        on_transcript: Callable[[str, str], None] | None = None,
        on_transcription_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        self._config = config
        self._session = config.session
        self._phases = phases
        self._keys = keys
        self._http = http
        self._audio = audio
        self._tools = tools
        self._woke_at = woke_at
        self._on_transcript = on_transcript
        self._on_transcription_failed = on_transcription_failed
        self.mic = MicTrack()
        self._call: RealtimeCall | None = None
        self._live = asyncio.Event()
        self._settled = asyncio.Event()
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # After a barge-in, the cancelled reply's audio still in flight (RTP, jitter buffer)
        # arrives after the server's `output_audio_buffer.cleared`: drop received audio until the
        # next response is created.
        self._discarding = False
        self._server_speaking = False  # between output_audio_buffer.started and .stopped
        self._replied = False  # the model's voice has been played in this conversation
        self._user_speaking = False  # between speech_started and speech_stopped
        self._last_audio_at = 0.0  # when audible reply audio was last received
        self._speaker_quiet_since = 0.0
        self._ending_after_reply: str | None = None
        self._response_audio = False
        self._response_active = False  # between response.created and response.done
        # Function calls by response id, run only once their response completed.
        self._calls: dict[str, list[_FunctionCall]] = {}
        self._tool_runs = 0  # tool batches running; their outputs then get one response.create
        self._create_after_response = False  # outputs sent while a response was active
        self._transcript: list[str] = []
        self._stage = "starting"
        self._manual_turns = False  # no turn detection: the button ends the user's turn
        # Turn detection with create_response = false: the server commits the turn, the device
        # asks for the reply.
        self._create_on_commit = False
        self._turn_end: list[dict[str, Any]] = []  # what a press sends to end a manual turn
        self._last_problem: str | None = None
        self.wake_to_live_s: float | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.updated": self._session_updated,
            "error": self._error,
            "input_audio_buffer.speech_started": self._speech_started,
            "input_audio_buffer.speech_stopped": self._speech_stopped,
            "input_audio_buffer.committed": self._committed,
            "response.created": self._response_created,
            "output_audio_buffer.started": self._speaking_started,
            "output_audio_buffer.stopped": self._speaking_stopped,
            "output_audio_buffer.cleared": self._speaking_cleared,
            "response.output_audio_transcript.delta": self._transcript_delta,
            "response.output_audio_transcript.done": self._transcript_done,
            "response.function_call_arguments.done": self._function_call,
            "response.done": self._response_done,
            "conversation.item.input_audio_transcription.completed": self._user_transcript,
            "conversation.item.input_audio_transcription.failed": self._transcription_failed,
        }

    # -- the daemon's side -------------------------------------------------------------------

    async def run(self) -> str:
        """Connect, converse, hang up; returns why it ended or raises SessionFailed."""
        loop = asyncio.get_running_loop()
        self._phases.transition(Phase.CONNECTING, "opening a session")
        try:
            try:
                async with asyncio.timeout(self._session.connect_timeout_s):
                    await self._connect_unless_ended()
            except TimeoutError:
                last = f" (last error: {self._last_problem})" if self._last_problem else ""
                raise SessionFailed(
                    f"timed out after {self._session.connect_timeout_s:g} s "
                    f"while {self._stage}{last}"
                ) from None
            if not self._ended.done():
                self.wake_to_live_s = time.monotonic() - self._woke_at
                log.info("session live %.0f ms after the wake word", self.wake_to_live_s * 1000)
                # The server's VAD may have reported speech before it applied our session.update:
                # then the phase has moved on already, and the user is not idle.
                if self._phases.phase is Phase.CONNECTING:
                    self._phases.transition(Phase.LISTENING, "session live")
                if self._phases.phase is Phase.LISTENING and not self._user_speaking:
                    self._arm("idle", self._session.idle_timeout_s, "idle timeout")
                self._timers["max"] = loop.call_later(
                    self._session.max_session_s, self.end, "maximum session length"
                )
                self._watchdog = loop.create_task(
                    self._watch_path(), name="conversation-path-watchdog"
                )
            reason = await self._ended
            log.info("conversation ended: %s", reason)
            return reason
        finally:
            for timer in self._timers.values():
                timer.cancel()
            tasks = [*self._tasks, *([self._watchdog] if self._watchdog else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._audio.clear_playback()
            if self._call is not None:
                await self._call.close()
            else:
                self.mic.stop()

    def push_mic(self, samples: NDArray[np.int16]) -> None:
        """Send microphone audio (already echo-cancelled) into the session."""
        if self._session.half_duplex and not self._mic_open():
            samples = np.zeros_like(samples)
        self.mic.push(samples)

    def on_button(self) -> None:
        """Short press: interrupt a reply, end the turn (no VAD), or end the conversation."""
        phase = self._phases.phase
        if phase is Phase.SPEAKING:
            self.barge_in("button")
        elif phase is Phase.LISTENING and self._manual_turns and self._live.is_set():
            for event in self._turn_end:
                self._send(event)
            self._phases.transition(Phase.THINKING, "button ended the turn")
            self._await_reply()
        else:
            self.end("button")

    def on_wake_word(self) -> None:
        """The wake word during a conversation interrupts the reply; otherwise it is ignored."""
        if self._phases.phase is Phase.SPEAKING:
            self.barge_in("wake word")

    def barge_in(self, why: str) -> None:
        """Stop the reply at once: cancel it upstream and silence the speaker."""
        log.info("interrupting the reply (%s)", why)
        self._send({"type": "response.cancel"})
        self._send({"type": "output_audio_buffer.clear"})
        self._audio.clear_playback()
        self._discarding = True
        self._server_speaking = False
        self._speaker_quiet_since = time.monotonic()
        self._phases.transition(Phase.LISTENING, f"interrupted by {why}")
        self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def end(self, reason: str) -> None:
        """Finish the conversation normally."""
        if not self._ended.done():
            self._ended.set_result(reason)
        self._settled.set()

    def fail(self, message: str) -> None:
        """Finish the conversation with an error."""
        if not self._ended.done():
            self._ended.set_exception(SessionFailed(message))
        self._settled.set()

    @property
    def live(self) -> bool:
        """True once the session has been configured."""
        return self._live.is_set()

    # -- set-up ------------------------------------------------------------------------------

    async def _connect_unless_ended(self) -> None:
        """Connect, but stop at once when the conversation ends meanwhile (a press, mute, the
        audio device failing): the user is not kept waiting, and no call is set up in vain."""
        connecting = asyncio.ensure_future(self._connect())
        try:
            waiting: set[asyncio.Future[Any]] = {connecting, self._ended}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting})
        if not connecting.cancelled():
            connecting.result()  # its error, if it failed

    async def _connect(self) -> None:
        for attempt in range(3):
            self._stage = "getting a session key from the companion"
            key = await self._get_key()
            self._check_session_type(key.session)
            self._stage = "connecting to the Realtime API"
            call = RealtimeCall(
                base_url=self._session.url,
                http=self._http,
                ice_servers=self._session.ice_servers,
                mic=self.mic,
                on_event=self.handle_event,
                on_audio=self._play,
                on_lost=self._lost,
            )
            self._call = call
            try:
                await call.connect(key.value)
                break
            except CallRejected as exc:
                await call.close(hang_up=False)
                self._call = None
                self.mic = self._fresh_mic()
                if exc.status == 401 and attempt == 0:
                    log.warning("%s; fetching a new key", exc)
                    self._keys.discard(key)
                    continue
                if exc.status >= 500 and attempt < 2:
                    log.warning("%s; retrying", exc)
                    await asyncio.sleep(0.5 * 2**attempt)
                    continue
                raise SessionFailed(str(exc)) from exc
            except CallError as exc:
                await call.close(hang_up=False)
                raise SessionFailed(str(exc)) from exc
        self._stage = "waiting for the session to be configured"
        self._manual_turns = manual_turns(key.session)
        self._create_on_commit = device_creates_responses(key.session)
        self._turn_end = end_turn_events(key.session)
        self._send(session_update(key.session, self._tools))
        await self._settled.wait()  # session.updated, or ended/failed meanwhile

    def _check_session_type(self, minted: dict[str, Any]) -> None:
        problem = session_type_mismatch(minted, self._session.mode)
        if problem is not None:
            raise SessionFailed(problem)

    async def _get_key(self) -> Any:
        delay = 0.5
        while True:
            try:
                return await self._keys.get()
            except CompanionError as exc:
                if not exc.retryable:
                    raise SessionFailed(str(exc)) from exc
                self._last_problem = str(exc)
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 4.0)

    def _fresh_mic(self) -> MicTrack:
        """A new track carrying over the audio the failed attempt had queued."""
        mic = MicTrack()
        mic.take_over(self.mic)
        return mic

    # -- events ------------------------------------------------------------------------------

    def handle_event(self, raw: str) -> None:
        """Handle one message from the event channel; never raises."""
        try:
            event = json.loads(raw)
        except (ValueError, TypeError, RecursionError):  # RecursionError: nested 100k deep
            log.warning("ignored a malformed event (%d characters)", len(raw))
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            log.warning("ignored an event without a type")
            return
        handler = self.handlers.get(event["type"])
        if handler is None:
            log.debug("event %s", _clip(event["type"]))
            return
        try:
            handler(event)
        except Exception:
            log.exception("could not handle a %s event; ignored", _clip(event["type"]))

    def _session_updated(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if isinstance(session, dict):  # the effective config, whoever changed it
            self._manual_turns = manual_turns(session)
            self._create_on_commit = device_creates_responses(session)
            self._turn_end = end_turn_events(session)
        self._live.set()
        self._settled.set()

    def _error(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        details = error if isinstance(error, dict) else {}
        message = str(details.get("message", "no message"))[:300]
        code = _clip(str(details.get("code") or details.get("type") or "error"), 100)
        if not self._live.is_set():
            self.fail(f"the Realtime API refused the session ({code}: {message})")
        elif code == SESSION_EXPIRED:
            # The service's maximum session length: it closes the call next. A normal end,
            # not a lost connection.
            log.info("the service ended the session: %s", message)
            self.end("the service ended the session")
        elif code == "response_cancel_not_active":
            log.debug("nothing to cancel")
        else:
            log.warning("Realtime API error %s: %s", code, message)

    def _speech_started(self, event: dict[str, Any]) -> None:
        self._disarm("idle")
        self._disarm("reply")
        self._user_speaking = True
        if self._phases.phase is Phase.SPEAKING:
            # The server interrupted its own reply for the user; stop what is still queued here.
            self._audio.clear_playback()
            self._discarding = True
        self._phases.transition(Phase.LISTENING, "user speaking")

    def _speech_stopped(self, event: dict[str, Any]) -> None:
        self._user_speaking = False
        self._phases.transition(Phase.THINKING, "user stopped speaking")
        self._await_reply()

    def _committed(self, event: dict[str, Any]) -> None:
        # The server's VAD committed the turn (a press's own commit needs no second create).
        if not self._create_on_commit or self._manual_turns:
            return
        if self._response_active:
            self._create_after_response = True  # asked for once that response is done
        else:
            self._send({"type": "response.create"})

    def _response_created(self, event: dict[str, Any]) -> None:
        self._disarm("idle")
        self._response_active = True
        self._response_audio = False
        self._discarding = False
        if self._phases.phase is not Phase.SPEAKING:
            self._phases.transition(Phase.THINKING, "reply started")

    def _speaking_started(self, event: dict[str, Any]) -> None:
        self._disarm("idle")
        self._disarm("reply")
        self._response_audio = True
        self._server_speaking = True
        self._replied = True
        self._phases.transition(Phase.SPEAKING, "reply audio")

    def _speaking_stopped(self, event: dict[str, Any]) -> None:
        self._server_speaking = False
        self._speaker_quiet_since = time.monotonic()
        if self._ending_after_reply is not None:
            self._spawn(self._end_when_played(self._ending_after_reply), "end-after-reply")
            return
        if self._tool_runs:
            # The reply was "let me check": the tools it called (started at its response.done,
            # which comes first) are still running, and their outputs get a reply under the
            # reply deadline. The user is waiting, not idle.
            if self._phases.phase is Phase.SPEAKING:
                self._phases.transition(Phase.THINKING, "reply finished, tools running")
            return
        if self._phases.phase is Phase.SPEAKING:
            self._phases.transition(Phase.LISTENING, "reply finished")
        self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _speaking_cleared(self, event: dict[str, Any]) -> None:
        self._server_speaking = False
        self._speaker_quiet_since = time.monotonic()

    def _transcript_delta(self, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str):
            self._transcript.append(delta)

    def _transcript_done(self, event: dict[str, Any]) -> None:
        text = event.get("transcript")
        if not isinstance(text, str):
            text = "".join(self._transcript)
        self._transcript.clear()
        log.info("assistant: %s", _clip(text))

    def _user_transcript(self, event: dict[str, Any]) -> None:
        text = event.get("transcript")
        if not isinstance(text, str):
            return
        log.info("user: %s", _clip(text))
        if self._on_transcript is not None:
            self._on_transcript(text, str(event.get("item_id", "")))
        if self._session.mode == "transcription":
            self._disarm("reply")
            self._phases.transition(Phase.LISTENING, "transcript received")
            self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _transcription_failed(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        message = _short((error if isinstance(error, dict) else {}).get("message", "no message"))
        item_id = _clip(str(event.get("item_id", "")), 100)
        log.warning("the transcription of what the user said failed: %s", message)
        if self._on_transcription_failed is not None:
            self._on_transcription_failed(message, item_id)
        # Nothing will come of this turn in a transcription session; in a conversation, a reply
        # may still come (it does not wait for the transcript), and then the phase follows it.
        if self._phases.phase is Phase.THINKING and not self._response_active:
            self._disarm("reply")
            self._phases.transition(Phase.LISTENING, "transcription failed")
            self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _function_call(self, event: dict[str, Any]) -> None:
        # Only noted here: the call runs once its response has completed (response.done), as a
        # cancelled or cut-short response also reports its calls' arguments.
        call = _FunctionCall.of(event)
        response_id = event.get("response_id")
        if call is None or not isinstance(response_id, str):
            log.warning("ignored a function call without a name, call_id or response_id")
            return
        self._calls.setdefault(response_id, []).append(call)

    def _response_done(self, event: dict[str, Any]) -> None:
        self._response_active = False
        self._disarm("reply")
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        status = response.get("status")
        response_id = response.get("id")
        calls = self._calls.pop(response_id, []) if isinstance(response_id, str) else []
        # The response's own record of its calls, should an arguments event have been missed.
        noted = {call.call_id for call in calls}
        output = response.get("output")
        for item in output if isinstance(output, list) else []:
            call = _FunctionCall.of(item) if isinstance(item, dict) else None
            if (
                call is not None
                and item.get("type") == "function_call"
                and call.call_id not in noted
            ):
                calls.append(call)
        if status == "failed":
            log.warning("the reply failed: %s", _short(response.get("status_details")))
        if status != "completed":
            for call in calls:
                log.info(
                    "dropped the model's call to %s: its response was %s",
                    _clip(call.name, 60),
                    _clip(str(status), 40),
                )
            calls = []
        if calls:
            self._create_after_response = False  # this batch's response.create covers them
            self._run_calls(calls)
        elif self._create_after_response and not self._tool_runs:
            # Tool outputs were sent while this response was running: it did not see them.
            self._create_after_response = False
            self._create_response()
            return
        # A reply without audio (text, or a tool call still running): nothing will be played.
        if (
            not self._response_audio
            and self._phases.phase is Phase.THINKING
            and self._ending_after_reply is None
            and not self._tool_runs
        ):
            self._phases.transition(Phase.LISTENING, "reply without audio")
            self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _run_calls(self, calls: list[_FunctionCall]) -> None:
        tools = [call for call in calls if call.name != END_CONVERSATION]
        if len(tools) < len(calls):
            log.info("the model ended the conversation")
            for call in calls:
                if call.name == END_CONVERSATION:
                    self._send_output(call.call_id, json.dumps({"ok": True}))
            self._ending_after_reply = "model called end_conversation"
            if self._phases.phase is not Phase.SPEAKING:
                self._spawn(self._end_when_played(self._ending_after_reply), "end-after-reply")
        if tools:
            self._tool_runs += 1
            self._disarm("idle")  # armed if the reply's audio stopped before its response.done
            if self._phases.phase is Phase.LISTENING and not self._user_speaking:
                self._phases.transition(Phase.THINKING, "tools running")
            self._spawn(self._run_tools(tools), "tools")

    # -- helpers -----------------------------------------------------------------------------

    async def _run_tools(self, calls: list[_FunctionCall]) -> None:
        """Run one response's tool calls together; all outputs, then one response.create."""
        try:
            await asyncio.gather(*(self._run_tool(call) for call in calls))
        finally:
            self._tool_runs -= 1
        if self._tool_runs or self._ending_after_reply is not None:
            return  # another batch's create covers these outputs too; or no more replies
        if self._response_active:
            self._create_after_response = True  # sent when that response is done
        else:
            self._create_response()

    async def _run_tool(self, call: _FunctionCall) -> None:
        log.info("the model called %s", _clip(call.name))
        try:
            output = await self._tools.run(call.name, call.arguments)
        except Exception as exc:  # the model must get an output whatever happened
            log.exception("the tool %s failed", _clip(call.name, 60))
            output = json.dumps({"ok": False, "error": f"the tool failed: {type(exc).__name__}"})
        self._send_output(call.call_id, output)

    def _create_response(self) -> None:
        self._send({"type": "response.create"})
        self._await_reply("the tool results were sent")

    def _await_reply(self, after: str = "the user stopped speaking") -> None:
        """The user's turn (or the tools' outputs) went in: a reply must start in time."""
        seconds = self._session.reply_timeout_s
        what = "transcript" if self._session.mode == "transcription" else "reply"
        self._arm("reply", seconds, f"no {what} {seconds:g} s after {after}", failure=True)

    async def _watch_path(self) -> None:
        while self._call is not None:
            await asyncio.sleep(REPLY_STALL_S / 8)
            quiet_for = time.monotonic() - self._call.heard_at
            if self._server_speaking and quiet_for > REPLY_STALL_S:
                self.fail(f"connection lost: nothing received for {quiet_for:.1f} s mid-reply")
                return
            if quiet_for > PATH_STALL_S:
                self.fail(f"connection lost: nothing received for {quiet_for:.1f} s")
                return

    async def _end_when_played(self, reason: str) -> None:
        # The speaker's queue has no completion event, and the reply's tail may still be in
        # flight: poll until it has arrived and played, so the goodbye is heard to the end.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            in_flight = time.monotonic() - self._last_audio_at < REPLY_TAIL_S
            if not in_flight and self._audio.playback_queued_s <= 0:
                break
            await asyncio.sleep(0.05)
        self.end(reason)

    def _send_output(self, call_id: str, output: str) -> None:
        self._send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call_id, "output": output},
            }
        )

    def _send(self, event: dict[str, Any]) -> None:
        if self._call is None or not self._call.send(event):
            log.debug("could not send %s: channel not open", _clip(event["type"]))

    def _play(self, samples: NDArray[np.int16]) -> None:
        if self._discarding:
            return
        # The remote track carries silence between replies; queueing it would keep the speaker
        # "busy" (and a half-duplex microphone closed, and a goodbye waiting) forever. Inside a
        # reply, pauses play as sent.
        if _is_silent(samples):
            if not self._server_speaking:
                return
        else:
            self._last_audio_at = time.monotonic()
        self._audio.play(samples)

    def _mic_open(self) -> bool:
        if not self._replied:
            # Before the first reply the speaker only plays the wake cue: letting it into the
            # session costs nothing, gating it would cut the words said right after the wake word.
            return True
        if self._phases.phase is Phase.SPEAKING or self._audio.playback_queued_s > 0:
            return False
        return time.monotonic() - self._speaker_quiet_since > HALF_DUPLEX_TAIL_S

    def _lost(self, why: str) -> None:
        if self._live.is_set():
            self.fail(f"connection lost: {why}")
        else:
            self.fail(f"connection failed: {why}")

    def _arm(self, name: str, seconds: float, reason: str, *, failure: bool = False) -> None:
        """In `seconds`, end the conversation (or fail it) for `reason`, unless disarmed."""
        self._disarm(name)
        action = self.fail if failure else self.end
        self._timers[name] = asyncio.get_running_loop().call_later(seconds, action, reason)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"conversation-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@dataclass(frozen=True)
class _FunctionCall:
    """A function call the model made."""

    name: str
    call_id: str
    arguments: str

    @classmethod
    def of(cls, data: dict[str, Any]) -> _FunctionCall | None:
        """From a function_call_arguments.done event or a function_call item; None if broken."""
        name, call_id, arguments = data.get("name"), data.get("call_id"), data.get("arguments")
        if not isinstance(name, str) or not isinstance(call_id, str):
            return None
        return cls(name, call_id, arguments if isinstance(arguments, str) else "{}")


def session_type_mismatch(minted: dict[str, Any], mode: str) -> str | None:
    """Why a minted session cannot serve the device's `session.mode`, or None if it can."""
    kind = minted.get("type")
    wanted = "transcription" if mode == "transcription" else "realtime"
    if isinstance(kind, str) and kind != wanted:
        return (
            f"the companion mints {_clip(kind, 40)} sessions but session.mode is "
            f"{mode!r}: make them agree (the companion's [session] type)"
        )
    return None


def manual_turns(session: dict[str, Any]) -> bool:
    """Whether a session has no turn detection (a press ends the user's turn)."""
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, dict) else None
    return (
        isinstance(audio_in, dict)
        and "turn_detection" in audio_in
        and (audio_in["turn_detection"] is None)
    )


def end_turn_events(session: dict[str, Any]) -> list[dict[str, Any]]:
    """The client events that end the user's turn without turn detection: commit, and in a
    realtime session ask for the reply (a transcription session refuses response.create)."""
    events: list[dict[str, Any]] = [{"type": "input_audio_buffer.commit"}]
    if session.get("type") != "transcription":
        events.append({"type": "response.create"})
    return events


def device_creates_responses(session: dict[str, Any]) -> bool:
    """Whether the server's turn detection commits turns but leaves the reply to the device
    (`create_response: false` in a realtime session)."""
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, dict) else None
    detection = audio_in.get("turn_detection") if isinstance(audio_in, dict) else None
    return (
        session.get("type", "realtime") == "realtime"
        and isinstance(detection, dict)
        and detection.get("create_response") is False
    )


def _is_silent(samples: NDArray[np.int16]) -> bool:
    return not samples.size or int(np.abs(samples).max()) < SILENCE_PEAK


def _clip(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """Server-supplied text as it may appear in a log line: bounded, whatever was sent."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:200]
