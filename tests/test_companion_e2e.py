"""The whole chain a device uses: token -> companion -> (upstream) emulator key -> WebRTC call to
the emulator -> real speech in, the echo back out."""

from __future__ import annotations

from pathlib import Path

import httpx

from emulator_helpers import (
    RealtimeClient,
    assert_all_valid,
    companion_config_file,
    envelope_correlation,
    espeak,
    running_emulator,
)
from wakertc.companion import Companion, DeviceStore, load_companion_config


async def test_device_call_through_companion_and_emulator(tmp_path: Path) -> None:
    speech = espeak("Turn on the kitchen lights, please.", tmp_path)
    policy = '[session]\nvoice = "verse"\ninstructions = "From the owner."\n'
    async with running_emulator(record_dir=tmp_path / "rec") as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url, policy))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config) as companion:
            async with httpx.AsyncClient() as http:
                minted = await http.post(
                    companion.url + "/v1/session", headers={"Authorization": f"Bearer {token}"}
                )
            assert minted.status_code == 200
            key = minted.json()["value"]

            client = RealtimeClient()
            await client.connect(emu.url, key)  # the device talks to the API directly
            created = await client.wait_for("session.created")
            # The owner's policy, set at the companion, is what the session runs with.
            assert created["session"]["audio"]["output"]["voice"] == "verse"
            assert created["session"]["instructions"] == "From the owner."
            client.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "tools": [
                            {
                                "type": "function",
                                "name": "end_conversation",
                                "parameters": {"type": "object", "properties": {}},
                            }
                        ],
                    },
                }
            )
            updated = await client.wait_for("session.updated")
            assert updated["session"]["tools"][0]["name"] == "end_conversation"

            client.mic.play(speech)
            await client.wait_for("input_audio_buffer.speech_started")
            await client.wait_for("input_audio_buffer.speech_stopped")
            started = await client.wait_for("output_audio_buffer.started")
            stopped = await client.wait_for("output_audio_buffer.stopped")
            reply = client.audio_between(client.arrival(started), client.arrival(stopped))
            correlation = envelope_correlation(speech, reply)
            assert correlation > 0.8, f"echo envelope correlation {correlation:.2f}"
            assert_all_valid(client.events)

            async with httpx.AsyncClient() as http:
                hangup = await http.post(
                    emu.url + f"/v1/realtime/calls/{client.call_id}/hangup",
                    headers={"Authorization": f"Bearer {key}"},
                )
            assert hangup.status_code == 200
            await client.close()
    assert (tmp_path / "rec" / (client.call_id or "") / "input.wav").stat().st_size > 48000
