"""Fault knobs (`--fault NAME[=VALUE]`): ways the emulator misbehaves on purpose.

Each fault mirrors a failure the device must survive against the real API: a key server that errs
or stalls, a call that is refused or never answered, a peer that vanishes, a channel that stays mute
or talks nonsense, a network path that silently dies (ICE consent stops), a media track that only
carries packets while a reply plays, transcriptions that fail, sessions cut at their maximum
length, and a jittery, lossy path for the reply's audio.

Under GPT-Live the call-setup faults (`calls-*`) hit session creation (`POST /v1/live/sessions`),
and the rest act on the Live session alike, except those that are Realtime's alone: key minting
(`mint-*`: Live has no ephemeral keys) and `transcription-failed` (Live's transcripts cannot fail
on their own: they have no configuration and no failure event).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .netpath import Jitter

# Default delay of `mint-slow`: long enough to trip a client's timeout.
MINT_SLOW_DEFAULT_S = 10.0

FAULT_HELP = {
    "mint-500": "key minting answers 500 server_error",
    "mint-429": "key minting answers 429 rate_limit_exceeded",
    "mint-slow[=S]": f"key minting answers after S seconds (default {MINT_SLOW_DEFAULT_S:g})",
    "calls-401": "call setup (or Live session creation) answers 401 invalid_api_key",
    "calls-500": "call setup (or Live session creation) answers 500 server_error",
    "calls-hang": "call setup (or Live session creation) never answers",
    "drop-after=S": "close the peer connection S seconds after the event channel opens",
    "silent": "connect, but never send an event",
    "bad-event": "send malformed JSON and unknown event types between real events",
    "consent-stop[=S]": "S seconds (default 0) after session.created, stop answering ICE checks",
    "no-idle-audio": "send no RTP at all while no reply is playing (nor in transcription sessions)",
    "transcription-failed": "every input audio transcription fails (...transcription.failed)",
    "no-reply": "never reply (after a turn, or on response.create)",
    "max-session=S": "end sessions after S seconds instead of the service's 60 minutes",
    "jitter[=D,J,L[,S]]": (
        "delay the reply's RTP packets by D ms +- J ms (reordering them) and drop L % of them "
        f"(default {Jitter.delay_s * 1000:g},{Jitter.jitter_s * 1000:g},{Jitter.loss * 100:g}); "
        "with S, only the first S seconds of each call's audio, then the path is clean"
    ),
}


class FaultError(ValueError):
    """A fault name or value that the emulator does not understand."""


@dataclass(frozen=True)
class Faults:
    """The parsed set of faults; the defaults mean a well-behaved emulator."""

    mint_500: bool = False
    mint_429: bool = False
    mint_slow_s: float | None = None
    calls_401: bool = False
    calls_500: bool = False
    calls_hang: bool = False
    drop_after_s: float | None = None
    silent: bool = False
    bad_event: bool = False
    consent_stop_s: float | None = None
    no_idle_audio: bool = False
    transcription_failed: bool = False
    no_reply: bool = False
    max_session_s: float | None = None
    jitter: Jitter | None = None

    @classmethod
    def parse(cls, specs: Iterable[str]) -> Faults:
        """Build from `NAME` / `NAME=VALUE` strings; raises FaultError naming the bad one."""
        values: dict[str, object] = {}
        for spec in specs:
            name, sep, raw = spec.strip().partition("=")
            if name == "jitter":
                values["jitter"] = _jitter(raw) if sep else Jitter()
                continue
            flag = _FLAGS.get(name)
            if flag is not None:
                if sep:
                    raise FaultError(f"fault {name!r} takes no value (got {spec!r})")
                values[flag] = True
                continue
            timed = _TIMED.get(name)
            if timed is None:
                known = ", ".join(FAULT_HELP)
                raise FaultError(f"unknown fault {spec!r} (known: {known})")
            field, default = timed
            if not sep and default is None:
                raise FaultError(f"fault {name!r} needs a value in seconds, e.g. {name}=2")
            values[field] = _seconds(name, raw) if sep else default
        return cls(**values)  # type: ignore[arg-type]

    @property
    def active(self) -> list[str]:
        """Names of the faults that are on, for the start-up log line."""
        return [
            name for name, value in vars(self).items() if value is not False and value is not None
        ]


_FLAGS = {
    "mint-500": "mint_500",
    "mint-429": "mint_429",
    "calls-401": "calls_401",
    "calls-500": "calls_500",
    "calls-hang": "calls_hang",
    "silent": "silent",
    "bad-event": "bad_event",
    "no-idle-audio": "no_idle_audio",
    "transcription-failed": "transcription_failed",
    "no-reply": "no_reply",
}
_TIMED: dict[str, tuple[str, float | None]] = {
    "mint-slow": ("mint_slow_s", MINT_SLOW_DEFAULT_S),
    "drop-after": ("drop_after_s", None),
    "consent-stop": ("consent_stop_s", 0.0),
    "max-session": ("max_session_s", None),
}


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise FaultError(f"fault {name!r}: expected seconds, got {raw!r}") from None
    if not 0 <= value <= 86400:
        raise FaultError(f"fault {name!r}: seconds must be within 0..86400, got {raw!r}")
    return value


def _jitter(raw: str) -> Jitter:
    """`D,J,L[,S]`: delay and jitter in milliseconds, loss in percent, seconds of audio."""
    parts = raw.split(",")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        delay_ms, jitter_ms, loss_pct = (float(part) for part in parts[:3])
        for_s = float(parts[3]) if len(parts) == 4 else None
    except ValueError:
        raise FaultError(
            "fault 'jitter': expected DELAY_MS,JITTER_MS,LOSS_PERCENT[,SECONDS] (e.g. 30,20,1 "
            f"or 30,20,1,10), got {raw!r}"
        ) from None
    if not (0 <= delay_ms <= 10000 and 0 <= jitter_ms <= 10000 and 0 <= loss_pct <= 100):
        raise FaultError(
            f"fault 'jitter': delay and jitter must be within 0..10000 ms and loss within "
            f"0..100 %, got {raw!r}"
        )
    if for_s is not None and not 0 < for_s <= 86400:
        raise FaultError(f"fault 'jitter': seconds must be within 0..86400, got {raw!r}")
    return Jitter(
        delay_s=delay_ms / 1000, jitter_s=jitter_ms / 1000, loss=loss_pct / 100, for_s=for_s
    )
