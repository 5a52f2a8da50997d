"""Device tokens (stored as hashes only; the devices file of earlier versions) and the rate
limiter (its buckets in the companion's store)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from wakertc.companion import DeviceError, DeviceStore, StoreSettings, open_store
from wakertc.companion.devices import token_hash
from wakertc.companion.ratelimit import RateLimiter


def test_tokens_are_shown_once_and_stored_as_hashes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "devices.json"
    store = DeviceStore(path)
    token = store.add("kitchen")
    assert token.startswith("wkd_") and len(token) > 40
    raw = path.read_text()
    assert token not in raw
    data = json.loads(raw)
    assert data["devices"]["kitchen"]["sha256"] == token_hash(token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.identify(token) == "kitchen"
    assert store.identify(token + "x") is None
    assert store.identify("") is None
    other = store.add("hall")
    assert other != token
    assert store.identify(other) == "hall"
    assert store.names() == ["hall", "kitchen"]


def test_remove_revokes_and_other_processes_see_changes(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    server_view = DeviceStore(path)
    assert server_view.names() == []
    token = DeviceStore(path).add("kitchen")  # e.g. `add-device` in another process
    assert server_view.identify(token) == "kitchen"
    DeviceStore(path).remove("kitchen")
    assert server_view.identify(token) is None
    with pytest.raises(DeviceError, match="no device 'kitchen'"):
        server_view.remove("kitchen")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "../etc"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(DeviceError, match="device name"):
        DeviceStore(tmp_path / "d.json").add(name)


@pytest.mark.parametrize("name", ["browser", "Browser", "BROWSER"])
def test_the_browser_routes_name_is_reserved(tmp_path: Path, name: str) -> None:
    # GET /session mints as "browser": a device with that name would share its rate limit and
    # its log lines.
    with pytest.raises(DeviceError, match="reserved for the companion's browser route"):
        DeviceStore(tmp_path / "d.json").add(name)
    assert not (tmp_path / "d.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_root_leaves_the_file_to_the_owner_of_its_directory(tmp_path: Path) -> None:
    """`sudo wakertc companion add-device` must not take the file from the service's user, who
    owns the state directory and reads the file as itself."""
    service = (4321, 4322)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, *service)
    path = state / "devices.json"
    token = DeviceStore(path).add("kitchen")
    assert (path.stat().st_uid, path.stat().st_gid) == service
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # A file root took over earlier (before this fix) goes back to the service's user.
    os.chown(path, 0, 0)
    DeviceStore(path).add("hall")
    assert (path.stat().st_uid, path.stat().st_gid) == service
    # A file someone gave to another user keeps that owner.
    os.chown(path, 4400, 4400)
    DeviceStore(path).remove("hall")
    assert (path.stat().st_uid, path.stat().st_gid) == (4400, 4400)
    assert DeviceStore(path).identify(token) == "kitchen"
    assert [p.name for p in state.iterdir()] == ["devices.json"]  # no temp file left


def test_duplicate_and_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    store = DeviceStore(path)
    store.add("kitchen")
    with pytest.raises(DeviceError, match="already exists"):
        store.add("kitchen")
    path.write_text("{broken")
    with pytest.raises(DeviceError, match="not JSON"):
        DeviceStore(path).names()
    path.write_text('{"devices": []}')
    with pytest.raises(DeviceError, match="expected"):
        DeviceStore(path).names()


async def test_bucket_bursts_then_refills(tmp_path: Path) -> None:
    store = await open_store(StoreSettings(file=tmp_path / "companion.db"))
    try:
        bucket = [("b", 6)]  # one token every 10 s
        assert [await store.take_tokens(bucket, 0.0) for _ in range(6)] == [0.0] * 6
        assert await store.take_tokens(bucket, 0.0) == pytest.approx(10.0)
        assert await store.take_tokens(bucket, 5.0) == pytest.approx(5.0)
        assert await store.take_tokens(bucket, 10.0) == 0.0
        # A wall clock set back (NTP after a boot without a real-time clock) refills nothing,
        # and does not leave the bucket waiting for the old time to come round again.
        assert await store.take_tokens(bucket, -1000.0) == pytest.approx(10.0)
        assert await store.take_tokens(bucket, -990.0) == 0.0
    finally:
        await store.close()


async def test_limiter_per_device_and_global(tmp_path: Path) -> None:
    now = [0.0]
    store = await open_store(StoreSettings(file=tmp_path / "companion.db"))
    try:
        limiter = RateLimiter(store, 2, 3, clock=lambda: now[0])
        assert await limiter.check("a") == 0 and await limiter.check("a") == 0
        assert await limiter.check("a") == 30  # a's bucket: 2/min, next token in 30 s
        assert await limiter.check("b") == 0  # b has its own bucket ...
        assert await limiter.check("c") == 20  # ... but the global 3/min is spent
        assert await limiter.check("c") == 20  # refusal by the global bucket cost c no token
        now[0] += 20
        assert await limiter.check("c") == 0
    finally:
        await store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_root_never_follows_a_link_planted_in_the_service_directory(tmp_path: Path) -> None:
    """The service's user owns the state directory: a link it plants at a temporary name must not
    make root truncate or chown the link's target (e.g. /etc/shadow)."""
    service = (4321, 4322)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, *service)
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o640)
    path = state / "devices.json"
    # Every name a writer with a predictable temporary name could use (this process's pid and
    # its neighbours), and the file's own temp prefix.
    planted = [
        state / f".devices.json.{pid}.tmp" for pid in range(os.getpid() - 50, os.getpid() + 50)
    ]
    for link in planted:
        link.symlink_to(victim)
    token = DeviceStore(path).add("kitchen")
    DeviceStore(path).add("hall")
    assert victim.read_text() == "root:secret\n"
    assert (victim.stat().st_uid, victim.stat().st_gid) == (0, 0)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640
    assert not path.is_symlink()
    assert (path.stat().st_uid, path.stat().st_gid) == service
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeviceStore(path).identify(token) == "kitchen"
    assert all(link.is_symlink() for link in planted)  # left alone, not replaced or removed
    assert len(list(state.iterdir())) == len(planted) + 1  # no temp file left
