"""The companion's own connection to each session a device opens: meter, steer and end it.

A device's call is a WebRTC connection between the device and OpenAI; the companion joins it
server to server with the standard key (REALTIME_PROTOCOL.md; GPT_LIVE_PROTOCOL.md 2):

    Realtime   GET /v1/realtime?call_id=rtc_...   the device reports its call id (`POST /v1/calls`)
    GPT-Live   GET /v1/live/sessions/{id}/attach  the companion created the session: at once

`SessionWatcher` is one session's sideband. It joins (and rejoins after a dropped connection,
with backoff, a bounded number of times, until the session is known to be over), and hands what
it sees to its callbacks:

- `on_usage(UsageEntry)`: every Realtime `response.done` usage, every change of a Live
  session's cumulative seconds (as a delta: entries add up to the session's total);
- `on_turn(device, role, text)`: the user's and the assistant's turns as text (memory);
- `on_over(watcher)`: the session has ended (or cannot be joined): the registry forgets it.

Conversation items given at construction (`initial_items`: memory) go into a Realtime session
at the first join.

It also runs the companion's server tools when the model calls them (only calls of a completed
response, as the device does; GPT-Live: the call nested in `response.event`, answered with
`response.item.create` and then `response.create`, as the device answers its own), reverts a
device's `session.update` that changes what the policy fixes (a second one hangs up), and
`end(notice)` ends the session after a spoken notice (budgets). Nothing here can break the
conversation: a watcher that fails logs it and the device talks on without it.

`Sidebands` keeps the running watchers by device (`sessions(device)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from ..session.realtime import COMPANION_END, announce
from ..tools import ToolRunner
from .pricing import Pricing, RealtimeTokens
from .store import UsageEntry

log = logging.getLogger(__name__)

CALL_ID = re.compile(r"rtc_[A-Za-z0-9_-]{1,120}")
JOIN_ATTEMPTS = 6  # then the session is left alone (its usage unmetered: logged as an error)
JOIN_BACKOFF_S = 0.5  # doubled each attempt, jittered, at most JOIN_BACKOFF_MAX_S
JOIN_BACKOFF_MAX_S = 8.0
CONNECT_TIMEOUT_S = 10.0
HEARTBEAT_S = 20.0
MAX_MESSAGE = 16 * 1024 * 1024  # GPT-Live reflects audio: large messages
NOTICE_S = 2.0  # how long end() lets a notice play before hanging up
HANGUP_TIMEOUT_S = 5.0
MAX_SESSIONS_PER_DEVICE = 4  # a device has one conversation at a time; reports beyond are junk
LIVE_QUIET_S = 0.3  # GPT-Live: the notice's audio has ended when none came for this long


class UsageSink(Protocol):
    """Where usage entries go (the store's ledger)."""

    def __call__(self, entry: UsageEntry) -> None: ...


TurnSink = Callable[[str, str, str], None]


def _ignore_usage(entry: UsageEntry) -> None:
    log.debug("usage %s: %s", entry.event_id, entry)


def _ignore_turn(device: str, role: str, text: str) -> None:
    pass


@dataclass(frozen=True)
class Policy:
    """What the companion fixes in a Realtime session, as `session.update` would send it.

    `fixed` holds the policy's values by dotted path (`model`, `instructions`,
    `audio.output.voice`, `audio.input.turn_detection`, `max_output_tokens`); `tools` are the
    companion's own (policy and server tools): a device may add tools, not change or drop these.
    """

    fixed: dict[str, Any] = field(default_factory=dict)
    tools: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, session: dict[str, Any]) -> Policy:
        """The fixed fields of a minted session object."""
        fixed: dict[str, Any] = {}
        for path in (
            "model",
            "instructions",
            "audio.output.voice",
            "audio.input.turn_detection",
            "max_output_tokens",
        ):
            found, value = _lookup(session, path)
            if found:
                fixed[path] = value
        tools = session.get("tools")
        return cls(fixed, tuple(t for t in tools if isinstance(t, dict)) if tools else ())

    def violations(self, session: dict[str, Any]) -> list[str]:
        """The fixed fields `session` (a `session.updated`) differs in."""
        wrong = []
        for path, value in self.fixed.items():
            found, actual = _lookup(session, path)
            if not found or not _agrees(value, actual):
                wrong.append(path)
        tools = session.get("tools")
        actual_tools = {t.get("name"): t for t in tools if isinstance(t, dict)} if tools else {}
        for tool in self.tools:
            if not _agrees(tool, actual_tools.get(tool.get("name"))):
                wrong.append("tools")
                break
        return wrong

    def revert(self, session: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
        """The `session.update` that puts `fields` back (a device's extra tools are kept)."""
        update: dict[str, Any] = {"type": "realtime"}
        for path in fields:
            if path == "tools":
                ours = {t.get("name") for t in self.tools}
                extra = [
                    t
                    for t in session.get("tools") or []
                    if isinstance(t, dict) and t.get("name") not in ours
                ]
                update["tools"] = [dict(t) for t in self.tools] + extra
            else:
                _assign(update, path, self.fixed[path])
        return {"type": "session.update", "session": update}


@dataclass
class Hooks:
    """What a watcher reports to (all optional)."""

    on_usage: UsageSink = _ignore_usage
    on_turn: TurnSink = _ignore_turn
    on_over: Callable[[SessionWatcher], None] | None = None


class SessionWatcher:
    """One session's sideband (see the module docstring): `start()`, then `end()` or wait."""

    def __init__(
        self,
        *,
        device: str,
        api: str,
        session_id: str,
        model: str,
        base_url: str,
        api_key: str,
        http: aiohttp.ClientSession,
        pricing: Pricing,
        hooks: Hooks | None = None,
        policy: Policy | None = None,
        tools: ToolRunner | None = None,
        tool_names: frozenset[str] = frozenset(),
        initial_items: Sequence[dict[str, Any]] = (),
        wall_clock: Callable[[], float] = time.time,
        join_backoff_s: float = JOIN_BACKOFF_S,
    ) -> None:
        """`api` is `realtime` or `live`; `session_id` the call id (`rtc_...`) or the Live
        session id; `model` prices the usage; `tools` runs the calls to `tool_names` (the
        server tools); `initial_items` are conversation items sent once, at the first join
        (Realtime; memory); a failed join is retried after `join_backoff_s`, doubled each
        time."""
        self.device = device
        self.api = api
        self.session_id = session_id
        self.model = model
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = http
        self._pricing = pricing
        self._hooks = hooks or Hooks()
        self._policy = policy
        self._tools = tools
        self._tool_names = tool_names
        self._initial_items = list(initial_items)
        self._wall_clock = wall_clock
        self._join_backoff_s = join_backoff_s
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._joined = asyncio.Event()
        self._over = asyncio.Event()
        self._over_listeners: list[Callable[[SessionWatcher], None]] = []
        self._ending = False
        # Realtime bookkeeping.
        self._active: str | None = None  # the response in progress
        self._reply_wanted = False  # tool outputs went in while a response was active
        self._calls: dict[str, list[dict[str, Any]]] = {}  # by response id, until done
        self._violations = 0
        self._notice: str | None = None  # the response id of end()'s notice
        self._notice_done = asyncio.Event()
        self._seen_responses: set[str] = set()
        # GPT-Live bookkeeping.
        self._live_seconds = 0.0  # cumulative seconds already entered
        self._live_text: dict[str, list[str]] = {"user": [], "assistant": []}
        self._last_audio = 0.0  # monotonic time of the last reflected reply audio
        self._unpriced_logged = False
        self._live_calls: dict[str | None, list[dict[str, Any]]] = {}  # by delegation, until done
        self._live_mixed: set[str | None] = set()  # delegations whose round holds device calls
        self._live_answered: set[str] = set()  # call ids (a rejoin replays the last ~3 s)
        realtime: dict[str, Callable[[dict[str, Any]], None]] = {
            "response.created": self._response_created,
            "response.function_call_arguments.done": self._function_call,
            "response.done": self._response_done,
            "session.updated": self._session_updated,
            "conversation.item.input_audio_transcription.completed": self._user_transcript,
            "response.output_audio_transcript.done": self._assistant_transcript,
            "output_audio_buffer.stopped": self._audio_stopped,
            "output_audio_buffer.cleared": self._audio_stopped,
        }
        live: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.usage.updated": self._live_usage,
            "session.closed": self._live_usage,
            "session.input_transcript.delta": self._live_transcript,
            "session.output_transcript.delta": self._live_transcript,
            "session.output_audio.delta": self._live_audio,
            "response.event": self._live_response_event,
        }
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = (
            realtime if api == "realtime" else live
        )

    # -- lifetime ------------------------------------------------------------------------------

    @property
    def over(self) -> bool:
        """Whether the session has ended (or could not be joined)."""
        return self._over.is_set()

    def start(self) -> None:
        """Join in the background (returns at once: the device's conversation never waits)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"sideband-{self.api}-{self.session_id}"
            )

    async def wait_joined(self, within_s: float) -> bool:
        """Whether the first join succeeded within `within_s` (for tests and callers)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._joined.wait()
        return self._joined.is_set()

    def when_over(self, listener: Callable[[SessionWatcher], None]) -> None:
        """Call `listener(self)` once the session is over (after `hooks.on_over`)."""
        self._over_listeners.append(listener)

    async def wait_over(self) -> None:
        """Until the session has ended."""
        await self._over.wait()

    async def stop(self) -> None:
        """Leave the session (the companion is stopping); the session itself goes on."""
        for task in [*self._tasks, *([self._task] if self._task else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._set_over()

    def send(self, event: dict[str, Any]) -> bool:
        """Send a client event on the sideband; False if it is not connected."""
        ws = self._ws
        if ws is None or ws.closed:
            log.debug("sideband %s: not connected, %s not sent", self.session_id, event["type"])
            return False
        # Tasks start in the order they were made and an uncompressed frame is written before
        # the first await, so events go out in the order sent (an output before its reply).
        self._spawn(self._send_now(ws, event), "send")
        return True

    async def end(self, notice: str | None) -> None:
        """End the session: say `notice` (if any), wait for it (at most `NOTICE_S`), hang up."""
        if self.over or self._ending:
            return
        self._ending = True
        log.info(
            "ending %s session %s of device %s%s",
            self.api,
            self.session_id,
            self.device,
            " after a notice" if notice else "",
        )
        deadline = time.monotonic() + NOTICE_S
        if notice and self._ws is not None:
            if self.api == "realtime":
                await self._say_realtime(notice, deadline)
            else:
                await self._say_live(notice, deadline)
        await self._hang_up()

    # -- joining -------------------------------------------------------------------------------

    def _url(self) -> str:
        if self.api == "realtime":
            return f"{self._base_url}/v1/realtime?call_id={self.session_id}"
        return f"{self._base_url}/v1/live/sessions/{self.session_id}/attach?graceful_close=true"

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self.over:
                try:
                    async with self._http.ws_connect(
                        self._url(),
                        headers={"Authorization": f"Bearer {self._api_key}"},
                        heartbeat=HEARTBEAT_S,
                        max_msg_size=MAX_MESSAGE,
                        timeout=aiohttp.ClientWSTimeout(ws_close=CONNECT_TIMEOUT_S),
                    ) as ws:
                        attempt = 0
                        await self._follow(ws)
                except aiohttp.WSServerHandshakeError as exc:
                    if exc.status in (400, 401, 403, 404, 410):
                        # Gone (or never ours): nothing to retry.
                        level = logging.INFO if exc.status in (404, 410) else logging.ERROR
                        log.log(
                            level,
                            "sideband %s of device %s: refused (%d): session over or unknown",
                            self.session_id,
                            self.device,
                            exc.status,
                        )
                        return
                    problem = f"refused ({exc.status})"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    problem = str(exc) or type(exc).__name__
                else:
                    if self.over or self._ending:
                        return
                    problem = "the connection dropped"
                attempt += 1
                if attempt >= JOIN_ATTEMPTS:
                    log.error(
                        "sideband %s of device %s: gave up after %d attempts (%s); its usage "
                        "from now on is not metered",
                        self.session_id,
                        self.device,
                        attempt,
                        problem,
                    )
                    return
                delay = min(self._join_backoff_s * 2 ** (attempt - 1), JOIN_BACKOFF_MAX_S)
                log.warning(
                    "sideband %s of device %s: %s; retrying in %.1f s",
                    self.session_id,
                    self.device,
                    problem,
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        except Exception:
            log.exception("sideband %s of device %s failed", self.session_id, self.device)
        finally:
            self._ws = None
            self._flush_live_turns()
            self._set_over()

    async def _follow(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        first = not self._joined.is_set()
        self._joined.set()
        log.info(
            "sideband joined %s session %s of device %s", self.api, self.session_id, self.device
        )
        if first and self.api == "realtime":
            for item in self._initial_items:
                await self._send_now(ws, {"type": "conversation.item.create", "item": item})
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._handle(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    log.info("sideband %s: connection error %r", self.session_id, ws.exception())
        finally:
            self._ws = None
        # A Realtime sideband is closed (1000) when its call ends; GPT-Live says session.closed.
        if self.api == "realtime" and ws.close_code == aiohttp.WSCloseCode.OK:
            self._set_over()

    def _set_over(self) -> None:
        if self._over.is_set():
            return
        self._over.set()
        self._notice_done.set()
        log.info("sideband %s of device %s: session over", self.session_id, self.device)
        if self._hooks.on_over is not None:
            self._hooks.on_over(self)
        for listener in self._over_listeners:
            listener(self)

    async def _send_now(self, ws: aiohttp.ClientWebSocketResponse, event: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.send_str(json.dumps(event))

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"sideband-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events --------------------------------------------------------------------------------

    def _handle(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except (ValueError, RecursionError):
            log.warning("sideband %s: ignored a malformed event", self.session_id)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return
        handler = self._handlers.get(event["type"])
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            log.exception("sideband %s: could not handle %.60s", self.session_id, event["type"])

    # Realtime

    def _response_created(self, event: dict[str, Any]) -> None:
        response = _table(event.get("response"))
        response_id = response.get("id")
        if isinstance(response_id, str):
            self._active = response_id
            if self._ending and self._notice is None:
                self._notice = response_id

    def _function_call(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        if isinstance(response_id, str) and event.get("name") in self._tool_names:
            self._calls.setdefault(response_id, []).append(event)

    def _response_done(self, event: dict[str, Any]) -> None:
        response = _table(event.get("response"))
        response_id = response.get("id")
        if not isinstance(response_id, str):
            return
        if self._active == response_id:
            self._active = None
        calls = self._calls.pop(response_id, [])
        if response_id not in self._seen_responses:  # a rejoin does not replay, but be safe
            self._seen_responses.add(response_id)
            self._realtime_usage(response_id, response.get("usage"))
        noted = {call.get("call_id") for call in calls}
        for item in response.get("output") or []:
            if (
                isinstance(item, dict)
                and item.get("type") == "function_call"
                and item.get("name") in self._tool_names
                and item.get("call_id") not in noted
            ):
                calls.append(item)
        if calls and response.get("status") == "completed" and not self._ending:
            self._spawn(self._run_tools(calls), "tools")
        elif calls:
            log.info(
                "sideband %s: dropped %d server tool call(s): response %s",
                self.session_id,
                len(calls),
                str(response.get("status"))[:40],
            )
        if self._reply_wanted and self._active is None:
            self._reply_wanted = False
            self.send({"type": "response.create"})

    def _realtime_usage(self, response_id: str, usage: Any) -> None:
        tokens = RealtimeTokens.of(usage)
        if tokens is None:
            return
        if self.model not in self._pricing.realtime and not self._unpriced_logged:
            self._unpriced_logged = True
            log.warning("no [pricing.realtime] for model %s: its usage is priced at 0", self.model)
        self._hooks.on_usage(
            UsageEntry(
                device=self.device,
                session_id=self.session_id,
                event_id=response_id,
                api="realtime",
                at=self._wall_clock(),
                input_text_tokens=tokens.input_text,
                input_audio_tokens=tokens.input_audio,
                input_cached_tokens=tokens.cached_text + tokens.cached_audio,
                output_text_tokens=tokens.output_text,
                output_audio_tokens=tokens.output_audio,
                cost_usd=self._pricing.realtime_cost(self.model, tokens),
            )
        )

    async def _answer_tools(self, calls: list[dict[str, Any]], event_type: str) -> None:
        """Run the server tools `calls` name, together, and send each output as `event_type`
        (Realtime: conversation.item.create; GPT-Live: response.item.create)."""
        assert self._tools is not None
        outputs = await asyncio.gather(
            *(
                self._tools.run(str(call.get("name")), str(call.get("arguments") or ""))
                for call in calls
            )
        )
        for call, output in zip(calls, outputs, strict=True):
            log.info(
                "server tool %s for device %s: %d characters back",
                str(call.get("name"))[:60],
                self.device,
                len(output),
            )
            self.send(
                {
                    "type": event_type,
                    "item": {
                        "type": "function_call_output",
                        "call_id": call.get("call_id"),
                        "output": output,
                    },
                }
            )

    async def _run_tools(self, calls: list[dict[str, Any]]) -> None:
        await self._answer_tools(calls, "conversation.item.create")
        if self._ending:
            return
        if self._active is None:
            self.send({"type": "response.create"})
        else:
            self._reply_wanted = True

    def _session_updated(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if self._policy is None or not isinstance(session, dict) or self._ending:
            return
        wrong = self._policy.violations(session)
        if not wrong:
            return
        self._violations += 1
        if self._violations == 1:
            log.warning(
                "device %s changed what the policy fixes (%s) in session %s: reverted",
                self.device,
                ", ".join(wrong),
                self.session_id,
            )
            self.send(self._policy.revert(session, wrong))
            return
        log.error(
            "device %s changed what the policy fixes again (%s) in session %s: hanging up",
            self.device,
            ", ".join(wrong),
            self.session_id,
        )
        self._ending = True
        self._spawn(self._hang_up(), "hang-up")

    def _user_transcript(self, event: dict[str, Any]) -> None:
        text = event.get("transcript")
        if isinstance(text, str) and text.strip():
            self._hooks.on_turn(self.device, "user", text)

    def _assistant_transcript(self, event: dict[str, Any]) -> None:
        text = event.get("transcript")
        if isinstance(text, str) and text.strip():
            self._hooks.on_turn(self.device, "assistant", text)

    def _audio_stopped(self, event: dict[str, Any]) -> None:
        if self._notice is not None and event.get("response_id") == self._notice:
            self._notice_done.set()

    # GPT-Live

    def _live_usage(self, event: dict[str, Any]) -> None:
        usage = _table(event.get("usage"))
        seconds = usage.get("seconds")
        if event["type"] == "session.closed":
            self._flush_live_turns()
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            # Cumulative: the entry is what is new since the last one (a replay after a
            # rejoin repeats a figure already entered, and adds nothing).
            delta = float(seconds) - self._live_seconds
            if delta > 0:
                self._live_seconds = float(seconds)
                self._hooks.on_usage(
                    UsageEntry(
                        device=self.device,
                        session_id=self.session_id,
                        event_id=f"{self.session_id}:{seconds:g}",
                        api="live",
                        at=self._wall_clock(),
                        seconds=delta,
                        cost_usd=self._pricing.live_cost(self.model, delta),
                    )
                )
        if event["type"] == "session.closed":
            self._set_over()

    def _live_transcript(self, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, str):
            return
        role = "user" if event["type"] == "session.input_transcript.delta" else "assistant"
        other = "assistant" if role == "user" else "user"
        if self._live_text[other]:  # the other side's turn ended when this one spoke
            self._flush_live_turn(other)
        self._live_text[role].append(delta)

    def _live_audio(self, event: dict[str, Any]) -> None:
        self._last_audio = time.monotonic()

    def _live_response_event(self, event: dict[str, Any]) -> None:
        """A delegated backend response's event: its server tool calls run once it completed
        (a delegation's responses run one after another, as the device reads them)."""
        nested = _table(event.get("event"))
        delegation_id = event.get("delegation_id")
        key = delegation_id if isinstance(delegation_id, str) else None
        kind = nested.get("type")
        if kind == "response.output_item.done":
            item = _table(nested.get("item"))
            if item.get("type") != "function_call":
                return
            if item.get("name") not in self._tool_names:
                self._live_mixed.add(key)
            elif str(item.get("call_id")) not in self._live_answered:
                self._live_calls.setdefault(key, []).append(item)
            return
        if kind not in ("response.completed", "response.failed", "response.incomplete"):
            return
        calls = self._live_calls.pop(key, [])
        mixed = key in self._live_mixed
        self._live_mixed.discard(key)
        if not calls:
            return
        if kind != "response.completed" or self._ending:
            log.info(
                "sideband %s: dropped %d server tool call(s): %s",
                self.session_id,
                len(calls),
                "ending" if self._ending else kind,
            )
            return
        self._live_answered.update(str(call["call_id"]) for call in calls)
        if mixed:
            # The backend was told to call one tool per response; one that called the
            # device's tools too has its reply asked for by the device, which cannot see our
            # outputs: they may come too late for it.
            log.warning(
                "sideband %s: a delegated response called server and device tools together; "
                "the device asks for its reply",
                self.session_id,
            )
        self._spawn(self._run_live_tools(calls, reply=not mixed), "tools")

    async def _run_live_tools(self, calls: list[dict[str, Any]], *, reply: bool) -> None:
        await self._answer_tools(calls, "response.item.create")
        if reply and not self._ending:
            self.send({"type": "response.create"})

    def _flush_live_turns(self) -> None:
        for role in ("user", "assistant"):
            self._flush_live_turn(role)

    def _flush_live_turn(self, role: str) -> None:
        text = "".join(self._live_text[role]).strip()
        self._live_text[role].clear()
        if text:
            self._hooks.on_turn(self.device, role, text)

    # -- ending ------------------------------------------------------------------------------

    async def _say_realtime(self, notice: str, deadline: float) -> None:
        if self._active is not None:
            # A reply is running: cut it, or the notice would wait behind it (or be refused).
            self.send({"type": "response.cancel"})
            self.send({"type": "output_audio_buffer.clear"})
        # The metadata tells the device that the hang-up that follows is no lost connection.
        response = {
            "instructions": announce(notice),
            "tool_choice": "none",
            "metadata": dict(COMPANION_END),
        }
        self.send({"type": "response.create", "response": response})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._notice_done.wait()

    async def _say_live(self, notice: str, deadline: float) -> None:
        sent_at = time.monotonic()
        self.send({"type": "session.commentary.append", "content": notice, "delegation_id": None})
        # GPT-Live says nothing when its speech is done: the reflected reply audio stops.
        while time.monotonic() < deadline and not self.over:
            await asyncio.sleep(0.05)
            spoke = self._last_audio > sent_at
            if spoke and time.monotonic() - self._last_audio > LIVE_QUIET_S:
                return

    async def _hang_up(self) -> None:
        if self.over:
            return
        if self.api == "live":
            if not self.send({"type": "session.close"}):
                log.warning("could not close Live session %s: not connected", self.session_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANGUP_TIMEOUT_S):
                    await self._over.wait()
            return
        url = f"{self._base_url}/v1/realtime/calls/{self.session_id}/hangup"
        try:
            async with self._http.post(
                url,
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=aiohttp.ClientTimeout(total=HANGUP_TIMEOUT_S),
            ) as response:
                if response.status not in (200, 404):
                    log.warning("hang-up of call %s answered %d", self.session_id, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not hang up call %s: %s", self.session_id, exc or type(exc).__name__)


class Sidebands:
    """The running watchers, by device."""

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, SessionWatcher]] = {}

    def sessions(self, device: str) -> list[SessionWatcher]:
        """The device's sessions still running (each has `end(notice)`)."""
        return [w for w in self._by_device.get(device, {}).values() if not w.over]

    def devices(self) -> list[str]:
        """Devices with a running session."""
        return [device for device in self._by_device if self.sessions(device)]

    def find(self, session_id: str) -> SessionWatcher | None:
        """The watcher of a session, if it is running."""
        for watchers in self._by_device.values():
            if session_id in watchers:
                return watchers[session_id]
        return None

    def add(self, watcher: SessionWatcher) -> bool:
        """Track and start `watcher`; False (and not started) if the session is tracked already
        or the device has too many."""
        watchers = self._by_device.setdefault(watcher.device, {})
        if self.find(watcher.session_id) is not None:
            return False
        if len(self.sessions(watcher.device)) >= MAX_SESSIONS_PER_DEVICE:
            log.warning(
                "device %s reported a session while %d are running: not joined",
                watcher.device,
                MAX_SESSIONS_PER_DEVICE,
            )
            return False
        watcher.when_over(self._forget)
        watchers[watcher.session_id] = watcher
        watcher.start()
        return True

    def _forget(self, watcher: SessionWatcher) -> None:
        self._by_device.get(watcher.device, {}).pop(watcher.session_id, None)

    async def close(self) -> None:
        """Leave every session (they go on without the companion)."""
        watchers = [w for ws in self._by_device.values() for w in ws.values()]
        await asyncio.gather(*(w.stop() for w in watchers), return_exceptions=True)
        self._by_device.clear()


def _lookup(session: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = session
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _assign(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value


def _agrees(expected: Any, actual: Any) -> bool:
    """Whether `actual` has what `expected` sets (the service fills in defaults we did not)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            _agrees(value, actual.get(key)) for key, value in expected.items()
        )
    if isinstance(expected, float | int) and isinstance(actual, float | int):
        return float(expected) == float(actual)
    return bool(expected == actual)


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
