"""Status LEDs through gpiozero's MockFactory: recorded pin states per phase, for each LED kind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gpiozero
import pytest
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin

from wakertc.config import DEFAULT_PATTERNS, LedPattern, LedsConfig, load_config
from wakertc.leds import LedError, StatusLeds
from wakertc.state import Phase, PhaseMachine

RGB_PINS = (5, 6, 13)
FAST = 0.1  # blink/pulse period used where a test waits for several cycles


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    """Poll `predicate` (pins change on gpiozero's threads) until true, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def settle() -> None:
    """Long enough for several FAST cycles; used only to show that nothing changes."""
    time.sleep(4 * FAST)


def states(pin: MockPin) -> list[Any]:
    return [s.state for s in pin.states]


def toggles(pin: MockPin, since: int) -> int:
    return len(pin.states) - since


def rgb_state(pins: list[MockPin]) -> tuple[float, float, float]:
    r, g, b = (round(float(p.state), 3) for p in pins)
    return r, g, b


@pytest.fixture
def open_leds() -> Iterator[Callable[..., tuple[StatusLeds, PhaseMachine, list[MockPin]]]]:
    """Build StatusLeds on a fresh MockFactory, wired to a real PhaseMachine; closed afterwards."""
    opened: list[StatusLeds] = []

    def make(kind: str, **config: Any) -> tuple[StatusLeds, PhaseMachine, list[MockPin]]:
        pins = RGB_PINS if kind == "rgb" else (17,)
        factory = MockFactory(pin_class=MockPin if kind == "single" else MockPWMPin)
        leds = StatusLeds(LedsConfig(kind=kind, pins=pins, **config), factory)
        opened.append(leds)
        machine = PhaseMachine()
        machine.add_listener(leds)
        return leds, machine, [factory.pin(p) for p in pins]

    yield make
    for leds in opened:
        leds.close()


def patterns(**overrides: LedPattern) -> dict[str, LedPattern]:
    return {**DEFAULT_PATTERNS, **overrides}


# -- none ---------------------------------------------------------------------------------------


def test_kind_none_touches_no_gpio() -> None:
    leds = StatusLeds(LedsConfig(kind="none"), None)
    machine = PhaseMachine()
    machine.add_listener(leds)
    for phase in (Phase.IDLE, Phase.WAKE, Phase.ERROR, Phase.STOPPING):
        machine.transition(phase, "test")
    assert leds.phase is Phase.STOPPING
    leds.close()
    # With no factory passed and kind none, gpiozero's global default must never be created.
    assert gpiozero.Device.pin_factory is None


# -- single -------------------------------------------------------------------------------------


def test_single_led_per_phase(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds("single")
    machine.transition(Phase.IDLE, "test")
    assert pin.state is False
    machine.transition(Phase.WAKE, "test")
    assert pin.state is True
    machine.transition(Phase.LISTENING, "test")
    assert pin.state is True
    machine.transition(Phase.MUTED, "test")
    assert pin.state is True
    machine.transition(Phase.IDLE, "test")
    assert pin.state is False
    # Errors blink every 0.1 s by default: wait for a few toggles.
    start = len(pin.states)
    machine.transition(Phase.ERROR, "test")
    wait_for(lambda: toggles(pin, start) >= 4, "the error blink")
    machine.transition(Phase.STOPPING, "test")
    assert pin.state is False
    assert states(pin)[start:][:4] == [True, False, True, False]


def test_single_blink_timing_and_stop(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds(
        "single", patterns=patterns(connecting=LedPattern("blink", "#ffffff", FAST))
    )
    machine.transition(Phase.IDLE, "test")
    start = len(pin.states)
    machine.transition(Phase.CONNECTING, "test")
    wait_for(lambda: toggles(pin, start) >= 6, "blinking")
    # Each half period is 50 ms; allow for a busy test machine.
    gaps = [s.timestamp for s in pin.states[start + 1 : start + 6]]
    assert all(0.03 <= gap <= 0.25 for gap in gaps), gaps
    machine.transition(Phase.LISTENING, "test")
    assert pin.state is True
    count = len(pin.states)
    settle()
    assert len(pin.states) == count, "the blink kept running after the phase changed"


def test_single_pulse_degrades_to_blink(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds(
        "single", patterns=patterns(thinking=LedPattern("pulse", "#8000ff", FAST))
    )
    machine.transition(Phase.IDLE, "test")
    start = len(pin.states)
    machine.transition(Phase.THINKING, "test")
    wait_for(lambda: toggles(pin, start) >= 4, "the degraded pulse")
    assert set(states(pin)[start:]) == {True, False}


def test_single_active_low_inverts(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds("single", active_high=False)
    machine.transition(Phase.IDLE, "test")
    assert pin.state is True  # high = off for an LED wired to the supply
    machine.transition(Phase.WAKE, "test")
    assert pin.state is False


def test_black_colour_means_off_on_a_single_led(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds(
        "single", patterns=patterns(listening=LedPattern("solid", "#000000"))
    )
    machine.transition(Phase.WAKE, "test")
    assert pin.state is True
    machine.transition(Phase.LISTENING, "test")
    assert pin.state is False


# -- pwm ----------------------------------------------------------------------------------------


def test_pwm_levels_follow_colour_and_brightness(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds(
        "pwm",
        brightness=0.5,
        patterns=patterns(wake=LedPattern("solid", "#808080")),
    )
    machine.transition(Phase.IDLE, "test")
    assert pin.state == 0.0
    machine.transition(Phase.WAKE, "test")
    assert pin.state == pytest.approx(0.5 * 128 / 255)
    machine.transition(Phase.LISTENING, "test")  # "#0040ff": its strongest component is full
    assert pin.state == pytest.approx(0.5)
    machine.transition(Phase.MUTED, "test")
    assert pin.state == pytest.approx(0.5)
    machine.transition(Phase.STOPPING, "test")
    assert pin.state == 0.0


def test_pwm_pulse_fades_within_brightness(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds(
        "pwm", brightness=0.6, patterns=patterns(speaking=LedPattern("pulse", "#00ff40", 0.4))
    )
    machine.transition(Phase.IDLE, "test")
    start = len(pin.states)
    machine.transition(Phase.SPEAKING, "test")
    # Ten steps per 0.4 s cycle: wait for a full cycle and a bit.
    wait_for(lambda: toggles(pin, start) >= 12, "the pulse")
    levels = [float(v) for v in states(pin)[start:]]
    assert len(set(levels)) >= 5, levels  # many intermediate levels, not on/off
    assert max(levels) == pytest.approx(0.6)
    assert min(levels) == pytest.approx(0.0, abs=1e-9)
    assert all(0.0 <= v <= 0.6 + 1e-9 for v in levels)


def test_pwm_blink(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds("pwm", brightness=0.8)
    machine.transition(Phase.IDLE, "test")
    start = len(pin.states)
    machine.transition(Phase.ERROR, "test")
    wait_for(lambda: toggles(pin, start) >= 4, "the error blink")
    assert [round(float(v), 3) for v in states(pin)[start:][:4]] == [0.8, 0.0, 0.8, 0.0]


def test_pwm_active_low_inverts(open_leds: Callable[..., Any]) -> None:
    _, machine, (pin,) = open_leds("pwm", active_high=False, brightness=0.25)
    machine.transition(Phase.IDLE, "test")
    assert pin.state == pytest.approx(1.0)
    machine.transition(Phase.LISTENING, "test")
    assert pin.state == pytest.approx(0.75)


# -- rgb ----------------------------------------------------------------------------------------


def test_rgb_colours_per_phase(open_leds: Callable[..., Any]) -> None:
    _, machine, pins = open_leds("rgb")
    seen: dict[Phase, tuple[float, float, float]] = {}
    for phase in (Phase.IDLE, Phase.WAKE, Phase.LISTENING, Phase.MUTED, Phase.STOPPING):
        machine.transition(phase, "test")
        seen[phase] = rgb_state(pins)
    assert seen == {
        Phase.IDLE: (0.0, 0.0, 0.0),
        Phase.WAKE: (1.0, 1.0, 1.0),
        Phase.LISTENING: (0.0, round(0x40 / 255, 3), 1.0),
        Phase.MUTED: (1.0, 0.0, 0.0),
        Phase.STOPPING: (0.0, 0.0, 0.0),
    }


def test_rgb_brightness_scales_every_component(open_leds: Callable[..., Any]) -> None:
    _, machine, pins = open_leds("rgb", brightness=0.5)
    machine.transition(Phase.LISTENING, "test")
    assert rgb_state(pins) == (0.0, round(0.5 * 0x40 / 255, 3), 0.5)


def test_rgb_error_blinks_red_only(open_leds: Callable[..., Any]) -> None:
    _, machine, (red, green, blue) = open_leds("rgb")
    machine.transition(Phase.IDLE, "test")
    start = len(red.states)
    machine.transition(Phase.ERROR, "test")
    wait_for(lambda: toggles(red, start) >= 4, "the red blink")
    assert [float(v) for v in states(red)[start:][:4]] == [1.0, 0.0, 1.0, 0.0]
    assert green.state == 0.0 and blue.state == 0.0
    assert len(green.states) == 1 and len(blue.states) == 1  # never lit


@pytest.mark.parametrize("phase", [Phase.ERROR, Phase.THINKING])  # a blink, a pulse
def test_a_new_pattern_shows_with_the_phase_not_when_its_thread_first_runs(
    open_leds: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, phase: Phase
) -> None:
    """The pattern's first value is set by the phase change itself, in the caller's thread.
    Left to the cycle's thread, it waited for that thread to be scheduled: on a loaded
    machine the old phase's blue stayed lit tens of ms into an error, and an RGB LED showed
    a mix of the two colours while the thread rewrote its pins one by one."""
    writers: list[tuple[int, int, float]] = []
    change = MockPWMPin._change_state

    def recording(pin: MockPWMPin, value: float) -> bool:
        writers.append((id(pin), threading.get_ident(), float(value)))
        return bool(change(pin, value))

    monkeypatch.setattr(MockPWMPin, "_change_state", recording)
    _, machine, pins = open_leds("rgb")
    machine.transition(Phase.LISTENING, "test")
    lit = {id(p): p.state for p in pins}
    writers.clear()
    machine.transition(phase, "test")
    first = {}
    for pin, thread, _ in writers:
        first.setdefault(pin, thread)
    changed = [p for p in pins if id(p) in first]
    assert changed, "the pattern changed no pin"
    assert all(first[id(p)] == threading.get_ident() for p in changed), writers
    assert rgb_state(pins) != tuple(round(float(v), 3) for v in lit.values())


def test_rgb_pulse_keeps_its_hue(open_leds: Callable[..., Any]) -> None:
    _, machine, (red, green, blue) = open_leds(
        "rgb", patterns=patterns(thinking=LedPattern("pulse", "#8000ff", 0.4))
    )
    machine.transition(Phase.IDLE, "test")
    start_red, start_blue = len(red.states), len(blue.states)
    machine.transition(Phase.THINKING, "test")
    wait_for(lambda: toggles(blue, start_blue) >= 12, "the pulse")
    machine.transition(Phase.IDLE, "test")
    reds = [float(v) for v in states(red)[start_red:-1]]
    blues = [float(v) for v in states(blue)[start_blue:-1]]
    assert len(set(blues)) >= 5
    assert max(blues) == pytest.approx(1.0)
    assert max(reds) == pytest.approx(0x80 / 255)
    # Every step is the same purple at a different brightness.
    for r, b in zip(reds, blues, strict=True):
        assert r == pytest.approx(b * 0x80 / 255)
    assert len(green.states) == 1
    assert rgb_state([red, green, blue]) == (0.0, 0.0, 0.0)


def test_rgb_active_low_inverts(open_leds: Callable[..., Any]) -> None:
    _, machine, pins = open_leds("rgb", active_high=False)
    machine.transition(Phase.IDLE, "test")
    assert rgb_state(pins) == (1.0, 1.0, 1.0)
    machine.transition(Phase.MUTED, "test")
    assert rgb_state(pins) == (0.0, 1.0, 1.0)


def test_overrides_from_the_config_file_apply(
    write_config: Callable[..., Path], open_leds: Callable[..., Any]
) -> None:
    config = load_config(
        write_config(
            '[leds]\nkind = "rgb"\npins = [5, 6, 13]\n'
            '[leds.patterns.idle]\neffect = "solid"\ncolor = "#00ff00"\n'
            '[leds.patterns.muted]\neffect = "solid"\ncolor = "#ff8000"\n'
        )
    )
    _, machine, pins = open_leds("rgb", patterns=config.leds.patterns)
    machine.transition(Phase.IDLE, "test")
    assert rgb_state(pins) == (0.0, 1.0, 0.0)
    machine.transition(Phase.MUTED, "test")
    assert rgb_state(pins) == (1.0, round(0x80 / 255, 3), 0.0)
    machine.transition(Phase.LISTENING, "test")  # not overridden: the default blue
    assert rgb_state(pins) == (0.0, round(0x40 / 255, 3), 1.0)


# -- close and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["single", "pwm", "rgb"])
def test_close_stops_patterns_turns_off_and_releases_pins(kind: str) -> None:
    pin_numbers = RGB_PINS if kind == "rgb" else (17,)
    factory = MockFactory(pin_class=MockPin if kind == "single" else MockPWMPin)
    leds = StatusLeds(LedsConfig(kind=kind, pins=pin_numbers), factory)
    pins = [factory.pin(p) for p in pin_numbers]
    leds.show(Phase.ERROR)
    wait_for(lambda: len(pins[0].states) >= 4, "the blink")
    leds.close()
    assert all(not p.state for p in pins)
    assert all(p.function == "input" for p in pins)
    count = [len(p.states) for p in pins]
    settle()
    assert [len(p.states) for p in pins] == count, "the pattern outlived close()"
    leds.show(Phase.WAKE)  # after close: ignored, not an error
    leds.close()
    # The pins are free again.
    again = StatusLeds(LedsConfig(kind=kind, pins=pin_numbers), factory)
    again.close()


def test_bad_pin_is_a_clear_error() -> None:
    with pytest.raises(LedError, match=r"leds\.pins = \['GPIO99'\] \(kind 'single'\)"):
        StatusLeds(LedsConfig(kind="single", pins=("GPIO99",)), MockFactory())


def test_pin_in_use_is_a_clear_error() -> None:
    factory = MockFactory()
    first = StatusLeds(LedsConfig(kind="single", pins=(17,)), factory)
    try:
        with pytest.raises(LedError, match=r"leds\.pins = \[17\]"):
            StatusLeds(LedsConfig(kind="single", pins=(17,)), factory)
    finally:
        first.close()


def test_pwm_kind_on_a_pin_without_pwm_is_a_clear_error() -> None:
    with pytest.raises(LedError, match=r"kind 'pwm'"):
        StatusLeds(LedsConfig(kind="pwm", pins=(17,)), MockFactory(pin_class=MockPin))
