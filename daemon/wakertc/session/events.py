"""What a session tells the conversation, in the same words whichever API carries it.

A session module (`realtime.py`, `live.py`) turns its API's messages into these events
and hands each to the conversation's one callback; `conversation.py` maps them onto phases and
never sees an API's event names. The session itself is driven through `Session`.

Exceptions::

    SessionFailed     the conversation could not start or was cut off (the message says why)
     +-- OverBudget   the companion refused it: the owner's budget is used up for now
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

# Longest piece of server-supplied text put into one log line (a journal on an SD card).
LOG_TEXT_LIMIT = 500


class SessionFailed(Exception):
    """The conversation could not start or was cut off; the message says why, for the log."""


class OverBudget(SessionFailed):
    """The companion refused the session: the owner's budget is used up for now."""


@dataclass(frozen=True)
class Live:
    """The session is configured and ready for the user (again, after a reconfiguration)."""


@dataclass(frozen=True)
class UserSpeaking:
    """The service heard the user start speaking."""


@dataclass(frozen=True)
class UserStopped:
    """The service heard the user stop speaking: a reply should follow."""


@dataclass(frozen=True)
class ReplyNeeded:
    """The service took the user's turn but replies only when asked (`Session.request_reply`)."""


@dataclass(frozen=True)
class ReplyStarted:
    """The model began a reply (its audio may come later, or never: text, tool calls)."""


@dataclass(frozen=True)
class ReplyAudioStarted:
    """The reply's audio started playing out of the service."""


@dataclass(frozen=True)
class ReplyAudioFinished:
    """The reply's audio stopped: it was all sent, or (`interrupted`) cut off by the device."""

    interrupted: bool = False


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made."""

    name: str
    call_id: str
    arguments: str

    @classmethod
    def of(cls, data: dict[str, Any]) -> ToolCall | None:
        """From an API's call record (name, call_id, arguments); None if broken."""
        name, call_id, arguments = data.get("name"), data.get("call_id"), data.get("arguments")
        if not isinstance(name, str) or not isinstance(call_id, str):
            return None
        return cls(name, call_id, arguments if isinstance(arguments, str) else "{}")


@dataclass(frozen=True)
class ReplyDone:
    """The reply is over; `calls` are the tool calls to run (only those of a completed reply)."""

    calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """Text of what someone said: the user (`item_id` names the turn) or the assistant."""

    role: Literal["user", "assistant"]
    text: str
    item_id: str = ""


@dataclass(frozen=True)
class TranscriptionFailed:
    """The service could not transcribe what the user said."""

    message: str
    item_id: str


@dataclass(frozen=True)
class Closed:
    """The service ended the session; `failed` when it refused or broke it rather than ended it."""

    reason: str
    failed: bool = False


Event = (
    Live
    | UserSpeaking
    | UserStopped
    | ReplyNeeded
    | ReplyStarted
    | ReplyAudioStarted
    | ReplyAudioFinished
    | ReplyDone
    | Transcript
    | TranscriptionFailed
    | Closed
)
EventSink = Callable[[Event], None]


class Session(Protocol):
    """One session with one of OpenAI's voice APIs, as the conversation drives it.

    Built without touching the network; `open()` connects (raising SessionFailed) and sets the
    session up, after which `Live` arrives as an event. Events, received audio and the loss of
    the connection go to the callbacks given at construction.
    """

    stage: str
    """What `open()` is doing now, for a timeout's message."""
    last_problem: str | None
    """The last transient problem `open()` retried after, for a timeout's message."""

    @property
    def heard_at(self) -> float | None:
        """When anything last arrived from the service (monotonic); None before a connection."""

    @property
    def manual_turns(self) -> bool:
        """Whether the user's turn ends only by the button (`end_turn`), not by the service."""

    async def open(self) -> None:
        """Connect and send the device's set-up; raises SessionFailed."""

    def handle_message(self, raw: str) -> None:
        """One message from the service's event channel; never raises."""

    def push_audio(self, samples: NDArray[np.int16]) -> None:
        """Microphone audio (16 kHz mono) into the session; queued until it is connected."""

    def end_turn(self) -> None:
        """The user's turn is over (button, no turn detection): commit it, and ask for the
        reply where the session gives one."""

    def interrupt(self) -> None:
        """Barge-in: tell the service its reply was cut off here."""

    def mute(self) -> None:
        """The microphone was muted on the device: tell the service, where it has a say."""

    def send_tool_output(self, call_id: str, output: str) -> None:
        """Give the model one tool call's result."""

    def request_reply(self) -> None:
        """Ask the model to reply to the tool results it was given."""

    def say(self, text: str) -> bool:
        """Have the model speak `text` to the user now, in its own voice (an announcement);
        False when this session cannot (a transcription session has no voice)."""

    async def close(self, *, graceful: bool = True) -> None:
        """Hang up and release the connection; idempotent. Not `graceful` after a failure:
        then nothing is waited for from a service that may be gone."""


def clip(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """Server-supplied text as it may appear in a log line: bounded, whatever was sent."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
