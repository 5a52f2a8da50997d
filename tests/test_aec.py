"""The echo canceller's learning gate (aec.py), on livekit's real AEC3.

Until the canceller has heard `LEARN_S` of the device's voice, `may_leak` is true from each
voiced reference chunk until `ECHO_TAIL_S` after it; silence in the reference teaches nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from wakertc import aec
from wakertc.aec import CHUNK, ECHO_TAIL_S, LEARN_S, EchoCanceller


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(aec, "time", clock)
    return clock


def voice(seconds: float, dbfs: float = -20.0) -> np.ndarray:
    """A 300 Hz tone with a little noise: voiced reference at `dbfs` RMS."""
    n = round(seconds * aec.CAPTURE_RATE)
    t = np.arange(n) / aec.CAPTURE_RATE
    rng = np.random.default_rng(1)
    wave = np.sin(2 * np.pi * 300 * t) + 0.1 * rng.standard_normal(n)
    wave *= 10 ** (dbfs / 20) / np.sqrt(np.mean(wave**2))
    return np.round(wave * 32767).astype(np.int16)


def test_silence_teaches_nothing_and_leaks_nothing(clock: Clock) -> None:
    canceller = EchoCanceller()
    for _ in range(100):  # 10 s of silence, and of hiss below the voiced level
        canceller.render(np.zeros(16 * CHUNK, np.int16))
        canceller.render(voice(0.1, dbfs=-60))
        clock.now += 0.1
    assert not canceller.may_leak()
    assert not canceller.learned


def test_voice_closes_the_gate_until_the_echo_tail_has_passed(clock: Clock) -> None:
    canceller = EchoCanceller()
    canceller.render(voice(0.2))
    assert canceller.may_leak()
    clock.now += ECHO_TAIL_S - 0.01
    assert canceller.may_leak()
    clock.now += 0.02
    assert not canceller.may_leak()
    assert not canceller.learned  # 0.2 s heard: still learning, so the next voice gates again
    canceller.render(voice(0.1))
    assert canceller.may_leak()


def test_after_enough_voice_the_canceller_is_trusted_alone(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    canceller = EchoCanceller()
    heard = 0.0
    while heard + 0.1 < LEARN_S:  # in pieces, with pauses between, as a reply comes
        canceller.render(voice(0.1))
        canceller.render(np.zeros(CHUNK * 5, np.int16))
        heard += 0.1
        clock.now += 0.15
        assert canceller.may_leak()
    canceller.render(voice(0.1))
    with caplog.at_level(logging.INFO, logger="wakertc.aec"):
        assert not canceller.may_leak()  # right after voice, yet trusted
        assert not canceller.may_leak()
    assert canceller.learned
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("echo canceller has learned the room (2.5 s")
    # Another audio device: it learns again.
    canceller.relearn()
    assert not canceller.learned
    canceller.render(voice(0.1))
    assert canceller.may_leak()
