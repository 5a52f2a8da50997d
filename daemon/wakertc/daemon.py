"""The device daemon: wires audio, wake word, button, LEDs and conversations together.

Data flow (all on the event loop thread; audio threads hand frames over in `audio.py`, a wake-word
chunk's worth at a time while no conversation is open: `_pace_capture`)::

    microphone --frame--> [mute gate] --> [echo canceller, in conversations] --> preroll ring
                                     |--> wake-word detector --> start / barge in
                                     '--> conversation's mic track (while one is open)

The phase lives in one `PhaseMachine`; LEDs, cues, the user hook and systemd STATUS listen to it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from numpy.typing import NDArray

from .audio import CAPTURE_RATE, FRAME_SAMPLES, AudioBackend, AudioDeviceError, open_backend
from .button import ButtonError
from .config import Config, ConfigError, config_path, load_config, read_token
from .keys import (
    MAX_RETRY_AFTER_S,
    CompanionClient,
    CompanionError,
    CompanionOverBudget,
    KeyKeeper,
)
from .leds import LedError
from .logs import register_secret
from .memory import limit_malloc_arenas, release_free_memory
from .sounds import CueError
from .state import Phase, PhaseMachine, Transition
from .timers import Entry, Timers
from .verifier import verifier_path
from .wakeword import CHUNK_SAMPLES as WAKE_CHUNK_SAMPLES
from .wakeword import Detection, WakeWordDetector, WakeWordError

if TYPE_CHECKING:
    from .mqtt import Announcement

log = logging.getLogger(__name__)

# Failures at start-up that the user must fix; reported in one line, no traceback.
STARTUP_ERRORS = (WakeWordError, AudioDeviceError, LedError, ButtonError, CueError, OSError)

# How long the error pattern and cue are shown before listening again.
ERROR_DISPLAY_S = 2.0
# Reopening a lost audio device: first retry after this, doubling up to the maximum.
AUDIO_RETRY_S = (1.0, 30.0)
# After a conversation, memory is released this much later (its objects are gone by then).
RELEASE_AFTER_S = 1.0
# A reopened device is back only once audio arrives: a source can open and deliver nothing.
AUDIO_PROOF_S = 2.0
# Announcements from Home Assistant: a WAV download is given this long and this many bytes.
ANNOUNCE_TIMEOUT_S = 10.0
ANNOUNCE_MAX_BYTES = 20_000_000
# The phase reason while the audio device has not been there since start-up (systemd STATUS shows
# "error: waiting for the audio device").
WAITING_FOR_AUDIO = "waiting for the audio device"


@dataclass
class Edges:
    """What the daemon talks to; tests and the demo pass their own."""

    audio: AudioBackend | None = None
    pin_factory: Any = None
    companion_transport: httpx.AsyncBaseTransport | None = None
    listeners: list[Any] = field(default_factory=list)
    clock: Any = None  # the timers' wall and monotonic clocks (timers.Clock); None = the system's


class Daemon:
    """The always-on device process."""

    def __init__(self, config: Config, edges: Edges | None = None) -> None:
        self.config = config
        self.edges = edges or Edges()
        self.phases = PhaseMachine()
        self.conversations = 0
        self.last_wake_to_live_s: float | None = None
        self.last_detection: Detection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._audio: AudioBackend | None = None
        self._conversation: Any = None
        self._conversation_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()
        self._muted = False
        preroll_frames = max(1, config.wake.preroll_ms * CAPTURE_RATE // 1000 // 320)
        self._preroll: collections.deque[NDArray[np.int16]] = collections.deque(
            maxlen=preroll_frames
        )
        self._aec: Any = None
        self._aec_active = False
        self._aec_loaded = False  # the preload has decided: a canceller, or half-duplex
        self._audio_lost = False
        self._budget_task: asyncio.Task[None] | None = None
        self._audio_wait_reason = ""  # the ERROR phase's reason while the audio device is away
        self._audio_flowing = asyncio.Event()
        self._error_timer: asyncio.TimerHandle | None = None
        self.timers: Timers | None = None
        self.mqtt: Any = None  # mqtt.HomeAssistant when [mqtt] names a broker
        self._volume = config.audio.output_volume
        self._ringing: list[Entry] = []  # what rings now, or will when the conversation ends
        self._ring_timer: asyncio.TimerHandle | None = None

    # -- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, listen until `stop()`, then shut down cleanly."""
        from .button import make_button
        from .hooks import PhaseHook
        from .leds import StatusLeds
        from .notify import Systemd
        from .ringtone import RingTone
        from .sounds import Cues
        from .timers import TimerTools
        from .tools import ToolRunner

        loop = self._loop = asyncio.get_running_loop()
        config = self.config
        self.detector = WakeWordDetector(
            config.wake, None if config.source is None else verifier_path(config.source)
        )
        self.systemd = Systemd(loop)
        self.leds = StatusLeds(config.leds, self.edges.pin_factory)
        self.cues = Cues(config.sounds, self._play_cue)
        self.hook = PhaseHook(config.hook, loop)
        # Before the cues: leaving `ringing` silences the ring, not the cue that follows.
        self.ringtone = RingTone(config.timers, self._play_cue, self._clear_playback)
        listeners = (self.leds, self.ringtone, self.cues, self.hook, self.systemd)
        for listener in (*listeners, *self.edges.listeners):
            self.phases.add_listener(listener)
        self.phases.add_listener(self._echo_cancel_when_speaking)
        self.phases.add_listener(self._left_ringing)
        self.button = make_button(
            config.button,
            self.edges.pin_factory,
            loop,
            self.on_short_press,
            self.on_long_press,
            self.on_press,
        )
        self.timers = Timers(
            config.timers,
            config.state.dir,
            on_due=self._timers_due,
            on_missed=self._timer_missed,
            on_change=self._timers_changed,
            clock=self.edges.clock,
        )
        self.timers.load()
        timer_tools = [TimerTools(self.timers)] if config.timers.enabled else []
        self.tools = ToolRunner(config.tools, builtins=timer_tools)
        token = read_token(config.companion)
        register_secret(token)  # defence in depth: redacted should any log line ever carry it
        companion = CompanionClient(
            config.companion, token, transport=self.edges.companion_transport
        )
        self.keys = KeyKeeper(companion, on_health=self._key_health)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(config.session.connect_timeout_s))
        try:
            missing = await self._open_audio(loop)
            if config.session.api == "realtime":  # Live has no session keys: nothing to keep
                self._spawn(self.keys.run(), "key-keeper")
            if missing is None:
                self._listen_for_wake("listening for the wake word")
            else:
                # A USB microphone often appears seconds after boot: wait for it through the
                # reopening path (error shown, retries with backoff) instead of exiting, which
                # would make systemd give up after its start limit.
                log.warning(
                    "%s (retrying at most every %.0f s; the LEDs show the error until then): %s",
                    WAITING_FOR_AUDIO,
                    AUDIO_RETRY_S[1],
                    missing,
                )
                self._wait_for_audio(WAITING_FOR_AUDIO, str(missing))
            # Its first check rings what came due while the device was off (within the grace).
            self._spawn(self.timers.run(), "timers")
            if config.mqtt.url:
                self._start_mqtt()
            # READY=1 now even while waiting for the audio device: the daemon is up, showing
            # why it cannot listen (STATUS=error: waiting for the audio device) and feeding the
            # watchdog. Holding READY=1 back until audio flows would block `systemctl start`
            # (and the installer) and fail the unit after TimeoutStartSec, restarting it into
            # the same wait until the start limit gives up: the very failure this avoids.
            self.systemd.ready()
            self.systemd.start_watchdog()
            # Off the critical path: the first conversation should not wait for these imports
            # (WebRTC ~160 ms, the echo canceller ~100 ms on this class of machine).
            self._spawn(self._preload(), "preload")
            await self._stopped.wait()
        finally:
            await self._shutdown(companion)

    def stop(self) -> None:
        """Ask the daemon to shut down (signal-safe when called via the loop)."""
        self._stopped.set()

    async def _shutdown(self, companion: CompanionClient) -> None:
        for handle in (self._error_timer, self._ring_timer):
            if handle is not None:
                handle.cancel()
        self.systemd.stopping()
        self.phases.transition(Phase.STOPPING, "shutting down")
        if self._conversation_task is not None:
            self._conversation_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._conversation_task, 1.5)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.button is not None:
            self.button.close()
        self.leds.close()
        if self._audio is not None:
            self._audio.close()
        await self.hook.aclose()
        await companion.aclose()
        await self.http.aclose()
        self.systemd.stop()
        log.info("stopped")

    # -- audio -------------------------------------------------------------------------------

    def _on_frame(self, frame: NDArray[np.int16]) -> None:
        """One 20 ms microphone frame, on the loop thread."""
        if not self._audio_flowing.is_set():
            self._audio_flowing.set()
        if self._muted:
            self._pace_capture()
            return  # privacy: nothing is analysed while muted
        conversation = self._conversation
        heard = frame
        if self._aec_active:
            frame = self._aec.capture(heard)
            if self._aec.may_leak():
                # Still learning the room (aec.py): the session waits, and the wake word hears
                # the raw microphone, since AEC3 ducks everything under the speaker meanwhile.
                frame = np.zeros_like(heard)
            else:
                heard = frame
        self._preroll.append(frame)
        if conversation is not None:
            conversation.push_mic(frame)
        for detection in self.detector.process(heard):
            self._on_detection(detection)
        self._pace_capture()

    def _pace_capture(self) -> None:
        """Frames as they come during a conversation. Else as many at a time as the wake-word
        detector lacks for its next chunk (it runs once per four frames, and each wake of the
        loop costs about as much CPU as its work does): none later than it could use them."""
        if self._audio is None:
            return
        if self._conversation is not None:
            gather = 1
        elif self._muted:  # (nothing is analysed)
            gather = WAKE_CHUNK_SAMPLES // FRAME_SAMPLES
        else:
            gather = -(-self.detector.wanted // FRAME_SAMPLES)
        self._audio.gather_frames(gather)

    def _play_cue(self, samples: NDArray[np.int16]) -> None:
        if self._audio is not None:
            self._audio.play(samples)

    def _clear_playback(self) -> None:
        if self._audio is not None:
            self._audio.clear_playback()

    async def _open_audio(self, loop: asyncio.AbstractEventLoop) -> AudioDeviceError | None:
        """Open and start the configured devices; the error when they are not usable now."""
        audio = self.edges.audio
        try:
            if audio is None:
                # Opening devices makes PortAudio probe them (50-300 ms): keep the loop free.
                audio = await asyncio.to_thread(open_backend, self.config.audio)
            audio.on_error = self._audio_failed
            self._audio = audio
            audio.start(loop, self._on_frame)
        except AudioDeviceError as exc:
            if self.config.audio.backend == "file":
                raise  # a WAV file does not get plugged in later
            return exc
        return None

    def _start_backend(self) -> AudioBackend:
        """Open the devices the config names and start them (a worker thread's job)."""
        assert self._loop is not None
        audio = open_backend(self.config.audio)  # a closed backend cannot restart: a new one
        audio.on_error = self._audio_failed
        try:
            audio.start(self._loop, self._on_frame)
        except BaseException:
            audio.close()
            raise
        return audio

    def _audio_failed(self, error: Exception) -> None:
        if self._stopped.is_set():
            return
        log.error("audio device failed: %s", error)
        if not self._audio_lost:  # else the reopening under way deals with it
            self._wait_for_audio("audio device lost", str(error))

    def _wait_for_audio(self, reason: str, error: str) -> None:
        """Show the error (`reason`) and reopen the audio device until audio flows again.

        Used at start-up (the device not there yet) and after a device failed. The error stays
        shown (a failed conversation's display timer leaves it alone) until the device is back:
        the device must not claim to listen without a microphone.
        """
        self._audio_lost = True
        self._audio_wait_reason = reason
        if self._conversation is not None:
            self._conversation.fail("the audio device failed")
        self.phases.transition(Phase.ERROR, reason)
        self._spawn(self._reopen_audio(error), "audio-reopen")

    async def _reopen_audio(self, first_error: str) -> None:
        """Retry the configured devices with backoff until audio flows.

        Each distinct failure is logged once (`first_error` already was); the same one again
        only at DEBUG, so a device away for hours does not fill the journal.
        """
        logged = {first_error}
        started = time.monotonic()
        delay, longest = AUDIO_RETRY_S
        while True:
            if self._audio is not None:
                # Closing joins the dead device's threads and opening probes devices (each up
                # to ~0.5 s on a loaded Pi): both off the loop, which feeds the watchdog.
                await asyncio.to_thread(self._audio.close)
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)
            try:
                self._audio_flowing.clear()
                self._audio = await asyncio.to_thread(self._start_backend)
                try:
                    await asyncio.wait_for(self._audio_flowing.wait(), AUDIO_PROOF_S)
                except TimeoutError:
                    raise AudioDeviceError(
                        f"it opened but delivered no audio for {AUDIO_PROOF_S:g} s"
                    ) from None
            except Exception as exc:
                level = logging.DEBUG if str(exc) in logged else logging.WARNING
                logged.add(str(exc))
                log.log(
                    level, "audio device still unavailable: %s (next try in %.0f s)", exc, delay
                )
                continue
            log.info("audio device back after %.1f s", time.monotonic() - started)
            self._audio.set_volume(self._volume)  # as Home Assistant last set it
            self._audio_lost = False
            self.detector.reset()
            if self._aec is not None:
                self._aec.relearn()  # another device, maybe another room or latency
            if self._muted:
                self.phases.transition(Phase.MUTED, "audio device back")
            else:
                self._listen_for_wake("audio device back")
            return

    # -- between conversations ---------------------------------------------------------------

    def _listen_for_wake(self, reason: str) -> None:
        """Back to waiting for the wake word: IDLE, or OFFLINE while no session key can be had
        (OVER_BUDGET while the companion refuses them for the budget)."""
        error = self.keys.last_error
        if error is None:
            self.phases.transition(Phase.IDLE, reason)
        else:
            self.phases.transition(_waiting_phase(error), f"{reason}; no session key: {error}")

    def _key_health(self, error: CompanionError | None) -> None:
        """The key keeper's minting started failing or works again (any caller)."""
        phase = self.phases.phase
        if error is not None and phase.awaits_wake:
            if isinstance(error, CompanionOverBudget):
                log.warning("%s; no conversation until it resets", error)
            self.phases.transition(_waiting_phase(error), f"no session key: {error}")
        elif error is None and phase in (Phase.OFFLINE, Phase.OVER_BUDGET):
            self.phases.transition(Phase.IDLE, "session keys available again")

    # -- the owner's budget ------------------------------------------------------------------
    #
    # The companion refuses a device over its budget (429 `insufficient_quota`) and ends a
    # conversation that reaches it. A Realtime device may still hold a key minted before then,
    # so after each conversation it asks where it stands (a local request, nothing billed) and
    # drops that key when over; the key keeper then retries when the companion says the period
    # resets. A Live device keeps no key: it asks again itself until it may talk.

    async def _check_budget(self) -> None:
        try:
            standing = await self.keys.companion.standing()
        except CompanionOverBudget as exc:
            self._over_budget(exc)
            return
        except CompanionError as exc:
            log.debug("could not ask the companion about the budget: %s", exc)
            return
        if standing.get("state") == "near":
            log.warning(
                "near the budget: %s at %s of %s",
                standing.get("limit"),
                standing.get("used"),
                standing.get("allowed"),
            )
            self.hook.send({"event": "budget", **standing})

    def _over_budget(self, error: CompanionOverBudget) -> None:
        """The companion refuses sessions for the budget: show it, and learn when it lifts."""
        self.hook.send({"event": "budget", "state": "over", "detail": str(error)})
        if self.config.session.api == "realtime":
            self.keys.refuse(error)  # the keeper's health moves the phase, and it retries
            return
        if self.phases.phase.awaits_wake:
            log.warning("%s; no conversation until it resets", error)
            self.phases.transition(Phase.OVER_BUDGET, str(error))
        if self._budget_task is None:
            self._budget_task = self._spawn(
                self._await_budget(error.retry_after_s or MAX_RETRY_AFTER_S), "budget"
            )

    async def _await_budget(self, wait_s: float) -> None:
        try:
            while self.phases.phase is Phase.OVER_BUDGET:
                await asyncio.sleep(wait_s * random.uniform(0.9, 1.1))
                try:
                    await self.keys.companion.standing()
                except CompanionOverBudget as exc:
                    wait_s = exc.retry_after_s or MAX_RETRY_AFTER_S
                    continue
                except CompanionError as exc:
                    log.debug("could not ask the companion about the budget: %s", exc)
                    continue
                if self.phases.phase is Phase.OVER_BUDGET:
                    self.phases.transition(Phase.IDLE, "the budget allows conversations again")
        finally:
            self._budget_task = None

    # -- wake word and button ----------------------------------------------------------------

    def _on_detection(self, detection: Detection) -> None:
        log.info("wake word %s (score %.2f)", detection.word, detection.score)
        self.last_detection = detection
        if self.stop_ringing(f"the wake word {detection.word}"):
            return
        if self._conversation is not None:
            self._conversation.on_wake_word()
        elif self.phases.phase.awaits_wake or self.phases.phase is Phase.ERROR:
            self.start_conversation(f"wake word {detection.word}", detection=detection)

    def on_press(self) -> bool:
        """The moment the button goes down: a reply stops at once (no wait for the release)."""
        if self._conversation is not None and self.phases.phase is Phase.SPEAKING:
            self._conversation.barge_in("button")
            return True
        return False

    def on_short_press(self) -> None:
        """Short press: stop ringing, start a conversation, or let the open one handle it."""
        if self.stop_ringing("the button"):
            return
        if self._muted:
            log.info("button pressed while muted; hold it to unmute")
        elif self._audio_lost:
            log.info(
                "button pressed, but there is no audio device to talk with (%s)",
                self._audio_wait_reason,
            )
        elif self._conversation is not None:
            self._conversation.on_button()
        elif self._conversation_task is None:
            self.start_conversation("button")

    def on_long_press(self) -> None:
        """Long press: snooze what rings, else toggle microphone mute."""
        if self.phases.phase is Phase.RINGING:
            self._snooze()
            return
        self.set_muted(not self._muted, "the button")

    @property
    def muted(self) -> bool:
        """Whether the microphone is muted."""
        return self._muted

    def set_muted(self, on: bool, by: str) -> None:
        """Mute or unmute the microphone (the button, Home Assistant)."""
        if on == self._muted:
            return
        self._muted = on
        if self.phases.phase is Phase.RINGING:
            return  # the ring goes on; when it stops, the device shows the new mute state
        if self._muted:
            if self._conversation is not None:
                self._conversation.mute()
            self._preroll.clear()
            self.phases.transition(Phase.MUTED, f"microphone muted by {by}")
        else:
            self.detector.reset()
            if self._audio_lost:  # still no microphone: back to showing why
                self.phases.transition(Phase.ERROR, self._audio_wait_reason)
            elif self._conversation_task is None:
                self._listen_for_wake(f"microphone unmuted by {by}")

    def start_conversation(
        self,
        reason: str,
        detection: Detection | None = None,
        *,
        announcement: str | None = None,
        then_converse: bool = False,
    ) -> None:
        """Open a conversation now (wake word, button, Home Assistant); with an `announcement`,
        the model says it first, and the conversation goes on only if `then_converse`."""
        if self._conversation_task is not None:
            return
        if self._audio is None or self._audio_lost:
            log.info("no conversation (%s): there is no audio device to talk with", reason)
            return
        if self.phases.phase is Phase.RINGING:
            self._end_ringing(f"a conversation started ({reason})")
        self._conversation_task = self._spawn(
            self._converse(reason, time.monotonic(), announcement, then_converse), "converse"
        )

    async def _converse(
        self, reason: str, woke_at: float, announcement: str | None, then_converse: bool
    ) -> None:
        from .conversation import Conversation, OverBudget, SessionFailed

        self.phases.transition(Phase.WAKE, reason)
        config = self.config
        if config.session.echo_cancellation and not self._aec_loaded:
            # Woken in the first moments after start-up, while the canceller still loads: this
            # conversation keeps the microphone closed while the device speaks instead.
            log.info("echo canceller still loading: half-duplex for this conversation")
            session = dataclasses.replace(config.session, half_duplex=True)
            config = dataclasses.replace(config, session=session)
        conversation = Conversation(
            config=config,
            phases=self.phases,
            keys=self.keys,
            http=self.http,
            audio=self._require_audio(),
            tools=self.tools,
            woke_at=woke_at,
            on_transcript=self._on_transcript,
            on_transcription_failed=self._on_transcription_failed,
            announcement=announcement,
            then_converse=then_converse,
        )
        if announcement is None:  # what was said before the wake word, not before an announcement
            for frame in self._preroll:
                conversation.push_mic(frame)
        self._conversation = conversation
        self._pace_capture()
        try:
            try:
                ending = await conversation.run()
                self.conversations += 1
                self.last_wake_to_live_s = conversation.wake_to_live_s
                if not self._muted:
                    self._listen_for_wake(f"conversation over ({ending})")
                else:  # an announcement made while muted
                    self.phases.transition(Phase.MUTED, "microphone muted")
                self._spawn(self._check_budget(), "budget-check")
            except OverBudget as exc:
                log.warning("conversation refused: %s", exc)
                if self._muted:
                    self.phases.transition(Phase.MUTED, "microphone muted")
                else:
                    self.phases.transition(Phase.OVER_BUDGET, str(exc))
                if isinstance(exc.__cause__, CompanionOverBudget):
                    self._over_budget(exc.__cause__)
            except SessionFailed as exc:
                self.last_wake_to_live_s = conversation.wake_to_live_s
                log.error("conversation failed: %s", exc)
                self._show_error(str(exc))
            except Exception as exc:
                # A bug or an error nobody foresaw (e.g. from a library): the same error path, so
                # the device is not left CONNECTING, where a wake word is ignored, until a restart.
                log.exception("conversation failed unexpectedly")
                self._show_error(f"unexpected error: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            self._set_echo_cancelling(False)
            self._conversation = None
            self._conversation_task = None
            self._preroll.clear()
            self.detector.reset()
            if self._ringing:  # a timer came due during the conversation: it rings now
                self._ring()
            # Back to idle: once the call's objects are gone (its task has ended), return what
            # it used.
            asyncio.get_running_loop().call_later(RELEASE_AFTER_S, self._release_memory)

    def _show_error(self, reason: str) -> None:
        self._conversation = None
        self.phases.transition(Phase.ERROR, reason)
        # Shown for a while by a timer, not by this task: a wake word or a press during the
        # display starts the next conversation at once.
        if self._error_timer is not None:
            self._error_timer.cancel()
        loop = asyncio.get_running_loop()
        self._error_timer = loop.call_later(ERROR_DISPLAY_S, self._error_shown)

    def _release_memory(self) -> None:
        if self._conversation_task is None:  # a collection pause must not hit a live call
            release_free_memory()

    def _error_shown(self) -> None:
        """The error has been shown long enough: listen again, unless something took over."""
        self._error_timer = None
        idle = self._conversation_task is None and not self._audio_lost
        if idle and self.phases.phase is Phase.ERROR:
            if self._muted:  # muted while the conversation was failing: the user's choice holds
                self.phases.transition(Phase.MUTED, "microphone muted")
            else:
                self._listen_for_wake("listening again")

    def _on_transcript(self, text: str, item_id: str) -> None:
        self.hook.send({"event": "transcript", "text": text, "item_id": item_id})
        if self.mqtt is not None:
            self.mqtt.transcript(text)

    # -- timers and alarms ---------------------------------------------------------------------
    #
    # A timer that comes due during a conversation does not interrupt it: it rings as soon as the
    # conversation ends (at most `session.max_session_s` later). Muted or not, it rings; stopping
    # it goes back to where the device was (muted, the audio error, or listening).

    def _timers_due(self, entries: list[Entry]) -> None:
        assert self.timers is not None
        self._ringing.extend(entries)
        self.hook.send({"event": "timer", "state": "ringing", "timers": self._describe(entries)})
        if self._conversation_task is not None:
            log.info("%d timer(s) due: ringing when the conversation ends", len(entries))
            return
        self._ring()

    def _timer_missed(self, entry: Entry, late_s: float) -> None:
        timers = self._describe([entry])
        self.hook.send({"event": "timer", "state": "missed", "late_s": late_s, "timers": timers})

    def _describe(self, entries: list[Entry]) -> list[dict[str, Any]]:
        assert self.timers is not None
        return [entry.describe(self.timers.zone) for entry in entries]

    def _ring(self) -> None:
        what = ", ".join(f"{e.kind} {e.label or e.id}" for e in self._ringing)
        self.phases.transition(Phase.RINGING, what)
        if self._ring_timer is not None:
            self._ring_timer.cancel()
        loop = asyncio.get_running_loop()
        timeout = self.config.timers.ring_timeout_s
        self._ring_timer = loop.call_later(timeout, self.stop_ringing, "the ring timeout")

    def stop_ringing(self, by: str) -> bool:
        """Stop what rings (button, wake word, Home Assistant, timeout); False if nothing did."""
        if self.phases.phase is not Phase.RINGING:
            return False
        self._end_ringing(by)
        if self._muted:
            self.phases.transition(Phase.MUTED, f"ringing stopped by {by}")
        elif self._audio_lost:
            self.phases.transition(Phase.ERROR, self._audio_wait_reason)
        else:
            self._listen_for_wake(f"ringing stopped by {by}")
        return True

    def _left_ringing(self, change: Transition) -> None:
        # However the ring ended (a lost audio device takes over the phase too), it is over:
        # nothing left to ring when the next conversation ends, no timeout pending.
        if change.old is Phase.RINGING and self._ringing:
            self._end_ringing(change.reason)

    def _end_ringing(self, by: str) -> None:
        log.info("ringing stopped by %s", by)
        self._ringing.clear()
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None

    def _snooze(self) -> None:
        assert self.timers is not None
        for entry in self._ringing:
            self.timers.snooze(entry, self.config.timers.snooze_s)
        self.stop_ringing(f"a snooze of {self.config.timers.snooze_s:g} s")

    # -- Home Assistant (mqtt.Device) -----------------------------------------------------------

    def _start_mqtt(self) -> None:
        from .config import read_mqtt_password
        from .mqtt import HomeAssistant

        password = read_mqtt_password(self.config.mqtt)
        if password:
            register_secret(password)
        self.mqtt = HomeAssistant(self.config.mqtt, password, self, on_status=self._mqtt_status)
        self.phases.add_listener(self.mqtt)
        self.mqtt(Transition(self.phases.phase, self.phases.phase, "mqtt started"))
        self._spawn(self.mqtt.run(), "mqtt")

    def _mqtt_status(self, connected: bool, detail: str) -> None:
        state = "connected" if connected else "disconnected"
        self.hook.send({"event": "mqtt", "state": state, "detail": detail})

    def _timers_changed(self) -> None:
        if self.mqtt is not None:
            self.mqtt.timers_changed()

    @property
    def volume(self) -> float | None:
        """The playback gain, or None when the audio backend cannot change it."""
        audio = self._audio
        controllable = audio is not None and type(audio).set_volume is not AudioBackend.set_volume
        return self._volume if controllable else None

    def set_volume(self, gain: float) -> None:
        """Change the playback gain (until the next restart: the config holds the default)."""
        self._volume = gain
        if self._audio is not None:
            self._audio.set_volume(gain)

    def timers_summary(self) -> list[dict[str, Any]]:
        """The timers and alarms set, soonest first."""
        return self.timers.summary() if self.timers is not None else []

    def stop_from_remote(self, by: str) -> None:
        """Stop ringing, or else end the conversation."""
        if not self.stop_ringing(by) and self._conversation is not None:
            self._conversation.end(f"stopped by {by}")

    async def announce(self, announcement: Announcement) -> None:
        """Say a text through a short session in the model's voice, or play a WAV from an
        http(s) URL or from `mqtt.announce_dir`; then maybe converse. ValueError when it cannot."""
        then_converse = announcement.then_converse and not self._muted
        if announcement.kind == "text":
            # Said through a session, which needs what a conversation needs; and it must not
            # silence an alarm or talk over a conversation.
            if self._conversation_task is not None:
                raise ValueError("a conversation is under way: announce when it has ended")
            if self.phases.phase is Phase.RINGING:
                raise ValueError("a timer or alarm is ringing: announce when it has stopped")
            if self._muted:
                raise ValueError("the microphone is muted: only WAV announcements play then")
            if self._audio is None or self._audio_lost:
                raise ValueError("there is no audio device")
            if self.config.session.mode == "transcription":
                raise ValueError("session.mode is transcription: the model has no voice")
            self.start_conversation(
                "Home Assistant announcement",
                announcement=announcement.value,
                then_converse=then_converse,
            )
            return
        samples = await self._load_announcement(announcement)
        log.info("announcing %s (%.1f s)", announcement.value, len(samples) / 24000)
        self._play_cue(samples)
        if then_converse:
            # The queue has no completion event: poll until the announcement has been played.
            deadline = time.monotonic() + len(samples) / 24000 + 5.0
            while time.monotonic() < deadline:
                if self._audio is None or self._audio.playback_queued_s <= 0:
                    break
                await asyncio.sleep(0.05)
            self.start_conversation("Home Assistant, after an announcement")

    async def _load_announcement(self, announcement: Announcement) -> NDArray[np.int16]:
        from .sounds import CueError, decode_wav, load_wav

        source = announcement.value
        if announcement.kind == "url":
            try:
                response = await self.http.get(source, timeout=ANNOUNCE_TIMEOUT_S)
            except httpx.HTTPError as exc:
                raise ValueError(f"{source}: {exc or type(exc).__name__}") from exc
            if response.status_code != 200 or len(response.content) > ANNOUNCE_MAX_BYTES:
                raise ValueError(f"{source}: HTTP {response.status_code}, or too large")
            load = functools.partial(decode_wav, response.content, source)
        else:
            folder = self.config.mqtt.announce_dir
            name = Path(source).name
            if folder is None or name != source or not name.lower().endswith(".wav"):
                raise ValueError(f"{source!r}: a URL, or a .wav file name in mqtt.announce_dir")
            load = functools.partial(load_wav, folder / name, "announcement")
        try:
            samples: NDArray[np.int16] = await asyncio.to_thread(load)
        except CueError as exc:
            raise ValueError(str(exc)) from exc
        return samples

    def _on_transcription_failed(self, message: str, item_id: str) -> None:
        self.hook.send({"event": "transcription_failed", "error": message, "item_id": item_id})

    # -- echo cancellation -------------------------------------------------------------------

    async def _preload(self) -> None:
        """Load in a thread; apply here, on the loop, which alone reads and writes the daemon."""
        wanted = self.config.session.echo_cancellation
        aec = await asyncio.to_thread(_load_heavy_parts, wanted)
        self._aec_loaded = True
        if not wanted:
            return
        self._aec = aec
        if aec is None and not self.config.session.half_duplex:
            # Without a canceller the reply's echo would reach the session and interrupt
            # it: close the microphone while the device speaks instead.
            session = dataclasses.replace(self.config.session, half_duplex=True)
            self.config = dataclasses.replace(self.config, session=session)

    def _echo_cancel_when_speaking(self, change: Transition) -> None:
        # The canceller runs from the first reply of a conversation to its end. Not earlier: its
        # suppressor would also duck the user's first words under the wake chime, and there is no
        # model voice to remove before the first reply.
        if change.new is Phase.SPEAKING:
            self._set_echo_cancelling(True)

    def _set_echo_cancelling(self, on: bool) -> None:
        if self._aec is None or on == self._aec_active or self._audio is None:
            return
        self._audio.on_render = self._aec.render if on else None
        self._aec_active = on

    def _require_audio(self) -> AudioBackend:
        assert self._audio is not None
        return self._audio

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s crashed", task.get_name(), exc_info=task.exception())


def _load_heavy_parts(echo_cancellation: bool) -> Any:
    """Import WebRTC and load the echo canceller (None if not wanted or it will not load)."""
    from . import conversation  # noqa: F401  (aiortc, av)

    if not echo_cancellation:
        return None
    from .aec import make_echo_canceller

    return make_echo_canceller(True)


def run_daemon(path: str | None) -> int:
    """`wakertc run`: load the config, run until SIGTERM/SIGINT; the process exit status."""
    from .logs import setup_logging

    source = config_path(path)
    try:
        config = load_config(source)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(config.log.level)
    for line in config.warnings:
        log.warning("config: %s", line)
    limit_malloc_arenas()
    daemon = Daemon(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop)
        await daemon.run()

    try:
        asyncio.run(main())
    except STARTUP_ERRORS as exc:
        log.error("cannot start: %s", exc)
        return 1
    except Exception:
        log.exception("the daemon failed")
        return 1
    return 0


def _waiting_phase(error: CompanionError) -> Phase:
    """How a device that cannot get a session key waits for the wake word."""
    return Phase.OVER_BUDGET if isinstance(error, CompanionOverBudget) else Phase.OFFLINE
