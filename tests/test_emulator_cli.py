"""`wakertc emulator` as a process: ready fast, clean stop on signals, one-line errors."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from emulator_helpers import (
    RealtimeClient,
    cpu_seconds,
    reap,
    run_command,
    spawn_server,
    stop_server,
)


async def test_ready_fast_serves_and_stops_on_sigterm_mid_call(tmp_path: Path) -> None:
    proc, url, took, lines = await spawn_server(
        "emulator",
        "--port",
        "0",
        "--api-key",
        "sk-cli",
        "--reply",
        "tone",
        "--record",
        str(tmp_path),
    )
    try:
        # its own start-up work, and no waiting on anything beyond what a busy host adds
        assert cpu_seconds(proc) < 1.5, f"{cpu_seconds(proc):.2f} CPU seconds to get ready"
        assert took < 5.0, f"ready after {took:.2f} s"
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/healthz")).status_code == 200
            denied = await http.post(url + "/v1/realtime/client_secrets", json={})
            assert denied.status_code == 401
            minted = await http.post(
                url + "/v1/realtime/client_secrets",
                json={},
                headers={"Authorization": "Bearer sk-cli"},
            )
            assert minted.status_code == 200
        client = RealtimeClient()
        await client.connect(url, minted.json()["value"])
        assert (await client.next_event())["type"] == "session.created"
        client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        await client.wait_for("session.updated")
        client.send({"type": "response.create"})
        transcript = await client.wait_for("response.output_audio_transcript.done")
        assert transcript["transcript"].startswith("tone 440 Hz")  # --reply tone reached the engine

        code, stopped_in, rest = await stop_server(proc, signal.SIGTERM)
        assert code == 0
        assert stopped_in < 3.0, f"stopped after {stopped_in:.2f} s"
        stderr = "".join(lines) + rest
        assert sum("listening on http://" in line for line in stderr.splitlines()) == 1
        assert "Traceback" not in stderr
        assert "sk-cli" not in stderr and minted.json()["value"] not in stderr
        events = tmp_path / (client.call_id or "") / "events.jsonl"
        assert json.loads(events.read_text().splitlines()[0])["event"]["type"] == "session.created"
        await client.close()
    finally:
        await reap(proc)


async def test_sigint_and_api_key_from_environment() -> None:
    proc, url, _, _ = await spawn_server(
        "emulator", "--port", "0", env={"OPENAI_API_KEY": "sk-env"}
    )
    async with httpx.AsyncClient() as http:
        minted = await http.post(
            url + "/v1/realtime/client_secrets", json={}, headers={"Authorization": "Bearer sk-env"}
        )
        assert minted.status_code == 200
    code, stopped_in, _ = await stop_server(proc, signal.SIGINT)
    assert code == 0 and stopped_in < 3.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--reply", "sing"], "invalid choice: 'sing'"),
        (["--fault", "explode"], "unknown fault 'explode'"),
        (["--fault", "drop-after"], "needs a value"),
        (["--script", "/nonexistent/script.json"], "/nonexistent/script.json: cannot read"),
        (["--port", "70000"], "--port must be 0..65535"),
    ],
)
async def test_bad_flags_get_one_clear_line(args: list[str], needle: str) -> None:
    code, out, err = await run_command("emulator", *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err


async def test_help_lists_faults_and_the_dev_key() -> None:
    code, out, _ = await run_command("emulator", "--help")
    assert code == 0
    for name in ("mint-500", "calls-hang", "drop-after=S", "consent-stop", "bad-event"):
        assert name in out
    assert "wakertc-emulator-dev-key" in out
