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
