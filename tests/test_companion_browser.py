"""The browser route with a real browser: OpenAI's browser flow (a page fetching a key from
`GET /session`) works from `browser_origin`, and a page from any other origin gets nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from emulator_helpers import companion_config_file, running_emulator
from wakertc.companion import Companion, load_companion_config

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

# The key-fetching step of OpenAI's WebRTC browser sample, pointed at the companion; the page then
# tells its own server what it got.
PAGE = """<!doctype html><title>sample</title><script>
const report = (result) => fetch("/result", {method: "POST", body: JSON.stringify(result)});
fetch("COMPANION/session")
  .then((response) => response.json())
  .then((data) => report({key: data.client_secret.value, value: data.value}))
  .catch((error) => report({error: String(error)}));
</script>"""


async def page_in_chromium(page_url: str, results: asyncio.Queue[dict[str, Any]], tmp: Path) -> Any:
    """Open `page_url` in headless chromium; returns what the page reported."""
    assert CHROMIUM is not None
    browser = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp}",
        page_url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its renderer and helper processes go with it
    )
    try:
        async with asyncio.timeout(30):
            return await results.get()
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        await browser.wait()


async def test_the_browser_sample_gets_a_key_only_from_browser_origin(
    tmp_path: Path, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wakertc.companion")
    results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    companion_url = ""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("COMPANION", companion_url), content_type="text/html")

    async def result(request: web.Request) -> web.Response:
        results.put_nowait(json.loads(await request.text()))
        return web.Response(text="thanks")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/result", result)
    page_server = await serve(app)  # http://127.0.0.1:PORT
    port = page_server.rsplit(":", 1)[1]

    extra = f'[server]\nbrowser_session = true\nbrowser_origin = "{page_server}"\n'
    async with running_emulator() as emulator:
        config = load_companion_config(companion_config_file(tmp_path, emulator.url, extra))
        async with Companion(config) as companion:
            companion_url = companion.url
            allowed = await page_in_chromium(page_server + "/", results, tmp_path / "profile-1")
            assert allowed["key"].startswith("ek_") and allowed["value"] == allowed["key"]
            # The same page from another origin (another host name is another origin).
            other = await page_in_chromium(
                f"http://localhost:{port}/", results, tmp_path / "profile-2"
            )
    assert set(other) == {"error"}  # the browser did not let the page read an answer
    assert f"browser session refused: Origin 'http://localhost:{port}'" in caplog.text
