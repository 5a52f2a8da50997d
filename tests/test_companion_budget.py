"""Budgets against the real ledger (the SQLite store): standings by the companion's local day
and month, the device's own limits beside the household's, near and over, and when sessions
come back."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from wakertc.companion import StoreSettings, UsageEntry, open_store
from wakertc.companion.budget import Budgets, period_bounds
from wakertc.companion.config import BudgetLimits, BudgetSettings
from wakertc.companion.store import Store

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def paris() -> Iterator[None]:
    """The companion's local zone: Europe/Paris (DST on the last Sunday of March and October)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(StoreSettings(file=tmp_path / "companion.db"))
    try:
        yield opened
    finally:
        await opened.close()


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=PARIS).timestamp()  # type: ignore[misc]


def spend(device: str, when: float, *, usd: float = 0.0, seconds: float = 0.0) -> UsageEntry:
    return UsageEntry(
        device=device,
        session_id=f"rtc_{device}_{when}",
        event_id=f"event_{when}_{usd}_{seconds}",
        api="realtime",
        at=when,
        seconds=seconds,
        cost_usd=usd,
    )


def test_periods_follow_the_local_calendar_across_daylight_saving(paris: None) -> None:
    # 2026-10-25 has 25 hours in Paris (clocks go back at 03:00).
    start, end = period_bounds("day", at(2026, 10, 25, 12))
    assert (start, end) == (at(2026, 10, 25), at(2026, 10, 26))
    assert end - start == 25 * 3600
    start, end = period_bounds("month", at(2026, 12, 31, 23, 59))
    assert (start, end) == (at(2026, 12, 1), at(2027, 1, 1))


async def test_no_budget_reads_nothing_and_is_ok(store: Store) -> None:
    budgets = Budgets(BudgetSettings(), store)
    assert not budgets.enabled
    await store.record_usage(spend("kitchen", time.time(), usd=1000))
    assert (await budgets.standing("kitchen")).state == "ok"


async def test_a_device_limit_is_near_then_over_and_resets_at_midnight(
    store: Store, paris: None
) -> None:
    now = at(2026, 12, 6, 20, 0)
    settings = BudgetSettings(devices={"kids": BudgetLimits(day_minutes=15)}, warn_at=0.8)
    budgets = Budgets(settings, store, clock=lambda: now)
    # Yesterday's talk does not count today; another device's does not count for this one.
    await store.record_usage(spend("kids", at(2026, 12, 5, 23, 50), seconds=3600))
    await store.record_usage(spend("kitchen", at(2026, 12, 6, 9), seconds=3600))
    await store.record_usage(spend("kids", at(2026, 12, 6, 0, 1), seconds=11 * 60))
    standing = await budgets.standing("kids")
    assert standing.state == "ok"
    assert standing.used == pytest.approx(11.0)
    await store.record_usage(spend("kids", at(2026, 12, 6, 8), seconds=60))
    standing = await budgets.standing("kids")
    assert (standing.state, standing.limit) == ("near", "budgets.devices.kids.day_minutes")
    await store.record_usage(spend("kids", at(2026, 12, 6, 19), seconds=3 * 60))
    standing = await budgets.standing("kids")
    assert standing.state == "over"
    assert standing.used == pytest.approx(15.0)
    assert standing.resets_at == at(2026, 12, 7)
    assert standing.as_json() == {
        "state": "over",
        "limit": "budgets.devices.kids.day_minutes",
        "used": 15.0,
        "allowed": 15.0,
        "resets_at": int(at(2026, 12, 7)),
    }
    # The household has no limit: another device talks on.
    assert (await budgets.standing("kitchen")).state == "ok"


async def test_the_household_limit_counts_every_device(store: Store, paris: None) -> None:
    now = at(2026, 12, 20, 12)
    settings = BudgetSettings(household=BudgetLimits(month_usd=10.0, day_usd=5.0))
    budgets = Budgets(settings, store, clock=lambda: now)
    await store.record_usage(spend("kitchen", at(2026, 12, 2), usd=4.0))
    await store.record_usage(spend("hall", at(2026, 12, 19), usd=4.0))
    # 8 of 10 this month: near (warn_at 0.8); 0 of 5 today.
    standing = await budgets.standing("kitchen")
    assert (standing.state, standing.limit) == ("near", "budgets.household.month_usd")
    await store.record_usage(spend("hall", at(2026, 12, 20, 8), usd=2.5))
    for device in ("kitchen", "hall", "never-talked"):
        standing = await budgets.standing(device)
        assert standing.state == "over", device
        assert standing.limit == "budgets.household.month_usd"
        assert standing.resets_at == at(2027, 1, 1)


async def test_over_two_limits_comes_back_when_the_later_resets(store: Store, paris: None) -> None:
    now = at(2026, 12, 31, 22)
    settings = BudgetSettings(
        household=BudgetLimits(month_usd=1.0), devices={"kids": BudgetLimits(day_usd=0.5)}
    )
    budgets = Budgets(settings, store, clock=lambda: now)
    await store.record_usage(spend("kids", at(2026, 12, 31, 21), usd=2.0))
    standing = await budgets.standing("kids")
    assert standing.state == "over"
    # Both reset at midnight on New Year's Eve; the month's end is the same instant here.
    assert standing.resets_at == at(2027, 1, 1)
    now = at(2026, 12, 15, 22)
    await store.record_usage(spend("kids", at(2026, 12, 15, 21), usd=0.6))
    standing = await budgets.standing("kids")
    # Over the day and the month: sessions come back only when the month has reset too.
    assert (standing.state, standing.limit) == ("over", "budgets.household.month_usd")
    assert standing.resets_at == at(2027, 1, 1)


def test_the_example_config_documents_budgets(tmp_path: Path) -> None:
    """Every [budgets] key is in config/companion.toml, and uncommented it loads as written."""
    from wakertc.companion import load_companion_config

    example = Path(__file__).resolve().parent.parent / "config" / "companion.toml"
    text = example.read_text(encoding="utf-8")
    section = text[text.index("[budgets]") :].split("\n\n")[0]  # up to the next section
    lines = [line.removeprefix("# ") for line in section.splitlines()]
    uncommented = "\n".join(
        line for line in lines if line.startswith("[") or (" = " in line and "(" not in line)
    )
    path = tmp_path / "companion.toml"
    path.write_text(uncommented.replace("day_usd = 0\n", "day_usd = 2.5\n", 1), encoding="utf-8")
    budgets = load_companion_config(path).budgets
    assert budgets.household == BudgetLimits(day_usd=2.5)
    assert budgets.devices["kids-room"] == BudgetLimits(day_minutes=20)
    assert budgets.warn_at == 0.8
    assert budgets.notice == BudgetSettings.notice


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[budgets.devices.kids]\nday_minutes = -1\n", "budgets.devices.kids.day_minutes"),
        ("[budgets.household]\nweek_usd = 1\n", "budgets.household.week_usd"),
        ("[budgets]\nwarn_at = 1.5\n", "budgets.warn_at"),
        ("[budgets]\nnotice = ''\n", "budgets.notice"),
        ("[budgets]\ndevices = 3\n", "budgets.devices"),
    ],
)
def test_a_bad_budget_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    from wakertc.companion import CompanionConfigError, load_companion_config

    path = tmp_path / "companion.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CompanionConfigError, match=rf": {key}: "):
        load_companion_config(path)


# -- the whole chain: the real daemon, companion and emulator ------------------------------------

PRICES = """
[pricing.realtime.gpt-realtime]
input_text = 4.0
input_audio = 32.0
input_cached_text = 0.4
input_cached_audio = 0.4
output_text = 16.0
output_audio = 64.0
"""


async def test_a_device_over_its_budget_is_cut_off_with_the_notice_and_then_refused(
    tmp_path: Path, models_dir: Path
) -> None:
    """The first reply uses up the household's day: within 3 s of the service reporting it, the
    device hears the notice and the call is hung up; the device then shows OVER_BUDGET (its own
    LED pattern and log line, the key in hand dropped), a wake is refused with the same, and the
    ledger holds, to the token, what the emulator reported."""
    from chain import clip, run_chain
    from wakertc.config import DEFAULT_PATTERNS
    from wakertc.state import Phase

    budget = "[budgets.household]\nday_usd = 0.000001\n"
    async with run_chain(
        tmp_path, models_dir, reply="tone", companion_extra=PRICES + budget
    ) as chain:
        assert chain.companion is not None
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        chain.mic.speak(clip("what is the weather like today"))
        await chain.expect(Phase.THINKING, Phase.SPEAKING)
        idle = await chain.wait_phase(Phase.IDLE, timeout=10)
        assert idle.reason == "conversation over (the companion ended the session)"
        wall_minus_monotonic = time.time() - time.monotonic()
        over = await chain.wait_phase(Phase.OVER_BUDGET, timeout=5)
        assert "over budget" in over.change.reason
        await chain.companion.control.drain()
        ledger = await chain.companion.store.usage(None, 0.0)
        responses = [e for e in ledger if e.event_id.startswith("resp")]
        # Cut off within 3 s of the usage report that crossed the limit.
        assert idle.t + wall_minus_monotonic - responses[0].at <= 3.0
        notice = [
            e["event"]
            for e in chain.calls()[0].events
            if e["dir"] == "in" and e.get("via") == "sideband" and "event" in e
        ]
        assert [e["response"]["instructions"] for e in notice if e["type"] == "response.create"]
        assert chain.mic.audible_s(idle.t - 3.0, idle.t) >= 0.5  # the notice was played
        assert chain.calls()[0].close_reason == "hung up by the client"
        assert chain.logs.find("over budget", logging.WARNING)
        await asyncio.sleep(3.2)  # one whole pulse, for the LED reading
        # The next wake: refused by the companion, shown as over budget again, no call opened.
        await chain.press()
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.OVER_BUDGET)
        assert len(chain.calls()) == 1
        reading = chain.leds(over)
        assert reading.effect == "pulse", reading
        assert reading.is_colour(DEFAULT_PATTERNS["over_budget"].color), reading
        reported = [e for e in chain.received(0) if e["type"] == "response.done"]
    assert len(responses) == len(reported) >= 1
    for entry, event in zip(responses, reported, strict=True):
        usage = event["response"]["usage"]
        assert entry.event_id == event["response"]["id"]
        assert entry.input_text_tokens == usage["input_token_details"]["text_tokens"]
        assert entry.input_audio_tokens == usage["input_token_details"]["audio_tokens"]
        assert entry.output_text_tokens == usage["output_token_details"]["text_tokens"]
        assert entry.output_audio_tokens == usage["output_token_details"]["audio_tokens"]
        assert entry.cost_usd > 0
