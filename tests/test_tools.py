"""Tools the model may call: command and HTTP actions, and how failures reach the model."""

from __future__ import annotations

import json
import sys

import pytest
from aiohttp import web

from wakertc.config import ToolConfig
from wakertc.tools import END_CONVERSATION, ToolRunner

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


@pytest.fixture
async def aiohttp_free_server(serve):
    seen = []

    async def light(request: web.Request) -> web.Response:
        body = await request.json() if request.method == "POST" else None
        seen.append((request.method, body, dict(request.query)))
        return web.Response(text="done")

    app = web.Application()
    app.router.add_route("*", "/light", light)
    return await serve(app), seen
