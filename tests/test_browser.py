"""A real browser runs OpenAI's WebRTC sample code against the emulator and hears a reply.

Headless Chromium (Debian's `chromium`; `scripts/bootstrap.sh --test` installs it) loads a page
served from the companion's `browser_origin`. The page is the seed's `init()` (and its GA form,
which posts the offer to `/v1/realtime/calls`): it gets a key from the companion's
`GET /session` (cross-origin, so CORS must allow the page), opens a call to the emulator directly
(a CORS preflight, then the SDP POST), and plays the remote track. Its microphone is a WAV file
of a spoken question; the emulator's `echo` reply says it back. The page records the data
channel's events and the remote track's energy and posts them to `/result` on its own origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from emulator_helpers import RATE, companion_config_file, espeak, running_emulator
from wakertc.companion import Companion, load_companion_config

CHROMIUM = shutil.which("chromium")
PAGE = Path(__file__).resolve().parent / "browser_page.html"
RESULT_TIMEOUT_S = 45.0

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/bootstrap.sh --test installs it)"
)


def question_wav(tmp_path: Path) -> Path:
    """A spoken question between silences (the call is up before it starts), 48 kHz mono."""
    speech = espeak("What is the weather like in Paris today?", tmp_path)
    silence = np.zeros(RATE * 2, dtype=np.int16)
    samples = np.concatenate((silence, speech, silence, silence))
    path = tmp_path / "question.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


@contextlib.asynccontextmanager
async def chromium(url: str, microphone: Path, profile: Path) -> AsyncIterator[None]:
    """Headless Chromium on `url` with `microphone` as its fake capture device."""
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}",
        "--autoplay-policy=no-user-gesture-required",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["seed", "ga"])
async def test_openai_webrtc_sample_in_chromium_hears_a_reply(tmp_path: Path, form: str) -> None:
    microphone = question_wav(tmp_path)
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    urls: dict[str, str] = {"__FORM__": form}

    def render() -> str:
        html = PAGE.read_text()
        for placeholder, value in urls.items():
            html = html.replace(placeholder, value)
        return html

    async with running_emulator(reply="echo") as emu:
        # The page's origin is known once its server listens; the companion allows that origin.
        async with page_server(render, results) as origin:
            extra = f'[server]\nbrowser_session = true\nbrowser_origin = "{origin}"\n'
            config = load_companion_config(companion_config_file(tmp_path, emu.url, extra))
            async with Companion(config) as companion:
                urls.update({"__COMPANION__": companion.url, "__EMULATOR__": emu.url})
                async with chromium(origin + "/", microphone, tmp_path / "profile"):
                    report = await asyncio.wait_for(results.get(), RESULT_TIMEOUT_S)
        calls = list(emu.calls.values())
    assert report["errors"] == [], report
    assert report["status"] == 201
    if form == "ga":
        assert report["location"].startswith("/v1/realtime/calls/rtc_")  # exposed to the page
    events = report["events"]
    assert events[0] == "session.created"
    for expected in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.committed",
        "response.created",
        "output_audio_buffer.started",
        "response.done",
        "output_audio_buffer.stopped",
    ):
        assert expected in events, events
    # The emulator heard the question (about 2.5 s of speech) and said it back.
    assert report["transcript"].startswith("echo of "), report["transcript"]
    assert int(report["transcript"].split()[2]) > 1500, report["transcript"]
    (call,) = calls
    assert call.received_samples > RATE  # over a second of the fake microphone reached it
    samples = {s["label"]: s for s in report["energy"] if s["label"] != "tick"}
    ticks = [s for s in report["energy"] if s["label"] == "tick"]
    heard = samples["stopped"]["energy"] - samples["started"]["energy"]
    before = samples["started"]["energy"] - (ticks[0]["energy"] if ticks else 0.0)
    assert samples["stopped"]["packets"] > samples["started"]["packets"]
    assert heard > 0.01, report["energy"]  # the reply was audible at the page
    assert heard > 10 * before, (heard, before)  # and it, not the silence before, was loud


@contextlib.asynccontextmanager
async def page_server(
    render: Callable[[], str], results: asyncio.Queue[dict[str, Any]]
) -> AsyncIterator[str]:
    """Serve `render()` at / and take the page's report at POST /result; yields the origin."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=render(), content_type="text/html")

    async def result(request: web.Request) -> web.Response:
        results.put_nowait(json.loads(await request.text()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/result", result)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
