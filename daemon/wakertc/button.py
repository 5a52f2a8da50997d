"""The action button: a short press starts or ends a conversation, a long press toggles mute.

gpiozero reports edges on its own threads; each edge is handed to the event loop in one place
(`_edge`), and everything after that (debouncing, timing the hold, calling back) happens on the loop
thread, so the daemon's callbacks never need locks.

Debouncing is done here, not by gpiozero's `bounce_time`, because pin drivers differ: RPi.GPIO
drops edges inside the bounce window (a quick release can be lost, leaving the button "stuck"
down), lgpio filters glitches, and the mock factory ignores it. Here every edge restarts a short
timer and, once the line has been quiet for `bounce_s`, its actual level decides: a contact
that chatters produces one press and one release whatever the driver. Each edge carries its time
and level from the gpiozero thread, so a press and release that both arrive while the loop is
busy (a quick tap, a loop late by more than the press minus `bounce_s`) still count when the
line was held for `bounce_s` between them, instead of settling back where it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import gpiozero

from .config import ButtonConfig

log = logging.getLogger(__name__)


class ButtonError(RuntimeError):
    """The button pin could not be set up; the message names the config key and the pin."""


def make_button(
    config: ButtonConfig,
    pin_factory: gpiozero.Factory | None,
    loop: asyncio.AbstractEventLoop,
    on_short: Callable[[], None],
    on_long: Callable[[], None],
    on_press: Callable[[], bool] | None = None,
) -> ActionButton | None:
    """The configured button, or None when `button.pin` is empty (no button fitted)."""
    if config.pin == "":
        return None
    return ActionButton(config, pin_factory, loop, on_short, on_long, on_press)


class ActionButton:
    """A debounced push button that tells short presses from long ones, on the loop thread."""

    def __init__(
        self,
        config: ButtonConfig,
        pin_factory: gpiozero.Factory | None,
        loop: asyncio.AbstractEventLoop,
        on_short: Callable[[], None],
        on_long: Callable[[], None],
        on_press: Callable[[], bool] | None = None,
    ) -> None:
        self._loop = loop
        self._on_short = on_short
        self._on_long = on_long
        # Called at the debounced press itself, for what cannot wait for the release (stopping
        # the speaker); returning True means it handled the press, so no short press follows.
        self._on_press = on_press
        self._press_handled = False
        self._bounce_s = max(config.bounce_s, 0.0)
        # The hold is timed from the debounced press, which comes `bounce_s` after the contact.
        self._hold_s = max(config.long_press_s - self._bounce_s, 0.0)
        self._pressed = False  # the debounced state
        self._long_fired = False
        self._settle: asyncio.TimerHandle | None = None
        self._edges: list[tuple[float, bool]] = []
        """(monotonic time, level pressed) of each edge since the line last settled."""
        self._hold: asyncio.TimerHandle | None = None
        self._closed = False
        try:
            # bounce_time=None: every edge reaches `_edge` (see the module docstring). hold_time=0:
            # holds are timed here, and gpiozero's hold thread would otherwise make close() wait
            # out its hold_time while the button is down.
            self._button: Any = gpiozero.Button(
                config.pin,
                pull_up=config.pull_up,
                bounce_time=None,
                hold_time=0,
                pin_factory=pin_factory,
            )
        except (gpiozero.GPIOZeroError, OSError, ValueError) as exc:
            raise ButtonError(f"button.pin = {config.pin!r}: {exc}") from exc
        self._button.when_pressed = self._edge
        self._button.when_released = self._edge

    def close(self) -> None:
        """Stop reporting presses and release the pin (call on the loop thread)."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._settle, self._hold):
            if handle is not None:
                handle.cancel()
        self._button.when_pressed = None
        self._button.when_released = None
        self._button.close()

    def _edge(self) -> None:
        """Any edge, on a gpiozero thread: the only hand-over to the loop."""
        if self._closed:
            return
        edge = (time.monotonic(), bool(self._button.is_pressed))
        # RuntimeError: the loop is already closed, the daemon is exiting.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._restart_settle, edge)

    def _restart_settle(self, edge: tuple[float, bool]) -> None:
        if self._closed:
            return
        self._edges.append(edge)
        if self._settle is not None:
            self._settle.cancel()
        self._settle = self._loop.call_later(self._bounce_s, self._settled)

    def _settled(self) -> None:
        """The line has been quiet for `bounce_s`: act on its level if it changed."""
        self._settle = None
        if self._closed:
            return
        edges, self._edges = self._edges, []
        pressed = bool(self._button.is_pressed)
        if pressed != self._pressed:
            self._change(pressed)
        elif any(
            level != pressed and later - at >= self._bounce_s
            for (at, level), (later, _) in itertools.pairwise(edges)
        ):
            # The loop was late for a whole press and release (or release and press): the line
            # stayed at the other level for the bounce time, so both happened.
            self._change(not pressed)
            self._change(pressed)
        # else: a glitch shorter than the bounce time

    def _change(self, pressed: bool) -> None:
        """The debounced level changed to `pressed`."""
        self._pressed = pressed
        if pressed:
            self._long_fired = False
            self._press_handled = False
            self._hold = self._loop.call_later(self._hold_s, self._held)
            if self._on_press is not None:
                try:
                    self._press_handled = bool(self._on_press())
                except Exception:
                    log.exception("button press handler failed")
            return
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        if not self._long_fired and not self._press_handled:
            log.debug("button: short press")
            self._call(self._on_short, "short")

    def _held(self) -> None:
        self._hold = None
        self._long_fired = True
        log.debug("button: long press")
        self._call(self._on_long, "long")

    @staticmethod
    def _call(callback: Callable[[], None], what: str) -> None:
        try:
            callback()
        except Exception:
            # The button must keep working after a handler bug.
            log.exception("button %s-press handler failed", what)
