"""Settings of one emulator instance (what `wakertc emulator` flags map to)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Used when neither --api-key nor $OPENAI_API_KEY is given: obviously not a real key.
DEV_API_KEY = "wakertc-emulator-dev-key"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_REPLY_TEXT = "Hello! This is the wakertc emulator speaking."

ReplyPolicy = Literal["echo", "tone", "speech"]
REPLY_POLICIES: tuple[ReplyPolicy, ...] = ("echo", "tone", "speech")


@dataclass(frozen=True)
class EmulatorOptions:
    """How the emulator listens, authenticates, replies and misbehaves."""

    host: str = DEFAULT_HOST
    """Address to listen on."""
    port: int = DEFAULT_PORT
    """TCP port; 0 picks a free one (see the URL `Emulator.start()` returns)."""
    api_key: str = DEV_API_KEY
    """The one "standard" API key the emulator accepts (mints keys, opens calls)."""
    reply: ReplyPolicy = "echo"
    """What a response says when the script has no turn for it."""
    reply_text: str = DEFAULT_REPLY_TEXT
    """Text spoken (and sent as transcript) by the `speech` policy."""
    script: Path | None = None
    """JSON or TOML file of scripted turns (say / reply / call), used in order."""
    record_dir: Path | None = None
    """Per call, write `rtc_<id>/input.wav`, `output.wav` (48 kHz mono s16), `events.jsonl` and
    `frames.jsonl` (when each audio frame crossed the peer connection) here."""
    faults: tuple[str, ...] = ()
    """Fault specs such as `mint-500` or `drop-after=2` (see `faults.FAULT_HELP`)."""
    connect_timeout_s: float = 30.0
    """Close a call whose peer connection is not up this long after the answer."""
