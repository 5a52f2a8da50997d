"""Shared pieces for the emulator and companion tests: a device-like aiortc client, real speech,
and SDK-based shape checks. Everything here is real: aiortc peers, espeak-ng, HTTP over loopback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import json
import re
import subprocess
import typing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler

from wakertc.emulator import Emulator, EmulatorOptions
from wakertc.emulator.replies import wav_to_48k_mono

RATE = 48000
FRAME = 960
EVENT_TIMEOUT = 10.0
KEY = "sk-test-standard-key"


@contextlib.asynccontextmanager
async def running_emulator(**options: Any) -> typing.AsyncIterator[Emulator]:
    """A real emulator on a free loopback port, accepting `KEY` unless told otherwise."""
    extra = {"clock": options.pop("clock")} if "clock" in options else {}
    settings: dict[str, Any] = {"port": 0, "api_key": KEY, **options}
    async with Emulator(EmulatorOptions(**settings), **extra) as emulator:
        yield emulator


async def mint(base_url: str, session: dict[str, Any] | None = None, **body: Any) -> str:
    """An ephemeral key from the emulator (GA client_secrets) using the standard key."""
    payload = {"session": session or {"type": "realtime"}, **body}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            base_url + "/v1/realtime/client_secrets",
            json=payload,
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 200, response.text
    return str(response.json()["value"])


async def connected_client(base_url: str, session: dict[str, Any] | None = None) -> RealtimeClient:
    """A client with a fresh key, connected, with `session.created` already consumed."""
    client = RealtimeClient()
    await client.connect(base_url, await mint(base_url, session))
    created = await client.next_event()
    assert created["type"] == "session.created"
    return client


def assert_all_valid(events: list[dict[str, Any]]) -> None:
    """Every server event validates against the SDK's `RealtimeServerEvent`."""
    assert events
    for event in events:
        validate_server_event(event)


def espeak(text: str, tmp: Path, *, voice: str = "en-us", wpm: int = 150) -> np.ndarray:
    """Real speech from espeak-ng, as 48 kHz mono int16."""
    out = tmp / f"espeak-{abs(hash(text))}.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), text],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return wav_to_48k_mono(out.read_bytes())


def envelope(samples: np.ndarray, window: int = 480) -> np.ndarray:
    """RMS envelope in 10 ms windows."""
    n = len(samples) // window
    frames = samples[: n * window].astype(np.float64).reshape(n, window)
    return np.sqrt(np.mean(frames**2, axis=1))


def envelope_correlation(sent: np.ndarray, received: np.ndarray) -> float:
    """Peak normalised cross-correlation of the two envelopes over all lags."""
    a, b = envelope(sent), envelope(received)
    a = (a - a.mean()) / (a.std() or 1.0)
    b = (b - b.mean()) / (b.std() or 1.0)
    full = np.correlate(b, a, mode="full")
    # Normalise by the overlap at each lag so a partial overlap cannot score above 1.
    overlap = np.correlate(np.ones_like(b), np.ones_like(a), mode="full")
    valid = overlap >= 0.8 * min(len(a), len(b))
    return float((full[valid] / overlap[valid]).max())


def find_offset(haystack: np.ndarray, needle: np.ndarray) -> int:
    """Where `needle` sits in `haystack` (in samples, 10 ms resolution), by envelope matching."""
    a, b = envelope(needle), envelope(haystack)
    a = a - a.mean()
    b = b - b.mean()
    scores = np.correlate(b, a, mode="valid")
    return int(np.argmax(scores)) * 480


class MicTrack(MediaStreamTrack):
    """A paced 48 kHz mono microphone: queued audio first, silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._pending = np.zeros(0, dtype=np.int16)
        self._start: float | None = None
        self._pts = 0
        self._drained = asyncio.Event()
        self._drained.set()

    def play(self, samples: np.ndarray) -> int:
        """Queue audio after what is already queued; returns its stream position in samples."""
        position = self._pts + len(self._pending) + sum(len(q) for q in self._queue)
        self._queue.append(samples.astype(np.int16))
        self._drained.clear()
        return position

    async def wait_played(self) -> None:
        """Until everything queued has been sent."""
        await self._drained.wait()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            wait = self._start + self._pts / RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        while len(self._pending) < FRAME and self._queue:
            self._pending = np.concatenate((self._pending, self._queue.popleft()))
        chunk = self._pending[:FRAME]
        self._pending = self._pending[FRAME:]
        if len(chunk) < FRAME:
            chunk = np.concatenate((chunk, np.zeros(FRAME - len(chunk), dtype=np.int16)))
        if not len(self._pending) and not self._queue:
            self._drained.set()
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class RealtimeClient:
    """A device-like WebRTC client: `oai-events` channel + one sendrecv Opus track."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.opened = asyncio.Event()
        self.channel_closed = asyncio.Event()
        self.events: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # loop time each event arrived
        self.raw: list[str] = []
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # Received audio as (loop time, 48 kHz mono samples) per frame.
        self.audio: list[tuple[float, np.ndarray]] = []
        self.call_id: str | None = None
        self.answer_sdp = ""
        self.offer_sdp = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.channel.on("open", self.opened.set)
        self.channel.on("close", self.channel_closed.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    def _on_message(self, message: str | bytes) -> None:
        text = message.decode() if isinstance(message, bytes) else message
        self.raw.append(text)
        try:
            event = json.loads(text)
        except ValueError:
            return
        if isinstance(event, dict):
            self.events.append(event)
            self.arrivals.append(asyncio.get_running_loop().time())
            self._queue.put_nowait(event)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._pump(track)))

    async def _pump(self, track: MediaStreamTrack) -> None:
        resampler = AudioResampler(format="s16", layout="mono", rate=RATE)
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                self.audio.append((loop.time(), out.to_ndarray().reshape(-1).copy()))

    async def offer(self) -> str:
        """Create and apply the local offer; returns its SDP."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.offer_sdp = self.pc.localDescription.sdp
        return self.offer_sdp

    async def connect(self, base_url: str, key: str, path: str = "/v1/realtime/calls") -> None:
        """The device's flow: offer, POST it, check 201, apply the answer, wait for the channel."""
        offer = await self.offer()
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                base_url + path,
                content=offer.encode(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
            )
        assert response.status_code == 201, response.text
        assert response.headers["content-type"].startswith("application/sdp")
        self.call_id = response.headers["location"].rsplit("/", 1)[-1]
        await self.accept(response.text)

    async def accept(self, answer: str) -> None:
        """Apply an answer SDP and wait for the event channel to open."""
        self.answer_sdp = answer
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(self.opened.wait(), EVENT_TIMEOUT)

    def send(self, event: dict[str, Any]) -> None:
        """Send one client event."""
        self.channel.send(json.dumps(event))

    async def next_event(self, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """The next event received."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def wait_for(self, type_: str, timeout: float = EVENT_TIMEOUT) -> dict[str, Any]:
        """Skip events until one of `type_` arrives."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self._queue.get()
                if event.get("type") == type_:
                    return event

    def arrival(self, event: dict[str, Any]) -> float:
        """Loop time at which `event` arrived."""
        return self.arrivals[next(i for i, e in enumerate(self.events) if e is event)]

    def types(self) -> list[str]:
        """Types of all events received so far, in order."""
        return [e["type"] for e in self.events]

    def audio_between(self, start: float, end: float) -> np.ndarray:
        """Received audio from frames that arrived between two loop times."""
        chunks = [samples for t, samples in self.audio if start <= t <= end]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        """Close the peer connection."""
        self.mic.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def ice_credentials(sdp: str) -> tuple[str, str]:
    """(ufrag, pwd) from an SDP."""
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp)
    assert ufrag and pwd
    return ufrag.group(1), pwd.group(1)


def host_candidates(sdp: str) -> list[tuple[str, int]]:
    """UDP host candidates (address, port) from an SDP."""
    found = re.findall(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", sdp)
    return [(addr, int(port)) for addr, port in found if ":" not in addr]


_server_adapter: Any = None


def validate_server_event(event: dict[str, Any]) -> None:
    """Raise unless `event` validates as the SDK's `RealtimeServerEvent` (and has that type)."""
    global _server_adapter
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    if _server_adapter is None:
        _server_adapter = TypeAdapter(RealtimeServerEvent)
    model = _server_adapter.validate_python(event)
    assert model.type == event["type"]


def server_event_types() -> set[str]:
    """Every event type name in the SDK's server event union."""
    from openai.types.realtime import RealtimeServerEvent

    members = typing.get_args(typing.get_args(RealtimeServerEvent)[0])
    return {typing.get_args(m.model_fields["type"].annotation)[0] for m in members}


async def spawn_server(
    module: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 10.0,
    prefix: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> tuple[asyncio.subprocess.Process, str, float, list[str]]:
    """Start `wakertc.<module>.main` in a child; wait for its ready line.

    `prefix` goes before the interpreter (e.g. `setpriv --reuid ...` to run as another user).
    Returns the process, the URL from `listening on URL`, the seconds it took, and the stderr
    lines read so far.
    """
    import os
    import sys
    import time

    code = f"import sys; from wakertc.{module} import main; sys.exit(main(sys.argv[1:]))"
    began = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                await proc.wait()
                raise AssertionError(f"exited {proc.returncode} before ready: {''.join(lines)}")
            line = raw.decode()
            lines.append(line)
            found = re.search(r"listening on (https?://\S+)", line)
            if found:
                return proc, found.group(1), time.monotonic() - began, lines


def cpu_seconds(proc: asyncio.subprocess.Process) -> float:
    """CPU time (user + system) the child has used so far, from /proc: what its own start-up
    costs, where the wall clock also counts a loaded or page-reclaiming host (a cold start
    of the emulator once took 2.45 s in CI, against ~0.5 s, at ~0.6 CPU seconds)."""
    import os

    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill a child `spawn_server` started if it still runs (a test that failed before
    stopping it must not leave a server behind)."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def stop_server(proc: asyncio.subprocess.Process, sig: int) -> tuple[int, float, str]:
    """Signal a child started by `spawn_server`; returns (exit code, seconds, rest of stderr)."""
    import time

    assert proc.stderr is not None
    began = time.monotonic()
    proc.send_signal(sig)
    rest = await asyncio.wait_for(proc.stderr.read(), 10)
    code = await asyncio.wait_for(proc.wait(), 10)
    return code, time.monotonic() - began, rest.decode()


async def run_command(
    module: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `wakertc.<module>.main` to completion; returns (exit code, stdout, stderr)."""
    import os
    import sys

    code = f"import sys; from wakertc.{module} import main; sys.exit(main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (an IP SAN), written as PEM; returns (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def companion_config_file(directory: Path, upstream_url: str, extra: str = "") -> Path:
    """A companion config using `upstream_url` and the standard key `KEY` from a key file.

    `extra` is TOML appended inside the file; it may add keys to [server], [upstream],
    [session] or [limits] by restating those tables' keys (see the tests).
    """
    key_file = directory / "openai-key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    sections = _parse_sections(extra)
    server = sections.pop("server", "")
    upstream = sections.pop("upstream", "")
    sections.setdefault("devices", 'file = "devices.json"\n')
    text = (
        f"[server]\nport = 0\n{server}\n"
        f'[upstream]\nurl = "{upstream_url}"\napi_key_file = "openai-key"\n{upstream}\n'
        + "".join(f"[{name}]\n{body}\n" for name, body in sections.items())
    )
    path = directory / "companion.toml"
    path.write_text(text)
    return path


def _parse_sections(extra: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = None
    for line in extra.strip().splitlines():
        header = re.fullmatch(r"\[([a-z_.]+)\]", line.strip())
        if header:
            current = header.group(1)
            sections.setdefault(current, "")
        elif current is not None:
            sections[current] += line + "\n"
    return sections


_live_adapters: tuple[Any, Any] | None = None


def validate_live_server_event(event: dict[str, Any]) -> None:
    """Raise unless `event` validates as the SDK's Live `ServerEvent`, or as its
    `ConnectServerEvent` for the types only that union carries (paused/resumed)."""
    global _live_adapters
    from openai.types.live import ConnectServerEvent, ServerEvent
    from pydantic import TypeAdapter

    if _live_adapters is None:
        _live_adapters = (TypeAdapter(ServerEvent), TypeAdapter(ConnectServerEvent))
    server, connect = _live_adapters
    members = typing.get_args(typing.get_args(ServerEvent)[0])
    carried = {typing.get_args(m.model_fields["type"].annotation)[0] for m in members}
    model = (server if event.get("type") in carried else connect).validate_python(event)
    assert model.type == event["type"]


def live_session_body(sdp: str, **session: Any) -> dict[str, Any]:
    """A `POST /v1/live/sessions` body: a gpt-live-1.1 session and the offer."""
    return {
        "session": {"model": "gpt-live-1.1", **session},
        "transport": {"type": "webrtc", "sdp": sdp},
    }


async def connected_live_client(base_url: str, **session: Any) -> RealtimeClient:
    """A device-like client on a new Live session, `session.started` already consumed."""
    client = RealtimeClient()
    offer = await client.offer()
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            base_url + "/v1/live/sessions",
            json=live_session_body(offer, **session),
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert response.status_code == 201, response.text
    body = response.json()
    client.call_id = body["session"]["id"]
    await client.accept(body["transport"]["sdp"])
    started = await client.next_event()
    assert started["type"] == "session.started", started
    assert started["session"]["id"] == client.call_id
    return client


_responses_adapter: Any = None


def validate_responses_stream_event(nested: dict[str, Any]) -> None:
    """Raise unless `nested` (what a Live `response.event` carries) validates as the SDK's
    Responses `ResponseStreamEvent`, with no field that model does not have."""
    global _responses_adapter
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    if _responses_adapter is None:
        _responses_adapter = TypeAdapter(ResponseStreamEvent)
    model = _responses_adapter.validate_python(nested)
    assert model.type == nested["type"]
    extra = model.model_extra
    assert not extra, f"{nested['type']} has fields the SDK's model has not: {extra}"
