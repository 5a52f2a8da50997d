"""The conversation phase: one enum, one transition function, listeners notified in order.

Everything that shows or reacts to what the device is doing (LEDs, sounds, systemd STATUS, the user
hook, the demo's terminal view) is a listener of `PhaseMachine`. A newcomer looking for where the
phase changes should find exactly one place: `PhaseMachine.transition`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    """What the device is doing, as the user should perceive it."""

    STARTING = "starting"
    IDLE = "idle"  # listening for the wake word
    # Listening for the wake word, but no session key could be had from the companion: the
    # keeper retries with backoff and a wake tries again. Shown so that a broken companion or
    # network is seen before someone talks to the device in vain.
    OFFLINE = "offline"
    # Listening for the wake word, but the owner's budget for this device (or the household) is
    # used up: the companion refuses sessions until the period resets. Its own pattern, so that
    # "the money ran out" is not mistaken for a broken network.
    OVER_BUDGET = "over_budget"
    WAKE = "wake"  # wake word heard or button pressed; about to connect
    CONNECTING = "connecting"
    LISTENING = "listening"  # session live, the user may speak
    THINKING = "thinking"  # the user stopped; waiting for the reply
    SPEAKING = "speaking"
    MUTED = "muted"  # microphone off by the user's choice: nothing is analysed
    ERROR = "error"  # something failed; shown briefly, then back to IDLE
    # A timer or alarm is going off: the ring repeats until a press, the wake word, Home
    # Assistant or `timers.ring_timeout_s` stops it (a long press snoozes).
    RINGING = "ringing"
    STOPPING = "stopping"

    @property
    def awaits_wake(self) -> bool:
        """Whether the device is between conversations, listening for the wake word."""
        return self in (Phase.IDLE, Phase.OFFLINE, Phase.OVER_BUDGET)


@dataclass(frozen=True)
class Transition:
    """One phase change, as delivered to listeners."""

    old: Phase
    new: Phase
    reason: str
    at: float = field(default_factory=time.time)
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The description handed to user hooks: plain JSON types only."""
        return {
            "event": "phase",
            "old": self.old.value,
            "new": self.new.value,
            "reason": self.reason,
            "time": self.at,
            **{
                k: v
                for k, v in self.details.items()
                if k not in {"event", "old", "new", "reason", "time"}
            },
        }


Listener = Callable[[Transition], None]


class PhaseMachine:
    """Holds the current phase; `transition` is the only way to change it."""

    def __init__(self, initial: Phase = Phase.STARTING) -> None:
        self._phase = initial
        self._listeners: list[Listener] = []

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` after every change, in the order listeners were added."""
        self._listeners.append(listener)

    def transition(self, new: Phase, reason: str, **details: Any) -> bool:
        """Move to `new`, log `old -> new` and notify listeners; False when already there."""
        old = self._phase
        if new is old:
            return False
        self._phase = new
        # PHASE becomes a journald field: `journalctl -u wakertc PHASE=error`.
        log.info("phase %s -> %s (%s)", old.value, new.value, reason, extra={"PHASE": new.value})
        change = Transition(old, new, reason, details=details)
        for listener in list(self._listeners):
            # A listener's bug must not stop the others or the daemon: log it and carry on.
            try:
                listener(change)
            except Exception:
                log.exception(
                    "phase listener %r failed on %s -> %s", listener, old.value, new.value
                )
        return True
