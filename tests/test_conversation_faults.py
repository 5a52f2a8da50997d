"""Every emulator fault against the real daemon, in every phase it can reach, under both
session APIs (`api`: Realtime and GPT-Live, from one set of tests): the right phases, a clear
error line, the LED pattern, and the next wake working (recovery).

The matrix (fault x phase; "-" cannot happen there, e.g. no call is set up while listening;
"R" marks what only Realtime can have):

    fault           idle key refresh   connecting   listening   speaking
    mint-500        offline (R)        error (R)    unaffected  unaffected
    mint-429        offline (R)        error (R)    unaffected  unaffected
    mint-slow       offline (R)        error (R)    unaffected  unaffected
    calls-401       -                  error        -           -
    calls-500       -                  error        -           -
    calls-hang      -                  error        -           -
    silent          -                  error        -           -
    consent-stop    -                  error (R)    error       error
    drop-after      -                  error        error       error
    bad-event       -                  ignored      ignored     ignored
    no-reply        -                  -            error       -
    no-idle-audio   -                  -            unaffected  -
    max-session     -                  -            ended       ended

Under GPT-Live the companion creates the session with the project key (there are no session
keys to mint, so no mint fault reaches a Live conversation), the `calls-*` faults hit that
creation, and the session is live at `session.started`, which the service sends as the channel
opens (so no round trip at set-up for a dying path to cut). Realtime-only tests say why; their
Live case shows as skipped with that reason.

Set-up faults fail within `session.connect_timeout_s` (2 s here); a path that dies fails when it
is noticed (mid-reply: 2 s without reply audio; otherwise 5 s without anything). Key-minting
faults while idle do not wait for a wake: the device shows OFFLINE (slow amber blink) until a key
can be had again. After each, the emulator behaves again and "hey jarvis" must open a session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import pytest

from chain import APIS, RED, STORY, WIRE, Chain, clip, run_chain
from wakertc.config import DEFAULT_PATTERNS
from wakertc.demo import make_default_input
from wakertc.state import Phase

FAST_FAILURE = {"session": {"connect_timeout_s": 2.0}}
AMBER = DEFAULT_PATTERNS["offline"].color
# Keys live 50 s and are renewed at half their life: every ~25 s while idle; a key is handed out
# while it has 15 s left, so one that failed to renew still serves a wake for ~10 s (minus the
# 3 s a slow companion takes to fail, the LED reading and the phrase: ~3 s to spare).
SHORT_KEYS = "\n[session]\nkey_lifetime_s = 50\n"
MINT_FAULTS = ["mint-500", "mint-429", "mint-slow=4"]
MINT_ERRORS = {
    "mint-500": "companion answered 502: Upstream error (status 500)",
    "mint-429": "companion answered 502: Upstream error (status 429)",
    "mint-slow=4": "companion did not answer within 3 s",
}


BOTH_APIS = pytest.mark.parametrize("api", APIS)


def realtime_only(why: str) -> pytest.MarkDecorator:
    """Run under Realtime; the Live case is shown skipped, with `why` Live cannot have it."""
    live = pytest.param("live", marks=pytest.mark.skip(reason=f"Realtime only: {why}"))
    return pytest.mark.parametrize("api", ["realtime", live])


NO_LIVE_KEYS = (
    "GPT-Live has no session keys (the companion creates sessions with the project key); "
    "test_mint_faults_do_not_reach_a_live_device holds a Live device to that"
)
# How each API's device ends a call the emulator answered (its recorded close reason): the
# Realtime call is hung up over HTTP; a Live session is closed on its channel (`session.close`),
# or, when the service does not answer that, by closing the peer connection.
ENDED_BY_DEVICE = {
    "realtime": {"hung up by the client"},
    "live": {"session.close", "event channel closed", "peer connection closed"},
}


async def wake_and_hang_up(chain: Chain) -> None:
    """ "hey jarvis" opens a session; a press ends it; no error on the way."""
    chain.mic.speak(clip("hey jarvis"))
    wake = await chain.wait_phase(Phase.WAKE, timeout=10)
    assert wake.reason == "wake word hey_jarvis"
    await chain.expect(Phase.CONNECTING, Phase.LISTENING, timeout=10)
    await chain.press()
    # The pre-roll holds the end of "jarvis": the server may take it for a turn and answer
    # first; the press then interrupts the reply instead, and the idle timeout ends it.
    over = await chain.wait_phase(Phase.IDLE, timeout=10)
    assert over.reason in ("conversation over (button)", "conversation over (idle timeout)")
    assert Phase.ERROR not in [s.new for s in chain.seen[chain.seen.index(wake) :]]


async def assert_error_shown_then_recovers(
    chain: Chain, error_seen, fragment: str, *, then: Phase = Phase.IDLE
) -> None:
    """The ERROR phase: its log line, its LED pattern, then listening again and a working wake."""
    (idle,) = await chain.expect(then, timeout=5)
    assert idle.reason.startswith("listening again")
    lines = chain.logs.lines(logging.ERROR, "wakertc.daemon")
    assert lines == [f"conversation failed: {error_seen.reason}"]
    assert fragment in error_seen.reason, error_seen.reason
    reading = chain.leds(error_seen)
    assert reading.effect == "blink" and reading.is_colour(RED), reading
    assert 1.8 <= idle.t - error_seen.t <= 3.0  # shown for ERROR_DISPLAY_S, then listening

    chain.set_faults()
    await wake_and_hang_up(chain)


SETUP_FAULTS = [
    # fault, connect timeout, what the error line must say (by API; None: Realtime only)
    (
        "mint-500",
        2.0,
        {
            "realtime": "getting a session key from the companion (last error: companion "
            "answered 502: Upstream error (status 500)",
            "live": None,
        },
    ),
    (
        "mint-429",
        2.0,
        {
            "realtime": "getting a session key from the companion (last error: companion "
            "answered 502: Upstream error (status 429)",
            "live": None,
        },
    ),
    (
        "mint-slow=4",
        2.0,
        {
            "realtime": "timed out after 2 s while getting a session key from the companion",
            "live": None,
        },
    ),
    (
        "calls-401",
        2.0,
        {
            "realtime": "the Realtime API refused the call (401: Incorrect API key",
            "live": "companion answered 502: Upstream error (status 401)",
        },
    ),
    (
        "calls-500",
        3.0,
        {
            "realtime": "the Realtime API refused the call (500: The server had an error",
            "live": "companion answered 502: Upstream error (status 500)",
        },
    ),
    (
        "calls-hang",
        2.0,
        {
            "realtime": "timed out after 2 s while connecting to the Realtime API",
            "live": "timed out after 2 s while creating a GPT-Live session through the companion",
        },
    ),
    (
        "silent",
        2.0,
        {
            "realtime": "timed out after 2 s while waiting for the session to be configured",
            "live": "timed out after 2 s while waiting for session.started",
        },
    ),
    (
        "consent-stop",
        2.0,
        {
            "realtime": "timed out after 2 s while waiting for the session to be configured",
            "live": None,
        },
    ),
]
# Why a set-up fault cannot happen under GPT-Live.
NOT_AT_LIVE_SETUP = {
    "mint-500": NO_LIVE_KEYS,
    "mint-429": NO_LIVE_KEYS,
    "mint-slow=4": NO_LIVE_KEYS,
    "consent-stop": "a Live session is live at session.started, sent as the channel opens: "
    "no set-up round trip is left for the path to die in (listening and mid-reply below)",
}


def setup_cases() -> list[Any]:
    cases = []
    for fault, timeout_s, fragments in SETUP_FAULTS:
        for api in APIS:
            fragment = fragments[api]
            marks = []
            if fragment is None:
                marks = [pytest.mark.skip(reason=f"Realtime only: {NOT_AT_LIVE_SETUP[fault]}")]
            case_id = f"{fault}-{api}"
            cases.append(pytest.param(fault, timeout_s, fragment, api, marks=marks, id=case_id))
    return cases


@pytest.mark.parametrize(("fault", "timeout_s", "fragment", "api"), setup_cases())
async def test_setup_fault_shows_an_error_and_recovers(
    tmp_path, models_dir, fault, timeout_s, fragment, api
):
    """A session that cannot be set up: wake -> connecting -> error -> listening again, then a
    wake works. Minting that fails outright already failed for the keeper at start: OFFLINE."""
    device = {"session": {"connect_timeout_s": timeout_s}}
    mint_fails = fault in ("mint-500", "mint-429")
    async with run_chain(tmp_path, models_dir, faults=(fault,), device=device, api=api) as chain:
        if mint_fails:
            (offline,) = await chain.expect(Phase.OFFLINE, timeout=5)
            assert MINT_ERRORS[fault] in offline.reason
        await chain.press()
        _, connecting, error = await chain.expect(
            Phase.WAKE, Phase.CONNECTING, Phase.ERROR, timeout=timeout_s + 3
        )
        assert error.t - connecting.t <= timeout_s + 0.5
        then = Phase.OFFLINE if mint_fails else Phase.IDLE
        await assert_error_shown_then_recovers(chain, error, fragment, then=then)


@realtime_only(NO_LIVE_KEYS)
@pytest.mark.parametrize("fault", MINT_FAULTS)
async def test_key_refresh_failing_while_idle_shows_offline_and_recovers(
    tmp_path, models_dir, fault, api
):
    """The companion fails while the keeper renews in the background: OFFLINE (slow amber
    blink) without waiting for a wake; the key in hand still carries a whole conversation;
    once minting works again the device is IDLE by itself."""
    device = {"companion": {"timeout_s": 3.0}, "session": {"idle_timeout_s": 5.0}}
    async with run_chain(
        tmp_path, models_dir, device=device, companion_extra=SHORT_KEYS, reply="echo", api=api
    ) as chain:
        await chain.wait_log("session key ready")
        chain.set_faults(fault)
        (offline,) = await chain.expect(Phase.OFFLINE, timeout=30)
        assert offline.reason.startswith(f"no session key: {MINT_ERRORS[fault]}")
        assert chain.logs.find("could not renew the session key", logging.WARNING)
        await asyncio.sleep(2.2)  # one whole blink period, for the LED reading
        chain.mic.speak(clip("hey jarvis, what time is it"))
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=10)
        reading = chain.leds(offline)
        assert reading.effect == "blink" and reading.is_colour(AMBER), reading
        await chain.wait_phase(Phase.SPEAKING, timeout=10)
        await chain.wait_phase(Phase.LISTENING, timeout=10)
        await chain.press()
        (after,) = await chain.expect(Phase.OFFLINE, timeout=5)
        assert after.reason.startswith("conversation over (button); no session key: ")
        assert Phase.ERROR not in [s.new for s in chain.seen]

        chain.set_faults()
        (back,) = await chain.expect(Phase.IDLE, timeout=25)
        assert back.reason == "session keys available again"
        assert not chain.logs.lines(logging.ERROR)
        await wake_and_hang_up(chain)


async def test_mint_faults_do_not_reach_a_live_device(tmp_path, models_dir):
    """A Live device needs no session keys: minting failing leaves it IDLE, not OFFLINE."""
    async with run_chain(tmp_path, models_dir, faults=("mint-500",), api="live") as chain:
        await asyncio.sleep(1.0)  # the keeper's first attempt has failed by now
        assert chain.current.new is Phase.IDLE, chain.describe()
        await wake_and_hang_up(chain)


# Whether the service sends RTP between replies (nothing says it must): both ways.
IDLE_AUDIO = [(), ("no-idle-audio",)]


@BOTH_APIS
@pytest.mark.parametrize("idle_audio", IDLE_AUDIO, ids=["idle-audio", "no-idle-audio"])
@pytest.mark.parametrize(
    ("fault", "fragment", "noticed_within_s"),
    [
        ("drop-after=1.5", "connection lost: event channel closed", 1.5),
        # 5 s of nothing, and the watchdog's next look.
        ("consent-stop=1.5", "connection lost: nothing received for 5.", 5.5),
    ],
)
async def test_connection_lost_while_listening_shows_an_error_and_recovers(
    tmp_path, models_dir, fault, fragment, noticed_within_s, idle_audio, api
):
    """The path dies while the device waits for the user: noticed without a reply to watch,
    whether or not the service sends audio between replies."""
    device = {"session": {"connect_timeout_s": 2.0, "idle_timeout_s": 20.0}}
    faults = (fault, *idle_audio)
    async with run_chain(tmp_path, models_dir, faults=faults, device=device, api=api) as chain:
        await chain.press()
        _, _, live = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        (error,) = await chain.expect(Phase.ERROR, timeout=12)
        assert error.t - live.t <= 1.5 + noticed_within_s
        await assert_error_shown_then_recovers(chain, error, fragment)


@BOTH_APIS
@pytest.mark.parametrize("idle_audio", IDLE_AUDIO, ids=["idle-audio", "no-idle-audio"])
@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ("drop-after=3.5", "connection lost: event channel closed"),
        ("consent-stop=3.5", "connection lost: nothing received for 2."),
    ],
)
async def test_connection_lost_mid_reply_shows_an_error_and_recovers(
    tmp_path, models_dir, fault, fragment, idle_audio, api
):
    """The peer drops, or the path goes silent, in the middle of a reply: the reply stops, the
    error is shown within a few seconds, then a wake works."""
    faults = (fault, *idle_audio)
    async with run_chain(
        tmp_path, models_dir, script=[{"say": STORY}], faults=faults, device=FAST_FAILURE, api=api
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("tell me a story"))
        _, speaking, error = await chain.expect(
            Phase.THINKING, Phase.SPEAKING, Phase.ERROR, timeout=12
        )
        assert error.t - speaking.t < 5.0
        # What was left of the reply is dropped; only the error cue (0.45 s) is queued.
        assert error.queued_s <= 0.5
        await assert_error_shown_then_recovers(chain, error, fragment)


# How each API's device logs the service ending a session at its maximum length.
SERVICE_ENDED = {
    "realtime": "the service ended the session: Your session hit the maximum duration of 2 "
    "seconds.",
    "live": "GPT-Live session closed: expired",
}


@BOTH_APIS
async def test_a_session_the_service_ends_is_a_clean_end(tmp_path, models_dir, api):
    """The service ends the session at its maximum length (Realtime: error session_expired, then
    the call closes; Live: session.closed, reason expired): the conversation is over (done cue,
    LEDs off, one log line), not "connection lost"."""
    device = {"session": {"idle_timeout_s": 20.0}}
    async with run_chain(
        tmp_path, models_dir, faults=("max-session=2",), device=device, api=api
    ) as chain:
        await chain.press()
        _, _, live = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        (idle,) = await chain.expect(Phase.IDLE, timeout=6)
        assert idle.reason == "conversation over (the service ended the session)"
        assert 1.5 <= idle.t - live.t <= 3.0
        assert chain.logs.find(SERVICE_ENDED[api])
        assert not chain.logs.lines(logging.WARNING)
        assert chain.leds(idle).effect == "off"
        assert chain.daemon.conversations == 1


@BOTH_APIS
async def test_malformed_events_never_crash_the_conversation(tmp_path, models_dir, api):
    """bad-event: junk JSON and unknown event types between every real event; the conversation
    completes as usual and the junk is only logged."""
    said = make_default_input(tmp_path / "in.wav")
    async with run_chain(
        tmp_path / "chain", models_dir, input_audio=said.path, faults=("bad-event",), api=api
    ) as chain:
        await chain.expect(
            Phase.WAKE,
            Phase.CONNECTING,
            Phase.LISTENING,
            Phase.THINKING,
            Phase.SPEAKING,
            Phase.LISTENING,
            Phase.IDLE,
            timeout=25,
        )
        assert chain.current.reason == "conversation over (idle timeout)"
        junk = [e for e in chain.events() if "junk" in e]
        assert len(junk) == len(chain.received()) >= 4  # one after every real event
        assert chain.logs.find("ignored a malformed event", logging.WARNING)
        assert not chain.logs.lines(logging.ERROR)
        assert chain.received_ratio((said.question_start_s, said.question_end_s)) >= 0.95


@realtime_only(
    "the injected error (a session URL that bypassed the config's checks) reaches only the "
    "Realtime call; the error path it proves is the API-neutral conversation's"
)
async def test_an_unexpected_error_reaches_the_error_path_and_the_next_wake_works(
    tmp_path, models_dir, api
):
    """An exception nobody foresaw in a conversation (httpx.InvalidURL from a session URL that
    bypassed the config's checks): ERROR with its red blink and the display timer, one log line
    with the traceback, then listening again; a wake word then opens a session (before, the
    phase stayed CONNECTING, where wake words are ignored, until a restart)."""
    async with run_chain(tmp_path, models_dir, allow_tracebacks=True, api=api) as chain:
        good = chain.daemon.config
        session = dataclasses.replace(good.session, url="http://[::1")
        chain.daemon.config = dataclasses.replace(good, session=session)
        await chain.press()
        _, _, error = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.ERROR, timeout=5)
        assert error.reason.startswith("unexpected error: InvalidURL"), error.reason
        (idle,) = await chain.expect(Phase.IDLE, timeout=5)
        assert idle.reason == "listening again"
        assert 1.8 <= idle.t - error.t <= 3.0
        reading = chain.leds(error)
        assert reading.effect == "blink" and reading.is_colour(RED), reading
        tracebacks = [r for _, r in chain.logs.records if r.exc_info]
        assert [r.getMessage() for r in tracebacks] == ["conversation failed unexpectedly"]

        chain.daemon.config = good
        await wake_and_hang_up(chain)


@BOTH_APIS
@pytest.mark.parametrize("fault", ["calls-hang", "silent"])
async def test_a_press_during_connecting_stops_the_connect_at_once(
    tmp_path, models_dir, fault, api
):
    """A press while the call is being set up (the offer unanswered, or the session never
    configured) ends it at once: back to IDLE within half a second, no error when the connect
    timeout would have passed, and a call the emulator did answer is hung up."""
    device = {"session": {"connect_timeout_s": 3.0}}
    async with run_chain(tmp_path, models_dir, faults=(fault,), device=device, api=api) as chain:
        await chain.press()
        _, connecting = await chain.expect(Phase.WAKE, Phase.CONNECTING)
        await asyncio.sleep(0.5)
        await chain.press()
        (idle,) = await chain.expect(Phase.IDLE, timeout=2)
        assert idle.reason == "conversation over (button)"
        assert idle.t - connecting.t < 0.5 + 0.1 + 0.5  # the wait, the press, then at once
        await asyncio.sleep(3.5)  # past the connect timeout: nothing more happens
        assert chain.current is idle, chain.describe()
        assert not chain.logs.lines(logging.ERROR)
        for call in chain.calls():
            assert call.close_reason in ENDED_BY_DEVICE[api]


@BOTH_APIS
async def test_mute_during_connecting_stops_the_connect_and_stays_muted(tmp_path, models_dir, api):
    """A long press while connecting mutes at once and stops the connect; the connect timeout
    passing later leaves MUTED (before: ERROR, for good)."""
    device = {"session": {"connect_timeout_s": 2.0}}
    async with run_chain(
        tmp_path, models_dir, faults=("calls-hang",), device=device, api=api
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING)
        muted = await chain.long_press(Phase.MUTED)
        await asyncio.sleep(3.0)
        assert chain.current is muted, chain.describe()
        assert not chain.logs.lines(logging.ERROR)


@BOTH_APIS
async def test_no_reply_after_the_user_stopped_ends_in_an_error(tmp_path, models_dir, api):
    """The service never answers a finished turn (the no-reply fault): the device does not sit
    in THINKING streaming the microphone until max_session_s, but fails `reply_timeout_s` after
    the user stopped, then a wake works."""
    device = {"session": {"reply_timeout_s": 2.0, "idle_timeout_s": 20.0}}
    async with run_chain(
        tmp_path, models_dir, faults=("no-reply",), device=device, api=api
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("what is the weather like today"))
        thinking, error = await chain.expect(Phase.THINKING, Phase.ERROR, timeout=15)
        assert 1.9 <= error.t - thinking.t <= 2.6
        assert error.reason == "no reply 2 s after the user stopped speaking"
        assert chain.calls()[0].close_reason in ENDED_BY_DEVICE[api]
        await assert_error_shown_then_recovers(chain, error, "no reply")


@realtime_only("GPT-Live has no turn detection to configure: the model owns the turns")
async def test_a_policy_without_create_response_still_gets_replies(tmp_path, models_dir, api):
    """The owner's policy has create_response = false: the server's VAD commits each turn and
    the device asks for the reply itself (before: every turn failed with "no reply")."""
    policy = "\n[session.turn_detection]\ncreate_response = false\n"
    device = {"session": {"reply_timeout_s": 3.0, "idle_timeout_s": 20.0}}
    async with run_chain(
        tmp_path, models_dir, reply="tone", companion_extra=policy, device=device, api=api
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        for _turn in range(2):
            chain.mic.speak(clip("what is the weather like today"))
            await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, timeout=15)
        await chain.press()
        await chain.expect(Phase.IDLE)
        received = chain.received()
        updated = [e for e in received if e["type"] == "session.updated"][-1]
        assert updated["session"]["audio"]["input"]["turn_detection"]["create_response"] is False
        assert [e["type"] for e in chain.sent()].count("response.create") == 2
        assert "input_audio_buffer.commit" not in [e["type"] for e in chain.sent()]
        done = [e["response"]["status"] for e in received if e["type"] == "response.done"]
        assert done == ["completed", "completed"]
        assert not [e for e in received if e["type"] == "error"]
        assert not chain.logs.lines(logging.WARNING)


@BOTH_APIS
async def test_long_pauses_between_turns_without_idle_audio(tmp_path, models_dir, api):
    """The service sends no RTP at all between replies (no-idle-audio): three turns, each after
    a 12 s pause, and the conversation goes on (before: "connection lost" after 5 s)."""
    device = {"session": {"idle_timeout_s": 20.0}}
    async with run_chain(
        tmp_path, models_dir, reply="tone", faults=("no-idle-audio",), device=device, api=api
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        for _turn in range(3):
            await asyncio.sleep(12.0)
            chain.mic.speak(clip("what is the weather like today"))
            await chain.expect(Phase.THINKING, Phase.SPEAKING, Phase.LISTENING, timeout=15)
        await chain.press()
        await chain.expect(Phase.IDLE)
        assert Phase.ERROR not in [s.new for s in chain.seen], chain.describe()
        replies = [e for e in chain.received() if e["type"] == WIRE[api].reply]
        assert len(replies) == 3
        assert not chain.logs.lines(logging.WARNING)


@BOTH_APIS
async def test_audio_failure_during_connecting_stops_the_connect_at_once(tmp_path, models_dir, api):
    """The audio device fails while the call is being set up: the connect stops at once and the
    error names the device (before: it ran on to the connect timeout and blamed that)."""
    device = {"session": {"connect_timeout_s": 3.0}}
    async with run_chain(
        tmp_path, models_dir, faults=("calls-hang",), device=device, api=api
    ) as chain:
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING)
        failed_at = time.monotonic()
        chain.mic.on_error(OSError("the device was unplugged"))  # as the backend reports it
        (error,) = await chain.expect(Phase.ERROR, timeout=2)
        assert error.reason == "audio device lost"
        found, line = await chain.wait_log("conversation failed", timeout=2)
        assert line == "conversation failed: the audio device failed"
        assert found - failed_at < 0.5
