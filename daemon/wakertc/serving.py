"""Running a server command until SIGTERM/SIGINT: shared by `wakertc emulator` and `companion`."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

log = logging.getLogger(__name__)


class Server(Protocol):
    """Something that listens: `start()` returns its base URL, `stop()` shuts it down."""

    async def start(self) -> str: ...

    async def stop(self) -> None: ...


async def serve_until_signalled(server: Server, name: str, details: str = "") -> int:
    """Start `server`, log the one `NAME listening on URL` line, stop cleanly on a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start()
    try:
        log.info("%s listening on %s%s", name, url, f" ({details})" if details else "")
        await stop.wait()
        log.info("%s stopping", name)
    finally:
        await server.stop()
    return 0
