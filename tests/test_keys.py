"""Ephemeral keys from the companion: statuses, timeouts, renewal ahead of expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from wakertc.config import CompanionConfig
from wakertc.keys import (
    CompanionBusy,
    CompanionClient,
    CompanionError,
    CompanionRejected,
    KeyKeeper,
)


@dataclass
class FakeCompanion:
    """A real HTTP server on loopback whose answers the test scripts."""

    answers: list[Callable[[], web.StreamResponse]] = field(default_factory=list)
    lifetime_s: float = 600.0
    requests: list[str] = field(default_factory=list)
    counter: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.headers.get("Authorization", ""))
        if self.answers:
            return self.answers.pop(0)()
        self.counter += 1
        return web.json_response(
            {
                "value": f"ek_test_{self.counter}",
                "expires_at": time.time() + self.lifetime_s,
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
            {"value": "ek_first", "expires_at": time.time() + 3.0, "session": {}}
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
