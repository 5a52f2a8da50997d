"""Budgets: how much of what the owner allows a device (and the household) has spent.

The ledger holds what the service reported (money by `[pricing]`, seconds of conversation); this
module only compares it with `[budgets]`. Periods follow the companion's local calendar: a day
runs from local midnight, a month from the 1st, so "two dollars a day" resets when the owner
expects it to, daylight saving included (`time.mktime` with the zone's own rules).

A standing is the worst limit: `over` when any limit is reached (a device then gets no new
session until `resets_at`, and a running one is ended), `near` from `warn_at` of any limit,
else `ok`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .config import BudgetLimits, BudgetSettings

State = Literal["ok", "near", "over"]


class Spent(Protocol):
    """What a ledger query returns (the store's `Spend`)."""

    @property
    def cost_usd(self) -> float: ...

    @property
    def seconds(self) -> float: ...


class Ledger(Protocol):
    """The part of the store budgets read."""

    async def spent(self, device: str | None, since: float) -> Spent:
        """Spending of one device (None: all of them) from `since` (Unix time) on."""
        ...


@dataclass(frozen=True)
class Standing:
    """How a device stands against its budgets."""

    state: State
    limit: str = ""
    """The config key of the limit that decided it, e.g. `budgets.household.day_usd`."""
    used: float = 0.0
    """Spent against that limit (dollars or minutes, as the limit counts)."""
    allowed: float = 0.0
    resets_at: float = 0.0
    """Unix time at which that limit's period ends (when `over`, the last of those reached)."""

    def as_json(self) -> dict[str, Any]:
        """The standing as devices get it (`GET /v1/device`, refusals)."""
        if self.state == "ok" and not self.limit:
            return {"state": "ok"}
        return {
            "state": self.state,
            "limit": self.limit,
            "used": round(self.used, 4),
            "allowed": self.allowed,
            "resets_at": int(self.resets_at),
        }

    def describe(self) -> str:
        """One line for a log or an error message."""
        unit = "minutes" if self.limit.endswith("_minutes") else "USD"
        return f"{self.limit}: {self.used:.2f} of {self.allowed:g} {unit}"


OK = Standing("ok")


def period_bounds(period: Literal["day", "month"], now: float) -> tuple[float, float]:
    """Start and end (Unix time) of the local day or month holding `now`."""
    t = time.localtime(now)
    if period == "day":
        start = (t.tm_year, t.tm_mon, t.tm_mday)
        end = (t.tm_year, t.tm_mon, t.tm_mday + 1)  # mktime carries the overflow
    else:
        start = (t.tm_year, t.tm_mon, 1)
        end = (t.tm_year, t.tm_mon + 1, 1)
    return (
        time.mktime((*start, 0, 0, 0, 0, 0, -1)),
        time.mktime((*end, 0, 0, 0, 0, 0, -1)),
    )


class Budgets:
    """Standing of a device against `[budgets]`, read from the ledger at each question."""

    def __init__(
        self, settings: BudgetSettings, ledger: Ledger, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._ledger = ledger
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """Whether any budget is set (if not, nothing is read)."""
        return self.settings.any

    def covers(self, device: str) -> bool:
        """Whether spending by `device` can reach a limit."""
        limits = self.settings.devices.get(device)
        return self.settings.household.any or (limits is not None and limits.any)

    async def standing(self, device: str) -> Standing:
        """The worst of the device's own limits and the household's, now."""
        if not self.covers(device):
            return OK
        now = self._clock()
        candidates: list[tuple[float, Standing]] = []
        scopes: list[tuple[str, str | None, BudgetLimits]] = [
            ("budgets.household", None, self.settings.household)
        ]
        own = self.settings.devices.get(device)
        if own is not None:
            scopes.append((f"budgets.devices.{device}", device, own))
        for prefix, who, limits in scopes:
            for period in ("day", "month"):
                usd = getattr(limits, f"{period}_usd")
                minutes = getattr(limits, f"{period}_minutes")
                if not usd and not minutes:
                    continue
                start, end = period_bounds(period, now)
                spent = await self._ledger.spent(who, start)
                for key, allowed, used in (
                    (f"{prefix}.{period}_usd", usd, spent.cost_usd),
                    (f"{prefix}.{period}_minutes", minutes, spent.seconds / 60.0),
                ):
                    if allowed:
                        share = used / allowed
                        state: State = (
                            "over"
                            if share >= 1.0
                            else "near"
                            if share >= self.settings.warn_at
                            else "ok"
                        )
                        candidates.append((share, Standing(state, key, used, allowed, end)))
        if not candidates:
            return OK
        over = [standing for _, standing in candidates if standing.state == "over"]
        if over:
            # Sessions come back only when every limit reached has reset.
            last = max(over, key=lambda standing: standing.resets_at)
            return last
        return max(candidates, key=lambda pair: pair[0])[1]
