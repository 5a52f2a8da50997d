"""One conversation: from the wake word to the hang-up.

`Conversation.run()` opens a session (`session/`: the API's own module gets a key or a session,
connects and sets it up) and then lets the session's events drive the phase (listening,
thinking, speaking) until something ends it: the idle timeout, the model calling
`end_conversation`, the button, the maximum length, or a failure. It returns the reason the
conversation ended, or raises `SessionFailed` saying what went wrong.

The events arrive in the backend-neutral form of `session/events.py`: this module knows the
phases, barge-in, tools, timeouts and liveness once for every API, and no API's event names.
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

from .audio import AudioBackend
from .config import Config
from .keys import KeyKeeper
from .session import events
from .session.events import OverBudget, Session, SessionFailed, ToolCall, clip
from .session.live import LiveSession
from .session.realtime import RealtimeSession
from .state import Phase, PhaseMachine
from .tools import END_CONVERSATION, ToolRunner

__all__ = ["Conversation", "OverBudget", "SessionFailed"]

log = logging.getLogger(__name__)

# Half-duplex: keep the microphone closed this long after the speaker stops (room reverb).
HALF_DUPLEX_TAIL_S = 0.3
# Received audio quieter than this peak (about -54 dBFS) outside a reply is not played.
SILENCE_PEAK = 64
# When the server says a reply's output stopped, its last ~100 ms are still in the network and the
# jitter buffer: the reply has been heard once nothing audible has arrived for this long.
REPLY_TAIL_S = 0.25
# An announcement is over once nothing audible has arrived for this long: GPT-Live reports no
# end of a reply, only its audio (session/live.py), and a text of several sentences pauses.
ANNOUNCEMENT_TAIL_S = 1.5
# Nothing at all from the peer for this long (no packet of any kind, and no answer to the call's
# probes: see webrtc.py) means the path died without a word; ICE consent checks would only notice
# after ~30 s. Mid-reply the user hears it stop, so sooner; otherwise they would talk to no one.
REPLY_STALL_S = 2.0
PATH_STALL_S = 5.0


class Conversation:
    """Runs one session (any API) and maps its events onto phases."""

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
        announcement: str | None = None,
        then_converse: bool = False,
    ) -> None:
        self._config = config
        self._session = config.session
        self._phases = phases
        self._audio = audio
        self._tools = tools
        self._woke_at = woke_at
        self._on_transcript = on_transcript
        self._on_transcription_failed = on_transcription_failed
        self._api: Session
        if config.session.api == "live":
            self._api = LiveSession(
                config=config.session,
                companion=keys.companion,
                http=http,
                tools=tools,
                on_event=self._on_event,
                on_audio=self._play,
                on_lost=self._lost,
            )
        else:
            self._api = RealtimeSession(
                config=config.session,
                keys=keys,
                http=http,
                tools=tools,
                on_event=self._on_event,
                on_audio=self._play,
                on_lost=self._lost,
            )
        self._live = asyncio.Event()
        self._settled = asyncio.Event()
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # After a barge-in, the cancelled reply's audio still in flight (RTP, jitter buffer)
        # arrives after the service said it stopped sending it: drop received audio until the
        # next reply starts.
        self._discarding = False
        self._server_speaking = False  # between ReplyAudioStarted and ReplyAudioFinished
        self._replied = False  # the model's voice has been played in this conversation
        self._user_speaking = False  # between UserSpeaking and UserStopped
        self._last_audio_at = 0.0  # when audible reply audio was last received
        self._speaker_quiet_since = 0.0
        self._ending_after_reply: str | None = None
        self._response_audio = False
        self._response_active = False  # between ReplyStarted and ReplyDone
        self._tool_runs = 0  # tool batches running; their outputs then get one reply request
        self._create_after_response = False  # outputs sent while a response was active
        # An announcement (Home Assistant) is said first, with the microphone kept out of the
        # session until it has been heard; then the conversation goes on, or ends.
        self._announcement = announcement
        self._then_converse = then_converse
        self._announcing = announcement is not None  # the microphone waits until it is said
        self.wake_to_live_s: float | None = None
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            events.Live: self._session_live,
            events.Closed: self._closed,
            events.UserSpeaking: self._speech_started,
            events.UserStopped: self._speech_stopped,
            events.ReplyNeeded: self._reply_needed,
            events.ReplyStarted: self._response_created,
            events.ReplyAudioStarted: self._speaking_started,
            events.ReplyAudioFinished: self._speaking_stopped,
            events.Transcript: self._transcript,
            events.TranscriptionFailed: self._transcription_failed,
            events.ReplyDone: self._response_done,
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
                problem = self._api.last_problem
                last = f" (last error: {problem})" if problem else ""
                raise SessionFailed(
                    f"timed out after {self._session.connect_timeout_s:g} s "
                    f"while {self._api.stage}{last}"
                ) from None
            if not self._ended.done():
                self.wake_to_live_s = time.monotonic() - self._woke_at
                log.info("session live %.0f ms after the wake word", self.wake_to_live_s * 1000)
                # The service may have reported speech before the session was live: then the
                # phase has moved on already, and the user is not idle.
                if self._announcement is not None:
                    self._announce(self._announcement)
                elif self._phases.phase is Phase.CONNECTING:
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
            ended = self._ended
            failed = ended.done() and not ended.cancelled() and ended.exception() is not None
            await self._api.close(graceful=not failed)

    def push_mic(self, samples: NDArray[np.int16]) -> None:
        """Send microphone audio (already echo-cancelled) into the session."""
        if self._announcing or (self._session.half_duplex and not self._mic_open()):
            samples = np.zeros_like(samples)
        self._api.push_audio(samples)

    def on_button(self) -> None:
        """Short press: interrupt a reply, end the turn (no VAD), or end the conversation."""
        phase = self._phases.phase
        if self._announcing and not self._then_converse:
            self.end("button")  # nobody is to be asked anything: stop the announcement
        elif phase is Phase.SPEAKING:
            self.barge_in("button")
        elif phase is Phase.LISTENING and self._api.manual_turns and self._live.is_set():
            self._api.end_turn()
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
        self._api.interrupt()
        self._audio.clear_playback()
        self._discarding = True
        self._server_speaking = False
        self._speaker_quiet_since = time.monotonic()
        if self._announcing and not self._then_converse:
            self.end(why)  # an announcement nobody is to answer: stopping it ends the session
            return
        self._announcing = False  # stopped: listen to the answer
        self._phases.transition(Phase.LISTENING, f"interrupted by {why}")
        self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def mute(self) -> None:
        """The microphone was muted: tell the service (where it listens for that) and end."""
        self._api.mute()
        self.end("microphone muted")

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
        await self._api.open()
        await self._settled.wait()  # live, or ended/failed meanwhile

    # -- events ------------------------------------------------------------------------------

    def handle_event(self, raw: str) -> None:
        """Handle one message from the session's event channel; never raises."""
        self._api.handle_message(raw)

    def _on_event(self, event: events.Event) -> None:
        self._handlers[type(event)](event)

    def _session_live(self, event: events.Live) -> None:
        self._live.set()
        self._settled.set()

    def _closed(self, event: events.Closed) -> None:
        if event.failed:
            self.fail(event.reason)
        else:
            self.end(event.reason)

    def _speech_started(self, event: events.UserSpeaking) -> None:
        self._disarm("idle")
        self._disarm("reply")
        self._user_speaking = True
        if self._phases.phase is Phase.SPEAKING:
            # The service interrupted its own reply for the user; stop what is still queued here.
            self._audio.clear_playback()
            self._discarding = True
        self._phases.transition(Phase.LISTENING, "user speaking")

    def _speech_stopped(self, event: events.UserStopped) -> None:
        self._user_speaking = False
        self._phases.transition(Phase.THINKING, "user stopped speaking")
        self._await_reply()

    def _reply_needed(self, event: events.ReplyNeeded) -> None:
        if self._response_active:
            self._create_after_response = True  # asked for once that response is done
        else:
            self._api.request_reply()

    def _response_created(self, event: events.ReplyStarted) -> None:
        self._disarm("idle")
        self._response_active = True
        self._response_audio = False
        self._discarding = False
        if self._phases.phase is not Phase.SPEAKING:
            self._phases.transition(Phase.THINKING, "reply started")

    def _speaking_started(self, event: events.ReplyAudioStarted) -> None:
        self._disarm("idle")
        self._disarm("reply")
        self._response_audio = True
        self._server_speaking = True
        self._replied = True
        self._phases.transition(Phase.SPEAKING, "reply audio")

    def _speaking_stopped(self, event: events.ReplyAudioFinished) -> None:
        self._server_speaking = False
        self._speaker_quiet_since = time.monotonic()
        if self._then_converse:
            self._announcing = False  # heard: the answer may come (else the session just ends)
        if event.interrupted:
            return  # after a barge-in, which has set the phase already
        if self._ending_after_reply is not None:
            # An announcement may pause longer between sentences than a reply's tail.
            tail = ANNOUNCEMENT_TAIL_S if self._announcing else REPLY_TAIL_S
            self._spawn(self._end_when_played(self._ending_after_reply, tail), "end-after-reply")
            return
        if self._tool_runs:
            # The reply was "let me check": the tools it called (started when the reply was
            # done, which the service reports first) are still running, and their outputs get a
            # reply under the reply deadline. The user is waiting, not idle.
            if self._phases.phase is Phase.SPEAKING:
                self._phases.transition(Phase.THINKING, "reply finished, tools running")
            return
        if self._phases.phase is Phase.SPEAKING:
            self._phases.transition(Phase.LISTENING, "reply finished")
        self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _transcript(self, event: events.Transcript) -> None:
        if event.role == "assistant":
            log.info("assistant: %s", clip(event.text))
            return
        log.info("user: %s", clip(event.text))
        if self._on_transcript is not None:
            self._on_transcript(event.text, event.item_id)
        if self._session.mode == "transcription":
            self._disarm("reply")
            self._phases.transition(Phase.LISTENING, "transcript received")
            self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _transcription_failed(self, event: events.TranscriptionFailed) -> None:
        log.warning("the transcription of what the user said failed: %s", event.message)
        if self._on_transcription_failed is not None:
            self._on_transcription_failed(event.message, event.item_id)
        # Nothing will come of this turn in a transcription session; in a conversation, a reply
        # may still come (it does not wait for the transcript), and then the phase follows it.
        if self._phases.phase is Phase.THINKING and not self._response_active:
            self._disarm("reply")
            self._phases.transition(Phase.LISTENING, "transcription failed")
            self._arm("idle", self._session.idle_timeout_s, "idle timeout")

    def _response_done(self, event: events.ReplyDone) -> None:
        self._response_active = False
        self._disarm("reply")
        calls = list(event.calls)
        if calls:
            self._create_after_response = False  # this batch's reply request covers them
            self._run_calls(calls)
        elif self._create_after_response and not self._tool_runs:
            # Tool outputs were sent while this response was running: it did not see them.
            self._create_after_response = False
            self._create_response()
            return
        if self._announcing and not self._response_audio and not calls:
            self._announcing = False
            log.warning("the announcement came back without audio")
            if self._ending_after_reply is not None:
                self.end("announcement not made")
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

    def _run_calls(self, calls: list[ToolCall]) -> None:
        tools = [call for call in calls if call.name != END_CONVERSATION]
        if len(tools) < len(calls):
            log.info("the model ended the conversation")
            for call in calls:
                if call.name == END_CONVERSATION:
                    self._api.send_tool_output(call.call_id, json.dumps({"ok": True}))
            self._ending_after_reply = "model called end_conversation"
            if self._phases.phase is not Phase.SPEAKING:
                self._spawn(self._end_when_played(self._ending_after_reply), "end-after-reply")
        if tools:
            self._tool_runs += 1
            self._disarm("idle")  # armed if the reply's audio stopped before the reply was done
            if self._phases.phase is Phase.LISTENING and not self._user_speaking:
                self._phases.transition(Phase.THINKING, "tools running")
            self._spawn(self._run_tools(tools), "tools")

    # -- helpers -----------------------------------------------------------------------------

    def _announce(self, text: str) -> None:
        if not self._api.say(text):
            log.warning("announcement not made: the session could not be asked to speak")
            self.end("announcement not made")
            return
        log.info("announcing: %s", clip(text))
        self._announcing = True
        if not self._then_converse:
            self._ending_after_reply = "announcement made"
        self._phases.transition(Phase.THINKING, "announcement asked for")
        self._await_reply("the announcement was asked for")

    async def _run_tools(self, calls: list[ToolCall]) -> None:
        """Run one response's tool calls together; all outputs, then one reply request."""
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

    async def _run_tool(self, call: ToolCall) -> None:
        log.info("the model called %s", clip(call.name))
        try:
            output = await self._tools.run(call.name, call.arguments)
        except Exception as exc:  # the model must get an output whatever happened
            log.exception("the tool %s failed", clip(call.name, 60))
            output = json.dumps({"ok": False, "error": f"the tool failed: {type(exc).__name__}"})
        self._api.send_tool_output(call.call_id, output)

    def _create_response(self) -> None:
        self._api.request_reply()
        self._await_reply("the tool results were sent")

    def _await_reply(self, after: str = "the user stopped speaking") -> None:
        """The user's turn (or the tools' outputs) went in: a reply must start in time."""
        seconds = self._session.reply_timeout_s
        what = "transcript" if self._session.mode == "transcription" else "reply"
        self._arm("reply", seconds, f"no {what} {seconds:g} s after {after}", failure=True)

    async def _watch_path(self) -> None:
        while (heard_at := self._api.heard_at) is not None:
            await asyncio.sleep(REPLY_STALL_S / 8)
            quiet_for = time.monotonic() - (self._api.heard_at or heard_at)
            if self._server_speaking and quiet_for > REPLY_STALL_S:
                self.fail(f"connection lost: nothing received for {quiet_for:.1f} s mid-reply")
                return
            if quiet_for > PATH_STALL_S:
                self.fail(f"connection lost: nothing received for {quiet_for:.1f} s")
                return

    async def _end_when_played(self, reason: str, tail_s: float = REPLY_TAIL_S) -> None:
        # The speaker's queue has no completion event, and the reply's tail may still be in
        # flight: poll until it has arrived and played, so the goodbye is heard to the end.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            in_flight = time.monotonic() - self._last_audio_at < tail_s
            if not in_flight and self._audio.playback_queued_s <= 0:
                break
            await asyncio.sleep(0.05)
        self.end(reason)

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


def _is_silent(samples: NDArray[np.int16]) -> bool:
    return not samples.size or int(np.abs(samples).max()) < SILENCE_PEAK
