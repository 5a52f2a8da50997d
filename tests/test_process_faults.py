"""Real process faults: the companion and the Realtime emulator as child processes that crash.

The emulator (`wakertc emulator`) and the companion (`wakertc companion`) run as real processes
on fixed free ports; the daemon runs in-process as in chain.py (the file audio backend with test
speech mixed in, gpiozero mock pins, every log record kept). The faults:

- the companion SIGKILLed while the device is idle, and while it is minting a key (the
  emulator's `mint-slow` keeps the companion's upstream request open when it dies);
- the emulator SIGKILLed in the middle of a reply;
- the network path blackholed: a port that accepts connections and never answers, as the
  companion URL and as the Realtime URL.

For each: nothing waits longer than its configured timeout (the timings are asserted), the
daemon shows the error (the ERROR phase with its reason, the red blink, one error log line),
keeps running, and opens a session at the next button press once the far side is back, restarted
on the same port.

The companion's keys live 32 s in the idle-kill test: the device renews at half a key's life
(16 s) and hands out a key only while more than 15 s are left, so the failed renewal is seen
soon and the wake after it needs the companion, as it does after a longer absence than a key's
lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from chain import (
    RED,
    STORY,
    Chain,
    Remote,
    Seen,
    clip,
    merge_tables,
    run_chain,
)
from process_helpers import (
    Blackhole,
    Services,
    established_to,
    start_services,
)
from wakertc.daemon import ERROR_DISPLAY_S
from wakertc.state import Phase

# Where the device waits for the wake word: `offline` is the same, with no session key to be had.
AWAITING_WAKE = frozenset({Phase.IDLE, Phase.OFFLINE})
# Quick failures: one request to the companion, and a whole session set-up.
COMPANION_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 2.0
SLACK_S = 0.6  # scheduling on a shared 2-core machine, on top of a configured timeout


@contextlib.asynccontextmanager
async def run_device(
    workdir: Path,
    models_dir: Path,
    *,
    companion_url: str,
    realtime_url: str,
    token_file: Path,
    device: Mapping[str, Any] | None = None,
) -> AsyncIterator[Chain]:
    """The real daemon in-process against the given URLs; yields once it listens.

    On exit the daemon is stopped, and no `wakertc` log record may carry a traceback.
    """
    quick = {
        "companion": {"timeout_s": COMPANION_TIMEOUT_S},
        "session": {"connect_timeout_s": CONNECT_TIMEOUT_S},
    }
    remote = Remote(companion_url, realtime_url, token_file)
    async with run_chain(
        workdir, models_dir, remote=remote, device=merge_tables(quick, device or {})
    ) as chain:
        yield chain


@contextlib.asynccontextmanager
async def fault_chain(
    tmp_path: Path,
    models_dir: Path,
    *,
    emulator_args: tuple[str, ...] = (),
    key_lifetime_s: int = 600,
    device: Mapping[str, Any] | None = None,
) -> AsyncIterator[tuple[Chain, Services]]:
    """Services as processes and the daemon using them; everything stopped afterwards."""
    services = await start_services(
        tmp_path, emulator_args=emulator_args, key_lifetime_s=key_lifetime_s
    )
    try:
        async with run_device(
            tmp_path,
            models_dir,
            companion_url=services.companion.url,
            realtime_url=services.emulator.url,
            token_file=services.token_file,
            device=device,
        ) as chain:
            yield chain, services
    finally:
        await asyncio.gather(services.emulator.stop(), services.companion.stop())


# -- what every fault must end in -------------------------------------------------------------


async def expect_failed_session(chain: Chain, *, within_s: float) -> tuple[Seen, Seen]:
    """Press the button: wake, connecting, then error no later than `within_s` after connecting.

    Returns the connecting and error changes.
    """
    await chain.press()
    _, connecting, error = await chain.expect(
        Phase.WAKE, Phase.CONNECTING, Phase.ERROR, timeout=within_s + 5
    )
    took = error.t - connecting.t
    assert took <= within_s + SLACK_S, f"the error came {took:.2f} s after connecting"
    return connecting, error


async def assert_error_shown(chain: Chain, error: Seen, *fragments: str) -> None:
    """The ERROR phase says why, blinks red, is logged once, and gives way to listening."""
    for fragment in fragments:
        assert fragment in error.reason, error.reason
    back = await chain.wait_any(AWAITING_WAKE, timeout=ERROR_DISPLAY_S + 3)
    assert back.old is Phase.ERROR, chain.describe()
    assert back.reason.startswith("listening again"), back.reason
    reading = chain.leds(error)
    assert reading.effect == "blink" and reading.is_colour(RED), reading
    failures = [
        line
        for line in chain.logs.lines(logging.ERROR, "wakertc.daemon")
        if line == f"conversation failed: {error.reason}"
    ]
    assert len(failures) == 1, chain.logs.lines(logging.ERROR)
    assert chain.running()


async def assert_session_opens(chain: Chain) -> None:
    """The next press opens a session; another press ends it."""
    start = chain.cursor
    await chain.press()
    # The key keeper may get its key first, now that the far side is back: offline -> idle.
    wake = await chain.wait_phase(Phase.WAKE, timeout=3)
    before = chain.seen[start : chain.seen.index(wake)]
    assert all(s.new in AWAITING_WAKE for s in before), chain.describe(start)
    await chain.expect(Phase.CONNECTING, Phase.LISTENING, timeout=CONNECT_TIMEOUT_S + 5)
    await chain.press()
    over = await chain.wait_any(AWAITING_WAKE, timeout=5)
    assert over.reason == "conversation over (button)", chain.describe()


# -- tests ------------------------------------------------------------------------------------


async def test_companion_killed_while_idle_then_restarted(tmp_path: Path, models_dir: Path) -> None:
    """SIGKILL the companion while the device waits for its wake word: the device notices (its
    key renewal fails), a wake fails within the connect timeout saying the companion is
    unreachable, and once the companion is back on its port the next press opens a session."""
    # 32 s keys are renewed at half their life, 16 s after the first; the key in hand is handed
    # out while more than 15 s are left, so soon after the failed renewal a wake needs the
    # companion.
    async with fault_chain(tmp_path, models_dir, key_lifetime_s=32) as (chain, services):
        await chain.wait_log("session key ready")
        await services.companion.kill()
        killed = time.monotonic()
        offline = await chain.wait_phase(Phase.OFFLINE, timeout=25)
        assert "no session key: companion unreachable" in offline.reason
        assert offline.t - killed <= 16.0 + COMPANION_TIMEOUT_S + SLACK_S  # the renewal
        await chain.wait_log("could not renew the session key: companion unreachable")
        async with asyncio.timeout(3):
            while chain.daemon.keys.ready_key() is not None:
                await asyncio.sleep(0.05)

        _, error = await expect_failed_session(chain, within_s=CONNECT_TIMEOUT_S)
        await assert_error_shown(
            chain,
            error,
            f"timed out after {CONNECT_TIMEOUT_S:g} s while getting a session key from the "
            "companion (last error: companion unreachable",
        )

        await services.companion.start()
        await assert_session_opens(chain)
        assert chain.phase is Phase.IDLE, chain.describe()
    assert services.companion.starts == 2
    assert "mint for device kitchen: ok" in "".join(services.companion.lines[-20:])


async def test_companion_killed_while_minting_then_restarted(
    tmp_path: Path, models_dir: Path
) -> None:
    """The device waits for a key while the companion waits for a slow upstream; SIGKILL the
    companion mid-request: the device fails within its connect timeout (it does not wait for
    an answer from a dead socket), and the restarted companion serves the next press."""
    mint_s = 1.5
    connect_s = mint_s + 2.5  # room for one slow mint and the call
    device = {
        "companion": {"timeout_s": mint_s + 1.5},
        "session": {"connect_timeout_s": connect_s},
    }
    async with fault_chain(
        tmp_path, models_dir, emulator_args=("--fault", f"mint-slow={mint_s}"), device=device
    ) as (chain, services):
        # The daemon's first key request is in flight from start-up: wait until the companion
        # has passed it upstream (its connection to the emulator is open), then press.
        async with asyncio.timeout(mint_s):
            while not established_to(services.emulator.port):
                await asyncio.sleep(0.01)
        await chain.press()
        _, connecting = await chain.expect(Phase.WAKE, Phase.CONNECTING, timeout=2)
        assert chain.daemon.keys.ready_key() is None  # the press is waiting for that mint
        await services.companion.kill()
        (error,) = await chain.expect(Phase.ERROR, timeout=connect_s + 3)
        assert error.t - connecting.t <= connect_s + SLACK_S
        await assert_error_shown(
            chain,
            error,
            f"timed out after {connect_s:g} s while getting a session key from the companion",
            "companion unreachable",
        )
        # The request in flight was cut off (not refused): the companion died mid-request.
        assert chain.logs.find(
            "could not renew the session key: companion unreachable: Server disconnected "
            "without sending a response"
        ), chain.logs.lines()

        await services.companion.start()
        await assert_session_opens(chain)


async def test_emulator_killed_mid_reply_then_restarted(tmp_path: Path, models_dir: Path) -> None:
    """SIGKILL the Realtime emulator while the device plays a long reply: the reply stops and
    the error shows within ~2 s (nothing received mid-reply), a wake while the emulator is down
    fails at once (connection refused), and after a restart on the same port the next press
    opens a session: the old key is unknown to the new process, so the device fetches another."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"say": STORY}]))
    async with fault_chain(tmp_path, models_dir, emulator_args=("--script", str(script))) as (
        chain,
        services,
    ):
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING, timeout=8)
        chain.mic.speak(clip("tell me a story"))
        _, speaking = await chain.expect(Phase.THINKING, Phase.SPEAKING, timeout=10)
        async with asyncio.timeout(3):  # kill it once the reply is audibly playing
            while chain.mic.audible_s(speaking.t, time.monotonic()) < 0.3:
                await asyncio.sleep(0.02)
        assert chain.phase is Phase.SPEAKING
        await services.emulator.kill()
        killed = time.monotonic()
        (error,) = await chain.expect(Phase.ERROR, timeout=6)
        # REPLY_STALL_S (2 s) after the last packet, checked every 0.25 s.
        assert error.t - killed <= 2.5 + SLACK_S, f"noticed {error.t - killed:.2f} s after"
        assert error.queued_s <= 0.5  # the rest of the reply was dropped: only the error cue
        await assert_error_shown(chain, error, "connection lost: nothing received for 2.")

        _, refused = await expect_failed_session(chain, within_s=0.5)
        await assert_error_shown(chain, refused, "could not reach the Realtime API")

        await services.emulator.start()
        await assert_session_opens(chain)
        assert chain.logs.find("the Realtime API refused the call (401"), (
            "the restarted emulator should have refused the old key"
        )
    assert services.emulator.starts == 2


async def test_blackholed_companion_then_real_one(tmp_path: Path, models_dir: Path) -> None:
    """The companion URL is a port that accepts and never answers: each key request gives up
    after companion.timeout_s, the session after session.connect_timeout_s; when the real
    companion takes the port over, the next press opens a session."""
    services = await start_services(tmp_path)
    port = services.companion.port
    await services.companion.stop()
    try:
        with Blackhole(port) as hole:
            async with run_device(
                tmp_path,
                models_dir,
                companion_url=hole.url,
                realtime_url=services.emulator.url,
                token_file=services.token_file,
            ) as chain:
                # The key keeper asks for a key as the daemon starts listening.
                started = chain.seen[0].t
                t, _ = await chain.wait_log(
                    f"companion did not answer within {COMPANION_TIMEOUT_S:g} s", timeout=5
                )
                assert COMPANION_TIMEOUT_S - 0.1 <= t - started <= COMPANION_TIMEOUT_S + SLACK_S
                offline = await chain.wait_phase(Phase.OFFLINE)
                assert offline.reason == (
                    f"no session key: companion did not answer within {COMPANION_TIMEOUT_S:g} s"
                )

                connecting, error = await expect_failed_session(chain, within_s=CONNECT_TIMEOUT_S)
                assert error.t - connecting.t >= CONNECT_TIMEOUT_S
                await assert_error_shown(
                    chain,
                    error,
                    f"timed out after {CONNECT_TIMEOUT_S:g} s while getting a session key from "
                    f"the companion (last error: companion did not answer within "
                    f"{COMPANION_TIMEOUT_S:g} s)",
                )
                hole.close()
                await services.companion.start()
                await assert_session_opens(chain)
    finally:
        await asyncio.gather(services.emulator.stop(), services.companion.stop())


async def test_blackholed_realtime_api_then_real_one(tmp_path: Path, models_dir: Path) -> None:
    """The Realtime URL stops answering (the emulator killed, its port now accepting and never
    answering): the offer waits no longer than session.connect_timeout_s; when the emulator
    is back on the port, the next press opens a session."""
    async with fault_chain(tmp_path, models_dir) as (chain, services):
        await chain.wait_log("session key ready")
        await services.emulator.kill()
        with Blackhole(services.emulator.port):
            connecting, error = await expect_failed_session(chain, within_s=CONNECT_TIMEOUT_S)
            assert error.t - connecting.t >= CONNECT_TIMEOUT_S
            await assert_error_shown(
                chain,
                error,
                f"timed out after {CONNECT_TIMEOUT_S:g} s while connecting to the Realtime API",
            )
        await services.emulator.start()
        await assert_session_opens(chain)


async def test_wake_word_while_the_error_is_shown_starts_a_session(
    tmp_path: Path, models_dir: Path
) -> None:
    """Recovery is "the next wake": a user who sees the red blink and says the wake word again
    at once must not be ignored (here the far side is healthy again by then)."""
    async with run_chain(tmp_path, models_dir, faults=("calls-401",)) as chain:
        await chain.press()
        _, _, error = await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.ERROR, timeout=5)
        chain.set_faults()
        await chain.mic.say(clip("hey jarvis"))
        heard, _ = await chain.wait_log("wake word hey_jarvis", timeout=3)
        shown_until = chain.next_change(error)
        assert shown_until is None or shown_until.t > heard, "heard after the error display"
        (wake,) = await chain.expect(Phase.WAKE, timeout=ERROR_DISPLAY_S + 1)
        assert wake.reason == "wake word hey_jarvis"
