"""The owner's side of every session: usage into the ledger, budgets enforced, turns remembered.

The sideband watchers (`sideband.py`) report what they see; this module decides what it means:

- usage: each entry is written to the store's ledger before anything else looks at it, retried
  while the store fails (what the service reported is never dropped for a hiccup); a Realtime
  session's minutes are its wall-clock time, counted between its usage reports and at its end
  (the service reports tokens, not seconds);
- budgets: after each entry the device's standing is read; over a limit, its running sessions
  (all devices' for a household limit) say the notice and are hung up, and `refusal()` gives
  the 429 that new sessions get until the period resets;
- memory (`[memory]`, opt-in per device): the turns of a device's conversations as text, given
  back to its next session (Realtime: conversation items at the join; GPT-Live: `input` at
  creation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .budget import Budgets, Standing
from .config import CompanionConfig
from .sideband import Hooks, SessionWatcher, Sidebands
from .store import Store, StoreError, UsageEntry

log = logging.getLogger(__name__)

# A ledger write that fails is tried again this many times (the store may be restarting).
RECORD_ATTEMPTS = 5
RECORD_BACKOFF_S = 0.5
# How long a session reported while over budget gets to be joined, so that it hears the notice.
JOIN_FOR_NOTICE_S = 2.0


class ControlPlane:
    """Usage, budgets and memory for one companion process (see the module docstring)."""

    def __init__(
        self,
        config: CompanionConfig,
        store: Store,
        sidebands: Sidebands,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.budgets = Budgets(config.budgets, store, clock=clock)
        self._sidebands = sidebands
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._metered_until: dict[str, float] = {}  # Realtime session -> time counted up to
        self._warned: set[tuple[str, str, int]] = set()  # (device, limit, period end)

    def hooks(self) -> Hooks:
        """The callbacks each new watcher reports to."""
        return Hooks(on_usage=self._on_usage, on_turn=self._on_turn, on_over=self._on_over)

    # -- sessions ------------------------------------------------------------------------------

    def session_started(self, watcher: SessionWatcher) -> None:
        """A device's session is being joined: count its time from now (Realtime), and end it at
        once if the budget is already used up (a key minted before then still opens calls)."""
        if watcher.api == "realtime":
            self._metered_until[watcher.session_id] = self._clock()
        if self.budgets.covers(watcher.device):
            self._spawn(self._end_if_over(watcher), f"budget-{watcher.session_id}")

    async def _end_if_over(self, watcher: SessionWatcher) -> None:
        standing = await self.standing(watcher.device)
        if standing is not None and standing.state == "over":
            await watcher.wait_joined(JOIN_FOR_NOTICE_S)
            log.warning(
                "device %s opened session %s while over budget (%s): ending it",
                watcher.device,
                watcher.session_id,
                standing.describe(),
            )
            await watcher.end(self.config.budgets.notice)

    def _on_over(self, watcher: SessionWatcher) -> None:
        """The session ended: its last stretch of time goes into the ledger (Realtime)."""
        since = self._metered_until.pop(watcher.session_id, None)
        if since is None:
            return
        now = self._clock()
        entry = UsageEntry(
            device=watcher.device,
            session_id=watcher.session_id,
            event_id="session_over",
            api="realtime",
            at=now,
            seconds=max(0.0, now - since),
        )
        self._spawn(self._record(entry, enforce=False), f"usage-{entry.session_id}-over")

    # -- usage and budgets -------------------------------------------------------------------

    def _on_usage(self, entry: UsageEntry) -> None:
        if entry.api == "realtime" and entry.session_id in self._metered_until:
            since = self._metered_until[entry.session_id]
            self._metered_until[entry.session_id] = max(since, entry.at)
            entry = UsageEntry(**{**entry.__dict__, "seconds": max(0.0, entry.at - since)})
        self._spawn(self._record(entry, enforce=True), f"usage-{entry.event_id}")

    async def _record(self, entry: UsageEntry, *, enforce: bool) -> None:
        delay = RECORD_BACKOFF_S
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                await self.store.record_usage(entry)
                break
            except StoreError as exc:
                if attempt == RECORD_ATTEMPTS:
                    log.error(
                        "usage of device %s (session %s, %s) NOT recorded: %s",
                        entry.device,
                        entry.session_id,
                        entry.event_id,
                        exc,
                    )
                    return
                log.warning("could not record usage (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
        if enforce:
            await self._enforce(entry.device)

    async def _enforce(self, device: str) -> None:
        standing = await self.standing(device)
        if standing is None or standing.state == "ok":
            return
        if standing.state == "near":
            key = (device, standing.limit, int(standing.resets_at))
            if key not in self._warned:
                self._warned.add(key)
                log.warning("device %s is near its budget: %s", device, standing.describe())
            return
        household = standing.limit.startswith("budgets.household.")
        devices = self._sidebands.devices() if household else [device]
        for name in devices:
            for watcher in self._sidebands.sessions(name):
                log.warning(
                    "device %s over budget (%s): ending session %s after the notice",
                    name,
                    standing.describe(),
                    watcher.session_id,
                )
                self._spawn(watcher.end(self.config.budgets.notice), f"end-{watcher.session_id}")

    async def standing(self, device: str) -> Standing | None:
        """The device's standing (None: the store could not be read, which is logged)."""
        try:
            return await self.budgets.standing(device)
        except StoreError as exc:
            log.error("could not read the budget of device %s: %s", device, exc)
            return None

    async def refusal(self, device: str) -> Standing | None:
        """The standing to refuse a new session with (over budget), or None to go ahead. A store
        that cannot be read refuses nothing: the owner's devices keep working, and it is logged."""
        if not self.budgets.covers(device):
            return None
        standing = await self.standing(device)
        return standing if standing is not None and standing.state == "over" else None

    # -- memory --------------------------------------------------------------------------------

    def _on_turn(self, device: str, role: str, text: str) -> None:
        memory = self.config.memory
        if not memory.keeps(device) or not text.strip() or role not in ("user", "assistant"):
            return
        self._spawn(self._remember(device, role, text), f"remember-{device}")

    async def _remember(self, device: str, role: str, text: str) -> None:
        try:
            await self.store.remember(
                device, role, text[: self.config.memory.max_chars], self._clock()
            )
        except StoreError as exc:
            log.warning("could not remember a turn of device %s: %s", device, exc)

    async def recall(self, device: str) -> list[tuple[str, str]]:
        """The device's remembered turns, oldest first, as (role, text); none if not kept."""
        memory = self.config.memory
        if not memory.keeps(device):
            return []
        try:
            turns = await self.store.recall(
                device, memory.turns, memory.max_age_h * 3600, now=self._clock()
            )
        except StoreError as exc:
            log.warning("could not recall the turns of device %s: %s", device, exc)
            return []
        return [(turn.role, turn.text) for turn in turns]

    # -- tasks ---------------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def drain(self, within_s: float = 5.0) -> None:
        """Let pending ledger writes finish (at a stop): what the service reported is kept."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within_s)


def realtime_memory_items(turns: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Remembered turns as Realtime conversation items (`conversation.item.create` bodies)."""
    items = []
    for role, text in turns:
        kind = "input_text" if role == "user" else "output_text"
        items.append({"type": "message", "role": role, "content": [{"type": kind, "text": text}]})
    return items
