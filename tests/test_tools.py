"""Tools the model may call: command and HTTP actions, and how failures reach the model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from wakertc.config import ToolConfig
from wakertc.tools import END_CONVERSATION, MAX_RESULT_CHARS, MAX_STDOUT_BYTES, ToolRunner

ECHO_ARGS = [sys.executable, "-c", "import json,sys; a=json.load(sys.stdin); print(a['x'] * 2)"]


def test_definitions_start_with_end_conversation():
    runner = ToolRunner([ToolConfig(name="double", description="d", command=("true",))])
    names = [d["name"] for d in runner.definitions()]
    assert names == [END_CONVERSATION, "double"]
    assert runner.definitions()[1] == {
        "type": "function",
        "name": "double",
        "description": "d",
        "parameters": {"type": "object", "properties": {}},
    }


async def test_command_gets_arguments_on_stdin_and_returns_stdout():
    runner = ToolRunner([ToolConfig(name="double", command=tuple(ECHO_ARGS))])
    assert await runner.run("double", json.dumps({"x": 21})) == "42"


async def test_command_failures_become_messages_for_the_model(tmp_path):
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no light'); sys.exit(3)"]
    slow = [sys.executable, "-c", "import time; time.sleep(5)"]
    runner = ToolRunner(
        [
            ToolConfig(name="fail", command=tuple(failing)),
            ToolConfig(name="slow", command=tuple(slow), timeout_s=0.3),
            ToolConfig(name="missing", command=(str(tmp_path / "nope"),)),
        ]
    )
    assert json.loads(await runner.run("fail", "{}")) == {"error": "exited with status 3: no light"}
    assert json.loads(await runner.run("slow", "{}")) == {"error": "timed out after 0.3 s"}
    assert "could not start" in json.loads(await runner.run("missing", "{}"))["error"]
    assert json.loads(await runner.run("nope", "{}")) == {"error": "unknown tool 'nope'"}
    assert json.loads(await runner.run("fail", "{not json")) == {
        "error": "arguments were not valid JSON"
    }


async def test_http_tool_posts_json_and_returns_the_body(aiohttp_free_server):
    url, seen = aiohttp_free_server
    runner = ToolRunner(
        [
            ToolConfig(name="light", url=f"{url}/light", method="POST"),
            ToolConfig(name="query", url=f"{url}/light", method="GET"),
            ToolConfig(name="broken", url=f"{url}/missing"),
        ]
    )
    assert await runner.run("light", '{"on": true}') == "done"
    assert seen[-1] == ("POST", {"on": True}, {})
    assert await runner.run("query", '{"room": "kitchen"}') == "done"
    assert seen[-1] == ("GET", None, {"room": "kitchen"})
    assert json.loads(await runner.run("broken", "{}"))["error"].startswith("HTTP 404")


async def test_http_get_keeps_the_configured_query_and_json_encodes_values(aiohttp_free_server):
    url, seen = aiohttp_free_server
    runner = ToolRunner(
        [ToolConfig(name="q", url=f"{url}/light?entity=lamp&token=abc", method="GET")]
    )
    args = {"entity": "door", "token": "x", "on": True, "level": 3, "ratio": 0.5, "room": "hall"}
    assert await runner.run("q", json.dumps(args)) == "done"
    # The configured entity and token stay; the model's other arguments are added, JSON-encoded.
    assert seen[-1] == (
        "GET",
        None,
        {
            "entity": "lamp",
            "token": "abc",
            "on": "true",
            "level": "3",
            "ratio": "0.5",
            "room": "hall",
        },
    )


async def test_http_tool_gets_its_own_timeout_not_httpx_default(aiohttp_free_server):
    url, _ = aiohttp_free_server
    runner = ToolRunner([ToolConfig(name="slow", url=f"{url}/slow", timeout_s=8.0)])
    # httpx's default is 5 s: a tool allowed 8 s must get an answer that takes 5.5 s.
    assert await runner.run("slow", "{}") == "late"


async def test_http_body_without_end_is_read_up_to_a_bound_not_into_memory(serve):
    """A tool's server streams a body without end: the tool returns at once with the start of
    it, and the connection is dropped instead of being read until the timeout."""
    sent = [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
        await response.prepare(request)
        chunk = b"z" * 65536
        try:
            while True:
                await response.write(chunk)
                sent[0] += len(chunk)
        except ConnectionError:  # the client hung up
            return response

    app = web.Application()
    app.router.add_route("*", "/endless", endless)
    url = await serve(app)
    runner = ToolRunner([ToolConfig(name="big", url=f"{url}/endless", timeout_s=10.0)])
    started = time.monotonic()
    result = await runner.run("big", "{}")
    assert time.monotonic() - started < 2.0
    assert result == "z" * MAX_RESULT_CHARS
    await asyncio.sleep(0.3)
    written = sent[0]
    await asyncio.sleep(0.5)
    assert sent[0] == written  # the server's writes stopped: nobody reads any more
    # Beyond what was read, only what the loopback socket buffers took (a few MB; reading the
    # body on until the timeout would be gigabytes).
    assert written < MAX_STDOUT_BYTES + 32 * 2**20


async def test_command_leaving_a_background_child_returns_when_it_exits():
    # The background `sleep` inherits stdout; the command itself exits at once.
    runner = ToolRunner(
        [ToolConfig(name="bg", command=("sh", "-c", "sleep 30 & echo $!"), timeout_s=5.0)]
    )
    started = time.monotonic()
    result = await runner.run("bg", "{}")
    elapsed = time.monotonic() - started
    pid = int(result)  # not a timeout: the command's output
    try:
        assert elapsed < 2.0
        assert _alive(pid)  # left running: starting something in the background is allowed
    finally:
        os.kill(pid, signal.SIGKILL)


async def test_command_timeout_kills_its_whole_process_group(tmp_path):
    pid_file = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pid_file}; wait"
    runner = ToolRunner([ToolConfig(name="hang", command=("sh", "-c", script), timeout_s=0.5)])
    started = time.monotonic()
    assert json.loads(await runner.run("hang", "{}")) == {"error": "timed out after 0.5 s"}
    assert time.monotonic() - started < 3.0  # not held until the background child ends
    pid = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 3.0
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _alive(pid), "the command's background child outlived the timeout"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_command_printing_without_end_is_cut_not_read_until_the_timeout():
    runner = ToolRunner([ToolConfig(name="yes", command=("yes",), timeout_s=5.0)])
    started = time.monotonic()
    result = await runner.run("yes", "{}")
    assert time.monotonic() - started < 2.0
    assert result == ("y\n" * MAX_RESULT_CHARS)[:MAX_RESULT_CHARS]


@pytest.mark.parametrize(
    "arguments",
    ['{"x": ' + "1" * 5000 + "}", "[" * 100_000 + "]" * 100_000],
    ids=["5000-digit integer", "nested 100k deep"],
)
async def test_unusable_arguments_still_get_an_output(arguments):
    runner = ToolRunner([ToolConfig(name="double", command=tuple(ECHO_ARGS))])
    assert json.loads(await runner.run("double", arguments)) == {
        "error": "arguments were not valid JSON"
    }


async def test_any_failure_of_a_tool_run_becomes_an_output(caplog):
    # httpx.InvalidURL is not an httpx.HTTPError: it escaped the tool's own error handling.
    runner = ToolRunner([ToolConfig(name="bad", url="http://[::1/x")])
    assert json.loads(await runner.run("bad", "{}")) == {"error": "the tool failed: InvalidURL"}
    assert "tool bad failed unexpectedly" in caplog.text


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
async def aiohttp_free_server(serve):
    seen = []

    async def light(request: web.Request) -> web.Response:
        body = await request.json() if request.method == "POST" else None
        seen.append((request.method, body, dict(request.query)))
        return web.Response(text="done")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5.5)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/light", light)
    app.router.add_route("*", "/slow", slow)
    return await serve(app), seen


@pytest.mark.parametrize("doc", ["README.md", "config/wakertc.toml"])
def test_the_documented_result_bounds_are_the_codes(doc: str) -> None:
    """What the docs promise a tool's author: how much output is read, how much the model gets."""
    lines = (Path(__file__).resolve().parent.parent / doc).read_text().splitlines()
    text = " ".join(line.strip().lstrip("#").strip() for line in lines)  # unwrapped
    assert f"first {MAX_STDOUT_BYTES // 1000} KB of" in text
    assert f"up to {MAX_RESULT_CHARS:,} characters" in text
