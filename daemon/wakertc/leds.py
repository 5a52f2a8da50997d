"""Status LEDs: one pattern per conversation phase, on a plain, dimmable or RGB LED.

`StatusLeds` is a phase listener. Every pattern is played the same way: a short cycle of
intensities (1 = the phase's colour at full configured brightness, 0 = off) handed to the gpiozero
device's `source`, which a gpiozero background thread steps through. So a blink or pulse keeps
running when the event loop is busy, and the loop only ever swaps one cycle for another.

Why `source` rather than gpiozero's `blink()`/`pulse()`: on a PWM LED those always peak at full
power, ignoring `leds.brightness` and the colour's brightness.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import gpiozero

from .config import LedPattern, LedsConfig
from .state import Phase, Transition

log = logging.getLogger(__name__)

PULSE_FPS = 25  # smooth to the eye, and cheap on a Pi Zero
OFF = LedPattern("off")


class LedError(RuntimeError):
    """The LED pins could not be set up; the message names the config key and the pins."""


class StatusLeds:
    """Shows the current phase on the configured LED (a no-op for kind `none`)."""

    def __init__(self, config: LedsConfig, pin_factory: gpiozero.Factory | None) -> None:
        self._config = config
        self._brightness = min(max(config.brightness, 0.0), 1.0)
        self._device: Any = None if config.kind == "none" else _open(config, pin_factory)
        self.phase: Phase | None = None
        """The phase shown last."""

    def __call__(self, change: Transition) -> None:
        """Phase listener: show `change.new`."""
        self.show(change.new)

    def show(self, phase: Phase) -> None:
        """Switch to `phase`'s pattern; phases without one (starting, stopping) are off."""
        self.phase = phase
        device = self._device
        if device is None:
            return
        pattern = self._config.patterns.get(phase.value, OFF)
        # Stop the running cycle first (this joins its thread), so it cannot overwrite what follows.
        device.source = None
        kind = self._config.kind
        rgb = tuple(c * self._brightness for c in colour(pattern.color))
        intensities, step_s = _cycle(pattern, dimmable=kind != "single")
        values = [_value(kind, rgb, t) for t in intensities]
        log.debug("leds: %s %s %s", phase.value, pattern.effect, pattern.color)
        # The first value now, in the caller's thread: the LED changes with the phase, not when
        # the cycle's thread first runs (tens of ms later on a loaded board, showing the old
        # phase meanwhile and, on an RGB LED, a mix of the two while its pins are rewritten).
        device.value = values[0]
        if len(values) > 1:
            device.source_delay = step_s
            device.source = itertools.cycle(values)

    def close(self) -> None:
        """Turn the LED off and release its pins."""
        device, self._device = self._device, None
        if device is None:
            return
        try:
            device.source = None
            device.off()
        finally:
            device.close()


def _open(config: LedsConfig, pin_factory: gpiozero.Factory | None) -> Any:
    """The gpiozero device for `config.kind`, on the factory given (never the global default)."""
    pins = list(config.pins)
    try:
        if config.kind == "rgb":
            red, green, blue = pins
            return gpiozero.RGBLED(
                red, green, blue, active_high=config.active_high, pin_factory=pin_factory
            )
        device = gpiozero.PWMLED if config.kind == "pwm" else gpiozero.LED
        (pin,) = pins
        return device(pin, active_high=config.active_high, pin_factory=pin_factory)
    except (gpiozero.GPIOZeroError, OSError, ValueError) as exc:
        raise LedError(
            f"leds.pins = {pins} (kind {config.kind!r}): {str(exc) or type(exc).__name__}"
        ) from exc


def _value(kind: str, rgb: tuple[float, ...], intensity: float) -> Any:
    """The device value for the colour `rgb` (already scaled by brightness) at `intensity`."""
    if kind == "rgb":
        return tuple(c * intensity for c in rgb)
    if kind == "pwm":
        # A one-colour LED shows the colour's brightness: its strongest component.
        return max(rgb) * intensity
    return intensity >= 0.5 and max(rgb) > 0


def colour(text: str) -> tuple[float, float, float]:
    """`#rrggbb` as three components 0..1."""
    return (int(text[1:3], 16) / 255, int(text[3:5], 16) / 255, int(text[5:7], 16) / 255)


def _cycle(pattern: LedPattern, dimmable: bool) -> tuple[list[float], float]:
    """One period of `pattern` as intensities, and the time each is held."""
    if pattern.effect == "off":
        return [0.0], 0.0
    if pattern.effect == "solid":
        return [1.0], 0.0
    if pattern.effect == "pulse" and dimmable:
        steps = max(4, round(pattern.period_s * PULSE_FPS))
        # A raised cosine: fades in and out smoothly, lingering a little at both ends.
        frames = [(1 - math.cos(2 * math.pi * i / steps)) / 2 for i in range(steps)]
        return frames, pattern.period_s / steps
    # blink, and pulse on an LED that cannot dim
    return [1.0, 0.0], pattern.period_s / 2
