"""Home Assistant over MQTT: discovery, the device's state, and commands from Home Assistant.

`HomeAssistant.run()` is one named task with its own reconnect loop (backoff 1 s doubling to
60 s). It never blocks anything else: phase changes, timer changes and transcripts only record the
latest value of a retained state topic and wake the publisher, which sends what changed while
connected and everything once (re)connected. A broker that is down is a log line and a hook event
(`on_status`), not an error phase: the device keeps listening for its wake word.

On each connection it publishes Home Assistant discovery (one retained config per entity, with the
device block, a unique_id and availability through the broker's last will), then the states, and
subscribes to the command topics and to `<discovery_prefix>/status`, so that discovery is sent
again when Home Assistant restarts.

Topics, under `base` (`wakertc/<device_id>` by default)::

    availability        online / offline (the last will)
    phase               the phase name                    sensor
    mute, mute/set      ON / OFF                          switch
    volume, volume/set  0.0 .. 2.0                        number (when the backend has a gain)
    start/press         PRESS: start a conversation       button
    stop/press          PRESS: stop ringing, else end the conversation   button
    timers              how many are set; attributes in timers/attributes (JSON)   sensor
    transcript          what the user said last           sensor (only with expose_transcript)
    announce/set        text to say; or a URL or file name of a WAV; or JSON
                        {"text"|"url"|"file": ..., "then_converse": bool}     text
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiomqtt

from . import __version__
from .config import MqttConfig
from .state import Transition

log = logging.getLogger(__name__)

RETRY_S = (1.0, 60.0)
KEEPALIVE_S = 30
TIMEOUT_S = 10.0
PRESS = "PRESS"
# Longest text announcement: about 250 tokens, under GPT-Live's 500-token commentary limit, and
# a minute or so of speech.
ANNOUNCE_TEXT_MAX = 1000


AnnouncementKind = Literal["text", "url", "file"]
_KINDS: tuple[AnnouncementKind, ...] = ("text", "url", "file")


@dataclass(frozen=True)
class Announcement:
    """What Home Assistant asked the device to announce."""

    kind: AnnouncementKind
    value: str
    then_converse: bool = False


class Device(Protocol):
    """What Home Assistant can see and do on the device (the daemon implements it)."""

    @property
    def muted(self) -> bool:
        """Whether the microphone is muted."""

    @property
    def volume(self) -> float | None:
        """The playback gain, or None when the audio backend has no volume control."""

    def set_muted(self, on: bool, by: str) -> None:
        """Mute or unmute the microphone."""

    def set_volume(self, gain: float) -> None:
        """Change the playback gain."""

    def start_conversation(self, reason: str) -> None:
        """Open a conversation now."""

    def stop_from_remote(self, by: str) -> None:
        """Stop ringing, or else end the conversation."""

    async def announce(self, announcement: Announcement) -> None:
        """Say a text, or play a WAV from a URL or the announce directory; raises ValueError
        when it cannot (the message says why)."""

    def timers_summary(self) -> list[dict[str, Any]]:
        """The timers and alarms set, soonest first."""


@dataclass(frozen=True)
class Topics:
    """Every topic of this device."""

    base: str
    discovery: str
    device_id: str

    def of(self, name: str) -> str:
        """`base/name`."""
        return f"{self.base}/{name}"

    def config(self, component: str, object_id: str) -> str:
        """Where Home Assistant reads the discovery config of one entity."""
        return f"{self.discovery}/{component}/{self.device_id}/{object_id}/config"


def topics_for(config: MqttConfig) -> Topics:
    """The topics the config asks for (defaults from the host name)."""
    device_id = config.device_id or _host_id()
    return Topics(config.base_topic or f"wakertc/{device_id}", config.discovery_prefix, device_id)


def _host_id() -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname()) or "device"


class HomeAssistant:
    """The MQTT link to Home Assistant; a phase listener; `run()` is its task."""

    def __init__(
        self,
        config: MqttConfig,
        password: str,
        device: Device,
        *,
        on_status: Callable[[bool, str], None] | None = None,
    ) -> None:
        self._config = config
        self._password = password
        self._device = device
        self._on_status = on_status
        self.topics = topics_for(config)
        self._states: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.connected = False
        self.connections = 0
        self._outage_reported = False
        self.client: aiomqtt.Client | None = None
        """The connection in use (or last used)."""
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the daemon reports (never blocks) ------------------------------------------------

    def __call__(self, change: Transition) -> None:
        """Phase listener: publish the phase (and mute, which is a phase too)."""
        self._set("phase", change.new.value)
        self._set("mute", "ON" if self._device.muted else "OFF")

    def timers_changed(self) -> None:
        """The timers or alarms changed."""
        entries = self._device.timers_summary()
        self._set("timers", str(len(entries)))
        self._set("timers/attributes", json.dumps({"timers": entries}))

    def transcript(self, text: str) -> None:
        """The user said `text` (published only when enabled)."""
        if self._config.expose_transcript:
            self._set("transcript", text[:255])  # a Home Assistant state holds 255 characters

    def volume_changed(self) -> None:
        """The playback gain changed."""
        volume = self._device.volume
        if volume is not None:
            self._set("volume", f"{volume:g}")

    def _set(self, name: str, value: str) -> None:
        topic = self.topics.of(name)
        if self._states.get(topic) != value:
            self._states[topic] = value
            self._dirty.add(topic)
            self._wake.set()

    # -- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, publish, obey; reconnect with backoff for ever (until cancelled)."""
        self.timers_changed()
        self.volume_changed()
        delay, longest = RETRY_S
        try:
            while True:
                try:
                    async with self._client() as client:
                        delay = RETRY_S[0]
                        self.client = client
                        await self._serve(client)
                except aiomqtt.MqttError as exc:
                    self._disconnected(f"{exc}; retrying in {delay:g} s")
                except OSError as exc:
                    self._disconnected(f"{exc.strerror or exc}; retrying in {delay:g} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
        finally:
            await _cancel(self._tasks)  # announcements under way

    def _client(self) -> aiomqtt.Client:
        config, topics = self._config, self.topics
        host, _, port = config.url.split("://", 1)[1].rstrip("/").partition(":")
        tls = config.url.startswith("mqtts://")
        context = None
        if tls:
            context = ssl.create_default_context(
                cafile=str(config.ca_file) if config.ca_file else None
            )
        return aiomqtt.Client(
            host,
            int(port) if port else (8883 if tls else 1883),
            username=config.username or None,
            password=self._password or None,
            identifier=f"wakertc-{topics.device_id}",
            will=aiomqtt.Will(topics.of("availability"), "offline", qos=1, retain=True),
            keepalive=KEEPALIVE_S,
            timeout=TIMEOUT_S,
            tls_context=context,
        )

    async def _serve(self, client: aiomqtt.Client) -> None:
        topics = self.topics
        for name in ("mute/set", "volume/set", "start/press", "stop/press", "announce/set"):
            await client.subscribe(topics.of(name), qos=1)
        await client.subscribe(f"{topics.discovery}/status", qos=1)
        await self._publish_discovery(client)
        await client.publish(topics.of("availability"), "online", qos=1, retain=True)
        self._dirty = set(self._states)
        self.connected = True
        self._outage_reported = False
        self.connections += 1
        log.info("mqtt: connected to %s as %s", self._config.url, topics.device_id)
        if self._on_status is not None:
            self._on_status(True, "connected")
        loop = asyncio.get_running_loop()
        tasks = {
            loop.create_task(self._publish_states(client), name="mqtt-publisher"),
            loop.create_task(self._obey(client), name="mqtt-commands"),
        }
        try:
            # Either ending (the connection dropped) ends this connection; run() reconnects.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise aiomqtt.MqttError("the connection ended")
        except asyncio.CancelledError:
            # The daemon stops: say so (the last will is only sent for a connection that drops).
            await _cancel(tasks)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await client.publish(topics.of("availability"), "offline", qos=1, retain=True)
            raise
        finally:
            await _cancel(tasks)

    async def _obey(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._command(client, str(message.topic), _text(message.payload))

    async def _publish_states(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            while self._dirty:
                topic = self._dirty.pop()
                await client.publish(topic, self._states[topic], qos=1, retain=True)
            await self._wake.wait()

    def _disconnected(self, why: str) -> None:
        self.connected = False
        # Once per outage at WARNING (and to the hook); the retries after it at DEBUG.
        if self._outage_reported:
            log.debug("mqtt: still unavailable: %s", why)
            return
        self._outage_reported = True
        log.warning("mqtt: broker %s unavailable: %s", self._config.url, why)
        if self._on_status is not None:
            self._on_status(False, why)

    # -- commands ------------------------------------------------------------------------------

    async def _command(self, client: aiomqtt.Client, topic: str, payload: str) -> None:
        topics, device = self.topics, self._device
        try:
            if topic == f"{topics.discovery}/status":
                if payload == "online":  # Home Assistant restarted: it forgot the entities
                    await self._publish_discovery(client)
                    self._dirty = set(self._states)
                    self._wake.set()
            elif topic == topics.of("mute/set"):
                if payload not in ("ON", "OFF"):
                    raise ValueError("ON or OFF")
                device.set_muted(payload == "ON", "Home Assistant")
                self._set("mute", "ON" if device.muted else "OFF")
            elif topic == topics.of("volume/set"):
                gain = float(payload)
                if not 0.0 <= gain <= 2.0:
                    raise ValueError("a volume from 0 to 2")
                device.set_volume(gain)
                self.volume_changed()
            elif topic == topics.of("start/press"):
                device.start_conversation("Home Assistant")
            elif topic == topics.of("stop/press"):
                device.stop_from_remote("Home Assistant")
            elif topic == topics.of("announce/set"):
                task = asyncio.get_running_loop().create_task(
                    self._announce(parse_announcement(payload)), name="mqtt-announce"
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except ValueError as exc:
            log.warning("mqtt: ignored %s = %r: expected %s", topic, payload[:100], exc)

    async def _announce(self, announcement: Announcement) -> None:
        try:
            await self._device.announce(announcement)
        except ValueError as exc:
            log.warning("mqtt: announcement not played: %s", exc)

    # -- discovery -----------------------------------------------------------------------------

    def discovery(self) -> dict[str, dict[str, Any]]:
        """Every entity's discovery config, by its config topic."""
        topics, config = self.topics, self._config
        device = {
            "identifiers": [f"wakertc_{topics.device_id}"],
            "name": config.device_name or f"wakertc {topics.device_id}",
            "manufacturer": "wakertc",
            "model": "wakertc voice satellite",
            "sw_version": __version__,
        }
        common = {
            "availability_topic": topics.of("availability"),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }

        def entity(component: str, object_id: str, name: str, **fields: Any) -> None:
            payload = {
                "name": name,
                "unique_id": f"wakertc_{topics.device_id}_{object_id}",
                "object_id": f"wakertc_{topics.device_id}_{object_id}",
                **fields,
                **common,
            }
            entities[topics.config(component, object_id)] = payload

        entities: dict[str, dict[str, Any]] = {}
        entity("sensor", "phase", "Phase", state_topic=topics.of("phase"), icon="mdi:account-voice")
        entity(
            "switch",
            "mute",
            "Microphone mute",
            state_topic=topics.of("mute"),
            command_topic=topics.of("mute/set"),
            payload_on="ON",
            payload_off="OFF",
            icon="mdi:microphone-off",
        )
        if self._device.volume is not None:
            entity(
                "number",
                "volume",
                "Volume",
                state_topic=topics.of("volume"),
                command_topic=topics.of("volume/set"),
                min=0.0,
                max=2.0,
                step=0.05,
                mode="slider",
                icon="mdi:volume-high",
            )
        entity(
            "button",
            "start",
            "Start conversation",
            command_topic=topics.of("start/press"),
            payload_press=PRESS,
            icon="mdi:microphone",
        )
        entity(
            "button",
            "stop",
            "Stop",
            command_topic=topics.of("stop/press"),
            payload_press=PRESS,
            icon="mdi:stop",
        )
        entity(
            "sensor",
            "timers",
            "Active timers",
            state_topic=topics.of("timers"),
            json_attributes_topic=topics.of("timers/attributes"),
            icon="mdi:timer-outline",
        )
        if config.expose_transcript:
            entity(
                "sensor",
                "transcript",
                "Last transcript",
                state_topic=topics.of("transcript"),
                icon="mdi:text",
            )
        entity(
            "text",
            "announce",
            "Announce",
            command_topic=topics.of("announce/set"),
            max=255,
            icon="mdi:bullhorn",
        )
        return entities

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        entities = self.discovery()
        # A transcript sensor switched off since: removed from Home Assistant (empty config).
        if not self._config.expose_transcript:
            entities[self.topics.config("sensor", "transcript")] = {}
        for topic, payload in entities.items():
            await client.publish(topic, json.dumps(payload) if payload else "", qos=1, retain=True)


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for them, cancelling again while any is left.

    Python 3.11's `asyncio.wait_for` (inside aiomqtt's publish) can swallow a cancellation that
    arrives as its inner wait completes; a single cancel could then leave a publisher running
    and the daemon's shutdown waiting for it.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("mqtt: %s ended: %r", task.get_name(), task.exception())


def parse_announcement(payload: str) -> Announcement:
    """A command on `announce/set`: a JSON object, a WAV's URL or file name, or else text.

    Raises ValueError saying what was expected.
    """
    text = payload.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError('JSON like {"text": "...", "then_converse": true}') from None
        kinds = [k for k in _KINDS if isinstance(data, dict) and k in data]
        if len(kinds) != 1 or not isinstance(data[kinds[0]], str) or not data[kinds[0]].strip():
            raise ValueError('exactly one of "text", "url" or "file" in the JSON, a string')
        kind = kinds[0]
        value, then_converse = data[kind].strip(), data.get("then_converse", False)
        if not isinstance(then_converse, bool):
            raise ValueError('"then_converse" true or false')
    elif text.startswith(("http://", "https://")):
        kind, value, then_converse = "url", text, False
    elif text.lower().endswith(".wav") and not any(c.isspace() for c in text):
        kind, value, then_converse = "file", text, False
    else:
        kind, value, then_converse = "text", text, False
    if not value:  # (an empty payload)
        raise ValueError("text to say, or a WAV's URL or file name")
    if kind == "text" and len(value) > ANNOUNCE_TEXT_MAX:
        raise ValueError(f"at most {ANNOUNCE_TEXT_MAX} characters of text ({len(value)} given)")
    return Announcement(kind, value, then_converse)


def _text(payload: Any) -> str:
    if isinstance(payload, bytes | bytearray):
        return payload.decode(errors="replace")
    return "" if payload is None else str(payload)
