"""Secrets never leak: the API key, the device token and every ephemeral key stay out of logs,
terminal output, hook payloads, exception messages, the demo JSON and the files a run writes.

Each run captures every log record at DEBUG from every logger (message, arguments, traceback and
exception chain, extra fields, before any redaction filter could touch it), stdout and stderr at
the file-descriptor level (hook processes included), and then reads every file in its work
directory except the device's token file itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from test_companion_sideband import HA_TOKEN, HomeAssistant
from wakertc.audio import FileBackend
from wakertc.config import config_from_dict
from wakertc.daemon import Daemon, Edges
from wakertc.demo import (
    DEMO_API_KEY,
    make_default_input,
    run_demo,
    start_services,
    write_device_config,
)
from wakertc.emulator import EmulatorOptions, Faults
from wakertc.logs import RedactSecrets
from wakertc.state import Phase, Transition

# What any secret of each kind looks like: the emulator's `ek_` + 32 hex, the companion's `wkd_`
# tokens, OpenAI-style `sk-` keys. A match anywhere is a leak, whether or not we knew the value.
SHAPES = {
    "ephemeral key": re.compile(rb"ek_[0-9a-f]{32}"),
    "device token": re.compile(rb"wkd_[A-Za-z0-9_-]{20,}"),
    "API key": re.compile(rb"sk-[A-Za-z0-9_-]{10,}"),
}


class Everything(logging.Handler):
    """Every record, as all the text it carries."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.debug_from: set[str] = set()  # top-level packages that logged at DEBUG

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.DEBUG:
            self.debug_from.add(record.name.split(".")[0])
        parts = [str(record.msg), repr(record.args)]
        try:
            parts.append(record.getMessage())
        except Exception as exc:  # a broken format string is still text that could leak
            parts.append(repr(exc))
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
            parts.extend(_exception_chain(record.exc_info[1]))
        parts += [str(record.exc_text or ""), str(record.stack_info or "")]
        parts.extend(str(v) for k, v in vars(record).items() if k not in _STANDARD_FIELDS)
        self.texts.append("\n".join(parts))


_STANDARD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _exception_chain(exc: BaseException | None) -> Iterator[str]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield f"{type(exc).__name__}: {exc}"
        yield repr(exc.args)
        exc = exc.__cause__ or exc.__context__


@contextlib.contextmanager
def capture_all_logs() -> Iterator[Everything]:
    """Every logger at DEBUG, our handler first on the root (ahead of any redacting handler)."""
    handler = Everything()
    root = logging.getLogger()
    loggers = [root] + [
        logger for logger in root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    levels = {logger: logger.level for logger in loggers}
    disabled = {logger: logger.disabled for logger in loggers}
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    root.handlers.insert(0, handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger in loggers:
            logger.setLevel(levels[logger])
            logger.disabled = disabled[logger]


def files_written(workdir: Path, *, skip: tuple[Path, ...]) -> dict[str, bytes]:
    """Every file under `workdir` but the secrets' own files, by relative path."""
    return {
        str(path.relative_to(workdir)): path.read_bytes()
        for path in sorted(workdir.rglob("*"))
        if path.is_file() and path not in skip
    }


def assert_no_secrets(
    places: dict[str, bytes | str], secrets: dict[str, str], *, shapes: bool = True
) -> None:
    """No secret value (nor, with `shapes`, anything shaped like one) in any place."""
    leaks = []
    for where, content in places.items():
        data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        for name, secret in secrets.items():
            if secret.encode() in data:
                leaks.append(f"{name} in {where}")
        if shapes:
            for name, shape in SHAPES.items():
                found = shape.search(data)
                if found:
                    leaks.append(
                        f"something shaped like a {name} ({found.group()[:8]!r}) in {where}"
                    )
    assert not leaks, leaks


# -- the demo, as `wakertc demo` runs it --------------------------------------------------------


@pytest.mark.parametrize("faults", [[], ["calls-401"]], ids=["clean", "calls-401"])
async def test_demo_run_writes_no_secret(
    tmp_path: Path, models_dir: Path, capfd: pytest.CaptureFixture[str], faults: list[str]
) -> None:
    """A full demo (wake word, question, reply) and a failing one: the logs, the terminal view,
    the JSON summary (whose `errors` are log lines) and the work directory hold no secret."""
    workdir = tmp_path / "demo"
    workdir.mkdir()
    terminal = io.StringIO()
    with capture_all_logs() as logs:
        result = await run_demo(
            input_wav=None,
            output_wav=workdir / "reply.wav",
            faults=faults,
            models_dir=models_dir,
            workdir=workdir,
            reply="echo",
            timeout_s=40,
            stream=terminal,
        )
    out, err = capfd.readouterr()
    summary = json.dumps(result.as_json())
    if faults:
        assert not result.ok and result.recovered, summary
        assert any("401" in line for line in result.errors), result.errors
    else:
        assert result.ok, summary
    token = (workdir / "device-token").read_text().strip()
    assert token.startswith("wkd_")
    assert {"wakertc", "httpcore", "aiortc"} <= logs.debug_from, logs.debug_from
    assert any("session key ready" in text for text in logs.texts)
    places: dict[str, bytes | str] = {
        "logs": "\n".join(logs.texts),
        "terminal view": terminal.getvalue(),
        "stdout": out,
        "stderr": err,
        "demo JSON": summary,
        **files_written(workdir, skip=(workdir / "device-token",)),
    }
    assert "companion.toml" in places and "wakertc.toml" in places
    assert faults or any(name.startswith("recording/") for name in places)
    assert_no_secrets(places, {"API key": DEMO_API_KEY, "device token": token})


# -- a daemon with a hook, whose keys we see minted ---------------------------------------------


class Changes(list[Transition]):
    """A phase listener keeping every change; `until` awaits one."""

    def __init__(self) -> None:
        super().__init__()
        self._new = asyncio.Event()

    def __call__(self, change: Transition) -> None:
        self.append(change)
        self._new.set()

    async def until(self, check: Any, timeout: float = 15.0, *, after: int = 0) -> Transition:
        """The first change from index `after` on that satisfies `check`."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for change in self[after:]:
                        if check(change):
                            return change
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            seen = [(c.new.value, c.reason) for c in self]
            raise AssertionError(f"not seen within {timeout:g} s: {seen}") from None


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The device's real transport to the companion, keeping each response body."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        await response.aread()
        self.bodies.append(response.content)
        return response

    def keys(self) -> list[str]:
        """Every ephemeral key the companion handed the device."""
        found = []
        for body in self.bodies:
            with contextlib.suppress(ValueError):
                value = json.loads(body).get("value")
                if isinstance(value, str):
                    found.append(value)
        return found


# Appends each payload to a file, and says so on stderr (which the daemon logs at debug level).
HOOK = (
    "import sys; data = sys.stdin.read(); open(sys.argv[1], 'a').write(data); "
    "print('hook saw', len(data), 'bytes', file=sys.stderr)"
)


async def test_daemon_with_hook_and_failures_writes_no_secret(
    tmp_path: Path, models_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The daemon with a hook: a conversation from the wake word, then the Realtime API refuses
    calls (401: the key is discarded and a new one minted), a companion that fails upstream, and
    a dropped call. Every key the companion minted is known, and none is anywhere. The first
    reply calls a companion server tool whose bearer token (from a file) must stay on the
    companion: not in any log (the companion's included), file, or answer to the device."""
    workdir = tmp_path / "chain"
    workdir.mkdir()
    said = make_default_input(workdir / "in.wav")
    home = HomeAssistant()
    await home.start()
    ha_token_file = workdir / "ha-token"
    ha_token_file.write_text(f"Bearer {HA_TOKEN}\n")
    ha_token_file.chmod(0o600)
    script = workdir / "script.json"
    call = {"name": "light_on", "arguments": {"entity_id": "light.kitchen"}}
    script.write_text(json.dumps([{"say": "One moment.", "call": call}]))
    hook_out = workdir / "hook-payloads.jsonl"
    options = EmulatorOptions(
        host="127.0.0.1",
        port=0,
        api_key=DEMO_API_KEY,
        reply="echo",
        record_dir=workdir / "recording",
        script=script,
    )
    server_tool = (
        '[[server_tools]]\nname = "light_on"\n'
        f'url = "{home.url}/api/services/light/turn_on"\n'
        f'header_files = {{ Authorization = "{ha_token_file}" }}\n'
    )
    transport = RecordingTransport()
    changes = Changes()
    with capture_all_logs() as logs:
        async with contextlib.AsyncExitStack() as stack:
            services = await start_services(
                stack,
                workdir,
                options,
                companion_extra="[limits]\nper_device_per_minute = 100\n" + server_tool,
            )
            path = write_device_config(
                workdir,
                said.path,
                workdir / "reply.wav",
                models_dir,
                services.companion.url,
                services.emulator.url,
                services.token_file,
            )
            data = tomllib.loads(path.read_text())
            data["hook"] = {"command": [sys.executable, "-c", HOOK, str(hook_out)]}
            data["session"]["connect_timeout_s"] = 3.0
            data["session"]["idle_timeout_s"] = 1.0
            config = config_from_dict(data, path)
            daemon = Daemon(
                config,
                Edges(
                    audio=FileBackend(said.path, workdir / "reply.wav"),
                    pin_factory=MockFactory(pin_class=MockPWMPin),
                    companion_transport=transport,
                    listeners=[changes],
                ),
            )
            runner = asyncio.create_task(daemon.run(), name="secrets-daemon")
            try:
                await changes.until(lambda c: c.new is Phase.SPEAKING, 25)  # the wake word
                await changes.until(lambda c: c.new is Phase.IDLE and c.old is not Phase.STARTING)
                for faults in (["calls-401"], ["mint-500", "calls-401"], ["drop-after=0.3"]):
                    services.emulator.faults = Faults.parse(faults)
                    mark = len(changes)
                    daemon.on_short_press()
                    await changes.until(lambda c: c.new.awaits_wake, 15, after=mark)
            finally:
                daemon.stop()
                async with asyncio.timeout(10):
                    await runner
                await home.stop()
    out, err = capfd.readouterr()
    assert home.requests == [{"entity_id": "light.kitchen"}]  # the server tool ran
    keys = transport.keys()
    assert len(keys) >= 3 and all(SHAPES["ephemeral key"].fullmatch(k.encode()) for k in keys)
    reasons = [c.reason for c in changes]
    assert sum(c.new is Phase.ERROR for c in changes) >= 2, reasons
    failures = [t for t in logs.texts if "conversation failed" in t]
    assert failures, reasons
    payloads = [json.loads(line) for line in hook_out.read_text().splitlines()]
    assert len(payloads) >= len(changes) - 1
    assert any("hook saw" in text for text in logs.texts)
    token = services.token_file.read_text().strip()
    secrets = {"API key": DEMO_API_KEY, "device token": token, "server tool token": HA_TOKEN}
    secrets.update({f"ephemeral key {i}": key for i, key in enumerate(keys)})
    places: dict[str, bytes | str] = {
        "logs": "\n".join(logs.texts),
        "stdout": out,
        "stderr": err,
        "hook payloads": hook_out.read_text(),
        **files_written(workdir, skip=(services.token_file, ha_token_file)),
    }
    assert_no_secrets(places, secrets)
    # What the companion answered the device (its keys are meant to be there; the tool's
    # secret is not, though the tool is declared in the session).
    answers = {f"companion answer {i}": body for i, body in enumerate(transport.bodies)}
    assert any(b"light_on" in body for body in transport.bodies)
    assert_no_secrets(answers, {"server tool token": HA_TOKEN}, shapes=False)


def test_the_search_finds_a_leak_even_behind_a_redacting_handler() -> None:
    """The harness itself: a key logged as an argument is seen raw although the daemon's
    redacting handler sits on the root logger too, and a key-shaped string is caught unknown."""
    redacted = io.StringIO()
    handler = logging.StreamHandler(redacted)
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.addHandler(handler)
    key = "ek_" + "0123456789abcdef" * 2
    try:
        with capture_all_logs() as logs:
            logging.getLogger("wakertc.test").debug("minted %s", key)
    finally:
        root.removeHandler(handler)
    assert key not in redacted.getvalue()
    with pytest.raises(AssertionError, match="ephemeral key in logs"):
        assert_no_secrets({"logs": "\n".join(logs.texts)}, {"ephemeral key": key})
    with pytest.raises(AssertionError, match="shaped like a device token"):
        assert_no_secrets({"file": b"token=wkd_abcdefghijklmnopqrstuvwxyz"}, {})
