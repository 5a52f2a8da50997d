"""The companion's store on SQLite and on a real PostgreSQL server started here (Debian's
`postgresql`, installed by bootstrap.sh --test; the PostgreSQL cases skip without it, as the
Mosquitto tests do): one contract for both, the devices file imported once, two companion
processes on one PostgreSQL sharing one rate limit and one device list, nothing acknowledged lost
to SIGKILL, and the `usage` and `forget` commands."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from emulator_helpers import (
    companion_config_file,
    run_command,
    running_emulator,
    spawn_server,
    stop_server,
)
from wakertc.companion import (
    Companion,
    DeviceError,
    DeviceStore,
    Spend,
    Store,
    StoreSettings,
    Turn,
    UsageEntry,
    load_companion_config,
    open_store,
)

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), "")
HAS_POSTGRES = bool(PG_BIN) and Path(PG_BIN, "postgres").exists()
needs_postgres = pytest.mark.skipif(
    not HAS_POSTGRES, reason="needs Debian's postgresql (bootstrap.sh --test)"
)
# PostgreSQL refuses to run as root: run as nobody, in a directory of its own outside pytest's
# private (root-only) temporary directory.
PG_USER = "nobody"


# -- a real PostgreSQL server ---------------------------------------------------------------------


class Postgres:
    """A PostgreSQL server on a free loopback port, its data in a temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wakertc-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "postgres.log"

    def _as_user(self, *argv: str) -> list[str]:
        return ["setpriv", f"--reuid={PG_USER}", "--regid=nogroup", "--clear-groups", *argv]

    def start(self) -> None:
        shutil.chown(self.root, PG_USER, "nogroup")
        subprocess.run(
            self._as_user(
                f"{PG_BIN}/initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ),
            check=True,
            capture_output=True,
            cwd=self.root,
        )
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            self._as_user(
                f"{PG_BIN}/postgres",
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
            ),
            stdout=log,
            stderr=log,
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"postgres exited: {self.log_path.read_text()}")
            ready = subprocess.run(
                [f"{PG_BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"postgres did not start: {self.log_path.read_text()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database's URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    if not HAS_POSTGRES:
        pytest.skip("needs Debian's postgresql (bootstrap.sh --test)")
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """Settings for an empty store of each kind."""
    if request.param == "sqlite":
        return StoreSettings(file=tmp_path / "state" / "companion.db")
    server: Postgres = request.getfixturevalue("postgres")
    return StoreSettings(url=server.new_database())


@contextlib.asynccontextmanager
async def opened(settings: StoreSettings, devices_file: Path | None = None) -> AsyncIterator[Store]:
    store = await open_store(settings, devices_file=devices_file)
    try:
        yield store
    finally:
        await store.close()


def entry(event_id: str, **fields: object) -> UsageEntry:
    values: dict[str, object] = {
        "device": "kitchen",
        "session_id": "sess_1",
        "event_id": event_id,
        "api": "realtime",
        "at": 1000.0,
    }
    values.update(fields)
    return UsageEntry(**values)  # type: ignore[arg-type]


# -- the contract both back ends keep -------------------------------------------------------------


async def test_devices_add_identify_remove(settings: StoreSettings) -> None:
    async with opened(settings) as store:
        kitchen = await store.add_device("kitchen")
        hall = await store.add_device("hall")
        assert kitchen.startswith("wkd_") and kitchen != hall
        assert await store.device_names() == ["hall", "kitchen"]
        assert await store.identify(kitchen) == "kitchen"
        assert await store.identify(hall) == "hall"
        for wrong in ("", "wkd_nothing", kitchen[:-1], kitchen + "x", "\udcff"):
            assert await store.identify(wrong) is None
        with pytest.raises(DeviceError, match="'kitchen' already exists"):
            await store.add_device("kitchen")
        for bad in ("", "-x", "a b", "browser", "x" * 65):
            with pytest.raises(DeviceError):
                await store.add_device(bad)
        await store.remove_device("kitchen")
        assert await store.identify(kitchen) is None
        with pytest.raises(DeviceError, match="no device 'kitchen'"):
            await store.remove_device("kitchen")
    async with opened(settings) as again:  # kept across opening
        assert await again.device_names() == ["hall"]
        assert await again.identify(hall) == "hall"


async def test_usage_is_counted_once_per_event(settings: StoreSettings) -> None:
    first = entry("ev_1", input_text_tokens=10, input_audio_tokens=20, input_cached_tokens=5,
                  output_text_tokens=3, output_audio_tokens=40, cost_usd=0.25)  # fmt: skip
    async with opened(settings) as store:
        assert await store.record_usage(first) is True
        # A retried write (same session and event) changes nothing, whatever it says.
        assert await store.record_usage(first) is False
        assert await store.record_usage(entry("ev_1", output_audio_tokens=999)) is False
        # The same event id in another session is another entry.
        other = entry("ev_1", session_id="sess_2", seconds=12.5, cost_usd=0.5, api="live")
        assert await store.record_usage(other) is True
        assert await store.usage("kitchen", 0) == [first, other]
        assert await store.spent("kitchen", 0) == Spend(
            cost_usd=0.75, seconds=12.5, tokens=73, sessions=2
        )
    with pytest.raises(ValueError, match="api"):
        entry("ev_x", api="chat")


async def test_spent_by_device_household_and_since(settings: StoreSettings) -> None:
    async with opened(settings) as store:
        for item in (
            entry("a1", device="kitchen", session_id="k1", at=100.0, input_text_tokens=1,
                  cost_usd=1.0),
            entry("a2", device="kitchen", session_id="k1", at=200.0, output_audio_tokens=2,
                  cost_usd=2.0),
            entry("a3", device="kitchen", session_id="k2", at=300.0, seconds=30.0, cost_usd=4.0,
                  api="live"),
            entry("b1", device="hall", session_id="h1", at=250.0, input_audio_tokens=8,
                  cost_usd=8.0),
        ):  # fmt: skip
            await store.record_usage(item)
        assert await store.spent("kitchen", 0) == Spend(7.0, 30.0, 3, 2)
        assert await store.spent("kitchen", 200.0) == Spend(6.0, 30.0, 2, 2)  # from 200 on
        assert await store.spent("kitchen", 301.0) == Spend()
        assert await store.spent("hall", 0) == Spend(8.0, 0.0, 8, 1)
        assert await store.spent(None, 0) == Spend(15.0, 30.0, 11, 3)
        assert await store.spent(None, 250.0) == Spend(12.0, 30.0, 8, 2)
        assert await store.spent("attic", 0) == Spend()
        assert await store.spent_by_device(0) == {
            "kitchen": Spend(7.0, 30.0, 3, 2),
            "hall": Spend(8.0, 0.0, 8, 1),
        }
        assert [e.event_id for e in await store.usage(None, 200.0)] == ["a2", "b1", "a3"]
        assert [e.event_id for e in await store.usage("hall", 0)] == ["b1"]


async def test_memory_limit_age_and_forget(settings: StoreSettings) -> None:
    async with opened(settings) as store:
        for i, at in enumerate((100.0, 200.0, 300.0, 400.0)):
            role = "user" if i % 2 == 0 else "assistant"
            await store.remember("kitchen", role, f"turn {i}", at)
        await store.remember("hall", "user", "hall's own", 350.0)
        assert await store.recall("kitchen", 10, 1000.0, now=400.0) == [
            Turn("user", "turn 0", 100.0),
            Turn("assistant", "turn 1", 200.0),
            Turn("user", "turn 2", 300.0),
            Turn("assistant", "turn 3", 400.0),
        ]
        # The last two, oldest first.
        assert [t.text for t in await store.recall("kitchen", 2, 1000.0, now=400.0)] == [
            "turn 2",
            "turn 3",
        ]
        # No older than 150 s at 400: turns 2 and 3 (300 is 100 s old, 200 is 200 s old).
        assert [t.text for t in await store.recall("kitchen", 10, 150.0, now=400.0)] == [
            "turn 2",
            "turn 3",
        ]
        assert await store.recall("kitchen", 0, 1000.0, now=400.0) == []
        with pytest.raises(ValueError, match="role"):
            await store.remember("kitchen", "system", "no", 1.0)
        assert await store.forget("kitchen") == 4
        assert await store.recall("kitchen", 10, 1e9, now=400.0) == []
        assert await store.forget("kitchen") == 0
        assert [t.text for t in await store.recall("hall", 10, 1e9, now=400.0)] == ["hall's own"]


async def test_rate_buckets_are_shared_by_two_stores(settings: StoreSettings) -> None:
    """Two handles on one store (as two processes have) take from the same buckets."""
    async with opened(settings) as one, opened(settings) as two:
        buckets = [("device:kitchen", 2), ("global", 3)]
        assert await one.take_tokens(buckets, 0.0) == 0.0
        assert await two.take_tokens(buckets, 0.0) == 0.0
        assert await one.take_tokens(buckets, 0.0) == pytest.approx(30.0)
        assert await two.take_tokens([("device:hall", 2), ("global", 3)], 0.0) == 0.0
        assert await one.take_tokens([("device:attic", 2), ("global", 3)], 0.0) == pytest.approx(
            20.0
        )


async def test_concurrent_takes_never_exceed_the_bucket(settings: StoreSettings) -> None:
    """Many takes at once from two handles: exactly the bucket's size gets through."""
    async with opened(settings) as one, opened(settings) as two:
        results = await asyncio.gather(
            *(store.take_tokens([("global", 7)], 50.0) for store in (one, two) * 10)
        )
    assert sum(1 for wait in results if wait == 0.0) == 7


# -- the devices file of earlier versions ---------------------------------------------------------


async def test_devices_file_is_migrated_once_and_its_tokens_still_work(
    settings: StoreSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    devices_file = tmp_path / "devices.json"
    legacy = DeviceStore(devices_file)
    kitchen, hall = legacy.add("kitchen"), legacy.add("hall")
    caplog.set_level("INFO", "wakertc.companion.store")
    async with opened(settings, devices_file) as store:
        assert await store.device_names() == ["hall", "kitchen"]
        assert await store.identify(kitchen) == "kitchen"
        assert await store.identify(hall) == "hall"
        await store.remove_device("hall")
    migrated = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert len(migrated) == 1
    assert migrated[0].startswith(f"migrated 2 devices from {devices_file} into the store")
    assert not devices_file.exists()
    assert (tmp_path / "devices.json.migrated").exists()
    # Opened again: nothing imported again, so the removed device stays removed.
    caplog.clear()
    async with opened(settings, devices_file) as store:
        assert await store.identify(hall) is None
        assert await store.identify(kitchen) == "kitchen"
    assert not [r for r in caplog.records if "migrated" in r.getMessage()]


async def test_a_companion_serves_the_devices_of_a_devices_file(tmp_path: Path) -> None:
    """An upgrade: the devices file of an earlier version, a new companion; the old token mints,
    and no token is in any file the companion wrote."""
    async with running_emulator() as emu:
        config = load_companion_config(companion_config_file(tmp_path, emu.url))
        token = DeviceStore(config.devices_file).add("kitchen")
        async with Companion(config) as companion, httpx.AsyncClient() as http:
            response = await http.post(
                companion.url + "/v1/session", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200
            fresh = await companion.store.add_device("hall")
    assert config.store.file == tmp_path / "companion.db"
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for secret in (token, fresh):
        assert secret.encode() not in written
        assert secret[len("wkd_") :].encode() not in written


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
async def test_root_leaves_the_store_file_to_the_owner_of_its_directory(tmp_path: Path) -> None:
    """`sudo wakertc companion add-device` must not take the store from the service's user."""
    service = (4321, 4322)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, *service)
    config = companion_config_file(tmp_path, "http://127.0.0.1:9", '[store]\nfile = "state/c.db"\n')
    code, _, err = await run_command("companion", "add-device", "kitchen", "--config", str(config))
    assert code == 0, err
    db = state / "c.db"
    for path in state.iterdir():  # the database and whatever SQLite left beside it
        assert (path.stat().st_uid, path.stat().st_gid) == service, path
        assert path.stat().st_mode & 0o077 == 0, path
    assert (db.stat().st_mode & 0o777) == 0o600
    # A store root took over earlier goes back to the service's user.
    os.chown(db, 0, 0)
    code, _, err = await run_command("companion", "list-devices", "--config", str(config))
    assert code == 0, err
    assert (db.stat().st_uid, db.stat().st_gid) == service
    # A link planted in the service's directory is not followed by root.
    db.unlink()
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    db.symlink_to(victim)
    code, _, err = await run_command("companion", "list-devices", "--config", str(config))
    assert code == 2 and "not a regular file" in err
    assert victim.stat().st_uid == 0 and victim.read_bytes() == b""


# -- two companion processes on one PostgreSQL ----------------------------------------------------


@needs_postgres
async def test_two_companions_on_one_postgresql_share_limits_and_devices(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.new_database()
    extra = f'[store]\nurl = "{url}"\n[limits]\nper_device_per_minute = 3\nglobal_per_minute = 60\n'
    extra += "[budgets.household]\nday_usd = 1.0\n"
    async with running_emulator() as emu:
        configs = []
        for name in ("one", "two"):
            directory = tmp_path / name
            directory.mkdir()
            configs.append(companion_config_file(directory, emu.url, extra))
        code, out, err = await run_command(
            "companion", "add-device", "kitchen", "--config", str(configs[0])
        )
        assert code == 0, err
        token = out.strip()
        _, out, _ = await run_command(
            "companion", "add-device", "hall", "--config", str(configs[1])
        )
        hall = out.strip()
        procs = [await spawn_server("companion", "--config", str(c)) for c in configs]
        try:
            urls = [url for _, url, _, _ in procs]
            async with httpx.AsyncClient(timeout=10) as http:

                async def mint(base: str, device_token: str) -> httpx.Response:
                    return await http.post(
                        base + "/v1/session", headers={"Authorization": f"Bearer {device_token}"}
                    )

                # 3 per minute for kitchen, whichever process it asks.
                statuses = [(await mint(urls[i % 2], token)).status_code for i in range(3)]
                assert statuses == [200, 200, 200]
                for base in urls:
                    limited = await mint(base, token)
                    assert limited.status_code == 429
                    assert 1 <= int(limited.headers["Retry-After"]) <= 20
                # A device added through one is known to both; removed through the other's CLI,
                # it is refused by both at once.
                assert (await mint(urls[0], hall)).status_code == 200
                code, _, err = await run_command(
                    "companion", "remove-device", "hall", "--config", str(configs[1])
                )
                assert code == 0, err
                for base in urls:
                    refused = await mint(base, hall)
                    assert refused.status_code == 401
                    assert refused.json()["error"]["code"] == "invalid_device_token"
                # One budget: a dollar metered through one companion (its sideband writes the
                # ledger) uses up the household's day for both.
                for base in urls:
                    standing = await http.get(
                        base + "/v1/device", headers={"Authorization": f"Bearer {token}"}
                    )
                    assert standing.json()["budget"]["state"] == "ok", standing.text
                store = await open_store(StoreSettings(url=url))
                try:
                    await store.record_usage(
                        UsageEntry(
                            device="kitchen",
                            session_id="rtc_budget",
                            event_id="resp_1",
                            api="realtime",
                            at=time.time(),
                            cost_usd=1.0,
                        )
                    )
                finally:
                    await store.close()
                for base in urls:
                    standing = await http.get(
                        base + "/v1/device", headers={"Authorization": f"Bearer {token}"}
                    )
                    assert standing.status_code == 429
                    assert standing.json()["error"]["code"] == "insufficient_quota"
                    assert int(standing.headers["Retry-After"]) <= 24 * 3600 + 1
        finally:
            outputs = [await stop_server(proc, signal.SIGTERM) for proc, _, _, _ in procs]
        for code, _, rest in outputs:
            assert code == 0, rest
            assert token not in rest and hall not in rest


# -- no acknowledged usage lost to SIGKILL --------------------------------------------------------

WRITER = """
import asyncio, sys, time
from pathlib import Path
from wakertc.companion import StoreSettings, UsageEntry, open_store

async def main() -> None:
    kind, where = sys.argv[1], sys.argv[2]
    settings = StoreSettings(url=where) if kind == "postgresql" else StoreSettings(file=Path(where))
    store = await open_store(settings)
    i = 0
    while True:
        event = f"ev_{i}"
        await store.record_usage(UsageEntry(device="kitchen", session_id="sess", event_id=event,
                                            api="realtime", at=time.time(), output_audio_tokens=1,
                                            cost_usd=0.001))
        print(event, flush=True)  # acknowledged
        i += 1

asyncio.run(main())
"""


async def test_sigkill_during_ledger_writes_loses_nothing_acknowledged(
    settings: StoreSettings,
) -> None:
    kind, where = ("postgresql", settings.url) if settings.url else ("sqlite", str(settings.file))
    async with opened(settings):
        pass  # create the schema first, so the writer starts writing at once
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, kind, where,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    acknowledged: list[str] = []
    try:
        async with asyncio.timeout(60):
            while len(acknowledged) < 150:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError((await proc.stderr.read()).decode())
                acknowledged.append(line.decode().strip())
    finally:
        proc.kill()  # SIGKILL, mid-stream: no clean-up runs
        rest, _ = await proc.communicate()
    acknowledged += rest.decode().split()  # printed before the kill landed
    assert proc.returncode == -signal.SIGKILL
    async with opened(settings) as store:
        ledger = {e.event_id for e in await store.usage("kitchen", 0)}
        spend = await store.spent("kitchen", 0)
    missing = [event for event in acknowledged if event not in ledger]
    assert not missing, f"{len(missing)} acknowledged entries lost: {missing[:5]}"
    assert len(ledger) - len(acknowledged) <= 1  # at most the one in flight was committed
    assert spend.tokens == len(ledger)


# -- `companion usage` and `companion forget` -----------------------------------------------------


async def test_usage_and_forget_commands(tmp_path: Path) -> None:
    config_path = companion_config_file(tmp_path, "http://127.0.0.1:9")
    config = load_companion_config(config_path)
    june = datetime(2026, 6, 1).timestamp()
    async with opened(config.store) as store:
        for item in (
            entry("a1", device="kitchen", session_id="k1", at=june - 3600, input_text_tokens=100,
                  cost_usd=0.5),
            entry("a2", device="kitchen", session_id="k2", at=june + 60, output_audio_tokens=250,
                  cost_usd=1.25),
            entry("b1", device="hall", session_id="h1", at=june + 120, seconds=90.0, api="live",
                  cost_usd=0.75),
        ):  # fmt: skip
            await store.record_usage(item)
        await store.remember("kitchen", "user", "my name is Ada", june)
        await store.remember("kitchen", "assistant", "hello Ada", june + 1)
        await store.remember("hall", "user", "lights", june)
    args = ("--config", str(config_path))

    code, out, err = await run_command("companion", "usage", *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "usage, all recorded usage:"
    assert lines[1].split() == ["device", "sessions", "tokens", "seconds", "cost", "(USD)"]
    assert lines[2].split() == ["hall", "1", "0", "90.0", "0.7500"]
    assert lines[3].split() == ["kitchen", "2", "350", "0.0", "1.7500"]
    assert lines[4].split() == ["household", "3", "350", "90.0", "2.5000"]

    code, out, err = await run_command("companion", "usage", "--since", "2026-06-01", *args)
    assert code == 0, err
    assert out.splitlines()[0] == "usage, since 2026-06-01:"
    assert out.splitlines()[3].split() == ["kitchen", "1", "250", "0.0", "1.2500"]
    assert out.splitlines()[4].split() == ["household", "2", "250", "90.0", "2.0000"]

    code, out, err = await run_command("companion", "usage", "--json", *args)
    assert code == 0, err
    assert json.loads(out) == {
        "since": None,
        "devices": {
            "hall": {"sessions": 1, "tokens": 0, "seconds": 90.0, "cost_usd": 0.75},
            "kitchen": {"sessions": 2, "tokens": 350, "seconds": 0.0, "cost_usd": 1.75},
        },
        "household": {"sessions": 3, "tokens": 350, "seconds": 90.0, "cost_usd": 2.5},
    }
    code, out, err = await run_command(
        "companion", "usage", "--json", "--device", "kitchen", "--since", "2026-06-01", *args
    )
    assert code == 0, err
    assert json.loads(out) == {
        "since": "2026-06-01",
        "devices": {"kitchen": {"sessions": 1, "tokens": 250, "seconds": 0.0, "cost_usd": 1.25}},
    }
    code, out, err = await run_command("companion", "usage", "--since", "June", *args)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "expected a date YYYY-MM-DD, got 'June'" in err

    code, out, err = await run_command("companion", "forget", "--device", "kitchen", *args)
    assert code == 0 and out == ""
    assert err.strip() == "device 'kitchen': forgot 2 remembered turns"
    code, _, err = await run_command("companion", "forget", *args)
    assert code == 2 and "--device" in err and len(err.splitlines()) == 1
    async with opened(config.store) as store:
        assert await store.recall("kitchen", 10, 1e12) == []
        assert [t.text for t in await store.recall("hall", 10, 1e12)] == ["lights"]
