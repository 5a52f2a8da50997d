"""Liveness of a call against a peer that volunteers nothing: no RTP, no RTCP, no events.

The peer is a bare aiortc answerer behind a real HTTP endpoint on loopback. It has no track of its
own (no RTP, no sender reports) and the device's microphone sends nothing (so no receiver reports
either): the only packets it sends are what the device asks for. A real service sends more (at
least RTCP on the device's microphone audio, every 5 s on average from libwebrtc); this is the
floor. The call must still be heard, through the SCTP HEARTBEAT it sends when the peer is quiet,
and stop being heard at once when the peer's path dies.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from wakertc.webrtc import HEARD_POLL_S, PROBE_AFTER_S, MicTrack, RealtimeCall


async def quiet_peer(serve: Any) -> tuple[str, list[RTCPeerConnection]]:
    """A `/v1/realtime/calls` endpoint answering with an aiortc peer that sends nothing."""
    peers: list[RTCPeerConnection] = []

    async def calls(request: web.Request) -> web.StreamResponse:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": "/v1/realtime/calls/rtc_quiet"},
        )

    app = web.Application()
    app.router.add_post("/v1/realtime/calls", calls)
    return await serve(app), peers


async def test_a_quiet_peer_is_heard_through_heartbeats_and_a_dead_one_is_not(serve) -> None:
    url, peers = await quiet_peer(serve)
    lost: list[str] = []
    async with httpx.AsyncClient() as http:
        call = RealtimeCall(
            base_url=url,
            http=http,
            ice_servers=(),
            mic=MicTrack(),
            on_event=lambda raw: None,
            on_audio=lambda samples: None,
            on_lost=lost.append,
        )
        try:
            await call.connect("ek_test")
            quiet: list[float] = []
            for _ in range(40):  # 4 s
                await asyncio.sleep(0.1)
                quiet.append(time.monotonic() - call.heard_at)
            # Heard again within a probe's round trip of going quiet, every time.
            assert max(quiet) < PROBE_AFTER_S + 2 * HEARD_POLL_S + 0.3, max(quiet)
            assert call.probes >= 2
            print(f"quiet peer: longest silence {max(quiet):.2f} s, {call.probes} probes in 4 s")

            # The peer's path dies without a word (its ICE transport stops, as consent-stop).
            (peer,) = peers
            for transceiver in peer.getTransceivers():
                await transceiver.receiver.transport.transport.stop()
            await asyncio.sleep(3.0)
            assert time.monotonic() - call.heard_at > 2.5
            assert not lost  # the conversation's watchdog decides, not ICE (30 s)
        finally:
            await call.close(hang_up=False)
            for peer in peers:
                await peer.close()


async def test_a_failed_statistics_read_is_not_taken_for_a_packet() -> None:
    """getStats() failing (the call closing underneath) says nothing about the peer: reads that
    fail between unchanged counts leave `heard_at` alone (before: each failure counted as heard)."""
    async with httpx.AsyncClient() as http:
        call = RealtimeCall(
            base_url="http://127.0.0.1:9",
            http=http,
            ice_servers=(),
            mic=MicTrack(),
            on_event=lambda raw: None,
            on_audio=lambda samples: None,
            on_lost=lambda why: None,
        )
        pc = call._pc
        real_stats = pc.getStats
        heard_after_first_read: list[float] = []

        async def flaky_stats() -> Any:
            reads = len(heard_after_first_read)
            heard_after_first_read.append(call.heard_at)
            if reads % 2:
                raise RuntimeError("closing")
            return await real_stats()  # the same count (no transport: 0) every time

        pc.getStats = flaky_stats  # type: ignore[method-assign]
        watcher = asyncio.create_task(call._watch_peer())
        try:
            # Three polls (read, fail, read), all before a quiet peer would be probed.
            await asyncio.sleep(3.5 * HEARD_POLL_S)
            assert 3 * HEARD_POLL_S < PROBE_AFTER_S
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await call.close(hang_up=False)
        assert len(heard_after_first_read) == 3
        # Heard at the first read (a count where there was none), never since.
        assert call.heard_at == heard_after_first_read[1]
