"""The action button through gpiozero's MockFactory, with edges driven from another thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from wakertc.button import ActionButton, ButtonError, make_button
from wakertc.config import ButtonConfig

PIN = 4
LONG_S = 0.3
BOUNCE_S = 0.02


@dataclass
class Presses:
    """What the button reported, and on which thread."""

    calls: list[str] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def recorder(self, name: str) -> Callable[[], None]:
        def record() -> None:
            self.calls.append(name)
            self.threads.add(threading.get_ident())
            self.changed.set()

        return record

    async def wait_for(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Rig:
    button: ActionButton
    pin: MockPin
    presses: Presses
    press_level: bool  # what the pin reads while pressed

    async def edge(self, level: bool) -> None:
        """Change the pin level from another thread, as gpiozero's drivers report edges."""
        await asyncio.to_thread(self.pin.drive_high if level else self.pin.drive_low)

    async def press(self) -> None:
        await self.edge(self.press_level)

    async def release(self) -> None:
        await self.edge(not self.press_level)

    async def chatter(self, end_pressed: bool) -> None:
        """A bouncing contact: five quick flips, 2 ms apart, ending at the given state."""
        end = self.press_level if end_pressed else not self.press_level

        def bounce() -> None:
            for level in (end, not end, end, not end, end):
                (self.pin.drive_high if level else self.pin.drive_low)()
                time.sleep(0.002)

        await asyncio.to_thread(bounce)

    async def quiet(self) -> None:
        """Wait long enough that any pending press would have been reported (absence checks)."""
        await asyncio.sleep(LONG_S + 3 * BOUNCE_S)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    presses = Presses()
    factory = MockFactory()
    button = ActionButton(
        ButtonConfig(pin=PIN, long_press_s=LONG_S, bounce_s=BOUNCE_S),
        factory,
        asyncio.get_running_loop(),
        presses.recorder("short"),
        presses.recorder("long"),
    )
    yield Rig(button, factory.pin(PIN), presses, press_level=False)
    button.close()


async def test_short_press_fires_once_on_release(rig: Rig) -> None:
    await rig.press()
    await asyncio.sleep(0.08)  # the user holds it briefly
    assert rig.presses.calls == []  # nothing until release
    await rig.release()
    await rig.presses.wait_for(1)
    await rig.quiet()
    assert rig.presses.calls == ["short"]


async def test_callbacks_run_on_the_loop_thread(rig: Rig) -> None:
    await rig.press()
    await asyncio.sleep(0.05)
    await rig.release()
    await rig.presses.wait_for(1)
    await rig.press()
    await rig.presses.wait_for(2)  # held: the long press
    await rig.release()
    assert rig.presses.calls == ["short", "long"]
    assert rig.presses.threads == {threading.get_ident()}


async def test_long_press_fires_once_while_held_and_no_short(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    pressed_at = loop.time()
    await rig.press()
    await rig.presses.wait_for(1)
    held_for = loop.time() - pressed_at
    assert rig.presses.calls == ["long"]
    assert LONG_S * 0.9 <= held_for <= LONG_S + 0.3
    await asyncio.sleep(2 * LONG_S)  # keep holding: it must not repeat
    await rig.release()
    await rig.quiet()
    assert rig.presses.calls == ["long"]


async def test_two_short_presses(rig: Rig) -> None:
    for _ in range(2):
        await rig.press()
        await asyncio.sleep(0.05)
        await rig.release()
        await asyncio.sleep(0.05)
    await rig.presses.wait_for(2)
    assert rig.presses.calls == ["short", "short"]


async def test_bouncing_contact_counts_as_one_press(rig: Rig) -> None:
    await rig.chatter(end_pressed=True)
    await asyncio.sleep(0.1)
    await rig.chatter(end_pressed=False)
    await rig.presses.wait_for(1)
    await rig.quiet()
    assert rig.presses.calls == ["short"]


async def test_glitch_shorter_than_bounce_is_ignored(rig: Rig) -> None:
    def glitch() -> None:
        rig.pin.drive_low()
        time.sleep(0.002)
        rig.pin.drive_high()

    await asyncio.to_thread(glitch)
    await rig.quiet()
    assert rig.presses.calls == []


@pytest.mark.parametrize(("held_s", "heard"), [(0.1, ["short"]), (0.01, [])])
async def test_a_press_made_while_the_loop_is_busy_is_not_lost(
    rig: Rig, held_s: float, heard: list[str]
) -> None:
    """The loop is busy (blocked) through a whole quick press: both edges reach it together,
    after the release. A press held for the bounce time still counts; a glitch still does not.
    (Sampling only the settled level lost it: the line was back where it started.)"""
    rig.pin.drive_low()
    time.sleep(held_s)  # on the loop thread: nothing runs on the loop meanwhile
    rig.pin.drive_high()
    time.sleep(0.05)
    await rig.quiet()
    assert rig.presses.calls == heard


async def test_button_to_supply_with_pull_down() -> None:
    presses = Presses()
    factory = MockFactory()
    button = ActionButton(
        ButtonConfig(pin="GPIO17", pull_up=False, long_press_s=LONG_S, bounce_s=BOUNCE_S),
        factory,
        asyncio.get_running_loop(),
        presses.recorder("short"),
        presses.recorder("long"),
    )
    try:
        rig = Rig(button, factory.pin(17), presses, press_level=True)
        assert rig.pin.state is False  # pulled down at rest
        await rig.press()
        await asyncio.sleep(0.05)
        await rig.release()
        await presses.wait_for(1)
        assert presses.calls == ["short"]
    finally:
        button.close()


async def test_a_failing_handler_is_logged_and_the_button_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    presses = Presses()
    record = presses.recorder("short")

    def flaky() -> None:
        record()
        if len(presses.calls) == 1:
            raise RuntimeError("handler bug")

    factory = MockFactory()
    button = ActionButton(
        ButtonConfig(pin=PIN, long_press_s=LONG_S, bounce_s=BOUNCE_S),
        factory,
        asyncio.get_running_loop(),
        flaky,
        presses.recorder("long"),
    )
    rig = Rig(button, factory.pin(PIN), presses, press_level=False)
    try:
        with caplog.at_level(logging.ERROR, logger="wakertc.button"):
            for _ in range(2):
                await rig.press()
                await asyncio.sleep(0.05)
                await rig.release()
                await asyncio.sleep(0.05)
            await presses.wait_for(2)
        assert "button short-press handler failed" in caplog.text
        assert presses.calls == ["short", "short"]
    finally:
        button.close()


async def test_close_stops_reports_and_frees_the_pin(rig: Rig) -> None:
    await rig.press()  # closed mid-press: neither a long nor a short press may follow
    started = time.monotonic()
    rig.button.close()
    assert time.monotonic() - started < 0.2  # no waiting out a hold while the button is down
    await rig.release()
    await rig.quiet()
    assert rig.presses.calls == []
    rig.button.close()  # idempotent
    factory = rig.pin.factory
    again = ActionButton(
        ButtonConfig(pin=PIN), factory, asyncio.get_running_loop(), lambda: None, lambda: None
    )
    again.close()


async def test_make_button_without_a_pin_is_none() -> None:
    loop = asyncio.get_running_loop()
    assert (
        make_button(ButtonConfig(pin=""), MockFactory(), loop, lambda: None, lambda: None) is None
    )
    button = make_button(ButtonConfig(pin=PIN), MockFactory(), loop, lambda: None, lambda: None)
    assert isinstance(button, ActionButton)
    button.close()


async def test_bad_pin_is_a_clear_error() -> None:
    with pytest.raises(ButtonError, match=r"button\.pin = 'GPIO99': GPIO99 is not a valid pin"):
        make_button(
            ButtonConfig(pin="GPIO99"),
            MockFactory(),
            asyncio.get_running_loop(),
            lambda: None,
            lambda: None,
        )


@pytest.mark.parametrize("handled", [True, False])
async def test_press_handler_acts_on_the_press_and_may_swallow_the_release(handled: bool) -> None:
    presses = Presses()
    record_down = presses.recorder("down")

    def on_press() -> bool:
        record_down()
        return handled

    factory = MockFactory()
    button = ActionButton(
        ButtonConfig(pin=PIN, long_press_s=LONG_S, bounce_s=BOUNCE_S),
        factory,
        asyncio.get_running_loop(),
        presses.recorder("short"),
        presses.recorder("long"),
        on_press,
    )
    rig = Rig(button, factory.pin(PIN), presses, press_level=False)
    try:
        await rig.press()
        await presses.wait_for(1)
        assert presses.calls == ["down"]  # before any release
        await rig.release()
        await rig.quiet()
        assert presses.calls == (["down"] if handled else ["down", "short"])
    finally:
        button.close()
