"""The systemd side of $NOTIFY_SOCKET, for tests: a real datagram socket and what arrived."""

from __future__ import annotations

import queue
import socket
import threading
import time


class NotifyServer:
    """What systemd's side of $NOTIFY_SOCKET sees: datagrams with their arrival times."""

    def __init__(self, address: str) -> None:
        self.address = address
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.received: queue.Queue[tuple[float, str]] = queue.Queue()
        self._stop = threading.Event()
        # A thread, not the event loop, so datagrams are timed even while the loop is blocked.
        self._thread = threading.Thread(target=self._read, name="notify-server", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.put((time.monotonic(), data.decode()))

    def next(self, timeout: float = 2.0) -> str:
        return self.received.get(timeout=timeout)[1]

    def drain(self) -> list[tuple[float, str]]:
        items = []
        while True:
            try:
                items.append(self.received.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
