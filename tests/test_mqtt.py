"""Home Assistant over MQTT against a real Mosquitto broker started here (Debian's `mosquitto`).

The daemon runs in the chain (emulator, companion, mock pins); a test client subscribed to the
discovery prefix and the device's topics plays Home Assistant: it reads the discovery configs
field by field and sends every command. Broker variants: plain and anonymous, TLS with a CA made
here, user and password; and a broker that goes away and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from aiohttp import web

from chain import clip, run_chain
from process_helpers import Blackhole, free_port
from test_sigterm import hook_config, payloads
from wakertc.config import ConfigError, config_from_dict
from wakertc.measure import write_wav
from wakertc.mqtt import ANNOUNCE_TEXT_MAX, Announcement, parse_announcement
from wakertc.state import Phase

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="needs Debian's mosquitto (bootstrap.sh --test)"
)
DEVICE_ID = "kitchen"
BASE = f"wakertc/{DEVICE_ID}"
PREFIX = "homeassistant"
USER, PASSWORD = "satellite", "correct horse battery staple"


# -- the broker -----------------------------------------------------------------------------------


class Mosquitto:
    """A mosquitto process on a fixed free loopback port, restartable."""

    def __init__(self, workdir: Path, *, tls: bool = False, password: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.tls = tls
        self.password = password
        self.ca: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if password else 'true'}",
            "persistence false",
            # Run as root (tests, CI), mosquitto would switch to its own user, which cannot
            # read the files under pytest's private temporary directory.
            "user root",
        ]
        if password:
            users = workdir / "passwd"
            subprocess.run(
                ["mosquitto_passwd", "-b", "-c", str(users), USER, PASSWORD],
                check=True,
                capture_output=True,
            )
            lines.append(f"password_file {users}")
        if tls:
            self.ca, cert, key = make_certificates(workdir)
            lines += [f"certfile {cert}", f"keyfile {key}"]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self.process is None
        self._log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=self._log
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            await asyncio.sleep(0.05)
        self.stop()
        raise AssertionError(f"mosquitto did not listen: {self.log()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None
            self._log.close()

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self) -> aiomqtt.Client:
        """A test client (Home Assistant's stand-in) with the broker's credentials."""
        context = ssl.create_default_context(cafile=str(self.ca)) if self.tls else None
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            username=USER if self.password else None,
            password=PASSWORD if self.password else None,
            tls_context=context,
            identifier=f"home-assistant-{time.monotonic_ns()}",
        )

    def device_table(self, workdir: Path, **extra: Any) -> dict[str, Any]:
        """The device's [mqtt] table for this broker."""
        table: dict[str, Any] = {"url": self.url, "device_id": DEVICE_ID, **extra}
        if self.tls:
            table["ca_file"] = str(self.ca)
        if self.password:
            secret = workdir / "mqtt-password"
            secret.write_text(PASSWORD + "\n")
            secret.chmod(0o600)
            table |= {"username": USER, "password_file": str(secret)}
        return table


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (cryptography, as aiortc uses)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, issuer: x509.Name | None, key: Any, signer: Any, ca: bool) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("wakertc test CA", None, ca_key, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("127.0.0.1", ca_cert.subject, key, ca_key, False)
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# -- Home Assistant's stand-in ---------------------------------------------------------------------


class Observer:
    """Subscribed to everything; keeps every message in order and the latest per topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, str]] = []
        self.latest: dict[str, str] = {}
        self._changed = asyncio.Event()

    async def read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            text = payload.decode() if isinstance(payload, bytes) else str(payload)
            self.messages.append((str(message.topic), text))
            self.latest[str(message.topic)] = text
            self._changed.set()

    async def wait(self, topic: str, value: str | None = None, timeout: float = 10.0) -> str:
        """Wait until `topic`'s latest payload is `value` (or any, when None); the payload."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    got = self.latest.get(topic)
                    if got is not None and (value is None or got == value):
                        return got
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{topic} = {self.latest.get(topic)!r}, wanted {value!r}; seen {self.latest}"
            ) from None

    def count(self, topic: str) -> int:
        return sum(t == topic for t, _ in self.messages)

    async def send(self, name: str, payload: str) -> None:
        await self.client.publish(f"{BASE}/{name}", payload, qos=1)


@contextlib.asynccontextmanager
async def observe(broker: Mosquitto) -> AsyncIterator[Observer]:
    async with broker.client() as client:
        observer = Observer(client)
        await client.subscribe(f"{PREFIX}/#", qos=1)
        await client.subscribe(f"{BASE}/#", qos=1)
        reader = asyncio.create_task(observer.read())
        try:
            yield observer
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader


def config_topic(component: str, object_id: str) -> str:
    return f"{PREFIX}/{component}/{DEVICE_ID}/{object_id}/config"


async def discovery(observer: Observer) -> dict[str, dict[str, Any]]:
    """Every entity's discovery config, once all have arrived."""
    wanted = [
        ("sensor", "phase"),
        ("switch", "mute"),
        ("number", "volume"),
        ("button", "start"),
        ("button", "stop"),
        ("sensor", "timers"),
        ("text", "announce"),
    ]
    found = {}
    for component, object_id in wanted:
        found[object_id] = json.loads(await observer.wait(config_topic(component, object_id)))
    return found


def check_discovery(found: dict[str, dict[str, Any]]) -> None:
    """Home Assistant's MQTT discovery schema, field by field."""
    device = {
        "identifiers": [f"wakertc_{DEVICE_ID}"],
        "name": f"wakertc {DEVICE_ID}",
        "manufacturer": "wakertc",
        "model": "wakertc voice satellite",
        "sw_version": "0.1.0",
    }
    for object_id, config in found.items():
        assert config["unique_id"] == f"wakertc_{DEVICE_ID}_{object_id}"
        assert config["device"] == device
        assert config["availability_topic"] == f"{BASE}/availability"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online",
            "offline",
        )
        assert isinstance(config["name"], str) and config["name"]
    assert found["phase"]["state_topic"] == f"{BASE}/phase"
    assert "command_topic" not in found["phase"]
    mute = found["mute"]
    assert (mute["state_topic"], mute["command_topic"]) == (f"{BASE}/mute", f"{BASE}/mute/set")
    assert (mute["payload_on"], mute["payload_off"]) == ("ON", "OFF")
    volume = found["volume"]
    assert (volume["state_topic"], volume["command_topic"]) == (
        f"{BASE}/volume",
        f"{BASE}/volume/set",
    )
    assert (volume["min"], volume["max"], volume["step"]) == (0.0, 2.0, 0.05)
    for button in ("start", "stop"):
        assert found[button]["command_topic"] == f"{BASE}/{button}/press"
        assert found[button]["payload_press"] == "PRESS"
        assert "state_topic" not in found[button]
    timers = found["timers"]
    assert timers["state_topic"] == f"{BASE}/timers"
    assert timers["json_attributes_topic"] == f"{BASE}/timers/attributes"
    assert found["announce"]["command_topic"] == f"{BASE}/announce/set"
    assert found["announce"]["max"] == 255


def tone_wav(path: Path, seconds: float = 0.8, amplitude: float = 0.5) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    write_wav(path, amplitude * np.sin(2 * np.pi * 440 * t), 16000)
    return path


async def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- tests ----------------------------------------------------------------------------------------


async def test_discovery_states_and_every_command(tmp_path: Path, models_dir: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    announcements = tmp_path / "announce"
    announcements.mkdir()
    tone_wav(announcements / "dinner.wav")
    hook = tmp_path / "hook.jsonl"
    device = {
        "mqtt": broker.device_table(tmp_path, announce_dir=str(announcements)),
        "hook": hook_config(hook),
    }
    try:
        async with observe(broker) as ha, run_chain(tmp_path, models_dir, device=device) as chain:
            check_discovery(await discovery(ha))
            assert (
                config_topic("sensor", "transcript") not in ha.latest
                or not ha.latest[config_topic("sensor", "transcript")]
            )
            await ha.wait(f"{BASE}/availability", "online")
            await ha.wait(f"{BASE}/phase", "idle")
            await ha.wait(f"{BASE}/mute", "OFF")
            await ha.wait(f"{BASE}/volume", "1")
            await ha.wait(f"{BASE}/timers", "0")

            await ha.send("mute/set", "ON")
            muted = await chain.wait_phase(Phase.MUTED)
            assert muted.reason == "microphone muted by Home Assistant"
            await ha.wait(f"{BASE}/mute", "ON")
            await ha.wait(f"{BASE}/phase", "muted")
            await ha.send("mute/set", "OFF")
            await chain.wait_phase(Phase.IDLE)
            await ha.wait(f"{BASE}/mute", "OFF")
            await ha.send("mute/set", "maybe")  # refused with a log line, nothing changes
            await chain.wait_log("expected ON or OFF")

            await ha.send("volume/set", "0.5")
            await ha.wait(f"{BASE}/volume", "0.5")
            assert chain.daemon.volume == 0.5
            await ha.send("volume/set", "7")
            await chain.wait_log("expected a volume from 0 to 2")
            assert chain.daemon.volume == 0.5

            # An announcement from the announce directory, at the new volume.
            before = time.monotonic()
            await ha.send("announce/set", "dinner.wav")
            await chain.wait_log("announcing dinner.wav")
            await asyncio.sleep(1.5)
            levels = [lvl for t, lvl in list(chain.mic.rendered) if t > before and lvl > 300]
            assert levels, "the announcement was not played"
            # A 0.5 tone at volume 0.5: about a quarter of full scale, not half.
            assert 0.18 * 32767 < max(levels) < 0.32 * 32767, max(levels)
            await ha.send("announce/set", "../../etc/passwd.wav")
            await chain.wait_log("a URL, or a .wav file name in mqtt.announce_dir")

            # Start and stop buttons.
            await ha.send("start/press", "PRESS")
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            await ha.wait(f"{BASE}/phase", "listening")
            await ha.send("stop/press", "PRESS")
            stopped = await chain.wait_phase(Phase.IDLE)
            assert stopped.reason == "conversation over (stopped by Home Assistant)"

            # Timers: the sensor counts them; the stop button stops the ring.
            assert chain.daemon.timers is not None
            chain.daemon.timers.set_timer(1, "eggs")
            await ha.wait(f"{BASE}/timers", "1")
            attributes = f"{BASE}/timers/attributes"
            await wait_until(lambda: json.loads(ha.latest[attributes])["timers"])
            (entry,) = json.loads(ha.latest[attributes])["timers"]
            assert (entry["kind"], entry["label"]) == ("timer", "eggs")
            await chain.wait_phase(Phase.RINGING, timeout=3)
            await ha.wait(f"{BASE}/phase", "ringing")
            await ha.wait(f"{BASE}/timers", "0")
            await ha.send("stop/press", "PRESS")
            stopped = await chain.wait_phase(Phase.IDLE)
            assert stopped.reason == "ringing stopped by Home Assistant"
    finally:
        broker.stop()
    events = [p for p in payloads(hook) if p.get("event") == "mqtt"]
    assert events and events[0]["state"] == "connected"


async def test_announce_url_then_converse(tmp_path: Path, models_dir: Path) -> None:
    """A WAV fetched from a URL is played as is; then_converse opens a conversation after it."""
    wav = tone_wav(tmp_path / "question.wav", seconds=1.0)

    async def serve(_: web.Request) -> web.FileResponse:
        return web.FileResponse(wav)

    app = web.Application()
    app.router.add_get("/question.wav", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/question.wav"  # type: ignore[union-attr]
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    try:
        device = {"mqtt": broker.device_table(tmp_path)}
        async with observe(broker) as ha, run_chain(tmp_path, models_dir, device=device) as chain:
            await ha.wait(f"{BASE}/phase", "idle")
            sent = time.monotonic()
            await ha.send("announce/set", json.dumps({"url": url, "then_converse": True}))
            wake = await chain.wait_phase(Phase.WAKE, timeout=10)
            assert wake.reason == "Home Assistant, after an announcement"
            # The whole second was played before the conversation opened.
            assert chain.mic.audible_span(sent, wake.t) >= 0.95
            await chain.expect(Phase.CONNECTING, Phase.LISTENING)
            await ha.send("announce/set", json.dumps({"url": url + ".missing"}))
            await chain.wait_log("announcement not played")
    finally:
        broker.stop()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("The washing is done.", Announcement("text", "The washing is done.")),
        ("  ready  ", Announcement("text", "ready")),
        ("dinner.wav", Announcement("file", "dinner.wav")),
        ("../../etc/passwd.wav", Announcement("file", "../../etc/passwd.wav")),  # refused later
        ("Play dinner.wav", Announcement("text", "Play dinner.wav")),
        ("https://ha.local/tts/x.wav", Announcement("url", "https://ha.local/tts/x.wav")),
        ('{"text": "Ask me", "then_converse": true}', Announcement("text", "Ask me", True)),
        ('{"url": "http://h/q.wav"}', Announcement("url", "http://h/q.wav")),
        ('{"file": "q.wav", "then_converse": false}', Announcement("file", "q.wav")),
    ],
)
def test_announcement_payloads(payload: str, expected: Announcement) -> None:
    assert parse_announcement(payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("", "text to say"),
        ("   ", "text to say"),
        ("{not json", "JSON like"),
        ('{"text": "a", "url": "http://h/q.wav"}', "exactly one of"),
        ('{"text": 3}', "exactly one of"),
        ('{"text": "  "}', "exactly one of"),
        ('{"text": "a", "then_converse": "yes"}', "then_converse"),
        ("x" * (ANNOUNCE_TEXT_MAX + 1), f"at most {ANNOUNCE_TEXT_MAX} characters"),
    ],
)
def test_bad_announcement_payloads_say_what_was_expected(payload: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_announcement(payload)


async def test_text_announcement_from_home_assistant(tmp_path: Path, models_dir: Path) -> None:
    """Text on announce/set is said by the model through a short session, which then ends;
    one sent during a conversation is refused with a log line, not queued or lost silently."""
    text = "The washing is done."
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    try:
        device = {"mqtt": broker.device_table(tmp_path)}
        script = [{"say": text}]
        async with (
            observe(broker) as ha,
            run_chain(tmp_path, models_dir, device=device, script=script) as chain,
        ):
            await ha.wait(f"{BASE}/phase", "idle")
            await ha.send("announce/set", text)
            wake = await chain.wait_phase(Phase.WAKE, timeout=10)
            assert wake.reason == "Home Assistant announcement"
            await ha.wait(f"{BASE}/phase", "speaking")
            idle = await chain.wait_phase(Phase.IDLE, timeout=20)
            assert idle.reason == "conversation over (announcement made)"
            await ha.send("start/press", "PRESS")
            await chain.wait_phase(Phase.LISTENING)
            await ha.send("announce/set", "Dinner is ready.")
            await chain.wait_log("announcement not played: a conversation is under way")
    finally:
        broker.stop()
    (asked,) = [e for e in chain.sent(0) if e["type"] == "response.create"]
    assert f"<announcement>\n{text}\n</announcement>" in asked["response"]["instructions"]


async def test_transcript_sensor_only_when_enabled(tmp_path: Path, models_dir: Path) -> None:
    from wakertc.demo import make_default_input

    said = make_default_input(tmp_path / "in.wav")
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    try:
        device = {
            "mqtt": broker.device_table(tmp_path, expose_transcript=True),
            "session": {"mode": "transcription"},
        }
        async with (
            observe(broker) as ha,
            run_chain(
                tmp_path / "chain",
                models_dir,
                input_audio=said.path,
                companion_extra='\n[session]\ntype = "transcription"\n',
                device=device,
            ) as chain,
        ):
            config = json.loads(await ha.wait(config_topic("sensor", "transcript")))
            assert config["state_topic"] == f"{BASE}/transcript"
            assert config["unique_id"] == f"wakertc_{DEVICE_ID}_transcript"
            await chain.wait_phase(Phase.IDLE, timeout=20)
            text = await ha.wait(f"{BASE}/transcript", timeout=5)
            assert text.endswith("ms of audio]")  # the emulator's transcript
    finally:
        broker.stop()


async def test_broker_down_and_back(tmp_path: Path, models_dir: Path) -> None:
    """The broker stops: a log line and a hook event, the device still wakes on its wake word;
    it comes back (same port, no retained state): discovery and states are published again."""
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    hook = tmp_path / "hook.jsonl"
    device = {"mqtt": broker.device_table(tmp_path), "hook": hook_config(hook)}
    async with run_chain(tmp_path, models_dir, device=device) as chain:
        async with observe(broker) as ha:
            await discovery(ha)
            await ha.wait(f"{BASE}/phase", "idle")
        broker.stop()
        await chain.wait_log("mqtt: broker")
        # The wake word works while the broker is down, and nothing turned to an error.
        chain.mic.speak(clip("hey jarvis"))
        await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
        await chain.wait_phase(Phase.IDLE, timeout=10)
        assert Phase.ERROR not in [s.new for s in chain.seen]
        await broker.start()
        async with observe(broker) as ha:
            check_discovery(await discovery(ha))
            await ha.wait(f"{BASE}/availability", "online", timeout=70)
            await ha.wait(f"{BASE}/phase", "idle")
            # Home Assistant restarting announces itself: discovery is sent again.
            before = ha.count(config_topic("sensor", "phase"))
            await ha.client.publish(f"{PREFIX}/status", "online", qos=1)
            await wait_until(lambda: ha.count(config_topic("sensor", "phase")) > before)
        assert chain.daemon.mqtt.connections == 2
    broker.stop()
    states = [p["state"] for p in payloads(hook) if p.get("event") == "mqtt"]
    assert states == ["connected", "disconnected", "connected"]
    assert sum("unavailable" in line for line in chain.logs.lines()) == 1  # not one per retry


async def test_last_will_marks_the_device_offline(tmp_path: Path, models_dir: Path) -> None:
    """A connection dropped without DISCONNECT (a crash, a pulled plug): the broker publishes
    the last will, Home Assistant shows the device unavailable; the device reconnects."""
    broker = Mosquitto(tmp_path / "broker")
    await broker.start()
    try:
        async with observe(broker) as ha:
            device = {"mqtt": broker.device_table(tmp_path)}
            async with run_chain(tmp_path, models_dir, device=device) as chain:
                await ha.wait(f"{BASE}/availability", "online")
                client = chain.daemon.mqtt.client
                client._client.socket().shutdown(socket.SHUT_RDWR)
                await ha.wait(f"{BASE}/availability", "offline", timeout=10)
                await ha.wait(f"{BASE}/availability", "online", timeout=10)
                assert chain.daemon.mqtt.connections == 2
    finally:
        broker.stop()


@pytest.mark.parametrize(("tls", "password"), [(True, False), (False, True), (True, True)])
async def test_tls_and_passwords(tmp_path: Path, models_dir: Path, tls: bool, password: bool):
    broker = Mosquitto(tmp_path / "broker", tls=tls, password=password)
    await broker.start()
    try:
        device = {"mqtt": broker.device_table(tmp_path)}
        async with observe(broker) as ha:
            async with run_chain(tmp_path, models_dir, device=device):
                check_discovery(await discovery(ha))
                await ha.wait(f"{BASE}/availability", "online")
                await ha.send("mute/set", "ON")
                await ha.wait(f"{BASE}/phase", "muted")
            # A clean stop says goodbye itself (the last will is for a connection that drops).
            await ha.wait(f"{BASE}/availability", "offline", timeout=3)
    finally:
        broker.stop()


async def test_wrong_password_is_a_log_line_not_an_error(tmp_path: Path, models_dir: Path):
    broker = Mosquitto(tmp_path / "broker", password=True)
    await broker.start()
    try:
        table = broker.device_table(tmp_path)
        Path(table["password_file"]).write_text("wrong\n")
        async with run_chain(tmp_path, models_dir, device={"mqtt": table}) as chain:
            _, line = await chain.wait_log("mqtt: broker")
            assert "wrong" not in line and PASSWORD not in line
            chain.mic.speak(clip("hey jarvis"))
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
    finally:
        broker.stop()


def test_mqtt_config_is_validated(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    token.chmod(0o600)
    secret = tmp_path / "password"
    secret.write_text("p")
    secret.chmod(0o644)
    data = {
        "companion": {"token_file": str(token)},
        "mqtt": {
            "url": "http://broker",
            "password_file": str(secret),
            "ca_file": str(tmp_path / "missing.pem"),
            "base_topic": "wakertc/#",
        },
    }
    with pytest.raises(ConfigError) as raised:
        config_from_dict(data, tmp_path / "c.toml")
    text = str(raised.value)
    assert "mqtt.url = 'http://broker': mqtt://host[:port] or mqtts://host[:port]" in text
    assert f"mqtt.password_file = '{secret}': a file not readable by others" in text
    assert "mqtt.username" in text
    assert "mqtt.ca_file" in text
    assert "mqtt.base_topic = 'wakertc/#'" in text


async def test_a_broker_that_never_answers_holds_nothing_up(tmp_path: Path, models_dir: Path):
    """The broker's port accepts connections and never answers (a dead route, a hung broker):
    the device starts, wakes and converses meanwhile; the connect times out into one log line."""
    with Blackhole(free_port()) as hole:
        device = {"mqtt": {"url": f"mqtt://127.0.0.1:{hole.port}", "device_id": DEVICE_ID}}
        started = time.monotonic()
        async with run_chain(tmp_path, models_dir, device=device) as chain:
            assert time.monotonic() - started < 10
            chain.mic.speak(clip("hey jarvis"))
            await chain.expect(Phase.WAKE, Phase.CONNECTING, Phase.LISTENING)
            assert not chain.logs.find("mqtt: broker")  # still waiting for the broker
            _, line = await chain.wait_log("mqtt: broker", timeout=20)
            assert "unavailable" in line
            assert Phase.ERROR not in [s.new for s in chain.seen]
