"""Timers and alarms without the chain: the clock, DST, clock steps, the file, the tools."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wakertc.atomic import write_atomic
from wakertc.config import TimersConfig, config_from_dict
from wakertc.sounds import NAMES, load_bundled
from wakertc.timers import Entry, Timers, TimerTools, next_alarm
from wakertc.tools import ToolRunner

ROOT = Path(__file__).resolve().parent.parent
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


class FakeClock:
    """A wall clock the test steps, and a monotonic one that only moves with `advance`."""

    def __init__(self, wall: float) -> None:
        self.wall_s = wall
        self.mono_s = 1000.0

    def wall(self) -> float:
        return self.wall_s

    def monotonic(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds

    def step(self, seconds: float) -> None:
        """The wall clock alone jumps (NTP, a user setting the time)."""
        self.wall_s += seconds


def at(text: str, zone: dt.tzinfo = PARIS) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def make(tmp_path: Path, clock: FakeClock, **config: Any) -> tuple[Timers, list[Entry]]:
    rung: list[Entry] = []
    timers = Timers(
        TimersConfig(**config),
        tmp_path,
        on_due=lambda entries: rung.extend(entries),
        clock=clock,
        zone=PARIS,
    )
    timers.load()
    return timers, rung


# -- the wall clock -------------------------------------------------------------------------------


def test_alarm_is_the_next_time_the_clock_shows_it() -> None:
    assert next_alarm("07:00", (), at("2026-12-06T06:59:00"), PARIS) == at("2026-12-06T07:00")
    assert next_alarm("07:00", (), at("2026-12-06T07:00:00"), PARIS) == at("2026-12-07T07:00")
    # Sunday 6 December: the next weekday alarm is Monday's.
    assert next_alarm("07:00", ("mon",), at("2026-12-06T08:00"), PARIS) == at("2026-12-07T07:00")
    assert next_alarm("07:00", ("sun",), at("2026-12-06T08:00"), PARIS) == at("2026-12-13T07:00")


def test_alarm_keeps_its_wall_time_across_dst_changes() -> None:
    # Paris: 29 March 2026 02:00 -> 03:00; 25 October 2026 03:00 -> 02:00.
    before_spring = next_alarm("07:00", ("sun",), at("2026-03-22T08:00"), PARIS)
    assert dt.datetime.fromtimestamp(before_spring, PARIS).hour == 7
    spring = next_alarm("07:00", (), at("2026-03-29T01:00"), PARIS)
    assert spring - at("2026-03-29T01:00") == 5 * 3600  # one hour fewer that night
    assert dt.datetime.fromtimestamp(spring, PARIS).strftime("%H:%M") == "07:00"
    # A time skipped by the change rings just after it; one that happens twice, the first time.
    skipped = next_alarm("02:30", (), at("2026-03-29T01:00"), PARIS)
    assert dt.datetime.fromtimestamp(skipped, PARIS).strftime("%H:%M") == "03:30"
    twice = next_alarm("02:30", (), at("2026-10-25T01:00"), PARIS)
    assert twice == dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC).timestamp()


def test_repeated_wall_time_rings_once_on_the_fall_back_night(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-10-25T01:00"))
    timers, rung = make(tmp_path, clock)
    timers.set_alarm("02:30", "night", ["daily"])
    for _ in range(4 * 3600 // 60):  # minute by minute through the night (02:xx happens twice)
        clock.advance(60)
        timers.check()
    assert len(rung) == 1
    (entry,) = timers.active()
    assert dt.datetime.fromtimestamp(entry.due, PARIS).date() == dt.date(2026, 10, 26)


def test_clock_stepped_back_after_a_ring_does_not_ring_again(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-06T06:59:50"))
    timers, rung = make(tmp_path, clock)
    timers.set_alarm("07:00", "work", ["daily"])
    clock.advance(11)
    timers.check()
    assert len(rung) == 1
    clock.step(-120)  # back to 06:59:01
    for _ in range(180):
        clock.advance(1)
        timers.check()
    assert len(rung) == 1, "rang twice after the clock was stepped back"


def test_clock_stepped_forward_over_an_alarm_rings_it_once(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-06T06:50"))
    timers, rung = make(tmp_path, clock)
    timers.set_alarm("07:00")
    clock.step(11 * 60)  # 07:01: within the grace
    timers.check()
    timers.check()
    assert [e.time for e in rung] == ["07:00"]
    assert timers.active() == []


def test_clock_stepped_far_forward_logs_the_alarm_as_missed(tmp_path: Path, caplog: Any) -> None:
    clock = FakeClock(at("2026-12-06T06:50"))
    missed: list[tuple[Entry, float]] = []
    timers = Timers(
        TimersConfig(missed_grace_s=600),
        tmp_path,
        on_due=lambda e: pytest.fail("rang"),
        on_missed=lambda e, late: missed.append((e, late)),
        clock=clock,
        zone=PARIS,
    )
    timers.set_alarm("07:00", "work")
    clock.step(3600)
    timers.check()
    assert [(e.label, round(late)) for e, late in missed] == [("work", 50 * 60)]
    assert "missed, not rung" in caplog.text


def test_a_countdown_is_not_stretched_by_a_clock_step(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-06T12:00"))
    timers, rung = make(tmp_path, clock)
    timers.set_timer(600, "pasta")
    clock.step(-3600)  # the wall clock goes back an hour; ten minutes are still ten minutes
    clock.mono_s += 599
    timers.check()
    assert rung == []
    clock.mono_s += 1
    timers.check()
    assert [e.label for e in rung] == ["pasta"]


# -- the file ------------------------------------------------------------------------------------


def test_entries_survive_a_new_process_and_ring_once(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-06T06:00"))
    first, _ = make(tmp_path, clock)
    first.set_alarm("07:00", "work", ["weekdays"])
    first.set_timer(90, "eggs")
    saved = json.loads((tmp_path / "timers.json").read_text())
    assert [t["label"] for t in saved["timers"]] == ["work", "eggs"]
    assert stat.S_IMODE((tmp_path / "timers.json").stat().st_mode) == 0o600

    clock.advance(120)  # "restart": a new object reads the file; the eggs are due
    second, rung = make(tmp_path, clock)
    second.check()
    assert [e.label for e in rung] == ["eggs"]
    third, rung_again = make(tmp_path, clock)  # and again: the eggs rang, they are gone
    third.check()
    assert rung_again == []
    assert [e.label for e in third.active()] == ["work"]


def test_missed_while_off_rings_inside_the_grace_only(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-06T06:00"))
    timers, _ = make(tmp_path, clock)
    timers.set_alarm("06:30", "recent")
    timers.set_alarm("06:10", "old")
    clock.advance(40 * 60)  # off from 06:00 to 06:40: "old" is 30 min late, "recent" 10 min
    restarted, rung = make(tmp_path, clock, missed_grace_s=15 * 60)
    restarted.check()
    assert [e.label for e in rung] == ["recent"]
    assert restarted.active() == []


def test_a_damaged_file_is_set_aside_not_fatal(tmp_path: Path, caplog: Any) -> None:
    (tmp_path / "timers.json").write_text('{"timers": [{"kind": "bomb"}]}')
    timers, _ = make(tmp_path, FakeClock(at("2026-12-06T06:00")))
    assert timers.active() == []
    assert (tmp_path / "timers.json.bad").exists()
    assert "unusable" in caplog.text


def test_an_unwritable_state_dir_keeps_timers_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    timers, _ = make(blocker / "state", FakeClock(at("2026-12-06T06:00")))  # a dir under a file
    result = json.loads(_run(TimerTools(timers), "set_timer", {"seconds": 60}))
    assert result["ok"] and "restart would lose it" in result["warning"]
    assert len(timers.active()) == 1


def test_write_atomic_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing-dir" / "x", b"data")
    assert target.read_bytes() == b"new contents"


def test_write_atomic_killed_before_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    """A process killed after writing the temporary file but before the rename."""
    target = tmp_path / "state.json"
    target.write_text("old")
    code = (
        "import os, sys; from pathlib import Path; import wakertc.atomic as a\n"
        "os.replace = lambda *args: os.kill(os.getpid(), 9)\n"
        f"a.write_atomic(Path({str(target)!r}), b'new')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False)
    assert done.returncode == -9
    assert target.read_text() == "old"


# -- the tools -----------------------------------------------------------------------------------


def _run(tools: TimerTools, name: str, args: dict[str, Any]) -> str:
    import asyncio

    return asyncio.run(tools.run(name, args))


async def test_tools_through_the_tool_runner(tmp_path: Path) -> None:
    clock = FakeClock(at("2026-12-06T13:02:00"))
    timers, _ = make(tmp_path, clock)
    runner = ToolRunner([], builtins=[TimerTools(timers)])
    names = [d["name"] for d in runner.definitions()]
    assert names == ["end_conversation", "set_timer", "set_alarm", "cancel_timer", "list_timers"]
    set_alarm = runner.definitions()[2]
    assert "Sunday 06 December 2026 13:02:00 (Europe/Paris, UTC+0100)" in set_alarm["description"]
    clock.advance(3600)  # a later session is told the later time
    assert "14:02:00" in runner.definitions()[2]["description"]

    out = json.loads(await runner.run("set_alarm", '{"time": "7:00", "label": "work"}'))
    assert out["rings_at"] == "Monday 07 December 2026 07:00:00" and out["repeats"] == "once"
    assert out["now"].startswith("Sunday 06 December 2026 14:02:00")
    out = json.loads(await runner.run("set_timer", '{"seconds": 300, "label": "Tea"}'))
    assert out["id"] == "t2" and out["rings_at"] == "Sunday 06 December 2026 14:07:00"
    listed = json.loads(await runner.run("list_timers", "{}"))["timers"]
    assert [t["label"] for t in listed] == ["Tea", "work"]
    out = json.loads(await runner.run("cancel_timer", '{"label": "tea"}'))
    assert [t["label"] for t in out["cancelled"]] == ["Tea"]
    assert [e.label for e in timers.active()] == ["work"]


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("set_timer", "{}", "seconds must be a number"),
        ("set_timer", '{"seconds": 0}', "seconds must be from 1"),
        ("set_timer", '{"seconds": "ten"}', "seconds must be a number"),
        ("set_alarm", '{"time": "25:00"}', "HH:MM"),
        ("set_alarm", '{"time": "07:00", "days": ["someday"]}', "unknown day"),
        ("set_alarm", '{"time": "07:00", "days": "mon"}', "list of weekday"),
        ("cancel_timer", "{}", "label or the id"),
        ("set_timer", "[1]", "JSON object"),
        ("set_timer", "{nope", "not valid JSON"),
    ],
)
async def test_bad_tool_arguments_get_a_clear_error(
    tmp_path: Path, name: str, arguments: str, error: str
) -> None:
    timers, _ = make(tmp_path, FakeClock(at("2026-12-06T13:00")))
    runner = ToolRunner([], builtins=[TimerTools(timers)])
    out = json.loads(await runner.run(name, arguments))
    assert error in out["error"]
    assert timers.active() == []


def test_a_configured_tool_may_not_take_a_timer_name(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    token.chmod(0o600)
    tool = {"name": "set_timer", "command": ["true"]}
    with pytest.raises(Exception, match=r"tools\[0\].name = 'set_timer'"):
        config_from_dict(
            {"tools": [tool], "companion": {"token_file": str(token)}}, tmp_path / "c.toml"
        )


def test_timers_config_is_validated(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    token.chmod(0o600)
    data = {
        "companion": {"token_file": str(token)},
        "timers": {"timezone": "Mars/Olympus", "ring_timeout_s": 0, "ring_volume": 3.0},
    }
    with pytest.raises(Exception) as raised:
        config_from_dict(data, tmp_path / "c.toml")
    text = str(raised.value)
    for key in ("timers.timezone", "timers.ring_timeout_s", "timers.ring_volume"):
        assert key in text


# -- the ring sound ------------------------------------------------------------------------------


def test_ring_is_bundled_distinct_and_regenerated_by_the_script(tmp_path: Path) -> None:
    ring = load_bundled("ring")
    assert 0.5 * 24000 < len(ring) <= 1.0 * 24000
    for name in NAMES:
        cue = load_bundled(name)
        assert len(cue) != len(ring) or not np.array_equal(cue, ring)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sounds.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    bundled = ROOT / "daemon" / "wakertc" / "sounds" / "ring.wav"
    assert (tmp_path / "ring.wav").read_bytes() == bundled.read_bytes()
