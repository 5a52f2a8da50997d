"""`wakertc selftest` as a user runs it: a real process with a device config, against the emulator
and a companion running as real processes, in both of the emulator's audio modes and with faults,
through both APIs (`realtime`, and `live`: GPT-Live through the companion's relay).

What the report says is checked against what the emulator recorded (`--record`): every event it
sent, the client events it received (Realtime's session.update, Live's session.close), the
question it heard.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emulator_helpers import (
    KEY,
    companion_config_file,
    envelope_correlation,
    run_command,
    running_emulator,
    self_signed_cert,
)
from process_helpers import Services, start_services
from test_secrets import assert_no_secrets
from wakertc.companion import Companion, DeviceStore, load_companion_config
from wakertc.config import load_config
from wakertc.demo import DEMO_API_KEY
from wakertc.emulator.replies import wav_to_48k_mono
from wakertc.session.realtime import session_update
from wakertc.tools import ToolRunner

ROOT = Path(__file__).resolve().parent.parent
QUESTION = ROOT / "daemon" / "wakertc" / "sounds" / "question.wav"
ENV = {"WAKERTC_LOG_TARGET": "stderr"}
APIS = ["realtime", "live"]
# The server events of one voice turn, in the order the protocol gives them.
TURN = {
    "realtime": [
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "response.created",
        "output_audio_buffer.started",
        "response.output_audio_transcript.delta",
        "response.done",
        "output_audio_buffer.stopped",
    ],
    "live": [
        "session.started",
        "session.input_transcript.delta",
        "session.output_transcript.delta",
        "session.closed",
    ],
}
# The timings a call with a reply reports, in ms (the call's from its start, the reply's from the
# end of the question).
TIMINGS = {
    "realtime": (
        "companion_key",
        "offer_answer",
        "ice_connected",
        "channel_open",
        "session_created",
        "session_updated",
        "speech_stopped_after_question",
        "reply_first_audio_after_question",
        "response_done_after_question",
        "reply_stopped_after_question",
    ),
    "live": (
        "live_session",
        "ice_connected",
        "channel_open",
        "session_started",
        "input_transcript_after_question",
        "user_stopped_after_question",
        "output_transcript_after_question",
        "reply_first_audio_after_question",
        "reply_finished_after_question",
    ),
}
# How the reply's transcript arrives, and how each API's call shows in the daemon's log.
TRANSCRIPT_DELTA = {
    "realtime": "response.output_audio_transcript.delta",
    "live": "session.output_transcript.delta",
}
CALL_ID = {"realtime": r"rtc_\w+", "live": r"live_\w+"}


ServicesFactory = Callable[..., Any]


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[ServicesFactory]:
    """Start the emulator (recording into tmp_path/recording) and a companion as processes."""
    started: list[Services] = []

    async def start(*emulator_args: str, companion_extra: str = "") -> Services:
        record = tmp_path / "recording"
        args = ("--record", str(record), *emulator_args)
        running = await start_services(
            tmp_path, emulator_args=args, companion_extra=companion_extra
        )
        started.append(running)
        return running

    yield start
    for running in started:
        await running.emulator.stop()
        await running.companion.stop()


def device_config(tmp_path: Path, running: Services, session: str = "") -> Path:
    """A device config pointing at the services (only what the self-test reads); `session` is
    more TOML for its [session] table."""
    path = tmp_path / "wakertc.toml"
    path.write_text(
        f"""
[companion]
url = "{running.companion.url}"
token_file = "{running.token_file}"

[session]
url = "{running.emulator.url}"
{session}
"""
    )
    path.chmod(0o600)
    return path


async def selftest(config: Path, *args: str) -> tuple[int, str, str]:
    """`wakertc selftest --config CONFIG ARGS...` in its own process: (status, stdout, stderr)."""
    return await run_command("cli", "selftest", "--config", str(config), *args, env=ENV)


def expand(runs: list[dict[str, Any]]) -> list[str]:
    """The report's event runs back into one type per event."""
    return [run["type"] for run in runs for _ in range(run["count"])]


def recorded(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The one call the emulator recorded (`rtc_*` or `live_*`): its directory and event lines."""
    (call,) = sorted(path for path in (tmp_path / "recording").iterdir() if path.is_dir())
    lines = [json.loads(line) for line in (call / "events.jsonl").read_text().splitlines()]
    return call, lines


def assert_subsequence(wanted: list[str], seen: list[str]) -> None:
    position = 0
    for kind in seen:
        if position < len(wanted) and kind == wanted[position]:
            position += 1
    assert position == len(wanted), f"{wanted[position:]} missing from {seen}"


def assert_secret_free(running: Services, *outputs: str) -> None:
    token = running.token_file.read_text().strip()
    places: dict[str, bytes | str] = {f"output {i}": text for i, text in enumerate(outputs)}
    assert_no_secrets(places, {"API key": DEMO_API_KEY, "device token": token})


def assert_reply_report(report: dict[str, Any], tmp_path: Path, config: Path, api: str) -> None:
    """A report of a call with a reply, checked against the emulator's recording of it."""
    assert report["ok"] is True, report
    assert report["api"] == api
    assert report["verdict"].startswith("OK: a reply was heard"), report["verdict"]
    assert report["errors"] == []
    timings = report["timings_ms"]
    for name in TIMINGS[api]:
        assert 0 < timings[name] < 10_000, (name, timings)
    assert timings["ice_connected"] <= timings["channel_open"]

    call, lines = recorded(tmp_path)
    sent = [line["event"]["type"] for line in lines if line["dir"] == "out"]
    events = expand(report["events"])
    assert events == sent, (events, sent)
    assert_subsequence(TURN[api], events)
    runs = report["events"]
    assert all(a["type"] != b["type"] for a, b in itertools.pairwise(runs))
    deltas = [r for r in runs if r["type"] == TRANSCRIPT_DELTA[api]]
    assert deltas and deltas[0]["count"] == sent.count(TRANSCRIPT_DELTA[api])
    at = [r["at_ms"] for r in runs]
    assert at == sorted(at)

    # The question reached the "model".
    heard = wav_to_48k_mono((call / "input.wav").read_bytes())
    question = wav_to_48k_mono(QUESTION.read_bytes())
    assert envelope_correlation(question, heard) > 0.8
    received = [line["event"] for line in lines if line["dir"] == "in"]
    device = load_config(config)
    # Only what the device owns, its tools, on top of the session the companion set up.
    device_tools = ToolRunner(device.tools).definitions()
    if api == "realtime":
        assert timings["session_created"] <= timings["session_updated"]
        assert timings["response_done_after_question"] <= timings["reply_stopped_after_question"]
        assert deltas[0]["count"] > 1
        # The device's own session.update (here a policy without tools of its own).
        assert received[0] == {
            "type": "session.update",
            "session": {"type": "realtime", "tools": device_tools},
        }
        assert received[0] == session_update({"type": "realtime"}, ToolRunner(device.tools))
        assert report["session_url"] == device.session.url
        assert report["response_status"] == "completed"
    else:
        assert timings["channel_open"] <= timings["session_started"]
        assert (
            timings["reply_first_audio_after_question"] < timings["reply_finished_after_question"]
        )
        # The session ended as the daemon ends one: session.close, answered at once.
        assert 0 <= timings["session_closed"] < 1000, timings
        assert [event["type"] for event in received] == ["session.close"]
        started, closed = (
            line["event"]
            for line in lines
            if line["dir"] == "out"
            and line["event"]["type"] in ("session.started", "session.closed")
        )
        assert closed["reason"] == "close_requested"
        # The device's offer went through the companion with the device's tools, of which the
        # default [live] policy offers end_conversation.
        backend = started["session"]["delegation"]["responses"]
        assert backend["tools"] == [t for t in device_tools if t["name"] == "end_conversation"]
        assert report["session_url"] == f"{device.companion.url}/v1/live/session"
        assert report["response_status"] is None

    assert report["ice"]["used"] == {"local": "host", "remote": "host", "protocol": "udp"}
    assert "host" in report["ice"]["local_candidates"]
    assert report["ice"]["remote_candidates"] == ["host"]
    assert 1.0 < report["question_s"] < 3.0
    assert report["reply_audio_s"] > 0.5
    assert report["reply_transcript"]
    # The reply came as RTP: 50 packets a second of it, at least.
    assert report["rtp"]["question_and_reply"]["packets"] >= 50 * report["reply_audio_s"]
    totals = report["rtp_totals"]
    assert totals["received"] >= sum(window["packets"] for window in report["rtp"].values())
    assert totals["sent"] > 50 * 5  # the microphone sends all along: 1.5 s, the question, 2 s


# -- a reply heard ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_selftest_reports_a_whole_call_with_idle_audio(
    tmp_path: Path, services: ServicesFactory, api: str
) -> None:
    """Default emulator (silence between replies), the API the config's `[session] api` names:
    exit 0, the report matches the recording, RTP arrived before the question and after the
    reply; text and JSON forms; no secret in either."""
    running = await services()
    config = device_config(tmp_path, running, f'api = "{api}"')
    status, out, err = await selftest(config, "--json")
    assert status == 0, (out, err)
    report = json.loads(out)
    assert_reply_report(report, tmp_path, config, api)
    before, after = report["rtp"]["before_question"], report["rtp"]["after_reply"]
    # 50 packets a second of silence; at least half of them, whatever the load.
    assert before["seconds"] >= 1.4 and before["packets"] >= 0.5 * 50 * before["seconds"]
    assert after["seconds"] >= 1.9 and after["packets"] >= 0.5 * 50 * after["seconds"]

    status, text, text_err = await selftest(config, "-v")
    assert status == 0, (text, text_err)
    # The logs, checked too: the call's id is the session's under Live.
    assert re.search(rf"call {CALL_ID[api]} connected in \d+ ms", text_err), text_err
    lines = text.splitlines()
    header = "Realtime API" if api == "realtime" else "GPT-Live through"
    assert lines[0].startswith(f"wakertc selftest: companion {running.companion.url}, {header}")
    assert lines[-1].startswith("OK: a reply was heard (")
    assert "errors: none" in lines
    first = (
        "key from the companion" if api == "realtime" else "call: offer/answer via the companion"
    )
    assert any(re.fullmatch(rf"\s+{first}\s+\d+", line) for line in lines), text
    delta = re.escape(TRANSCRIPT_DELTA[api])
    assert any(re.fullmatch(rf"\s+\d+\s+{delta}( x\d+)?", line) for line in lines), text
    if api == "live":
        assert any(
            re.fullmatch(r"\s+end: session\.close -> session\.closed\s+\d+", x) for x in lines
        )
    assert "ICE: pair in use host -> host over udp" in text
    assert re.search(r"RTP packets received: before the question [1-9]\d* in", text), text
    assert re.search(r"after the reply [1-9]\d* in", text), text
    assert_secret_free(running, out, err, text, text_err)


@pytest.mark.parametrize("api", APIS)
async def test_selftest_reports_no_rtp_between_replies_in_no_idle_audio_mode(
    tmp_path: Path, services: ServicesFactory, api: str
) -> None:
    """An emulator that sends RTP only during replies: the reply is still heard (exit 0), and the
    report says that no RTP came before the question or after the reply. `--api` picks the API
    over the config's (which names none: Realtime)."""
    running = await services("--fault", "no-idle-audio")
    config = device_config(tmp_path, running)
    status, out, err = await selftest(config, "--json", "--api", api)
    assert status == 0, (out, err)
    report = json.loads(out)
    assert_reply_report(report, tmp_path, config, api)
    assert report["rtp"]["before_question"]["packets"] == 0
    assert report["rtp"]["after_reply"]["packets"] == 0
    assert_secret_free(running, out, err)


async def test_selftest_ends_the_turn_itself_without_vad(
    tmp_path: Path, services: ServicesFactory
) -> None:
    """A session policy without turn detection: the device ends its turn by committing the
    buffer and asking for a response, as its button does; the reply is heard without any VAD
    event."""
    running = await services(companion_extra='\n[session.turn_detection]\ntype = "none"\n')
    config = device_config(tmp_path, running)
    status, out, err = await selftest(config, "--json")
    assert status == 0, (out, err)
    report = json.loads(out)
    assert report["ok"] is True and report["reply_audio_s"] > 0.5, report
    events = expand(report["events"])
    assert not any(kind.startswith("input_audio_buffer.speech_") for kind in events), events
    assert_subsequence(
        ["session.updated", "input_audio_buffer.committed", "response.created", "response.done"],
        events,
    )
    _, lines = recorded(tmp_path)
    sent = [line["event"]["type"] for line in lines if line["dir"] == "in"]
    assert sent == ["session.update", "input_audio_buffer.commit", "response.create"], sent


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "fault", "where", "status", "code", "verdict"),
    [
        (
            "realtime",
            "calls-401",
            "call",
            401,
            "invalid_api_key",
            r"The Realtime API refused the call \(401: Incorrect API key",
        ),
        (
            "realtime",
            "mint-500",
            "companion",
            502,
            "upstream_error",
            r"No key from the companion at .*502",
        ),
        (
            "live",
            "calls-500",
            "companion",
            502,
            "upstream_error",
            r"No GPT-Live session from the companion at http://\S+: companion answered 502: "
            r"Upstream error \(status 500\)",
        ),
        *[
            (api, "drop-after=0.5", "connection", None, None, r"The call was lost before a reply: ")
            for api in APIS
        ],
        (
            "live",
            "max-session=1",
            "session",
            None,
            None,
            r"The service closed the session before a reply \(expired\)\.$",
        ),
    ],
)
async def test_selftest_reports_a_failure_and_exits_non_zero(
    tmp_path: Path,
    services: ServicesFactory,
    api: str,
    fault: str,
    where: str,
    status: int | None,
    code: str | None,
    verdict: str,
) -> None:
    """A refused call, a companion failing upstream (its key, or the Live session it relays), a
    call that drops, a Live session the service closes early: exit 1, the verdict sentence says
    which step failed, and the error carries the HTTP status and the error envelope."""
    running = await services("--fault", fault)
    config = device_config(tmp_path, running, f'api = "{api}"')
    status_json, out, err = await selftest(config, "--json")
    assert status_json == 1, (out, err)
    report = json.loads(out)
    assert report["ok"] is False and report["api"] == api
    assert re.match(verdict, report["verdict"]), report["verdict"]
    failure = report["errors"][0]
    assert failure["where"] == where, report["errors"]
    assert failure["status"] == status
    if code is not None:
        assert failure["error"]["code"] == code
        assert failure["error"]["message"]
    status_text, text, text_err = await selftest(config)
    assert status_text == 1, (text, text_err)
    assert re.match(verdict, text.splitlines()[-1]), text
    assert_secret_free(running, out, err, text, text_err)


async def test_selftest_says_when_the_minted_session_cannot_serve_the_device(
    tmp_path: Path, services: ServicesFactory
) -> None:
    """A device set up for transcription whose companion mints keys for realtime sessions: the
    self-test says they disagree (as the daemon would) before opening any call, and exits 1."""
    running = await services()
    config = device_config(tmp_path, running, 'mode = "transcription"')
    status, out, err = await selftest(config, "--json")
    assert status == 1, (out, err)
    report = json.loads(out)
    assert report["events"] == []
    (failure,) = report["errors"]
    assert failure["where"] == "companion" and failure["status"] is None
    assert "mints realtime sessions but session.mode is 'transcription'" in failure["message"]
    assert report["verdict"].startswith("The key cannot serve this device: ")
    assert "companion_key" in report["timings_ms"] and "channel_open" not in report["timings_ms"]
    assert_secret_free(running, out, err)


async def test_selftest_reports_an_error_event_from_the_session(
    tmp_path: Path, services: ServicesFactory
) -> None:
    """The service ends the session with an `error` event (here its maximum length, shortened
    by the emulator's fault to 1 s, before the question is asked): the report shows the event in
    full, and no reply was heard."""
    running = await services("--fault", "max-session=1")
    config = device_config(tmp_path, running)
    status, out, err = await selftest(config, "--json")
    assert status == 1, (out, err)
    report = json.loads(out)
    types = [run["type"] for run in report["events"]]
    assert types[:2] == ["session.created", "session.updated"] and types[-1] == "error", types
    (failure,) = [f for f in report["errors"] if f["where"] == "session"]
    assert failure["status"] is None
    assert failure["error"]["type"] == "invalid_request_error"
    assert failure["error"]["code"] == "session_expired"
    assert failure["error"]["message"]
    assert report["ok"] is False and "reply_first_audio_after_question" not in report["timings_ms"]
    assert_secret_free(running, out, err)


@pytest.mark.parametrize(
    ("api", "verdict"),
    [
        ("realtime", "No session.updated within 2 s of the session.update."),
        ("live", "No session.started within 2 s of the data channel opening."),
    ],
)
async def test_selftest_names_the_event_a_silent_service_never_sent(
    tmp_path: Path, services: ServicesFactory, api: str, verdict: str
) -> None:
    """A service that connects and never says a word: the call is up (the data channel opened),
    and the verdict names the event the device waited for in vain, after the config's
    `connect_timeout_s`."""
    running = await services("--fault", "silent")
    config = device_config(tmp_path, running, f'api = "{api}"\nconnect_timeout_s = 2')
    status, out, err = await selftest(config, "--json")
    assert status == 1, (out, err)
    report = json.loads(out)
    assert report["verdict"] == verdict
    assert report["events"] == [] and report["errors"] == []
    assert "channel_open" in report["timings_ms"]
    assert "reply_first_audio_after_question" not in report["timings_ms"]
    assert_secret_free(running, out, err)


async def test_selftest_api_live_refuses_a_transcription_device(tmp_path: Path) -> None:
    """`--api live` on a device set up for transcription, which GPT-Live does not offer: exit 2
    before any request, naming the file, the option and the setting."""
    token_file = tmp_path / "device-token"
    token_file.write_text("device-token-for-tests\n")
    token_file.chmod(0o600)
    config = tmp_path / "wakertc.toml"
    config.write_text(
        f'[companion]\nurl = "http://127.0.0.1:9"\ntoken_file = "{token_file}"\n'
        '[session]\nmode = "transcription"\n'
    )
    config.chmod(0o600)
    status, out, err = await selftest(config, "--api", "live")
    assert status == 2, (out, err)
    assert out == ""
    assert f"{config}: --api live: session.mode is 'transcription'" in err, err


async def test_selftest_trusts_a_tls_companion_only_through_ca_file(tmp_path: Path) -> None:
    """A companion serving HTTPS with a self-signed certificate: without `companion.ca_file` the
    self-test refuses it (certificate verify failed, exit 1); with it, a reply is heard."""
    cert, key = self_signed_cert(tmp_path)
    tls = f'[server]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    async with running_emulator() as emulator:
        companion_config = load_companion_config(companion_config_file(tmp_path, emulator.url, tls))
        token = DeviceStore(companion_config.devices_file).add("kitchen")
        token_file = tmp_path / "device-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        async with Companion(companion_config) as companion:
            assert companion.url.startswith("https://")
            outputs = []
            for ca_file, expected in ((None, 1), (cert, 0)):
                config = tmp_path / "wakertc.toml"
                trust = f'ca_file = "{ca_file}"\n' if ca_file else ""
                config.write_text(
                    f'[companion]\nurl = "{companion.url}"\ntoken_file = "{token_file}"\n{trust}'
                    f'[session]\nurl = "{emulator.url}"\n'
                )
                status, out, err = await selftest(config, "--json")
                assert status == expected, (out, err)
                report = json.loads(out)
                if ca_file is None:
                    assert "certificate verify failed" in report["verdict"], report["verdict"]
                    assert report["errors"][0]["where"] == "companion"
                else:
                    assert report["ok"] is True, report
                outputs += [out, err]
    places: dict[str, bytes | str] = {f"output {i}": text for i, text in enumerate(outputs)}
    assert_no_secrets(places, {"API key": KEY, "device token": token})


async def test_selftest_without_a_config_says_which_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    status, out, err = await selftest(missing)
    assert status == 2
    assert str(missing) in err and "file not found" in err
    assert out == ""


def test_make_sounds_writes_the_bundled_question(tmp_path: Path) -> None:
    """The script makes the question that ships (byte-identical with the same espeak-ng; the
    envelope is compared so that another espeak-ng version still passes)."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sounds.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    made = wav_to_48k_mono((tmp_path / "question.wav").read_bytes())
    shipped = wav_to_48k_mono(QUESTION.read_bytes())
    assert abs(len(made) - len(shipped)) < 0.05 * len(shipped)
    assert envelope_correlation(shipped, made) > 0.95


def test_the_bundled_question_is_small_16k_mono_speech() -> None:
    from wakertc.selftest import load_question

    samples = load_question()
    assert QUESTION.stat().st_size < 64_000
    assert 1.0 < len(samples) / 16000 < 3.0
    assert np.abs(samples).max() > 10_000
