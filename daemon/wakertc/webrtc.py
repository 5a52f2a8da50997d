"""One WebRTC call to OpenAI: offer/answer over HTTP, the event channel, audio both ways.

`RealtimeCall` posts its offer to the Realtime API itself (`connect`); for GPT-Live the offer
goes through the companion, which `negotiate` is given as the exchange. It knows nothing of
conversations: it connects, delivers each data-channel message and
each received audio frame to the callbacks it was given, and reports when the peer is gone.
`conversation.py` decides what the events mean.

Liveness (`heard_at`) rests on nothing the service may or may not send (it need not send audio
between replies): every datagram the peer sends through DTLS counts, as the transport's
`packetsReceived` (W3C stats, `getStats()`): its RTP, its RTCP (receiver reports on the device's
own microphone audio, which always flows, and sender reports), and SCTP (data, SACKs). When the
peer has been quiet for `PROBE_AFTER_S`, the call asks for an answer every peer must give: an SCTP
HEARTBEAT, which any SCTP stack acknowledges at once (RFC 9260 8.3), so a live path is heard
within a round trip whatever the peer's RTCP interval (libwebrtc's for audio is 5 s on average).

Exceptions::

    CallError                 the call could not be set up or was lost
     +-- CallRejected         the API answered the offer with an error status (`status` is set)
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcsctptransport import HeartbeatChunk  # for RealtimeCall._probe
from av import AudioFrame, AudioResampler
from numpy.typing import NDArray

from . import jitter
from .audio import CAPTURE_RATE, PLAYBACK_RATE
from .keys import error_message

log = logging.getLogger(__name__)

# Cap on audio waiting to be sent (the sender only starts pulling once DTLS is up).
MAX_QUEUED_S = 15.0
# How often the transport's received-packet count is read.
HEARD_POLL_S = 0.25
# After this long without a packet from the peer, ask for an acknowledgement (and again as often).
PROBE_AFTER_S = 1.0
# SCTP's Heartbeat Info parameter type (RFC 9260 3.3.5); its value comes back unchanged.
HEARTBEAT_INFO = 1
SEND_RATE = 48000  # Opus's own rate: aiortc's encoder passes such frames straight through


class CallError(Exception):
    """The call could not be set up, or it was lost."""


class CallRejected(CallError):
    """The Realtime API answered the offer with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class MicTrack(MediaStreamTrack):
    """The microphone as an outgoing WebRTC track, fed 16 kHz mono frames by the daemon.

    Frames pushed before the call is up (the words right after the wake word) wait in the queue and
    go out first, so nothing said in one breath with the wake word is lost.

    Frames leave at 48 kHz. aiortc's Opus encoder converts any other rate through a resampler that
    hands the codec whole 960-sample frames; that resampler's 1 ms of delay left every frame 1 ms
    short, so each waited for the next: 20 ms on every packet (scripts/bench_latency.py). The same
    conversion (libswresample) done here, with its delay padded in front once, gives the encoder
    whole frames.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames: collections.deque[NDArray[np.int16]] = collections.deque()
        self._available = asyncio.Event()
        self._resampler = AudioResampler(format="s16", layout="mono", rate=SEND_RATE)
        self._in_pts = 0
        self._pts = 0
        self._max_samples = int(MAX_QUEUED_S * CAPTURE_RATE)
        self._queued_samples = 0
        self.sent_samples = 0

    def push(self, samples: NDArray[np.int16]) -> None:
        """Queue int16 mono 16 kHz audio to send (called on the loop thread)."""
        self._frames.append(samples)
        self._queued_samples += len(samples)
        while self._queued_samples > self._max_samples:
            self._queued_samples -= len(self._frames.popleft())
        self._available.set()

    def take_over(self, other: MicTrack) -> None:
        """Queue the audio `other` had not sent yet (a failed attempt's track), in order."""
        for samples in other._frames:
            self.push(samples)

    @property
    def queued_s(self) -> float:
        """Seconds of audio waiting to be sent."""
        return self._queued_samples / CAPTURE_RATE

    async def recv(self) -> AudioFrame:
        """Next frame for the encoder; waits for the microphone when nothing is queued."""
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._available.clear()
            await self._available.wait()
        samples = self._frames.popleft()
        self._queued_samples -= len(samples)
        self.sent_samples += len(samples)
        out = self._upsample(samples)
        frame = AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SEND_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, SEND_RATE)
        self._pts += len(out)
        return frame

    def _upsample(self, samples: NDArray[np.int16]) -> NDArray[np.int16]:
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = CAPTURE_RATE
        frame.pts = self._in_pts
        frame.time_base = fractions.Fraction(1, CAPTURE_RATE)
        self._in_pts += len(samples)
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        out: NDArray[np.int16] = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        whole = len(samples) * SEND_RATE // CAPTURE_RATE
        if self._pts == 0 and len(out) < whole:
            # The resampler keeps its filter delay back once, at the start: pad it there.
            out = np.concatenate([np.zeros(whole - len(out), np.int16), out])
        return out

    def stop(self) -> None:
        """End the track; a pending `recv` raises MediaStreamError."""
        super().stop()
        self._available.set()


class RealtimeCall:
    """A peer connection to the Realtime API with its `oai-events` channel and audio tracks."""

    def __init__(
        self,
        *,
        base_url: str,
        http: httpx.AsyncClient,
        ice_servers: tuple[str, ...],
        mic: MicTrack,
        on_event: Callable[[str], None],
        on_audio: Callable[[NDArray[np.int16]], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._calls_url = base_url.rstrip("/") + "/v1/realtime/calls"
        self._http = http
        self._mic = mic
        self._on_event = on_event
        self._on_audio = on_audio
        self._on_lost = on_lost
        servers = [RTCIceServer(urls=url) for url in ice_servers]
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._channel = self._pc.createDataChannel("oai-events")
        self._channel_open = asyncio.Event()
        self._pc.addTrack(mic)
        for transceiver in self._pc.getTransceivers():
            # the reply's audio: frames out as soon as they are in order (jitter.py)
            jitter.install(transceiver.receiver)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.call_id: str | None = None
        self._key: str | None = None
        self.heard_at = time.monotonic()
        """When something from the peer last arrived (monotonic): any packet, message or frame."""
        self.probes = 0
        """Acknowledgements asked for because the peer was quiet (for logs and tests)."""

        @self._channel.on("open")
        def _open() -> None:
            self._channel_open.set()

        @self._channel.on("message")
        def _message(message: Any) -> None:
            self.heard_at = time.monotonic()
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
            self._on_event(message)

        @self._channel.on("close")
        def _channel_closed() -> None:
            self._lost("event channel closed")

        @self._pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self._spawn(self._pump_audio(track), "remote-audio")

        @self._pc.on("connectionstatechange")
        def _state() -> None:
            state = self._pc.connectionState
            log.debug("peer connection %s", state)
            if state in ("failed", "closed"):
                self._lost(f"peer connection {state}")

    async def connect(self, key: str) -> None:
        """Offer, POST it, apply the answer and wait for the event channel to open."""
        self._key = key
        await self.negotiate(self._post_offer, "the Realtime API")

    async def negotiate(self, exchange: Callable[[str], Awaitable[str]], answerer: str) -> None:
        """Offer (ICE gathering complete), trade it for the answer through `exchange`, apply
        it and wait for the event channel to open; `answerer` names who answers, for errors."""
        started = time.monotonic()
        description = await self._pc.createOffer()
        # ICE gathering binds a UDP socket per host address, and aioice only records them once
        # all are bound: cancelled half-way (SIGTERM while connecting), it leaks the first ones,
        # which stay registered with the loop. Gathering takes milliseconds: let it finish, then
        # honour the cancellation (close() then releases the sockets).
        gathering = asyncio.ensure_future(self._pc.setLocalDescription(description))
        try:
            await asyncio.shield(gathering)
        except asyncio.CancelledError:
            await asyncio.wait({gathering})
            if not gathering.cancelled():
                gathering.exception()  # seen: the cancellation is what is reported
            raise
        answer = await exchange(self._pc.localDescription.sdp)
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except ValueError as exc:
            raise CallError(f"{answerer} sent an unusable answer: {exc}") from exc
        await self._channel_open.wait()
        self.heard_at = time.monotonic()
        self._spawn(self._watch_peer(), "watch-peer")
        log.info("call %s connected in %.0f ms", self.call_id, (time.monotonic() - started) * 1000)

    async def _post_offer(self, offer: str) -> str:
        """The Realtime API's exchange: POST the SDP with the key, 201 with the answer."""
        assert self._key is not None
        key = self._key
        try:
            response = await self._http.post(
                self._calls_url,
                content=offer.encode(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
            )
        except httpx.TimeoutException as exc:
            raise CallError("the Realtime API did not answer the offer in time") from exc
        except httpx.HTTPError as exc:
            raise CallError(
                f"could not reach the Realtime API: {str(exc) or type(exc).__name__}"
            ) from exc
        if response.status_code != 201:
            raise CallRejected(
                f"the Realtime API refused the call ({response.status_code}: "
                f"{error_message(response)})",
                response.status_code,
            )
        location = response.headers.get("Location", "")
        self.call_id = location.rstrip("/").rsplit("/", 1)[-1] or None
        return response.text

    @property
    def peer_connection(self) -> RTCPeerConnection:
        """The underlying peer connection, for diagnostics (states, statistics, ICE)."""
        return self._pc

    def send(self, event: dict[str, Any]) -> bool:
        """Send one client event; False when the channel is not open."""
        if self._channel.readyState != "open":
            return False
        self._channel.send(json.dumps(event))
        return True

    async def close(self, *, hang_up: bool = True) -> None:
        """Hang up (best effort) and close the peer connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        if hang_up and self.call_id and self._key:
            try:
                await self._http.post(
                    f"{self._calls_url}/{self.call_id}/hangup",
                    headers={"Authorization": f"Bearer {self._key}"},
                    timeout=1.0,  # never hold up a shutdown or the next wake
                )
            except httpx.HTTPError as exc:
                log.debug("hang-up request failed: %s", exc)
        self._mic.stop()
        await self._pc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _lost(self, why: str) -> None:
        if not self._closed:
            self._on_lost(why)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"call-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_peer(self) -> None:
        """Keep `heard_at` current from the transport's packet count; probe a quiet peer."""
        received = -1
        probed_at = 0.0
        while True:
            await asyncio.sleep(HEARD_POLL_S)
            count = await self._packets_received()
            now = time.monotonic()
            if count is not None and count != received:
                received = count
                self.heard_at = now
            if now - self.heard_at >= PROBE_AFTER_S and now - probed_at >= PROBE_AFTER_S:
                probed_at = now
                await self._probe()

    async def _packets_received(self) -> int | None:
        """Datagrams received through DTLS so far (RTP, RTCP and SCTP alike); None if the
        statistics could not be read (a failed read is not news from the peer)."""
        try:
            report = await self._pc.getStats()
        except Exception as exc:  # closing underneath us: nothing new was heard
            log.debug("could not read the call's statistics: %s", exc)
            return None
        return sum(
            int(getattr(stats, "packetsReceived", 0) or 0)
            for stats in report.values()
            if getattr(stats, "type", None) == "transport"
        )

    async def _probe(self) -> None:
        """Ask the peer's SCTP stack for a HEARTBEAT ACK, which arrives as a received packet.

        aiortc has no public call for this: `RTCSctpTransport._send_chunk` (in aiortc since
        2018, and what aiortc itself uses to answer a peer's heartbeats) is wrapped here alone.
        Should it go, the other signals remain and only the quiet-peer case loses its answer.
        """
        sctp = self._pc.sctp
        send_chunk = getattr(sctp, "_send_chunk", None)
        if sctp is None or send_chunk is None:
            return
        chunk = HeartbeatChunk()
        chunk.params = [(HEARTBEAT_INFO, struct.pack("!d", time.time()))]
        self.probes += 1
        try:
            await send_chunk(chunk)
        except Exception as exc:  # DTLS closed, or aiortc changed: the watchdog decides
            log.debug("could not send a heartbeat: %s", exc)

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        """Received audio -> 24 kHz mono -> `on_audio`, until the track ends."""
        resampler = AudioResampler(format="s16", layout="mono", rate=PLAYBACK_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.heard_at = time.monotonic()
            if not isinstance(frame, AudioFrame):
                continue
            for out in resampler.resample(frame):
                self._on_audio(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
