"""Ephemeral keys from the companion: statuses, timeouts, renewal ahead of expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from emulator_helpers import companion_config_file, running_emulator
from wakertc.companion import Companion, DeviceStore, UpstreamSettings, load_companion_config
from wakertc.companion.config import DEVICE_TIMEOUT_MARGIN_S, DEVICE_TIMEOUT_S
from wakertc.config import COMPANION_TIMEOUT_S, CompanionConfig
from wakertc.keys import (
    MAX_RETRY_AFTER_S,
    CompanionBusy,
    CompanionClient,
    CompanionError,
    CompanionRejected,
    KeyKeeper,
)

HOURS_3 = 3 * 3600.0


@dataclass
class FakeCompanion:
    """A real HTTP server on loopback whose answers the test scripts (by default, keys as our
    companion sends them: `expires_in` by its clock beside upstream's `expires_at`)."""

    answers: list[Callable[[], web.StreamResponse]] = field(default_factory=list)
    lifetime_s: float = 600.0
    requests: list[str] = field(default_factory=list)
    asked_at: list[float] = field(default_factory=list)  # time.monotonic() of each request
    counter: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.headers.get("Authorization", ""))
        self.asked_at.append(time.monotonic())
        if self.answers:
            return self.answers.pop(0)()
        self.counter += 1
        return web.json_response(
            {
                "value": f"ek_test_{self.counter}",
                "expires_at": time.time() + self.lifetime_s,
                "expires_in": self.lifetime_s,
                "session": {"type": "realtime", "model": "gpt-realtime"},
            }
        )


@pytest.fixture
async def companion(serve) -> tuple[FakeCompanion, str]:
    fake = FakeCompanion()
    app = web.Application()
    app.router.add_post("/v1/session", fake.handle)
    return fake, await serve(app)


def client_for(url: str, timeout_s: float = 2.0) -> CompanionClient:
    return CompanionClient(CompanionConfig(url=url, timeout_s=timeout_s), "tok-123")


def error(status: int, **headers: str) -> Callable[[], web.StreamResponse]:
    body = {"error": {"message": f"status {status}", "type": "x", "param": None, "code": None}}
    return lambda: web.json_response(body, status=status, headers=headers)


async def test_mint_sends_the_token_and_parses_the_key(companion):
    fake, url = companion
    client = client_for(url)
    key = await client.mint()
    assert key.value == "ek_test_1"
    assert key.session["model"] == "gpt-realtime"
    assert 590 < key.seconds_left() <= 600
    assert fake.requests == ["Bearer tok-123"]
    assert "ek_test_1" not in repr(key)  # keys are never shown
    await client.aclose()


@pytest.mark.parametrize(
    ("answer", "kind", "text"),
    [
        (error(401), CompanionRejected, "refused this device's token (401)"),
        (error(429, **{"Retry-After": "7"}), CompanionBusy, "retry in 7 s"),
        (error(502), CompanionError, "companion answered 502: status 502"),
        (lambda: web.Response(text="<html>", status=200), CompanionError, "unexpected body"),
    ],
)
async def test_each_failure_is_named(companion, answer, kind, text):
    fake, url = companion
    fake.answers.append(answer)
    client = client_for(url)
    with pytest.raises(kind, match=text.replace("(", r"\(").replace(")", r"\)")) as caught:
        await client.mint()
    assert caught.value.retryable is (kind is not CompanionRejected)
    if kind is CompanionBusy:
        assert caught.value.retry_after_s == 7
    await client.aclose()


async def test_unreachable_and_slow_companions():
    client = client_for("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(CompanionError, match="companion unreachable"):
        await client.mint()
    await client.aclose()

    writers = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accepts, never answers

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(CompanionError, match=r"did not answer within 0\.3 s"):
        await client.mint()
    assert time.monotonic() - started < 2
    await client.aclose()
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_keeper_reuses_a_valid_key_and_mints_when_none(companion):
    fake, url = companion
    client = client_for(url)
    keeper = KeyKeeper(client)
    first = await keeper.get()
    assert (await keeper.get()) is first
    assert len(fake.requests) == 1
    keeper.discard(first)
    assert (await keeper.get()).value == "ek_test_2"
    await client.aclose()


async def test_keeper_never_hands_out_a_nearly_expired_key(companion):
    fake, url = companion
    fake.lifetime_s = 10  # below the minimum validity
    client = client_for(url)
    keeper = KeyKeeper(client)
    await keeper.get()
    await keeper.get()
    assert len(fake.requests) == 2
    await client.aclose()


async def test_keeper_renews_before_expiry_and_backs_off_on_failure(companion):
    fake, url = companion
    # A 3 s key renewed with 1.5 s left (the margin, which is also half its life).
    fake.answers = [
        lambda: web.json_response(
            {"value": "ek_first", "expires_at": time.time() + 3.0, "expires_in": 3.0, "session": {}}
        )
    ]
    client = client_for(url)
    keeper = KeyKeeper(client, retry_initial_s=0.2, renew_margin_s=1.5, min_validity_s=0.5)
    task = asyncio.create_task(keeper.run())
    try:
        async with asyncio.timeout(5):
            while keeper.ready_key() is None:
                await asyncio.sleep(0.02)
            assert keeper.ready_key().value == "ek_first"
            fake.answers = [error(500), error(500)]  # the renewal fails twice, then succeeds
            while keeper.ready_key().value == "ek_first":
                await asyncio.sleep(0.05)
        assert len(fake.requests) == 4
        assert keeper.ready_key().value == "ek_test_1"
        assert keeper.last_error is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


async def test_keeper_reports_health_changes_once_each_way(companion):
    """`on_health`: the error when minting starts failing, None when it works again; repeated
    failures (the backoff's retries) and repeated successes are not reported again."""
    fake, url = companion
    fake.answers = [error(500), error(503), error(500)]
    reports: list[CompanionError | None] = []
    client = client_for(url)
    keeper = KeyKeeper(client, retry_initial_s=0.05, on_health=reports.append)
    task = asyncio.create_task(keeper.run())
    try:
        async with asyncio.timeout(5):
            while keeper.ready_key() is None:
                await asyncio.sleep(0.02)
        assert len(fake.requests) == 4
        assert len(reports) == 2
        assert isinstance(reports[0], CompanionError) and "500" in str(reports[0])
        assert reports[1] is None
        keeper.discard(keeper.ready_key())  # a fresh mint that works: nothing new to report
        async with asyncio.timeout(5):
            while keeper.ready_key() is None:
                await asyncio.sleep(0.02)
        assert len(fake.requests) == 5
        assert len(reports) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


async def test_short_lived_keys_are_renewed_at_half_life_not_in_a_loop(companion):
    """Keys living 4 s (min validity 1 s, margin 60 s): renewed when 2 s are left, not every
    second; keys that cannot be kept ready at all are not prefetched again and again."""
    fake, url = companion
    fake.lifetime_s = 4.0
    client = client_for(url)
    keeper = KeyKeeper(client, min_validity_s=1.0)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(5.0)  # the keeper's own schedule is what is measured
        assert len(fake.requests) == 3, fake.requests  # at 0, ~2 and ~4 s
        assert keeper.ready_key() is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    fake.lifetime_s = 1.5  # half its life is below the minimum validity: never kept ready
    fake.requests.clear()
    keeper = KeyKeeper(client, min_validity_s=1.0)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(3.0)
        assert len(fake.requests) == 1, fake.requests
        key = await keeper.get()  # a wake mints its own
        assert key.seconds_left() > 1.0 and len(fake.requests) == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


# -- clocks: a device's wall clock is not to be trusted at boot -----------------------------------


@contextlib.asynccontextmanager
async def companion_at(
    tmp_path: Path, offset_s: float, extra: str = ""
) -> AsyncIterator[tuple[str, str]]:
    """Our real companion and the emulator behind it, both on a clock `offset_s` away from this
    machine's (the device's); yields the companion's URL and a device token."""
    server_time = lambda: time.time() + offset_s  # noqa: E731
    async with running_emulator(clock=server_time) as emulator:
        config = load_companion_config(companion_config_file(tmp_path, emulator.url, extra))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config, wall_clock=server_time) as companion:
            yield companion.url, token


@pytest.mark.parametrize("offset_s", [HOURS_3, -HOURS_3], ids=["device 3 h behind", "3 h ahead"])
async def test_a_key_lives_its_lifetime_whatever_the_devices_wall_clock_says(
    tmp_path: Path, offset_s: float
) -> None:
    """The device's clock (a Pi without RTC, before NTP) is 3 h off the companion's and OpenAI's:
    it neither keeps the key for 3 h more nor throws away a fresh one."""
    async with companion_at(tmp_path, offset_s, "[session]\nkey_lifetime_s = 600\n") as (
        url,
        token,
    ):
        client = CompanionClient(CompanionConfig(url=url), token)
        try:
            keeper = KeyKeeper(client)
            key = await keeper.get()
            assert 590 < key.seconds_left() <= 600
            assert keeper.ready_key() is key  # usable, not discarded as long expired
        finally:
            await client.aclose()


async def test_a_wall_clock_step_after_minting_changes_nothing(tmp_path: Path) -> None:
    """NTP steps the device's wall clock by a day mid-life: the key's life is counted on the
    monotonic clock, so only the passing of (monotonic) time ages it."""
    monotonic, wall = [1000.0], [time.time()]
    async with companion_at(tmp_path, 0.0, "[session]\nkey_lifetime_s = 600\n") as (url, token):
        client = CompanionClient(
            CompanionConfig(url=url), token, clock=lambda: monotonic[0], wall_clock=lambda: wall[0]
        )
        try:
            keeper = KeyKeeper(client, min_validity_s=15.0)
            key = await keeper.get()
            left = key.seconds_left()
            assert 590 < left <= 600
            for step in (-86_400.0, 2 * 86_400.0):
                wall[0] += step
                assert key.seconds_left() == left
                assert keeper.ready_key() is key
            monotonic[0] += left - 20.0
            assert key.seconds_left() == pytest.approx(20.0)
            assert keeper.ready_key() is key
            monotonic[0] += 10.0  # 10 s left: below the minimum validity, not handed out
            assert keeper.ready_key() is None
        finally:
            await client.aclose()


async def test_a_companion_without_expires_in_is_read_by_its_date_header(companion) -> None:
    """Another companion sends only `expires_at`: its `Date` header, not the device's clock,
    says how long the key has."""
    fake, url = companion
    fake.answers = [
        lambda: web.json_response(
            {"value": "ek_dated", "expires_at": time.time() + 300, "session": {}}
        )
    ]
    client = CompanionClient(
        CompanionConfig(url=url), "tok-123", wall_clock=lambda: time.time() - HOURS_3
    )
    try:
        key = await client.mint()
        assert 298 <= key.seconds_left() <= 300  # the Date header counts whole seconds
    finally:
        await client.aclose()


# -- how long to wait: Retry-After and the two timeouts ---------------------------------------


async def test_retry_after_on_a_503_sets_the_keepers_next_attempt(companion) -> None:
    fake, url = companion
    fake.answers = [error(503, **{"Retry-After": "1"})]
    client = client_for(url)
    keeper = KeyKeeper(client, retry_initial_s=0.05)
    asked = fake.asked_at
    task = asyncio.create_task(keeper.run())
    try:
        async with asyncio.timeout(5):
            while keeper.ready_key() is None:
                await asyncio.sleep(0.02)
        assert len(asked) == 2
        assert asked[1] - asked[0] >= 0.75  # 1 s with the keeper's jitter, not its own 0.05 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


async def test_keeper_survives_an_unexpected_error_and_keeps_trying(caplog):
    """An error no handler foresaw (httpx.InvalidURL from a URL that bypassed the config's
    checks) is a failed attempt like any other: the keeper's task goes on retrying, reports the
    companion unhealthy, a conversation's `get` gets a CompanionError, and the traceback is
    logged once, not at every retry."""
    client = CompanionClient(CompanionConfig(url="http://[::1", timeout_s=1.0), "tok-123")
    reports: list[CompanionError | None] = []
    keeper = KeyKeeper(client, retry_initial_s=0.05, retry_max_s=0.1, on_health=reports.append)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.sleep(1.0)
        assert not task.done(), task
        assert len(reports) == 1 and "unexpected error: InvalidURL" in str(reports[0])
        with pytest.raises(CompanionError, match="unexpected error: InvalidURL"):
            await keeper.get()
        tracebacks = [r for r in caplog.records if r.exc_info and r.name == "wakertc.keys"]
        assert len(tracebacks) == 1
        retries = caplog.text.count("could not renew the session key")
        assert retries >= 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (503, {"Retry-After": "100000"}, MAX_RETRY_AFTER_S),  # bounded
        (503, {"Retry-After": "0"}, 1.0),
        (503, {}, None),
        (503, {"Retry-After": "soon"}, None),
        (502, {"Retry-After": "7"}, 7.0),
        (429, {}, 5.0),
        # An HTTP date, read against the companion's Date header (3 h off the device's clock).
        (
            429,
            {
                "Date": "Sun, 06 Dec 2026 09:00:00 GMT",
                "Retry-After": "Sun, 06 Dec 2026 09:00:30 GMT",
            },
            30.0,
        ),
    ],
)
async def test_retry_after_is_read_and_bounded(
    companion, status: int, headers: dict[str, str], expected: float | None
) -> None:
    fake, url = companion
    fake.answers = [error(status, **headers)]
    client = client_for(url)
    try:
        with pytest.raises(CompanionError) as caught:
            await client.mint()
        assert caught.value.retry_after_s == expected
    finally:
        await client.aclose()


def test_devices_wait_longer_for_the_companion_than_it_waits_for_openai() -> None:
    device_timeout = CompanionConfig().timeout_s
    # One definition: the companion's check follows the device's default wherever it moves.
    assert DEVICE_TIMEOUT_S is COMPANION_TIMEOUT_S
    assert device_timeout == DEVICE_TIMEOUT_S
    assert device_timeout >= UpstreamSettings().timeout_s + DEVICE_TIMEOUT_MARGIN_S


async def test_a_slow_mint_reaches_a_device_with_default_timeouts(tmp_path: Path) -> None:
    """OpenAI takes 6 s: within the companion's 10 s, so the device (default timeout) must wait
    for the key rather than give up first."""
    async with running_emulator(faults=("mint-slow=6",)) as emulator:
        config = load_companion_config(companion_config_file(tmp_path, emulator.url))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config) as companion:
            client = CompanionClient(CompanionConfig(url=companion.url), token)
            try:
                key = await client.mint()
                assert key.value.startswith("ek_")
            finally:
                await client.aclose()
