"""The user hook: a command run on every phase change, with a JSON description on stdin.

Runs are strictly one at a time and in order, so a hook sees `idle -> wake -> connecting ...` as it
happened, never interleaved. A slow hook only delays later hook runs: they wait in a bounded queue
(oldest dropped first, with a warning), and the event loop never waits for the hook. Each run is
killed, with everything it started, after `hook.timeout_s`.

The payload is exactly `Transition.as_json()` (or what the daemon passes to `send`): no config, no
environment, no secrets. Only the program's path is ever logged, since its arguments might hold
something private.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

from .config import HookConfig
from .state import Transition

log = logging.getLogger(__name__)

MAX_PENDING = 32
"""Changes queued behind a running hook before the oldest are dropped."""

CLOSE_GRACE_S = 1.0
"""How long `aclose` lets queued runs (the STOPPING change among them) finish before killing."""

STDERR_LOG_CHARS = 500


class PhaseHook:
    """Phase listener that runs `hook.command` once per change, in order, off the event loop."""

    def __init__(self, config: HookConfig, loop: asyncio.AbstractEventLoop) -> None:
        self._command = config.command
        self._timeout_s = config.timeout_s
        self._loop = loop
        self._pending: collections.deque[bytes] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.runs = 0
        """Hook processes started so far."""
        self.dropped = 0
        """Changes dropped because the hook fell too far behind."""

    @property
    def _name(self) -> str:
        return self._command[0] if self._command else "(none)"

    def __call__(self, change: Transition) -> None:
        """Phase listener: queue a run with `change` as JSON on stdin."""
        self.send(change.as_json())

    def send(self, payload: Mapping[str, Any]) -> None:
        """Queue a run with `payload` as JSON on stdin (call on the loop thread)."""
        if not self._command or self._closed:
            return
        try:
            # default=str: an odd value in `details` must not cost the hook its event.
            data = json.dumps(payload, default=str).encode() + b"\n"
        except ValueError as exc:
            log.warning("hook %s: payload not serialisable, skipped: %s", self._name, exc)
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
            log.warning(
                "hook %s is falling behind (%d queued): dropped the oldest change",
                self._name,
                MAX_PENDING,
            )
        self._pending.append(data)
        if self._worker is None:
            self._worker = self._loop.create_task(self._drain(), name="phase-hook")

    async def flush(self) -> None:
        """Wait until every queued run has finished (bound it with `asyncio.timeout`)."""
        while (worker := self._worker) is not None:
            # wait() rather than awaiting the task: cancelling flush must not cancel the runs.
            await asyncio.wait({worker})

    async def aclose(self) -> None:
        """Let queued runs finish for a moment (so the hook sees STOPPING), then kill the rest."""
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await self.flush()
            return
        except TimeoutError:
            pass
        worker = self._worker
        if worker is None:
            return
        log.warning(
            "hook %s still busy at shutdown: killed, %d change(s) not delivered",
            self._name,
            len(self._pending) + 1,
        )
        self._pending.clear()
        worker.cancel()
        # wait() rather than awaiting the task, so our own cancellation is never swallowed.
        await asyncio.wait({worker})

    async def _drain(self) -> None:
        try:
            while self._pending:
                data = self._pending.popleft()
                try:
                    await self._run(data)
                except Exception:
                    # A bug here must not silence every later change.
                    log.exception("hook %s: unexpected error", self._name)
        finally:
            self._worker = None

    async def _run(self, data: bytes) -> None:
        self.runs += 1
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group, so a timeout kills whatever the hook started too.
                start_new_session=True,
            )
        except OSError as exc:
            log.error("hook %s could not be started: %s", self._name, exc)
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                _, stderr = await process.communicate(data)
        except TimeoutError:
            log.warning("hook %s ran longer than %.1f s: killed", self._name, self._timeout_s)
            return
        finally:
            if process.returncode is None:  # timed out or cancelled
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process.returncode != 0:
            log.warning(
                "hook %s failed (exit status %d): %s",
                self._name,
                process.returncode,
                _tail(stderr) or "(no stderr)",
            )
        elif stderr:
            log.debug("hook %s: %s", self._name, _tail(stderr))


def _tail(stderr: bytes) -> str:
    """The end of a hook's stderr, where the error usually is, as one log-friendly string."""
    text = stderr.decode(errors="replace").strip()
    return text if len(text) <= STDERR_LOG_CHARS else "..." + text[-STDERR_LOG_CHARS:]
