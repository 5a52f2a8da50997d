"""Timers and alarms: kept on disk, checked against the wall clock, rung on the device.

Every entry is stored as the absolute instant (seconds since the epoch) of its next ring. Alarms
are set in local wall time ("07:00") and turned into that instant with `zoneinfo`, so a DST change
moves nothing: 07:00 is 07:00 on both sides of it. A time that does not exist on a spring-forward
day rings at the same distance after the change (02:30 becomes 03:30); a time that happens twice
on a fall-back day rings at its first occurrence only.

`Timers.run()` does not sleep until the next ring (hours of monotonic sleep would not notice the
wall clock being stepped by NTP): it re-checks the wall clock at least once a second. An entry is
advanced (a repeating alarm) or removed, and the file saved, before it rings, so neither a clock
stepped back nor a restart can make it ring twice; a clock stepped forward over it makes it ring
at once, or, if it is now more than `missed_grace_s` late, logged as missed. A countdown timer
also keeps a monotonic deadline while the process runs, so a clock step does not stretch or
shorten "ten minutes"; its stored instant is what a restart goes by.

The model drives all this through four built-in tools (`TimerTools`); their descriptions carry
the local date, time and zone, refreshed each time a session is configured, so "wake me at seven"
means the right instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from .atomic import write_atomic
from .config import WEEKDAYS, TimersConfig

log = logging.getLogger(__name__)

FILE_NAME = "timers.json"
FORMAT_VERSION = 1
MAX_ENTRIES = 32
MAX_TIMER_S = 7 * 24 * 3600
MAX_LABEL = 60
# The wall clock is looked at least this often (and exactly at the next due instant if sooner).
CHECK_EVERY_S = 1.0
_HHMM = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_DAY_GROUPS = {
    "daily": WEEKDAYS,
    "weekdays": WEEKDAYS[:5],
    "weekends": WEEKDAYS[5:],
}

Kind = Literal["timer", "alarm"]


class Clock(Protocol):
    """Where the time comes from; tests pass one they can step."""

    def wall(self) -> float:
        """Seconds since the epoch (may jump)."""

    def monotonic(self) -> float:
        """Seconds that only move forward."""


class SystemClock:
    """The real clocks."""

    def wall(self) -> float:
        """`time.time()`."""
        return time.time()

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()


@dataclass(frozen=True)
class Entry:
    """One timer or alarm, as stored."""

    id: str
    kind: Kind
    due: float
    """The instant of the next ring, seconds since the epoch."""
    label: str = ""
    seconds: float = 0.0
    """Timers: the length asked for."""
    time: str = ""
    """Alarms: local "HH:MM"."""
    days: tuple[str, ...] = ()
    """Alarms: weekdays it repeats on (`mon`..`sun`); empty = once."""

    def describe(self, zone: dt.tzinfo) -> dict[str, Any]:
        """What the model and Home Assistant see of it."""
        info: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "label": self.label,
            "rings_at": _local(self.due, zone),
        }
        if self.kind == "alarm":
            info["time"] = self.time
            info["repeats"] = list(self.days) or "once"
        return info


class TimerError(ValueError):
    """A request the timers cannot honour; the message says why, for the model."""


def system_zone() -> dt.tzinfo:
    """The system's zone: $TZ, else /etc/localtime's name, else the C library's fixed offset."""
    for name in (os.environ.get("TZ", "").lstrip(":"), _localtime_name()):
        if name:
            with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
                return zoneinfo.ZoneInfo(name)
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def _localtime_name() -> str:
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return ""
    _, marker, name = target.partition("zoneinfo/")
    return name if marker else ""


def zone_for(config: TimersConfig) -> dt.tzinfo:
    """The configured zone, or the system's."""
    return zoneinfo.ZoneInfo(config.timezone) if config.timezone else system_zone()


def next_alarm(hhmm: str, days: Sequence[str], after: float, zone: dt.tzinfo) -> float:
    """The first instant after `after` at which local time reads `hhmm` on one of `days`."""
    hour, minute = (int(part) for part in hhmm.split(":"))
    start = dt.datetime.fromtimestamp(after, zone).date()
    for offset in range(9):
        day = start + dt.timedelta(days=offset)
        if days and WEEKDAYS[day.weekday()] not in days:
            continue
        # fold=0: a repeated wall time is its first occurrence, a skipped one lands after the gap.
        instant = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=zone).timestamp()
        if instant > after:
            return instant
    raise AssertionError("a weekday repeats within a week")  # pragma: no cover


class Timers:
    """The timers and alarms: set, cancel, list, persist, and call `on_due` when they ring."""

    def __init__(
        self,
        config: TimersConfig,
        state_dir: Path,
        *,
        on_due: Callable[[list[Entry]], None],
        on_missed: Callable[[Entry, float], None] | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Clock | None = None,
        zone: dt.tzinfo | None = None,
    ) -> None:
        self._config = config
        self.path = state_dir / FILE_NAME
        self._on_due = on_due
        self._on_missed = on_missed
        self._on_change = on_change
        self.clock: Clock = clock or SystemClock()
        self.zone = zone or zone_for(config)
        self._entries: dict[str, Entry] = {}
        self._deadlines: dict[str, float] = {}  # timers set in this process: monotonic deadlines
        self._next_id = 1
        self._wakeup = asyncio.Event()
        self.saved = True
        """False while the latest change could not be written to disk."""

    # -- the file ----------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file (missing = none); a damaged file is set aside and logged, never fatal."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [_entry(raw) for raw in data["timers"]]
            next_id = int(data.get("next_id", 1))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(f"{FILE_NAME}.bad")
            log.error("timers file %s unusable (%s): moved to %s", self.path, exc, aside.name)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return
        self._entries = {entry.id: entry for entry in entries}
        self._next_id = max(next_id, 1)
        log.info("%d timer(s) and alarm(s) loaded from %s", len(entries), self.path)

    def _save(self) -> None:
        data = {
            "version": FORMAT_VERSION,
            "next_id": self._next_id,
            "timers": [asdict(entry) for entry in self._entries.values()],
        }
        try:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(data, indent=1).encode())
            self.saved = True
        except OSError as exc:
            # Timers keep working in memory; only a restart would lose them.
            self.saved = False
            log.error("could not save the timers to %s: %s", self.path, exc)
        if self._on_change is not None:
            self._on_change()

    # -- requests ------------------------------------------------------------------------------

    def set_timer(self, seconds: float, label: str = "") -> Entry:
        """A countdown of `seconds`."""
        if not math.isfinite(seconds) or not 1 <= seconds <= MAX_TIMER_S:
            raise TimerError(f"seconds must be from 1 to {MAX_TIMER_S}")
        entry = self._add("timer", self.clock.wall() + seconds, label, seconds=float(seconds))
        self._deadlines[entry.id] = self.clock.monotonic() + seconds
        self._changed(entry)
        return entry

    def set_alarm(self, hhmm: str, label: str = "", days: Sequence[str] = ()) -> Entry:
        """An alarm at local `hhmm`, once or on `days` (weekday names, daily/weekdays/weekends)."""
        match = _HHMM.fullmatch(hhmm.strip())
        if match is None:
            raise TimerError('time must be local 24-hour "HH:MM"')
        canonical = f"{int(match[1]):02d}:{match[2]}"
        weekdays = _weekdays(days)
        due = next_alarm(canonical, weekdays, self.clock.wall(), self.zone)
        entry = self._add("alarm", due, label, time=canonical, days=weekdays)
        self._changed(entry)
        return entry

    def snooze(self, entry: Entry, seconds: float) -> Entry:
        """Ring `entry` again in `seconds`, as a one-off."""
        again = self._add("timer", self.clock.wall() + seconds, entry.label, seconds=seconds)
        self._deadlines[again.id] = self.clock.monotonic() + seconds
        self._changed(again)
        return again

    def cancel(self, *, id: str = "", label: str = "") -> list[Entry]:
        """Remove by id, or every entry with `label` (case-insensitive); the removed ones."""
        wanted = label.strip().casefold()
        gone = [
            e
            for e in self._entries.values()
            if (id and e.id == id) or (wanted and e.label.casefold() == wanted)
        ]
        for entry in gone:
            del self._entries[entry.id]
            self._deadlines.pop(entry.id, None)
        if gone:
            self._changed()
        return gone

    def active(self) -> list[Entry]:
        """Every entry, soonest first."""
        return sorted(self._entries.values(), key=lambda e: e.due)

    def _add(self, kind: Kind, due: float, label: str, **fields: Any) -> Entry:
        if len(self._entries) >= MAX_ENTRIES:
            raise TimerError(f"at most {MAX_ENTRIES} timers and alarms; cancel one first")
        entry = Entry(f"{kind[0]}{self._next_id}", kind, due, label.strip()[:MAX_LABEL], **fields)
        self._next_id += 1
        self._entries[entry.id] = entry
        return entry

    def _changed(self, added: Entry | None = None) -> None:
        self._save()
        self._wakeup.set()
        if added is not None:  # logged once on disk: the line means a restart keeps it
            when = _local(added.due, self.zone)
            log.info("%s %s set for %s (%s)", added.kind, added.id, when, added.label)

    # -- ringing -------------------------------------------------------------------------------

    def check(self) -> list[Entry]:
        """Ring what is due now: advance or remove it, save, then call `on_due`; what rang."""
        now, mono = self.clock.wall(), self.clock.monotonic()
        due: list[Entry] = []
        changed = False
        for entry in list(self._entries.values()):
            deadline = self._deadlines.get(entry.id)
            late = mono - deadline if deadline is not None else now - entry.due
            if late < 0:
                continue
            self._deadlines.pop(entry.id, None)
            changed = True
            if entry.kind == "alarm" and entry.days:
                following = next_alarm(entry.time, entry.days, max(entry.due, now), self.zone)
                self._entries[entry.id] = replace(entry, due=following)
            else:
                del self._entries[entry.id]
            if late > self._config.missed_grace_s:
                log.warning(
                    "%s %s (%s) was due at %s, %.0f s ago: missed, not rung",
                    entry.kind,
                    entry.id,
                    entry.label,
                    _local(entry.due, self.zone),
                    late,
                )
                if self._on_missed is not None:
                    self._on_missed(entry, late)
            else:
                due.append(entry)
        if changed:
            self._save()
        if due:
            for entry in due:
                log.info("%s %s (%s) rings", entry.kind, entry.id, entry.label)
            self._on_due(due)
        return due

    async def run(self) -> None:
        """Check at least once a second, and at each due instant, until cancelled."""
        while True:
            try:
                self.check()
            except Exception:
                # A bug in one check must not stop every later ring.
                log.exception("checking the timers failed; checking again in a second")
            self._wakeup.clear()
            pause = min([CHECK_EVERY_S, *self._pauses()])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(pause, 0.0))

    def _pauses(self) -> list[float]:
        now, mono = self.clock.wall(), self.clock.monotonic()
        return [
            self._deadlines[e.id] - mono if e.id in self._deadlines else e.due - now
            for e in self._entries.values()
        ]

    def summary(self) -> list[dict[str, Any]]:
        """Every entry as the model and Home Assistant see it."""
        return [entry.describe(self.zone) for entry in self.active()]

    def now_text(self) -> str:
        """The local date, time and zone, as the model is told."""
        return _local(self.clock.wall(), self.zone, with_zone=True)


def _weekdays(days: Sequence[str]) -> tuple[str, ...]:
    chosen: set[str] = set()
    for day in days:
        if not isinstance(day, str):
            raise TimerError("days must be weekday names")
        name = day.strip().lower()
        if name in _DAY_GROUPS:
            chosen.update(_DAY_GROUPS[name])
        elif name[:3] in WEEKDAYS and len(name) >= 3:
            chosen.add(name[:3])
        else:
            raise TimerError(f"unknown day {day!r}: use mon..sun, daily, weekdays or weekends")
    return tuple(d for d in WEEKDAYS if d in chosen)


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, dict):
        raise TypeError("an entry is not an object")
    kind = raw["kind"]
    if kind not in ("timer", "alarm"):
        raise ValueError(f"unknown kind {kind!r}")
    due = float(raw["due"])
    if not math.isfinite(due):
        raise ValueError("due is not finite")
    entry = Entry(
        id=str(raw["id"]),
        kind=kind,
        due=due,
        label=str(raw.get("label", ""))[:MAX_LABEL],
        seconds=float(raw.get("seconds", 0.0)),
        time=str(raw.get("time", "")),
        days=_weekdays(raw.get("days", ())),
    )
    if kind == "alarm" and _HHMM.fullmatch(entry.time) is None:
        raise ValueError(f"alarm {entry.id} has no valid time")
    return entry


def _local(instant: float, zone: dt.tzinfo, with_zone: bool = False) -> str:
    moment = dt.datetime.fromtimestamp(instant, zone)
    text = moment.strftime("%A %d %B %Y %H:%M:%S")
    if with_zone:
        text += f" ({getattr(zone, 'key', moment.tzname())}, UTC{moment.strftime('%z')})"
    return text


# -- the model's side ----------------------------------------------------------------------------

TIMER_TOOL_NAMES = frozenset({"set_timer", "set_alarm", "cancel_timer", "list_timers"})


@dataclass
class TimerTools:
    """The four built-in tools the model uses to manage timers (see `tools.ToolRunner`)."""

    timers: Timers
    names: frozenset[str] = TIMER_TOOL_NAMES

    def definitions(self) -> list[dict[str, Any]]:
        """The tools, told the local time now: built when each session is configured."""
        now = self.timers.now_text()
        clock = f" It is now {now} on the device; interpret times the user says in this zone."
        label = {"type": "string", "description": "A short name, e.g. 'pasta'."}
        return [
            _function(
                "set_timer",
                "Start a countdown timer that rings on the device." + clock,
                {
                    "seconds": {"type": "number", "description": "Length in seconds."},
                    "label": label,
                },
                ["seconds"],
            ),
            _function(
                "set_alarm",
                "Set an alarm that rings on the device at a local time, once or on given days."
                + clock,
                {
                    "time": {"type": "string", "description": 'Local 24-hour time, "HH:MM".'},
                    "label": label,
                    "days": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": (
                            "Repeat on these days: mon..sun, or daily, weekdays, weekends. "
                            "Omit for a one-off alarm (the next time the clock shows it)."
                        ),
                    },
                },
                ["time"],
            ),
            _function(
                "cancel_timer",
                "Cancel timers or alarms by label, or one by id (from list_timers).",
                {"label": label, "id": {"type": "string"}},
                [],
            ),
            _function(
                "list_timers",
                "List the timers and alarms set on the device, soonest first." + clock,
                {},
                [],
            ),
        ]

    async def run(self, name: str, args: dict[str, Any]) -> str:
        """Run one of the tools; the JSON text for the model (errors included, never raised)."""
        timers = self.timers
        try:
            if name == "set_timer":
                seconds = args.get("seconds")
                if not isinstance(seconds, int | float) or isinstance(seconds, bool):
                    raise TimerError("seconds must be a number")
                entry = timers.set_timer(float(seconds), _text(args.get("label")))
                result: dict[str, Any] = {"ok": True, **entry.describe(timers.zone)}
            elif name == "set_alarm":
                hhmm, days = args.get("time"), args.get("days") or []
                if not isinstance(hhmm, str):
                    raise TimerError('time must be a string "HH:MM"')
                if not isinstance(days, list):
                    raise TimerError("days must be a list of weekday names")
                entry = timers.set_alarm(hhmm, _text(args.get("label")), days)
                result = {"ok": True, **entry.describe(timers.zone)}
            elif name == "cancel_timer":
                ident, label = _text(args.get("id")), _text(args.get("label"))
                if not ident and not label:
                    raise TimerError("give the label or the id of what to cancel")
                gone = timers.cancel(id=ident, label=label)
                result = {"ok": bool(gone), "cancelled": [e.describe(timers.zone) for e in gone]}
            elif name == "list_timers":
                result = {"ok": True, "timers": timers.summary()}
            else:
                raise TimerError(f"unknown tool {name!r}")
        except TimerError as exc:
            return json.dumps({"error": str(exc)})
        result["now"] = timers.now_text()
        if not timers.saved:
            result["warning"] = "could not be saved on the device: a restart would lose it"
        return json.dumps(result)


def _function(
    name: str, description: str, properties: dict[str, Any], required: list[str]
) -> dict[str, Any]:
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"type": "function", "name": name, "description": description, "parameters": parameters}


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""
