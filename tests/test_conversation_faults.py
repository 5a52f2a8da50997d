"""Every emulator fault against the real daemon: the right phases, a clear error line, the error
LED pattern, and the next wake working (recovery).

Set-up faults fail within `session.connect_timeout_s` (2 s here); faults during a reply fail
when the connection is noticed lost. After each, the emulator behaves again and "hey jarvis"
must open a session.
"""

from __future__ import annotations

import logging

import pytest

from chain import RED, STORY, Chain, clip, run_chain
from wakertc.demo import make_default_input
from wakertc.state import Phase

FAST_FAILURE = {"session": {"connect_timeout_s": 2.0}}


async def assert_error_shown_then_recovers(chain: Chain, error_seen, fragment: str) -> None:
    """The ERROR phase: its log line, its LED pattern, then back to IDLE and a working wake."""
    (idle,) = await chain.expect(Phase.IDLE, timeout=5)
    assert idle.reason == "listening again"
    lines = chain.logs.lines(logging.ERROR, "wakertc.daemon")
    assert lines == [f"conversation failed: {error_seen.reason}"]
    assert fragment in error_seen.reason, error_seen.reason
    reading = chain.leds(error_seen)
    assert reading.effect == "blink" and reading.is_colour(RED), reading
    assert 1.8 <= idle.t - error_seen.t <= 3.0  # shown for ERROR_DISPLAY_S, then listening

    chain.set_faults()
    chain.mic.speak(clip("hey jarvis"))
    wake, _, _ = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=10)
    assert wake.reason == "wake word hey_jarvis"
    await chain.press()
    # The pre-roll holds the end of "jarvis": the server may take it for a turn and answer
    # first; the press then interrupts the reply instead, and the idle timeout ends it.
    over = await chain.wait_phase(Phase.IDLE, timeout=10)
    assert over.reason in ("conversation over (button)", "conversation over (idle timeout)")
    assert Phase.ERROR not in [s.new for s in chain.seen[chain.seen.index(wake) :]]


SETUP_FAULTS = [
    # fault, connect timeout, what the error line must say
    (
        "mint-500",
        2.0,
        "getting a session key from the companion (last error: companion answered "
        "502: Upstream error (status 500)",
    ),
    (
        "mint-429",
        2.0,
        "getting a session key from the companion (last error: companion answered "
        "502: Upstream error (status 429)",
    ),
    ("mint-slow=4", 2.0, "timed out after 2 s while getting a session key from the companion"),
    ("calls-401", 2.0, "the Realtime API refused the call (401: Incorrect API key"),
    ("calls-500", 3.0, "the Realtime API refused the call (500: The server had an error"),
    ("calls-hang", 2.0, "timed out after 2 s while connecting to the Realtime API"),
    ("silent", 2.0, "timed out after 2 s while waiting for the session to be configured"),
    ("consent-stop", 2.0, "timed out after 2 s while waiting for the session to be configured"),
]


@pytest.mark.parametrize(("fault", "timeout_s", "fragment"), SETUP_FAULTS)
async def test_setup_fault_shows_an_error_and_recovers(
    tmp_path, models_dir, fault, timeout_s, fragment
):
    """A session that cannot be set up: wake -> connecting -> error -> idle, then a wake works."""
    device = {"session": {"connect_timeout_s": timeout_s}}
    async with run_chain(tmp_path, models_dir, faults=(fault,), device=device) as chain:
        await chain.press()
        _, connecting, error = await chain.expect(
            Phase.WAKE, Phase.CONNECTING, Phase.ERROR, timeout=timeout_s + 3
        )
        assert error.t - connecting.t <= timeout_s + 0.5
        await assert_error_shown_then_recovers(chain, error, fragment)


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ("drop-after=3.5", "connection lost: event channel closed"),
        ("consent-stop=3.5", "connection lost: no reply audio for"),
    ],
)
async def test_connection_lost_mid_reply_shows_an_error_and_recovers(
    tmp_path, models_dir, fault, fragment
):
    """The peer drops, or the path goes silent, in the middle of a reply: the reply stops, the
    error is shown within a few seconds, then a wake works."""
    async with run_chain(
        tmp_path, models_dir, script=[{"say": STORY}], faults=(fault,), device=FAST_FAILURE
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


async def test_malformed_events_never_crash_the_conversation(tmp_path, models_dir):
    """bad-event: junk JSON and unknown event types between every real event; the conversation
    completes as usual and the junk is only logged."""
    said = make_default_input(tmp_path / "in.wav")
    async with run_chain(
        tmp_path / "chain", models_dir, input_audio=said.path, faults=("bad-event",)
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
        assert len(junk) > 10
        assert chain.logs.find("ignored a malformed event", logging.WARNING)
        assert not chain.logs.lines(logging.ERROR)
        assert chain.received_ratio((said.question_start_s, said.question_end_s)) >= 0.95
