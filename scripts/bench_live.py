"""In-process parts of scripts/bench.py: the loopback servers, inputs, configs and session timing.

- `Stack`: the Realtime emulator and the companion on 127.0.0.1, as `wakertc demo` runs them.
- `make_idle_input`: a microphone recording with a noise floor, no speech for `idle_s`, then
  `cycles` times "hey jarvis, what time is it" at a fixed period.
- `write_daemon_config`: a device config for the file backend pointing at a `Stack`, for
  either API.
- `aiortc_round_trip`: the Realtime reference, two bare aiortc peers on loopback (optionally with
  audio).
- `live_relay_round_trip`: the GPT-Live reference, a bare aiortc peer getting a session through
  the companion's relay from the emulator, up to `session.started`.
- `LiveSessions`: a `Daemon` in this process whose conversations are started by
  `Daemon.start_conversation()` (as the button does) over silent input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from wakertc.config import load_config
from wakertc.demo import WAKE_TEXT, espeak
from wakertc.emulator.options import ReplyPolicy
from wakertc.measure import write_wav

RATE = 16000
API_KEY = "wakertc-bench-key-not-secret"
QUESTION = "what time is it"
NOISE_DBFS = -50.0
SESSION_TIMEOUT_S = 30.0


class Stack:
    """Emulator and companion on loopback, plus a registered device token file."""

    def __init__(self, workdir: Path, *, reply: ReplyPolicy = "tone") -> None:
        self.workdir = workdir
        self.reply = reply
        self.emulator_url = ""
        self.companion_url = ""
        self.token_file = workdir / "device-token"
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Stack:
        from wakertc.companion import Companion, DeviceStore, load_companion_config
        from wakertc.emulator import Emulator, EmulatorOptions

        emulator = Emulator(
            EmulatorOptions(host="127.0.0.1", port=0, api_key=API_KEY, reply=self.reply)
        )
        self.emulator_url = await emulator.start()
        self._stack.push_async_callback(emulator.stop)
        path = self.workdir / "companion.toml"
        # Limits raised: the bench mints a key per daemon start, far above a household's rate.
        path.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = 0\n\n[upstream]\nurl = "{self.emulator_url}"\n\n'
            f'[devices]\nfile = "{self.workdir / "devices.json"}"\n\n'
            "[limits]\nper_device_per_minute = 10000\nglobal_per_minute = 100000\n"
        )
        path.chmod(0o600)
        config = load_companion_config(path)
        token = DeviceStore(config.devices_file).add("bench-device")
        companion = Companion(config, api_key=API_KEY)
        self.companion_url = await companion.start()
        self._stack.push_async_callback(companion.stop)
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()


def make_idle_input(path: Path, idle_s: float, cycles: int, period_s: float) -> list[float]:
    """Write the microphone WAV; returns when each wake phrase starts (seconds into the file)."""
    rng = np.random.default_rng(0)
    wake = espeak(WAKE_TEXT)
    question = espeak(QUESTION)
    phrase = np.concatenate([wake, question])
    if len(phrase) / RATE > period_s - 2.0:
        raise ValueError(f"a {period_s:g} s cycle is too short for the phrase")
    total = int((idle_s + cycles * period_s + 2.0) * RATE)
    samples = rng.normal(0.0, 10 ** (NOISE_DBFS / 20), total).astype(np.float32)
    starts = []
    for k in range(cycles):
        start = idle_s + k * period_s
        at = int(start * RATE)
        samples[at : at + len(phrase)] += phrase
        starts.append(start)
    write_wav(path, samples, RATE)
    return starts


def write_daemon_config(
    path: Path,
    stack: Stack,
    *,
    input_wav: Path,
    output_wav: Path,
    models_dir: Path,
    idle_timeout_s: float,
    api: str = "realtime",
) -> Path:
    """A device config: file backend, no GPIO, the stack's companion and emulator, `api`."""
    path.write_text(
        f"""
[audio]
backend = "file"
input_file = "{input_wav}"
output_file = "{output_wav}"

[wake]
models_dir = "{models_dir}"

[companion]
url = "{stack.companion_url}"
token_file = "{stack.token_file}"

[session]
api = "{api}"
url = "{stack.emulator_url}"
connect_timeout_s = 10.0
idle_timeout_s = {idle_timeout_s}

[log]
level = "info"
"""
    )
    path.chmod(0o600)
    return path


async def aiortc_round_trip(*, audio: bool = False, within_s: float = 10.0) -> float:
    """Seconds for two bare aiortc peers to connect and round-trip one data-channel message.

    With `audio`, each side also sends an audio track (silence), as a voice session does: the
    difference shows what the media part of a session costs on top of the bare handshake.
    """
    started = time.monotonic()
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    echoed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    try:
        channel = offerer.createDataChannel("oai-events")
        if audio:
            offerer.addTrack(AudioStreamTrack())

        @answerer.on("datachannel")
        def on_channel(remote: Any) -> None:
            remote.on("message", remote.send)

        @channel.on("open")
        def on_open() -> None:
            channel.send("ping")

        @channel.on("message")
        def on_message(message: str) -> None:
            if not echoed.done():
                echoed.set_result(message)

        async with asyncio.timeout(within_s):
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            if audio:
                answerer.addTrack(AudioStreamTrack())
            await answerer.setLocalDescription(await answerer.createAnswer())
            await offerer.setRemoteDescription(answerer.localDescription)
            await echoed
        return time.monotonic() - started
    finally:
        await offerer.close()
        await answerer.close()


async def live_relay_round_trip(stack: Stack, *, within_s: float = 10.0) -> float:
    """Seconds for a bare aiortc peer to get a GPT-Live session through the companion's relay.

    The minimal path with the daemon's parts: an offer with the `oai-events` channel and an
    audio track (silence; the service wants one), posted to the companion (`POST
    /v1/live/session` with the device token), which creates the session at the emulator; the
    answer applied; done at `session.started`. No wakertc code on the device's side.
    """
    token = stack.token_file.read_text().strip()
    url = stack.companion_url.rstrip("/") + "/v1/live/session"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        started = time.monotonic()
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel = peer.createDataChannel("oai-events")
        try:
            peer.addTrack(AudioStreamTrack())

            @channel.on("message")
            def on_message(message: str) -> None:
                if not live.done() and json.loads(message).get("type") == "session.started":
                    live.set_result(None)

            async with asyncio.timeout(within_s):
                await peer.setLocalDescription(await peer.createOffer())
                response = await http.post(url, json={"sdp": peer.localDescription.sdp})
                if response.status_code != 201:
                    raise RuntimeError(f"the companion's relay answered {response.status_code}")
                answer = response.json()["transport"]["sdp"]
                await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await live
            return time.monotonic() - started
        finally:
            if channel.readyState == "open":  # the emulator ends its side at once
                channel.send(json.dumps({"type": "session.close"}))
            await peer.close()


class LiveSessions:
    """A daemon in this process, conversations opened by `start_conversation()`."""

    def __init__(self, config_path: Path) -> None:
        from wakertc.daemon import Daemon
        from wakertc.state import Phase, Transition

        self._idle = Phase.IDLE
        self.daemon = Daemon(load_config(config_path))
        self._changed = asyncio.Condition()
        self._ended = 0
        self.errors: list[str] = []
        self._runner: asyncio.Task[None] | None = None

        def watch(change: Transition) -> None:
            if change.new is Phase.IDLE and change.reason.startswith("conversation over"):
                self._ended += 1
            elif change.new is Phase.ERROR:
                self.errors.append(change.reason)
            asyncio.get_running_loop().create_task(self._notify(), name="bench-phase-notify")

        self.daemon.phases.add_listener(watch)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def start(self, within_s: float = 30.0) -> None:
        """Run the daemon until it listens with a session key in hand."""
        self._runner = asyncio.get_running_loop().create_task(self.daemon.run(), name="bench-live")
        async with asyncio.timeout(within_s):
            async with self._changed:
                await self._changed.wait_for(lambda: self.daemon.phases.phase is self._idle)
            await self.daemon.keys.get()  # the key kept ready, as a daemon has it after start

    async def converse(self) -> float:
        """Open one conversation, wait for its end; seconds from the start to session.updated."""
        before, failures = self._ended, len(self.errors)
        self.daemon.start_conversation("bench")
        async with asyncio.timeout(SESSION_TIMEOUT_S), self._changed:
            await self._changed.wait_for(
                lambda: self._ended > before or len(self.errors) > failures
            )
        if len(self.errors) > failures:
            raise RuntimeError(f"a conversation failed: {self.errors[-1]}")
        if self.daemon.last_wake_to_live_s is None:
            raise RuntimeError("a conversation ended without going live")
        return self.daemon.last_wake_to_live_s

    async def stop(self) -> None:
        """Shut the daemon down."""
        self.daemon.stop()
        if self._runner is not None:
            await self._runner
