"""Every `--fault` knob, against real HTTP and real WebRTC on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path

import aioice.ice
import httpx
import numpy as np
import pytest
from aioice import stun
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from emulator_helpers import (
    KEY,
    RealtimeClient,
    assert_all_valid,
    connected_client,
    espeak,
    host_candidates,
    ice_credentials,
    mint,
    running_emulator,
)

AUTH = {"Authorization": f"Bearer {KEY}"}
MINT_ROUTES = [
    ("/v1/realtime/client_secrets", {"session": {"type": "realtime"}}),
    ("/v1/realtime/sessions", {"model": "gpt-realtime"}),
]


@pytest.mark.parametrize(("route", "body"), MINT_ROUTES)
async def test_mint_500(route: str, body: dict) -> None:
    async with running_emulator(faults=("mint-500",)) as emu, httpx.AsyncClient() as http:
        response = await http.post(emu.url + route, json=body, headers=AUTH)
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize(("route", "body"), MINT_ROUTES)
async def test_mint_429(route: str, body: dict) -> None:
    async with running_emulator(faults=("mint-429",)) as emu, httpx.AsyncClient() as http:
        response = await http.post(emu.url + route, json=body, headers=AUTH)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_mint_slow_answers_late() -> None:
    async with running_emulator(faults=("mint-slow=0.6",)) as emu, httpx.AsyncClient() as http:
        url = emu.url + "/v1/realtime/client_secrets"
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, json={}, headers=AUTH, timeout=0.2)
        began = time.monotonic()
        response = await http.post(url, json={}, headers=AUTH, timeout=5)
        assert response.status_code == 200
        assert time.monotonic() - began >= 0.6


def test_mint_slow_defaults_to_ten_seconds() -> None:
    from wakertc.emulator import Faults

    assert Faults.parse(["mint-slow"]).mint_slow_s == 10.0


@pytest.mark.parametrize(
    ("fault", "status", "code"), [("calls-401", 401, "invalid_api_key"), ("calls-500", 500, None)]
)
async def test_calls_refused(fault: str, status: int, code: str | None) -> None:
    async with running_emulator(faults=(fault,)) as emu:
        key = await mint(emu.url)  # minting still works
        client = RealtimeClient()
        offer = await client.offer()
        async with httpx.AsyncClient() as http:
            response = await http.post(
                emu.url + "/v1/realtime/calls",
                content=offer.encode(),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
            )
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert not emu.calls
        await client.close()


async def test_calls_hang_never_answers_and_does_not_block_stop() -> None:
    emu_cm = running_emulator(faults=("calls-hang",))
    emu = await emu_cm.__aenter__()
    client = RealtimeClient()
    offer = await client.offer()
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                emu.url + "/v1/realtime/calls",
                content=offer.encode(),
                headers={**AUTH, "Content-Type": "application/sdp"},
                timeout=0.5,
            )
        pending = asyncio.create_task(
            http.post(
                emu.url + "/v1/realtime/calls",
                content=offer.encode(),
                headers={**AUTH, "Content-Type": "application/sdp"},
                timeout=30,
            )
        )
        await asyncio.sleep(0.3)
        assert not pending.done()
        began = time.monotonic()
        await emu_cm.__aexit__(None, None, None)
        assert time.monotonic() - began < 3
        response = await asyncio.wait_for(pending, 5)
        assert response.status_code == 503
    await client.close()


async def test_drop_after_closes_the_peer_mid_session() -> None:
    async with running_emulator(faults=("drop-after=0.5",)) as emu:
        client = await connected_client(emu.url)
        began = time.monotonic()
        await asyncio.wait_for(client.channel_closed.wait(), 5)
        assert 0.4 <= time.monotonic() - began < 3
        call = emu.calls[client.call_id or ""]
        await asyncio.wait_for(call.wait_closed(), 3)
        assert call.close_reason == "drop-after=0.5 fault"
        await client.close()


async def test_silent_connects_but_never_sends_an_event() -> None:
    async with running_emulator(faults=("silent",)) as emu:
        client = RealtimeClient()
        await client.connect(emu.url, await mint(emu.url))
        client.send({"type": "session.update", "session": {"type": "realtime"}})
        client.send({"type": "response.create"})
        await asyncio.sleep(1.0)
        assert client.raw == []
        call = emu.calls[client.call_id or ""]
        assert call.received_samples > 0  # the media path is up
        assert [e["event"]["type"] for e in call.events if e["dir"] == "in"] == [
            "session.update",
            "response.create",
        ]
        await client.close()


async def test_bad_event_mixes_junk_between_real_events() -> None:
    async with running_emulator(faults=("bad-event",)) as emu:
        client = RealtimeClient()
        await client.connect(emu.url, await mint(emu.url))
        client.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}
        )
        updated = await client.wait_for("session.updated")
        assert updated["session"]["instructions"] == "x"
        await asyncio.sleep(0.2)
        unparseable = []
        for text in client.raw:
            try:
                json.loads(text)
            except ValueError:
                unparseable.append(text)
        unknown = [e for e in client.events if e["type"] == "emulator.unknown_event"]
        assert unparseable and unknown
        real = [e for e in client.events if e["type"] != "emulator.unknown_event"]
        assert [e["type"] for e in real] == ["session.created", "session.updated"]
        assert_all_valid(real)
        # Junk sits between the real events, not only after them.
        assert client.raw.index(json.dumps(real[1])) > 1
        await client.close()


async def stun_probe(
    address: tuple[str, int], username: str, password: str, timeout: float
) -> bool:
    """Send an authenticated ICE binding request; True if a success response comes back."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bool] = loop.create_future()

    class Probe(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple) -> None:
            message = stun.parse_message(data)
            if not answered.done():
                answered.set_result(message.message_class == stun.Class.RESPONSE)

    transport, _ = await loop.create_datagram_endpoint(Probe, local_addr=("0.0.0.0", 0))
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = secrets.randbits(64)
    request.add_message_integrity(password.encode())
    request.add_fingerprint()
    transport.sendto(bytes(request), address)
    try:
        return await asyncio.wait_for(answered, timeout)
    except TimeoutError:
        return False
    finally:
        transport.close()


async def test_consent_stop_silences_ice_without_closing() -> None:
    async with running_emulator(faults=("consent-stop=1.0",)) as emu:
        client = await connected_client(emu.url)
        server_ufrag, server_pwd = ice_credentials(client.answer_sdp)
        client_ufrag, _ = ice_credentials(client.offer_sdp)
        address = host_candidates(client.answer_sdp)[0]
        username = f"{server_ufrag}:{client_ufrag}"
        assert await stun_probe(address, username, server_pwd, 1.0), "ICE answered before the fault"
        await asyncio.sleep(1.3)
        assert not await stun_probe(address, username, server_pwd, 1.0), "ICE still answers"
        # Nothing told the client: no DTLS close, no SCTP abort.
        assert client.pc.connectionState == "connected"
        assert not client.channel_closed.is_set()
        await client.close()


async def test_consent_stop_fails_the_clients_consent_checks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # RFC 7675 checks run every ~5 s and give up after 6 misses (~30 s); speed up the client's
    # own library timer so the test sees the failure in seconds. The emulator is untouched.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    caplog.set_level(logging.INFO, logger="aioice.ice")
    async with running_emulator(faults=("consent-stop",)) as emu:
        client = await connected_client(emu.url)
        gone = asyncio.Event()

        def state_changed() -> None:
            if client.pc.connectionState in ("failed", "closed"):
                gone.set()

        client.pc.on("connectionstatechange", state_changed)
        began = time.monotonic()
        await asyncio.wait_for(gone.wait(), 10)
        assert time.monotonic() - began > 0.5
        assert "Consent to send expired" in caplog.text
        await client.close()


MANUAL = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


async def rtp_packets_received(client: RealtimeClient) -> int:
    """RTP packets the client's audio receiver has taken in so far."""
    total = 0
    for transceiver in client.pc.getTransceivers():
        report = await transceiver.receiver.getStats()
        total += sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")
    return total


async def test_without_no_idle_audio_the_track_sends_silence_between_replies() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url, MANUAL)
        await asyncio.sleep(1.0)
        assert await rtp_packets_received(client) > 25  # 50 packets a second
        await client.close()


async def test_no_idle_audio_sends_rtp_only_while_a_reply_plays() -> None:
    async with running_emulator(faults=("no-idle-audio",), reply="tone") as emu:
        client = await connected_client(emu.url, MANUAL)
        await asyncio.sleep(1.0)
        assert await rtp_packets_received(client) == 0, "RTP flowed before any reply"
        client.send({"type": "response.create"})
        started = await client.wait_for("output_audio_buffer.started")
        await client.wait_for("output_audio_buffer.stopped")
        await asyncio.sleep(0.3)  # the last packets cross the loopback link
        during = await rtp_packets_received(client)
        assert during > 10, "the reply's audio did not arrive"
        reply = client.audio_between(client.arrival(started), client.arrival(started) + 5)
        assert np.abs(reply).max() > 1000, "the reply was silent"
        await asyncio.sleep(1.5)
        assert await rtp_packets_received(client) == during, "RTP flowed after the reply"
        # The next reply flows again, at real-time pace (no catch-up burst for the gap).
        client.send({"type": "response.create"})
        first = await client.wait_for("output_audio_buffer.started")
        last = await client.wait_for("output_audio_buffer.stopped")
        assert client.arrival(last) - client.arrival(first) > 0.3
        await asyncio.sleep(0.3)
        assert await rtp_packets_received(client) > during + 10
        assert_all_valid(client.events)
        await client.close()


async def test_no_idle_audio_sends_no_rtp_in_a_transcription_session(tmp_path: Path) -> None:
    async with running_emulator(faults=("no-idle-audio",)) as emu:
        client = await connected_client(emu.url, {"type": "transcription"})
        client.mic.play(espeak("What time is it?", tmp_path))
        await client.wait_for("conversation.item.input_audio_transcription.completed")
        await asyncio.sleep(0.5)
        assert await rtp_packets_received(client) == 0
        assert emu.calls[client.call_id or ""].received_samples > 0  # the uplink is up
        await client.close()


@pytest.mark.parametrize(
    "session",
    [
        {"type": "transcription"},
        {
            "type": "realtime",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        },
    ],
    ids=["transcription", "realtime"],
)
async def test_transcription_failed(session: dict, tmp_path: Path) -> None:
    speech = espeak("What time is it?", tmp_path)
    async with running_emulator() as emu:
        client = await connected_client(emu.url, session)
        client.mic.play(speech)
        committed = await client.wait_for("input_audio_buffer.committed")
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert completed["item_id"] == committed["item_id"]
        await client.close()
    async with running_emulator(faults=("transcription-failed",)) as emu:
        client = await connected_client(emu.url, session)
        client.mic.play(speech)
        committed = await client.wait_for("input_audio_buffer.committed")
        failed = await client.wait_for("conversation.item.input_audio_transcription.failed")
        assert failed["item_id"] == committed["item_id"]
        assert failed["error"]["type"] == "transcription_error"
        assert failed["error"]["message"]
        await asyncio.sleep(0.3)
        assert "conversation.item.input_audio_transcription.completed" not in client.types()
        assert_all_valid(client.events)
        await client.close()


async def test_sessions_end_at_their_maximum_length_with_an_error() -> None:
    async with running_emulator(faults=("max-session=1.5",)) as emu:
        client = await connected_client(emu.url, MANUAL)
        call = emu.calls[client.call_id or ""]
        error = await client.wait_for("error", timeout=5)
        assert error["error"]["code"] == "session_expired"
        assert error["error"]["type"] == "invalid_request_error"
        assert "maximum duration" in error["error"]["message"]
        assert 1.4 <= time.monotonic() - call.started < 2.5
        await asyncio.wait_for(client.channel_closed.wait(), 3)
        await asyncio.wait_for(call.wait_closed(), 3)
        assert call.close_reason == "maximum session length (1.5 s)"
        assert client.types()[-1] == "error"  # nothing after it
        assert_all_valid(client.events)
        await client.close()


def test_the_service_maximum_session_length_is_an_hour() -> None:
    from wakertc import limits
    from wakertc.emulator import Faults

    assert limits.MAX_SESSION_S == 3600
    assert Faults.parse([]).max_session_s is None  # calls then use limits.MAX_SESSION_S
    assert Faults.parse(["max-session=5"]).max_session_s == 5.0


class ArrivalLog(JitterBuffer):
    """aiortc's audio buffer, noting each RTP packet's sequence number as it arrives."""

    def __init__(self) -> None:
        super().__init__(capacity=16, prefetch=4)
        self.seqs: list[int] = []

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.seqs.append(packet.sequence_number)
        return super().add(packet)


async def rtp_arrivals(client: RealtimeClient, seconds: float) -> list[int]:
    """Sequence numbers of the RTP packets reaching the client's receiver, in arrival order."""
    (transceiver,) = client.pc.getTransceivers()
    arrivals = ArrivalLog()
    setattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer", arrivals)  # noqa: B010
    await asyncio.sleep(seconds)
    return arrivals.seqs


async def test_jitter_delays_reorders_and_drops_the_reply_audio() -> None:
    async with running_emulator() as emu:
        client = await connected_client(emu.url, MANUAL)
        clean = await rtp_arrivals(client, 1.5)
        await client.close()
    assert clean == sorted(clean) and clean[-1] - clean[0] + 1 == len(clean)
    async with running_emulator(faults=("jitter=30,20,5",)) as emu:
        client = await connected_client(emu.url, MANUAL)
        seqs = await rtp_arrivals(client, 3.0)
        await client.close()
    overtaken = [s for i, s in enumerate(seqs) if i and s < max(seqs[:i])]
    assert len(overtaken) >= 3, f"no reordering: {seqs}"
    missing = set(range(min(seqs), max(seqs) + 1)) - set(seqs)
    assert 1 <= len(missing) <= 0.15 * len(seqs), f"{len(missing)} of {len(seqs)} lost"


def test_jitter_takes_its_figures_or_the_defaults() -> None:
    from wakertc.emulator import Faults
    from wakertc.emulator.faults import FaultError
    from wakertc.emulator.netpath import Jitter

    assert Faults.parse(["jitter"]).jitter == Jitter(delay_s=0.03, jitter_s=0.02, loss=0.01)
    assert Faults.parse(["jitter=50,10,2"]).jitter == Jitter(delay_s=0.05, jitter_s=0.01, loss=0.02)
    assert "jitter" in Faults.parse(["jitter"]).active
    with pytest.raises(FaultError, match=r"fault 'jitter'.*'30,20'"):
        Faults.parse(["jitter=30,20"])
    with pytest.raises(FaultError, match=r"fault 'jitter'.*within"):
        Faults.parse(["jitter=30,20,150"])
    assert Faults.parse(["jitter=30,20,1,10"]).jitter == Jitter(
        delay_s=0.03, jitter_s=0.02, loss=0.01, for_s=10.0
    )
    for bad in ("30,20,1,0", "30,20,1,x", "30,20,1,5,5"):
        with pytest.raises(FaultError, match=r"fault 'jitter'"):
            Faults.parse([f"jitter={bad}"])


async def test_a_jitter_that_stops_leaves_a_clean_path() -> None:
    """`jitter=D,J,L,S`: bad for the first S seconds of the call's audio, then whole, in order."""
    async with running_emulator(faults=("jitter=30,20,20,1",)) as emu:
        client = await connected_client(emu.url, MANUAL)
        seqs = await rtp_arrivals(client, 3.0)
        await client.close()
    first = seqs[0]
    # Packets up to ~1 s in: some lost (20 %) or overtaken; after 1.2 s: every one, in order.
    early = [s - first for s in seqs if s - first < 45]
    late = [s for s in seqs if s - first >= 60]
    assert len(early) < 45, f"no loss while the path was bad: {seqs}"
    assert late == sorted(late) and late[-1] - late[0] + 1 == len(late) >= 60, seqs
