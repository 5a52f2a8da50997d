"""`wakertc selftest`: one real call with this device's config and token, and a report of it.

Run it after installing, or when something seems wrong. It does what the daemon does after a wake
word, with the daemon's own pieces, against whatever `[companion]` and `[session]` point at:
OpenAI's service or `wakertc emulator`, through the API `[session] api` names (or `--api`). It
does not touch the microphone or the speaker.

Realtime (`keys.CompanionClient`, `webrtc.RealtimeCall` and `MicTrack`,
`session.realtime.session_update` and `end_turn_events`):

1. it asks the companion for a key (timed);
2. opens a call (timed: HTTP offer/answer, ICE connected, data channel open, `session.created`, and
   `session.updated` in answer to the device's own `session.update`);
3. sends silence for a moment, then a recorded question (`sounds/question.wav`), then silence;
4. waits for the reply, and listens for a moment after it.

GPT-Live (the daemon's `session.live.LiveSession` itself, its raw events shown to the report):

1. sends the offer to the companion (`POST /v1/live/session`), which creates the session upstream
   and relays the answer (timed), then ICE, the data channel and `session.started` (timed);
2. and 3. as above: silence, the question, the reply (its end as the daemon judges it: the
   received audio quiet for `live.REPLY_GAP_S`), a moment after it;
4. ends the session as the daemon does, `session.close`, and times the `session.closed` answer.

The report gives each step's timing, the server's events in order (a run of one type counted
once), how much RTP arrived before the question, during the reply and after it (nothing says the
service sends any between replies, and the daemon must not need it), the ICE candidate types of
the pair in use, and every error with its HTTP status and OpenAI error envelope. Text by default,
`--json` for a bug report. The device token and the key are registered with `logs.redact`, which
the whole report passes through before it is printed.

Exit status: 0 when a reply was heard (and, under GPT-Live, the session closed on request), 1
when not (the last line says which step failed), 2 when the config or the token cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import logging
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from numpy.typing import NDArray

from .audio import CAPTURE_RATE, PLAYBACK_RATE
from .config import Config, ConfigError, config_path, load_config, read_token
from .logs import redact, register_secret, setup_logging

if TYPE_CHECKING:
    from .keys import CompanionClient, EphemeralKey
    from .session.events import Event
    from .session.live import LiveSession
    from .webrtc import RealtimeCall

log = logging.getLogger(__name__)

QUESTION_WAV = "question.wav"  # in sounds/, made by scripts/make_sounds.py (16 kHz mono)
FRAME = CAPTURE_RATE // 50  # 20 ms, as the daemon's microphone delivers it
# Silence sent between `session.updated` and the question: the window for RTP before a reply.
LEAD_S = 1.5
# Listened for after the reply ended: the window for RTP after a reply.
AFTER_S = 2.0
# A reply whose end the server never announces is over once no audible audio came for this long.
REPLY_QUIET_S = 1.5
REPLY_TIMEOUT_S = 20.0
TEXT_LIMIT = 300


@dataclass
class Failure:
    """One thing that went wrong, as precisely as it was reported to us."""

    where: str
    """`companion` (its key, or under GPT-Live its session relay), `call` (the Realtime API's
    HTTP side, or an unusable answer), `session` (an `error` event; under GPT-Live also a
    `session.closed` that came early or not at all) or `connection`."""
    message: str
    status: int | None = None
    """The HTTP status, when an HTTP request failed."""
    error: dict[str, Any] | None = None
    """The OpenAI error envelope's `error` object (type, code, param, message, event_id)."""


@dataclass
class EventRun:
    """Consecutive server events of one type."""

    type: str
    count: int
    at_ms: float
    """When the first of them arrived, in ms after the call started."""


@dataclass
class RtpWindow:
    """RTP packets received in one stretch of the call."""

    seconds: float
    packets: int


@dataclass
class Report:
    """What `--json` prints; `render()` is the text form."""

    ok: bool = False
    verdict: str = ""
    api: str = "realtime"
    companion_url: str = ""
    session_url: str = ""
    mode: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    events: list[EventRun] = field(default_factory=list)
    rtp: dict[str, RtpWindow] = field(default_factory=dict)
    rtp_totals: dict[str, int] = field(default_factory=dict)
    ice: dict[str, Any] = field(default_factory=dict)
    question_s: float = 0.0
    reply_audio_s: float = 0.0
    reply_transcript: str = ""
    response_status: str | None = None
    errors: list[Failure] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON types."""
        return asdict(self)

    def fail(self, verdict: str) -> Report:
        """Record why no reply was heard (one sentence); returns self."""
        self.ok = False
        self.verdict = _sentence(verdict)
        return self


class _HttpLog:
    """Times each request and keeps the status and error envelope of each one that failed."""

    def __init__(self, where: str, errors: list[Failure]) -> None:
        self._where = where
        self._errors = errors
        self._started: dict[int, float] = {}
        self.timings_ms: dict[str, float] = {}
        """Per URL path, how long the last request took to its response headers."""

    async def request(self, request: httpx.Request) -> None:
        """httpx request hook."""
        self._started[id(request)] = time.monotonic()

    async def response(self, response: httpx.Response) -> None:
        """httpx response hook."""
        await self.answered(response.request, response)

    async def answered(self, request: httpx.Request, response: httpx.Response) -> None:
        """Note the answer to `request`."""
        started = self._started.pop(id(request), None)
        if started is not None:
            self.timings_ms[request.url.path] = _ms(time.monotonic() - started)
        if response.status_code >= 400:
            await response.aread()
            envelope = _error_envelope(response.content)
            message = f"{request.method} {request.url.path} answered {response.status_code}"
            if envelope is None:
                message += f" ({response.reason_phrase or 'no details'}, no error envelope)"
            self._errors.append(Failure(self._where, message, response.status_code, envelope))


class _LoggedTransport(httpx.AsyncBaseTransport):
    """A transport running an `_HttpLog`, for a client whose hooks cannot be set from here."""

    def __init__(self, inner: httpx.AsyncBaseTransport, http_log: _HttpLog) -> None:
        self._inner = inner
        self._log = http_log

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._log.request(request)
        response = await self._inner.handle_async_request(request)
        await self._log.answered(request, response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Probe:
    """Receives the call's events and audio; remembers what arrived and when."""

    def __init__(self, silence_peak: int) -> None:
        self._silence_peak = silence_peak  # audio with a lower peak is not part of a reply
        self.started = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self.error_events: list[dict[str, Any]] = []
        # (arrival, audible, samples at 24 kHz) per received frame.
        self.frames: list[tuple[float, bool, int]] = []
        self.transcript: list[str] = []
        self.transcript_done: str | None = None
        self.response_status: str | None = None
        self.lost: str | None = None
        # GPT-Live: `session.closed`'s reason, and the daemon's own reading of the session
        # (`session.events`, from `LiveSession`) with when each came.
        self.closed_reason: str | None = None
        self.session_events: list[tuple[float, Event]] = []
        self.ending = False  # the device is ending the call: the service hanging up is no loss
        self._arrived = asyncio.Event()

    def on_event(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except (ValueError, RecursionError):
            event = None
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(event, dict) or not isinstance(kind, str):
            self.events.append((time.monotonic(), "(malformed event)"))
            self._arrived.set()
            return
        self.events.append((time.monotonic(), kind[:100]))
        if kind == "error":
            error = event.get("error")
            self.error_events.append(_clip_fields(error if isinstance(error, dict) else {}))
        elif kind in ("response.output_audio_transcript.delta", "session.output_transcript.delta"):
            if isinstance(event.get("delta"), str):
                self.transcript.append(event["delta"])
        elif kind == "session.closed":
            self.closed_reason = str(event.get("reason"))[:40]
        elif kind == "response.output_audio_transcript.done":
            if isinstance(event.get("transcript"), str):
                self.transcript_done = event["transcript"]
        elif kind == "response.done":
            response = event.get("response")
            status = response.get("status") if isinstance(response, dict) else None
            self.response_status = str(status)[:40] if status is not None else None
        self._arrived.set()

    def on_audio(self, samples: NDArray[np.int16]) -> None:
        audible = bool(samples.size) and int(np.abs(samples).max()) >= self._silence_peak
        self.frames.append((time.monotonic(), audible, len(samples)))
        if audible:
            self._arrived.set()

    def on_lost(self, why: str) -> None:
        if self.lost is None and not self.ending:
            self.lost = why
        self._arrived.set()

    def on_session_event(self, event: Event) -> None:
        self.session_events.append((time.monotonic(), event))
        self._arrived.set()

    def first(self, kind: str, after: float = 0.0) -> float | None:
        """When the first event of `kind` arrived at or after `after` (monotonic time)."""
        return next((at for at, seen in self.events if seen == kind and at >= after), None)

    def first_session(self, kind: type[Any], after: float = 0.0) -> float | None:
        """When the session first reported an event of class `kind` at or after `after`."""
        return next(
            (at for at, seen in self.session_events if isinstance(seen, kind) and at >= after),
            None,
        )

    def audible_after(self, start: float, end: float = float("inf")) -> list[tuple[float, int]]:
        """(arrival, samples) of audible frames that arrived between two times."""
        return [(at, n) for at, audible, n in self.frames if audible and start <= at <= end]

    async def wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Until `done()` holds (True), the call is lost or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if self.lost is not None or left <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.1))
            except TimeoutError:
                continue
        return True

    def runs(self) -> list[EventRun]:
        """The events in order, consecutive ones of a type folded into one run."""
        runs: list[EventRun] = []
        for at, kind in self.events:
            if runs and runs[-1].type == kind:
                runs[-1].count += 1
            else:
                runs.append(EventRun(kind, 1, _ms(at - self.started)))
        return runs


class _Speaker:
    """The microphone side: 20 ms frames at real-time pace, silence unless a recording is queued."""

    def __init__(self, push: Callable[[NDArray[np.int16]], None]) -> None:
        self._push = push
        self._pending = np.zeros(0, np.int16)
        self.said = asyncio.Event()

    def say(self, samples: NDArray[np.int16]) -> None:
        """Send `samples` next, in place of silence; `said` is set once all have gone out."""
        self._pending = samples
        self.said.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            chunk = self._pending[:FRAME]
            self._pending = self._pending[FRAME:]
            if len(chunk) < FRAME:
                chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
            self._push(chunk)
            if not len(self._pending):
                self.said.set()
            next_at += FRAME / CAPTURE_RATE
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def load_question() -> NDArray[np.int16]:
    """The bundled spoken question, 16 kHz mono int16."""
    resource = importlib.resources.files(__package__ or "wakertc").joinpath("sounds", QUESTION_WAV)
    with resource.open("rb") as file, wave.open(file, "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (CAPTURE_RATE, 1, 2):
            raise ValueError(f"bundled {QUESTION_WAV}: expected 16 kHz mono 16-bit PCM")
        return np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int16)


async def run_selftest(config: Config, *, reply_timeout_s: float = REPLY_TIMEOUT_S) -> Report:
    """One call, one question, through the API `config.session.api` names; the report of what
    happened (never raises for a failed step: that is in the report). Reading the token may
    raise OSError."""
    from .keys import CompanionClient, CompanionError, companion_tls

    live = config.session.api == "live"
    report = Report(
        api=config.session.api,
        companion_url=config.companion.url,
        session_url=_live_relay_url(config) if live else config.session.url,
        mode=config.session.mode,
    )
    token = read_token(config.companion)
    register_secret(token)
    # The companion is on the owner's network: its client is the daemon's, on a plain transport
    # (environment proxies, which httpx applies only without one, are not used for it).
    companion_log = _HttpLog("companion", report.errors)
    transport = _LoggedTransport(
        httpx.AsyncHTTPTransport(verify=companion_tls(config.companion)), companion_log
    )
    companion = CompanionClient(config.companion, token, transport=transport)
    if live:
        try:
            # The same client as the daemon's (daemon.py); GPT-Live's offer goes to the companion.
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(config.session.connect_timeout_s)
            ) as http:
                await _live_call(config, companion, http, companion_log, report, reply_timeout_s)
        finally:
            await companion.aclose()
        return report
    started = time.monotonic()
    try:
        key = await companion.mint()
    except CompanionError as exc:
        if not report.errors:  # no HTTP answer at all: unreachable, or timed out
            report.errors.append(Failure("companion", str(exc)))
        return report.fail(f"No key from the companion at {config.companion.url}: {exc}")
    finally:
        await companion.aclose()
    register_secret(key.value)
    report.timings_ms["companion_key"] = _ms(time.monotonic() - started)
    from .session.realtime import session_type_mismatch

    mismatch = session_type_mismatch(key.session, config.session.mode)
    if mismatch is not None:
        report.errors.append(Failure("companion", mismatch))
        return report.fail(f"The key cannot serve this device: {mismatch}")

    # The same client as the daemon's (daemon.py), watched through its hooks.
    calls = _HttpLog("call", report.errors)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(config.session.connect_timeout_s),
        event_hooks={"request": [calls.request], "response": [calls.response]},
    ) as http:
        await _call(config, key, http, calls, report, reply_timeout_s)
    return report


async def _call(
    config: Config,
    key: EphemeralKey,
    http: httpx.AsyncClient,
    calls: _HttpLog,
    report: Report,
    reply_timeout_s: float,
) -> None:
    from .conversation import REPLY_TAIL_S, SILENCE_PEAK
    from .session.realtime import end_turn_events, manual_turns, session_update
    from .tools import ToolRunner
    from .webrtc import CallError, MicTrack, RealtimeCall

    session = config.session
    probe = _Probe(SILENCE_PEAK)
    mic = MicTrack()
    call = RealtimeCall(
        base_url=session.url,
        http=http,
        ice_servers=session.ice_servers,
        mic=mic,
        on_event=probe.on_event,
        on_audio=probe.on_audio,
        on_lost=probe.on_lost,
    )
    pc = call.peer_connection
    timings = report.timings_ms
    _time_ice(call, probe, timings)
    speaker = _Speaker(mic.push)
    feeder: asyncio.Task[None] | None = None
    try:
        probe.started = time.monotonic()
        try:
            async with asyncio.timeout(session.connect_timeout_s):
                await call.connect(key.value)
        except CallError as exc:
            # A refusal's status and envelope are in the HTTP log already.
            if not any(f.where == "call" for f in report.errors):
                report.errors.append(Failure("call", str(exc)))
            report.fail(str(exc))
            return
        except TimeoutError:
            state = f"ICE {pc.iceConnectionState}, connection {pc.connectionState}"
            report.errors.append(Failure("connection", f"not connected ({state})"))
            report.fail(f"The call was not up within {session.connect_timeout_s:g} s ({state}).")
            return
        finally:
            path = next((p for p in calls.timings_ms if p.endswith("/realtime/calls")), None)
            if path is not None:
                timings["offer_answer"] = calls.timings_ms[path]
        timings["channel_open"] = _ms(time.monotonic() - probe.started)
        feeder = asyncio.get_running_loop().create_task(speaker.run(), name="selftest-microphone")
        call.send(session_update(key.session, ToolRunner(config.tools)))
        configured = await probe.wait(
            lambda: probe.first("session.updated") is not None or bool(probe.error_events),
            session.connect_timeout_s,
        )
        for kind in ("session.created", "session.updated"):
            at = probe.first(kind)
            if at is not None:
                timings[kind.replace(".", "_")] = _ms(at - probe.started)
        if not configured or probe.first("session.updated") is None:
            report.fail(_not_configured(probe, session.connect_timeout_s))
            return

        # Before the question: is there RTP while nothing is being said?
        before = await _rtp_window(pc, probe, LEAD_S)
        report.rtp["before_question"] = before
        question = load_question()
        report.question_s = round(len(question) / CAPTURE_RATE, 2)
        packets_at_question = await _packets_received(pc)
        asked_at = time.monotonic()
        speaker.say(question)
        await speaker.said.wait()
        question_end = time.monotonic()
        if manual_turns(key.session):
            # Without VAD the device ends the turn itself, as the button does.
            for event in end_turn_events(key.session):
                call.send(event)
        replied = await probe.wait(
            lambda: _reply_over(probe, session.mode, asked_at), reply_timeout_s
        )
        reply_end = time.monotonic()
        await asyncio.sleep(REPLY_TAIL_S)
        packets_after_reply = await _packets_received(pc)
        report.rtp["question_and_reply"] = RtpWindow(
            round(time.monotonic() - asked_at, 2), packets_after_reply - packets_at_question
        )
        if replied and probe.lost is None:
            report.rtp["after_reply"] = await _rtp_window(pc, probe, AFTER_S)
        _reply_timings(report, probe, question_end, reply_end)
        report.ok, verdict = _verdict(report, probe, session.mode, replied, reply_timeout_s)
        report.verdict = _sentence(verdict)
    finally:
        report.ice = _ice_summary(pc)
        report.rtp_totals = await _rtp_totals(pc)
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        await call.close()
        _collect(report, probe)


def _time_ice(call: RealtimeCall, probe: _Probe, timings: dict[str, float]) -> None:
    """Note when the call's ICE connects (`ice_connected`, ms after `probe.started`)."""
    pc = call.peer_connection

    def _ice_state() -> None:
        if pc.iceConnectionState in ("connected", "completed"):
            timings.setdefault("ice_connected", _ms(time.monotonic() - probe.started))

    pc.on("iceconnectionstatechange", _ice_state)


def _collect(report: Report, probe: _Probe) -> None:
    """What the probe saw, into the report: the events, the transcript, error events, a loss."""
    report.timings_ms = dict(sorted(report.timings_ms.items(), key=_timing_order))
    report.events = probe.runs()
    report.response_status = probe.response_status
    transcript = probe.transcript_done or "".join(probe.transcript)
    report.reply_transcript = transcript[:TEXT_LIMIT]
    for error in probe.error_events:
        message = str(error.get("message") or error.get("code") or "error event")
        report.errors.append(Failure("session", message, None, error))
    if probe.lost is not None:
        report.errors.append(Failure("connection", probe.lost))


def _reply_over(probe: _Probe, mode: str, asked_at: float) -> bool:
    if mode == "transcription":
        return any(
            probe.first(kind, asked_at) is not None
            for kind in (
                "conversation.item.input_audio_transcription.completed",
                "conversation.item.input_audio_transcription.failed",
            )
        )
    done = probe.first("response.done", asked_at)
    if done is None:
        return False
    started = probe.first("output_audio_buffer.started", asked_at)
    if started is None:
        return True  # a reply without audio: nothing more will come
    if probe.first("output_audio_buffer.stopped", started) is not None:
        return True
    heard = probe.audible_after(started)
    last = heard[-1][0] if heard else started
    return time.monotonic() - max(last, done) > REPLY_QUIET_S


def _reply_timings(report: Report, probe: _Probe, question_end: float, reply_end: float) -> None:
    """Reply milestones, in ms after the question's last sample went out."""
    # The reply's last packets are still in flight when the server says its output stopped:
    # its window ends the conversation's tail later.
    from .conversation import REPLY_TAIL_S

    heard = probe.audible_after(question_end, reply_end + REPLY_TAIL_S)
    report.reply_audio_s = round(sum(n for _, n in heard) / PLAYBACK_RATE, 2)
    marks = {
        "speech_stopped": probe.first("input_audio_buffer.speech_stopped", question_end - 1.0),
        "response_created": probe.first("response.created", question_end - 1.0),
        "reply_first_audio": heard[0][0] if heard else None,
        "response_done": probe.first("response.done", question_end - 1.0),
        "reply_stopped": probe.first("output_audio_buffer.stopped", question_end - 1.0),
    }
    for name, at in marks.items():
        if at is not None:
            report.timings_ms[f"{name}_after_question"] = _ms(at - question_end)


def _verdict(
    report: Report, probe: _Probe, mode: str, replied: bool, timeout_s: float
) -> tuple[bool, str]:
    if mode == "transcription":
        if probe.first("conversation.item.input_audio_transcription.completed") is not None:
            return True, "OK: the question was transcribed."
        if replied:
            return False, "The transcription of the question failed."
    elif report.reply_audio_s > 0:
        return True, f"OK: a reply was heard ({report.reply_audio_s:g} s of audio)."
    elif replied:
        status = f" (status {report.response_status or probe.response_status})"
        return False, f"A reply came, but without audio{status}."
    if probe.lost is not None:
        return False, f"The call was lost before a reply: {probe.lost}."
    last = probe.events[-1][1] if probe.events else "none"
    return False, f"No reply within {timeout_s:g} s of the question (last event: {last})."


def _not_configured(probe: _Probe, timeout_s: float) -> str:
    if probe.error_events:
        error = probe.error_events[0]
        code = error.get("code") or error.get("type") or "error"
        return f"The Realtime API refused the session update ({code}: {error.get('message')})."
    if probe.lost is not None:
        return f"The call was lost before the session was configured: {probe.lost}."
    return f"No session.updated within {timeout_s:g} s of the session.update."


# -- GPT-Live --------------------------------------------------------------------------------


def _live_relay_url(config: Config) -> str:
    """Where a GPT-Live session is asked for: the companion's relay, not OpenAI."""
    return config.companion.url.rstrip("/") + "/v1/live/session"


def _probed_live_session(
    probe: _Probe,
    config: Config,
    companion: CompanionClient,
    http: httpx.AsyncClient,
    on_call: Callable[[RealtimeCall], None],
) -> LiveSession:
    """The daemon's own `LiveSession`, with every raw event also shown to `probe`."""
    from .session.live import LiveSession
    from .tools import ToolRunner

    class ProbedLiveSession(LiveSession):
        def handle_message(self, raw: str) -> None:
            probe.on_event(raw)
            super().handle_message(raw)

    return ProbedLiveSession(
        config=config.session,
        companion=companion,
        http=http,
        tools=ToolRunner(config.tools),
        on_event=probe.on_session_event,
        on_audio=probe.on_audio,
        on_lost=probe.on_lost,
        on_call=on_call,
    )


async def _live_call(
    config: Config,
    companion: CompanionClient,
    http: httpx.AsyncClient,
    companion_log: _HttpLog,
    report: Report,
    reply_timeout_s: float,
) -> None:
    """The GPT-Live call: relay, session.started, the question and reply, session.close."""
    from .conversation import REPLY_TAIL_S, SILENCE_PEAK
    from .keys import CompanionError
    from .session.events import SessionFailed
    from .session.live import CLOSE_WAIT_S

    timeout_s = config.session.connect_timeout_s
    probe = _Probe(SILENCE_PEAK)
    timings = report.timings_ms
    calls: list[RealtimeCall] = []

    def _built(call: RealtimeCall) -> None:
        calls.append(call)
        _time_ice(call, probe, timings)

    session = _probed_live_session(probe, config, companion, http, _built)
    # The microphone goes through the session, as the daemon's does: its level is how the
    # device knows the user is speaking under Live.
    speaker = _Speaker(session.push_audio)
    feeder: asyncio.Task[None] | None = None
    try:
        probe.started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await session.open()
        except SessionFailed as exc:
            if isinstance(exc.__cause__, CompanionError):
                # A refusal's status and envelope are in the companion's HTTP log already.
                if not report.errors:
                    report.errors.append(Failure("companion", str(exc)))
                report.fail(
                    f"No GPT-Live session from the companion at {report.companion_url}: {exc}"
                )
            else:
                report.errors.append(Failure("call", str(exc)))
                report.fail(str(exc))
            return
        except TimeoutError:
            if _relay_ms(companion_log) is None:
                unanswered = f"POST /v1/live/session: no answer within {timeout_s:g} s"
                report.errors.append(Failure("companion", unanswered))
                report.fail(
                    f"The companion did not relay a GPT-Live session within {timeout_s:g} s."
                )
            else:
                pc = calls[0].peer_connection
                state = f"ICE {pc.iceConnectionState}, connection {pc.connectionState}"
                report.errors.append(Failure("connection", f"not connected ({state})"))
                report.fail(f"The call was not up within {timeout_s:g} s ({state}).")
            return
        finally:
            relay_ms = _relay_ms(companion_log)
            if relay_ms is not None:
                timings["live_session"] = relay_ms
        timings["channel_open"] = _ms(time.monotonic() - probe.started)
        feeder = asyncio.get_running_loop().create_task(speaker.run(), name="selftest-microphone")
        await probe.wait(
            lambda: (
                probe.first("session.started") is not None
                or bool(probe.error_events)
                or probe.closed_reason is not None
            ),
            timeout_s,
        )
        started_at = probe.first("session.started")
        if started_at is None:
            if probe.closed_reason is not None:
                report.errors.append(
                    Failure("session", f"session.closed ({probe.closed_reason}) before it started")
                )
            report.fail(_not_started(probe, timeout_s))
            return
        timings["session_started"] = _ms(started_at - probe.started)

        pc = calls[0].peer_connection
        report.rtp["before_question"] = await _rtp_window(pc, probe, LEAD_S)
        question = load_question()
        report.question_s = round(len(question) / CAPTURE_RATE, 2)
        packets_at_question = await _packets_received(pc)
        asked_at = time.monotonic()
        speaker.say(question)
        await speaker.said.wait()
        question_end = time.monotonic()
        await probe.wait(
            lambda: _live_reply_over(probe, asked_at) or probe.closed_reason is not None,
            reply_timeout_s,
        )
        replied = _live_reply_over(probe, asked_at)
        reply_end = time.monotonic()
        await asyncio.sleep(REPLY_TAIL_S)
        report.rtp["question_and_reply"] = RtpWindow(
            round(time.monotonic() - asked_at, 2), await _packets_received(pc) - packets_at_question
        )
        if replied and probe.lost is None and probe.closed_reason is None:
            report.rtp["after_reply"] = await _rtp_window(pc, probe, AFTER_S)
        _live_reply_timings(report, probe, asked_at, question_end, reply_end)
        report.ok, verdict = _live_verdict(report, probe, reply_timeout_s)
        report.verdict = _sentence(verdict)
        if probe.closed_reason is not None:
            report.errors.append(
                Failure("session", f"session.closed ({probe.closed_reason}) before a reply")
            )
            return
        if probe.lost is not None:
            return

        # The end, as the daemon ends a conversation: session.close, a moment for
        # session.closed, then the peer connection (statistics first: they go with it).
        report.ice = _ice_summary(pc)
        report.rtp_totals = await _rtp_totals(pc)
        closing_at = time.monotonic()
        probe.ending = True
        await session.close()
        closed_at = probe.first("session.closed", closing_at)
        if closed_at is not None:
            timings["session_closed"] = _ms(closed_at - closing_at)
        else:
            missing = f"no session.closed within {CLOSE_WAIT_S:g} s of session.close"
            report.errors.append(Failure("session", missing))
            if report.ok:
                report.fail(f"A reply was heard, but {missing}")
    finally:
        if calls and "channel_open" in timings and not report.ice:
            report.ice = _ice_summary(calls[0].peer_connection)
            report.rtp_totals = await _rtp_totals(calls[0].peer_connection)
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        await session.close(graceful=False)
        _collect(report, probe)


def _relay_ms(companion_log: _HttpLog) -> float | None:
    """How long the companion's GPT-Live relay took to answer, if it did."""
    path = next((p for p in companion_log.timings_ms if p.endswith("/v1/live/session")), None)
    return companion_log.timings_ms[path] if path is not None else None


def _live_reply_over(probe: _Probe, asked_at: float) -> bool:
    """The reply is over as the daemon judges it: its audio came, then stopped (`ReplyAudioFinished`
    after the received audio was quiet for `live.REPLY_GAP_S`)."""
    from .session.events import ReplyAudioFinished

    return probe.first_session(ReplyAudioFinished, asked_at) is not None


def _live_reply_timings(
    report: Report, probe: _Probe, asked_at: float, question_end: float, reply_end: float
) -> None:
    """Reply milestones, in ms after the question's last sample went out (GPT-Live sends its
    input transcript while the user speaks: that one may be negative)."""
    from .conversation import REPLY_TAIL_S
    from .session.events import ReplyAudioFinished, UserStopped

    heard = probe.audible_after(question_end, reply_end + REPLY_TAIL_S)
    report.reply_audio_s = round(sum(n for _, n in heard) / PLAYBACK_RATE, 2)
    marks = {
        "input_transcript": probe.first("session.input_transcript.delta", asked_at),
        "user_stopped": probe.first_session(UserStopped, asked_at),
        "reply_first_audio": heard[0][0] if heard else None,
        "output_transcript": probe.first("session.output_transcript.delta", asked_at),
        "reply_finished": probe.first_session(ReplyAudioFinished, asked_at),
    }
    for name, at in marks.items():
        if at is not None:
            report.timings_ms[f"{name}_after_question"] = _ms(at - question_end)


def _live_verdict(report: Report, probe: _Probe, timeout_s: float) -> tuple[bool, str]:
    if report.reply_audio_s > 0 and probe.closed_reason is None:
        return True, f"OK: a reply was heard ({report.reply_audio_s:g} s of audio)."
    if probe.closed_reason is not None:
        return False, f"The service closed the session before a reply ({probe.closed_reason})."
    if probe.lost is not None:
        return False, f"The call was lost before a reply: {probe.lost}."
    last = probe.events[-1][1] if probe.events else "none"
    return False, f"No reply within {timeout_s:g} s of the question (last event: {last})."


def _not_started(probe: _Probe, timeout_s: float) -> str:
    if probe.error_events:
        error = probe.error_events[0]
        code = error.get("code") or error.get("type") or "error"
        return f"GPT-Live refused the session ({code}: {error.get('message')})."
    if probe.closed_reason is not None:
        return f"The service closed the session before session.started ({probe.closed_reason})."
    if probe.lost is not None:
        return f"The call was lost before session.started: {probe.lost}."
    return f"No session.started within {timeout_s:g} s of the data channel opening."


async def _rtp_window(pc: Any, probe: _Probe, seconds: float) -> RtpWindow:
    """RTP packets received over the next `seconds` (shorter if the call is lost)."""
    first = await _packets_received(pc)
    began = time.monotonic()
    await probe.wait(lambda: False, seconds)
    return RtpWindow(round(time.monotonic() - began, 2), await _packets_received(pc) - first)


async def _packets_received(pc: Any) -> int:
    stats = await pc.getStats()
    return sum(int(s.packetsReceived) for s in stats.values() if s.type == "inbound-rtp")


async def _rtp_totals(pc: Any) -> dict[str, int]:
    """Packets over the whole call: received and lost (inbound), sent, and lost as the far end
    reported in its RTCP receiver reports."""
    totals = {"received": 0, "lost": 0, "sent": 0, "receiver_reports_lost": 0}
    try:
        stats = await pc.getStats()
    except Exception as exc:  # a closed or half-built connection: the totals are only a bonus
        log.debug("no statistics: %s", exc)
        return totals
    for s in stats.values():
        if s.type == "inbound-rtp":
            totals["received"] += int(s.packetsReceived)
            totals["lost"] += int(s.packetsLost)
        elif s.type == "outbound-rtp":
            totals["sent"] += int(s.packetsSent)
        elif s.type == "remote-inbound-rtp":
            totals["receiver_reports_lost"] += int(s.packetsLost)
    return totals


def _ice_summary(pc: Any) -> dict[str, Any]:
    """Candidate types gathered here and offered by the far end, and the pair in use."""
    transceivers = pc.getTransceivers()
    dtls = transceivers[0].sender.transport if transceivers else None
    if dtls is None:
        return {}
    ice = dtls.transport
    summary: dict[str, Any] = {
        "local_candidates": sorted({c.type for c in ice.iceGatherer.getLocalCandidates()}),
        "remote_candidates": sorted({c.type for c in ice.getRemoteCandidates()}),
        "used": None,
    }
    # aiortc does not expose the selected pair: it is aioice's nominated pair for component 1
    # (RTP; the call is bundled, so the data channel uses it too).
    pair = getattr(getattr(ice, "_connection", None), "_nominated", {}).get(1)
    if pair is not None:
        local, remote = pair.local_candidate, pair.remote_candidate
        summary["used"] = {"local": local.type, "remote": remote.type, "protocol": local.transport}
    return summary


def _error_envelope(body: bytes) -> dict[str, Any] | None:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return _clip_fields(error) if isinstance(error, dict) else None


def _clip_fields(error: dict[str, Any]) -> dict[str, Any]:
    """The envelope's known fields, each bounded (a hostile server cannot flood the report)."""
    fields = ("type", "code", "param", "message", "event_id")
    return {k: None if error.get(k) is None else str(error[k])[:TEXT_LIMIT] for k in fields}


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# -- the text form ---------------------------------------------------------------------------

_TIMING_LABELS = {
    "companion_key": "key from the companion",
    "offer_answer": "call: HTTP offer/answer",
    "live_session": "call: offer/answer via the companion",
    "ice_connected": "call: ICE connected",
    "channel_open": "call: data channel open",
    "session_created": "call: session.created",
    "session_updated": "call: session.updated",
    "session_started": "call: session.started",
    "speech_stopped_after_question": "reply: speech_stopped",
    "input_transcript_after_question": "reply: input transcript",
    "user_stopped_after_question": "reply: user stopped (device's VAD)",
    "response_created_after_question": "reply: response.created",
    "output_transcript_after_question": "reply: output transcript",
    "reply_first_audio_after_question": "reply: first audio",
    "response_done_after_question": "reply: response.done",
    "reply_stopped_after_question": "reply: output_audio_buffer.stopped",
    "reply_finished_after_question": "reply: audio over (quiet gap)",
    "session_closed": "end: session.close -> session.closed",
}


def _timing_order(item: tuple[str, float]) -> int:
    names = list(_TIMING_LABELS)
    return names.index(item[0]) if item[0] in names else len(names)


def render(report: Report) -> str:
    """The report as text for a terminal."""
    if report.api == "live":
        lines = [
            f"wakertc selftest: companion {report.companion_url}, GPT-Live through "
            f"{report.session_url} ({report.mode})",
            "timings (ms; the call's from its start, the reply's from the end of the question, "
            "the end's from session.close):",
        ]
    else:
        lines = [
            f"wakertc selftest: companion {report.companion_url}, Realtime API "
            f"{report.session_url} ({report.mode})",
            "timings (ms; the call's from its start, the reply's from the end of the question):",
        ]
    for name, value in sorted(report.timings_ms.items(), key=_timing_order):
        lines.append(f"  {_TIMING_LABELS.get(name, name):<36} {value:8.0f}")
    if report.ice:
        used = report.ice.get("used") or {}
        pair = f"{used['local']} -> {used['remote']} over {used['protocol']}" if used else "none"
        lines.append(
            f"ICE: pair in use {pair}; candidates here {', '.join(report.ice['local_candidates'])}"
            f", there {', '.join(report.ice['remote_candidates']) or 'none'}"
        )
    labels = {
        "before_question": "before the question",
        "question_and_reply": "question and reply",
        "after_reply": "after the reply",
    }
    if report.rtp:
        parts = [
            f"{labels.get(name, name)} {w.packets} in {w.seconds:g} s"
            for name, w in report.rtp.items()
        ]
        lines.append("RTP packets received: " + "; ".join(parts))
    if report.rtp_totals:
        t = report.rtp_totals
        lines.append(
            f"RTP over the call: {t['received']} received ({t['lost']} lost), {t['sent']} sent "
            f"({t['receiver_reports_lost']} lost as the far end reports)"
        )
    if report.question_s:
        lines.append(
            f"question {report.question_s:g} s; reply {report.reply_audio_s:g} s of audio"
            + (f", status {report.response_status}" if report.response_status else "")
            + (f": {report.reply_transcript!r}" if report.reply_transcript else "")
        )
    if report.events:
        lines.append("events (ms after the call started):")
        for run in report.events:
            count = f" x{run.count}" if run.count > 1 else ""
            lines.append(f"  {run.at_ms:8.0f}  {run.type}{count}")
    lines.append("errors:" if report.errors else "errors: none")
    for failure in report.errors:
        envelope = ""
        if failure.error:
            shown = {k: v for k, v in failure.error.items() if v is not None}
            envelope = " " + json.dumps(shown)
        lines.append(f"  [{failure.where}] {failure.message}{envelope}")
    lines.append(report.verdict)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`wakertc selftest`: exit 0 when a reply was heard."""
    parser = argparse.ArgumentParser(
        prog="wakertc selftest",
        description="Open one call with this device's config and token, ask a recorded question "
        "and report what arrived (exit 0 when a reply was heard).",
    )
    parser.add_argument("--config", help="config file (default $WAKERTC_CONFIG or /etc/wakertc)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--api",
        choices=["realtime", "live"],
        help="the API to call through (default: the config's [session] api)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=REPLY_TIMEOUT_S,
        help="seconds to wait for the reply after the question (%(default)g)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout {args.timeout}: expected a positive number of seconds")
    setup_logging("info" if args.verbose else "warning")
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.api is not None and args.api != config.session.api:
        if args.api == "live" and config.session.mode == "transcription":
            print(
                f"{path}: --api live: session.mode is 'transcription', which GPT-Live does not "
                "offer (expected 'conversation')",
                file=sys.stderr,
            )
            return 2
        config = replace(config, session=replace(config.session, api=args.api))
    try:
        report = asyncio.run(run_selftest(config, reply_timeout_s=args.timeout))
    except OSError as exc:
        where = config.companion.token_file
        print(
            f"{path}: cannot read the device token {where}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    text = json.dumps(report.as_json()) if args.json else render(report)
    print(redact(text))
    return 0 if report.ok else 1
