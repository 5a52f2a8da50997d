"""The companion's HTTP API against a real emulator as upstream: minting, auth, limits, upstream
failures, the browser route, HTTPS and what gets logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulator_helpers import KEY, companion_config_file, running_emulator, self_signed_cert
from wakertc.companion import Companion, DeviceStore, load_companion_config, open_store
from wakertc.companion.tls import Certificate


@contextlib.asynccontextmanager
async def running_companion(
    tmp_path: Path,
    upstream: str,
    extra: str = "",
    clock: Callable[[], float] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Companion, str]]:
    """A companion with one device, `kitchen`; yields it and the device's token. `options` go
    to `Companion` (e.g. `cert_check_s`)."""
    config = load_companion_config(companion_config_file(tmp_path, upstream, extra))
    token = DeviceStore(config.devices_file).add("kitchen")
    kwargs: dict[str, Any] = {"clock": clock} if clock else {}
    async with Companion(config, **kwargs, **options) as companion:
        yield companion, token


async def session(url: str, token: str | None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10, **kwargs) as http:
        return await http.post(url + "/v1/session", headers=headers, json={})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_device_gets_a_key_with_the_owners_policy(tmp_path: Path) -> None:
    extra = '[session]\nvoice = "coral"\ninstructions = "Owner says hi."\nkey_lifetime_s = 120\n'
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra) as (companion, token),
    ):
        assert companion.url.startswith("http://127.0.0.1:")
        response = await session(companion.url, token)
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = response.json()
        assert set(body) == {
            "value", "expires_at", "expires_in", "session", "client_secret", "server_tools",
        }  # fmt: skip
        assert body["server_tools"] == []  # none configured
        assert 115 < body["expires_in"] <= 120  # by the companion's clock, for the device
        assert body["value"].startswith("ek_")
        assert body["client_secret"] == {"value": body["value"], "expires_at": body["expires_at"]}
        assert abs(body["expires_at"] - (time.time() + 120)) < 3
        assert body["session"]["audio"]["output"]["voice"] == "coral"
        assert body["session"]["instructions"] == "Owner says hi."
        assert body["session"]["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
        async with httpx.AsyncClient() as http:
            assert (await http.get(companion.url + "/healthz")).json() == {"status": "ok"}


async def test_unknown_missing_and_revoked_tokens_get_401(tmp_path: Path) -> None:
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url) as (companion, token),
    ):
        for bad in (None, "wkd_not-a-device", token[:-1]):
            response = await session(companion.url, bad)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            error = response.json()["error"]
            assert (
                error["code"] == "invalid_device_token" and error["type"] == "invalid_request_error"
            )
        # Devices added and removed while the server runs (through a store of its own, as by
        # `add-device` in another process) take effect without a restart.
        store = await open_store(companion.config.store)
        try:
            hall = await store.add_device("hall")
            assert (await session(companion.url, hall)).status_code == 200
            await store.remove_device("kitchen")
            assert (await session(companion.url, token)).status_code == 401
        finally:
            await store.close()


async def test_rate_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    now = [1000.0]
    extra = "[limits]\nper_device_per_minute = 2\nglobal_per_minute = 3\n"
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra, clock=lambda: now[0]) as (companion, token),
    ):
        assert [(await session(companion.url, token)).status_code for _ in range(2)] == [200, 200]
        limited = await session(companion.url, token)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "30"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        other = await companion.store.add_device("hall")
        assert (await session(companion.url, other)).status_code == 200  # its own budget
        third = await companion.store.add_device("attic")
        global_limited = await session(companion.url, third)  # but the global 3/min is spent
        assert global_limited.status_code == 429
        assert int(global_limited.headers["Retry-After"]) >= 1
        now[0] += 30
        assert (await session(companion.url, token)).status_code == 200


@pytest.mark.parametrize(
    ("fault", "status", "needle"),
    [
        ("mint-500", 502, "status 500"),
        ("mint-429", 502, "status 429"),
        ("mint-slow=2", 504, "did not answer within 0.3 s"),
    ],
)
async def test_upstream_failures_map_to_502_and_504(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fault: str, status: int, needle: str
) -> None:
    caplog.set_level(logging.INFO, logger="wakertc.companion")
    extra = "[upstream]\ntimeout_s = 0.3\n"
    async with (
        running_emulator(faults=(fault,)) as emu,
        running_companion(tmp_path, emu.url, extra) as (companion, token),
    ):
        began = time.monotonic()
        response = await session(companion.url, token)
        assert response.status_code == status
        error = response.json()["error"]
        assert needle in error["message"]
        assert error["type"] == "upstream_error"
        if status == 504:
            assert time.monotonic() - began < 1.5
        mint_lines = [r.getMessage() for r in caplog.records if "mint for device" in r.getMessage()]
        assert len(mint_lines) == 1
        assert mint_lines[0].startswith("mint for device kitchen: upstream")


async def test_upstream_unreachable_or_refusing_our_key(tmp_path: Path) -> None:
    async with running_companion(tmp_path, f"http://127.0.0.1:{free_port()}") as (companion, token):
        response = await session(companion.url, token)
        assert response.status_code == 502
        assert "unreachable" in response.json()["error"]["message"]
    second = tmp_path / "second"
    second.mkdir()
    async with (
        running_emulator(api_key="sk-a-different-key") as emu,
        running_companion(second, emu.url) as (companion, token),
    ):
        response = await session(companion.url, token)
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert "status 401" in message and "invalid_api_key" in message


async def test_browser_route_is_off_unless_enabled(tmp_path: Path) -> None:
    async with running_emulator() as emu:
        async with (
            running_companion(tmp_path, emu.url) as (companion, _),
            httpx.AsyncClient() as http,
        ):
            assert (await http.get(companion.url + "/session")).status_code == 404
        extra = '[server]\nbrowser_session = true\nbrowser_origin = "https://page.example"\n'
        enabled = tmp_path / "enabled"
        enabled.mkdir()
        async with (
            running_companion(enabled, emu.url, extra) as (companion, _),
            httpx.AsyncClient() as http,
        ):
            response = await http.get(
                companion.url + "/session", headers={"Origin": "https://page.example"}
            )
            assert response.status_code == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://page.example"
            assert response.headers["Vary"] == "Origin"
            assert response.json()["client_secret"]["value"].startswith("ek_")


ORIGIN = "https://page.example"


@pytest.mark.parametrize("offset_s", [-3 * 3600.0, -1e9], ids=["3 h behind", "1970"])
async def test_expires_in_is_right_when_the_companions_own_clock_is_behind(
    tmp_path: Path, offset_s: float
) -> None:
    """A companion on a Pi booted without a real-time clock: its wall clock is behind OpenAI's.
    The key was created after it asked, so it has at most its lifetime less the wait (1 s)."""
    extra = "[session]\nkey_lifetime_s = 600\n"
    async with running_emulator(faults=("mint-slow=1",)) as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url, extra))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config, wall_clock=lambda: time.time() + offset_s) as companion:
            body = (await session(companion.url, token)).json()
    assert 595 < body["expires_in"] <= 599.0


async def test_browser_route_answers_only_our_page_under_our_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No token guards GET /session: a browser's true Origin keeps other pages out, and the Host
    check keeps out a page that rebinds its own name to this machine (DNS rebinding)."""
    caplog.set_level(logging.INFO)
    extra = f'[server]\nbrowser_session = true\nbrowser_origin = "{ORIGIN}"\n'
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra) as (companion, _),
        httpx.AsyncClient(timeout=10) as http,
    ):
        port = companion.url.rsplit(":", 1)[1]

        async def get(headers: dict[str, str]) -> httpx.Response:
            return await http.get(companion.url + "/session", headers=headers)

        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST"):
            response = await get({"Origin": ORIGIN, "Host": host})
            assert response.status_code == 200, host
            assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        refusals = {
            # The rebinding page: its own name in Host, its own origin.
            ("http://attacker.example:" + port, f"attacker.example:{port}"): "host_not_allowed",
            (ORIGIN, f"attacker.example:{port}"): "host_not_allowed",
            (ORIGIN, f"127.0.0.2:{port}"): "host_not_allowed",  # not the address it came to
            (ORIGIN, ""): "host_not_allowed",
            ("https://evil.example", f"127.0.0.1:{port}"): "origin_not_allowed",
            ("null", f"127.0.0.1:{port}"): "origin_not_allowed",
            ("", f"127.0.0.1:{port}"): "origin_not_allowed",  # no Origin: not a browser page
        }
        for (origin, host), code in refusals.items():
            headers = {"Host": host}
            if origin:
                headers["Origin"] = origin
            response = await get(headers)
            assert response.status_code == 403, (origin, host)
            assert response.json()["error"]["code"] == code
            assert "Access-Control-Allow-Origin" not in response.headers

        # CORS preflight, by the same rules.
        preflight = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "content-type",
        }
        response = await http.options(companion.url + "/session", headers=preflight)
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert response.headers["Access-Control-Allow-Methods"] == "GET"
        assert response.headers["Access-Control-Allow-Headers"] == "content-type"
        evil = {**preflight, "Origin": "https://evil.example"}
        response = await http.options(companion.url + "/session", headers=evil)
        assert response.status_code == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    assert "browser session refused: Host 'attacker.example:" in caplog.text
    assert "browser session refused: Origin 'https://evil.example' is not" in caplog.text


async def test_browser_route_allowed_hosts_replace_the_default_names(tmp_path: Path) -> None:
    extra = (
        f'[server]\nbrowser_session = true\nbrowser_origin = "{ORIGIN}"\n'
        'allowed_hosts = ["companion.home"]\n'
    )
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra) as (companion, _),
        httpx.AsyncClient(timeout=10) as http,
    ):
        port = companion.url.rsplit(":", 1)[1]
        statuses = {
            host: (
                await http.get(companion.url + "/session", headers={"Origin": ORIGIN, "Host": host})
            ).status_code
            for host in (f"companion.home:{port}", f"localhost:{port}", f"127.0.0.1:{port}")
        }
    # The address a request arrived on is always this machine's.
    assert statuses == {
        f"companion.home:{port}": 200,
        f"localhost:{port}": 403,
        f"127.0.0.1:{port}": 200,
    }


async def test_https_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    extra = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra) as (companion, token),
    ):
        assert companion.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        response = await session(companion.url, token, verify=trusted)
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError):
            await session(companion.url, token)  # not trusted by the system CAs
        plain = companion.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            await session(plain, token)


async def _served_certificate(url: str) -> bytes:
    """The certificate (DER) a new TLS connection to `url` is shown."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we compare what we are shown, not trust it
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()
    return der


def _der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wakertc.companion")
    live = tmp_path / "live"
    live.mkdir()
    cert, key = self_signed_cert(live)
    first = _der(cert)
    extra = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra, cert_check_s=0.1) as (companion, token),
    ):
        assert await _served_certificate(companion.url) == first

        # A broken renewal (not a certificate at all): the old one keeps serving.
        cert.write_text("not a certificate\n")
        await asyncio.sleep(0.5)
        assert await _served_certificate(companion.url) == first
        assert "TLS certificate not reloaded, the old one still serves" in caplog.text

        # certbot's way: new files written elsewhere, then moved into place one after the other.
        renewed = tmp_path / "renewed"
        renewed.mkdir()
        new_cert, new_key = self_signed_cert(renewed)
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        second = _der(cert)
        assert second != first
        async with asyncio.timeout(5):
            while (served := await _served_certificate(companion.url)) == first:
                await asyncio.sleep(0.05)
        assert served == second
        assert "TLS certificate reloaded from" in caplog.text
        # A device that trusts only the new certificate mints through it.
        trusted = ssl.create_default_context(cafile=str(cert))
        assert (await session(companion.url, token, verify=trusted)).status_code == 200


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [("0.0.0.0", False, True), ("127.0.0.1", False, False), ("0.0.0.0", True, False)],
)
async def test_plain_http_beyond_loopback_is_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, tls: bool, warned: bool
) -> None:
    caplog.set_level(logging.INFO, logger="wakertc.companion")
    extra = f'[server]\nhost = "{host}"\n'
    if tls:
        cert, key = self_signed_cert(tmp_path)
        extra += f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    async with running_emulator() as emu, running_companion(tmp_path, emu.url, extra):
        pass
    lines = [r.getMessage() for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert len(lines) == (1 if warned else 0), lines
    if warned:
        assert lines[0].startswith("serving plain HTTP beyond this machine (0.0.0.0)")


@pytest.mark.parametrize(("timeout_s", "warned"), [(10.0, False), (10.5, True)])
async def test_an_upstream_timeout_devices_would_not_wait_for_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, timeout_s: float, warned: bool
) -> None:
    extra = f"[upstream]\ntimeout_s = {timeout_s}\n"
    async with running_emulator() as emu, running_companion(tmp_path, emu.url, extra):
        pass
    lines = [r.getMessage() for r in caplog.records if "upstream.timeout_s is" in r.getMessage()]
    assert len(lines) == (1 if warned else 0), lines


async def test_one_log_line_per_mint_and_no_secrets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    extra = "[limits]\nper_device_per_minute = 1\n"
    async with (
        running_emulator() as emu,
        running_companion(tmp_path, emu.url, extra) as (companion, token),
    ):
        minted = (await session(companion.url, token)).json()["value"]
        await session(companion.url, token)  # rate limited
        await session(companion.url, "wkd_wrong")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("wakertc.companion")]
    mints = [line for line in lines if line.startswith("mint")]
    assert mints[1:] == [
        "mint for device kitchen: rate limited (retry in 60 s)",
        "mint refused: unknown device token (from 127.0.0.1)",
    ]
    # 600 s keys; what is left when the answer goes out (whole seconds of upstream's expiry).
    assert re.fullmatch(r"mint for device kitchen: ok \(valid (59\d|600) s, \d+ ms\)", mints[0])
    everything = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    for secret in (token, KEY, minted, "wkd_wrong"):
        assert secret not in everything


def _shown_by(context: ssl.SSLContext) -> bytes:
    """The certificate (DER) a server `context` shows a client, by a handshake in memory."""
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE  # we compare what we are shown, not trust it
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(client_in, to_server)
    server = context.wrap_bio(to_client, server_out, server_side=True)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        to_client.write(to_server.read())
        client_in.write(server_out.read())
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_the_certificate_loads_from_its_files_with_no_copy_of_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No plaintext copy of the private key is written anywhere to load it: with no usable
    temporary directory, the pair still loads (and reloads) from its own paths."""
    cert, key = self_signed_cert(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))
    certificate = Certificate(cert, key)
    assert _shown_by(certificate.context) == _der(cert)
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    new_cert, new_key = self_signed_cert(renewed)
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    assert certificate.reload_if_changed()
    assert _shown_by(certificate.context) == _der(cert)


def test_a_renewal_landing_during_a_load_is_loaded_whole(tmp_path: Path) -> None:
    """The files change between the reads of one load: the load is done again, and what serves
    is the new pair, not a mix and not the pair that was replaced."""
    cert, key = self_signed_cert(tmp_path)
    renewed = tmp_path / "renewed"
    renewed.mkdir()
    new_cert, new_key = self_signed_cert(renewed)

    class RenewedMidLoad(Certificate):
        reads = 0

        def _read_pair(self) -> tuple[bytes, bytes]:
            RenewedMidLoad.reads += 1
            if RenewedMidLoad.reads == 2:  # after the first load's scratch check
                os.replace(new_cert, cert)
                os.replace(new_key, key)
            return super()._read_pair()

    certificate = RenewedMidLoad(cert, key)
    assert RenewedMidLoad.reads > 2
    assert _shown_by(certificate.context) == _der(cert)
