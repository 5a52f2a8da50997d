"""`wakertc companion` as a process: device management, ready fast, clean stop, one-line errors."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from emulator_helpers import (
    KEY,
    companion_config_file,
    cpu_seconds,
    reap,
    run_command,
    running_emulator,
    spawn_server,
    stop_server,
)


def _device_rows(store: Path) -> list[tuple[str]]:
    with contextlib.closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT name FROM devices").fetchall()


async def test_add_list_remove_device(tmp_path: Path) -> None:
    config = companion_config_file(tmp_path, "http://127.0.0.1:9")
    code, out, err = await run_command(
        "companion", "add-device", "kitchen", "--config", str(config)
    )
    assert code == 0
    token = out.strip()
    assert out.count("\n") == 1 and token.startswith("wkd_")  # stdout is the token and only that
    assert "shown only this once" in err and token not in err
    store = tmp_path / "companion.db"  # beside devices.file, which is not written any more
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert not (tmp_path / "devices.json").exists()
    assert token.encode() not in store.read_bytes()
    assert _device_rows(store) == [("kitchen",)]

    code, out, _ = await run_command("companion", "list-devices", "--config", str(config))
    assert (code, out) == (0, "kitchen\n")
    code, _, err = await run_command("companion", "add-device", "kitchen", "--config", str(config))
    assert code == 2 and len(err.splitlines()) == 1 and "already exists" in err
    code, _, _ = await run_command("companion", "remove-device", "kitchen", "--config", str(config))
    assert code == 0
    assert _device_rows(store) == []
    code, _, err = await run_command(
        "companion", "remove-device", "kitchen", "--config", str(config)
    )
    assert code == 2 and err.count("\n") == 1 and "no device 'kitchen'" in err


async def test_serves_fast_mints_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with running_emulator() as emu:
        config = companion_config_file(tmp_path, emu.url)
        _, out, _ = await run_command("companion", "add-device", "hall", "--config", str(config))
        token = out.strip()
        proc, url, took, lines = await spawn_server("companion", "--config", str(config))
        try:
            # its own start-up work, and no waiting on anything beyond what a busy host adds
            assert cpu_seconds(proc) < 1.5, f"{cpu_seconds(proc):.2f} CPU seconds to get ready"
            assert took < 5.0, f"ready after {took:.2f} s"
            async with httpx.AsyncClient() as http:
                response = await http.post(
                    url + "/v1/session", headers={"Authorization": f"Bearer {token}"}
                )
            assert response.status_code == 200
            minted = response.json()["value"]
            code, stopped_in, rest = await stop_server(proc, signal.SIGTERM)
            assert code == 0 and stopped_in < 3.0
            stderr = "".join(lines) + rest
            assert (
                sum("listening on http://127.0.0.1:" in line for line in stderr.splitlines()) == 1
            )
            assert "mint for device hall: ok" in stderr
            for secret in (token, KEY, minted):
                assert secret not in stderr
        finally:
            await reap(proc)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[server]\nport = -1\n", "server.port: expected an integer 0..65535"),
        ('[session]\nvoice = "robot"\n', "session.voice: expected one of"),
        ("[server\n", "not valid TOML"),
    ],
)
async def test_bad_config_gets_one_line(tmp_path: Path, toml: str, needle: str) -> None:
    config = tmp_path / "companion.toml"
    config.write_text(toml)
    code, out, err = await run_command("companion", "--config", str(config))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert str(config) in err and needle in err


async def test_missing_api_key_and_bad_flags(tmp_path: Path) -> None:
    config = tmp_path / "companion.toml"
    config.write_text('[upstream]\napi_key_env = "WAKERTC_TEST_NO_SUCH_KEY"\n')
    code, _, err = await run_command("companion", "--config", str(config))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "upstream.api_key_env: environment variable WAKERTC_TEST_NO_SUCH_KEY is not set" in err
    code, _, err = await run_command("companion", "--bogus")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--bogus" in err
    code, _, err = await run_command("companion", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml: file not found" in err
