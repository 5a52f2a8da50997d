"""A local stand-in for the OpenAI Realtime API (GA), over real HTTP and real WebRTC.

    from wakertc.emulator import Emulator, EmulatorOptions
    async with Emulator(EmulatorOptions(port=0, reply="echo")) as emu:
        ...  # emu.url is http://127.0.0.1:PORT; emu.calls maps rtc_<id> -> EmulatedCall

Modules: `server` (HTTP routes, keys), `call` (one WebRTC call), `engine` (the event protocol),
`responses` (writing a response), `conversation` (items), `session` (session config), `vad`,
`audio_buffer`, `playout` (outgoing track), `replies`, `script`, `events` (event builders),
`faults`, `recorder`, `timeline` (reading the recorded frame times), `validation`, `command`
(CLI).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .command import main
from .faults import FAULT_HELP, FaultError, Faults
from .options import DEV_API_KEY, EmulatorOptions
from .script import ScriptError

if TYPE_CHECKING:
    from .call import EmulatedCall
    from .server import Emulator

__all__ = [
    "DEV_API_KEY",
    "FAULT_HELP",
    "EmulatedCall",
    "Emulator",
    "EmulatorOptions",
    "FaultError",
    "Faults",
    "ScriptError",
    "main",
]


def __getattr__(name: str) -> Any:
    # The server pulls in aiortc (~0.5 s); `wakertc emulator --help` should not wait for it.
    if name == "Emulator":
        from .server import Emulator

        return Emulator
    if name == "EmulatedCall":
        from .call import EmulatedCall

        return EmulatedCall
    raise AttributeError(name)
