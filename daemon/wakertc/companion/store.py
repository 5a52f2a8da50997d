"""The companion's store: devices, the usage ledger, memory, and the rate-limit buckets.

    store = await open_store(config.store, devices_file=config.devices_file)
    try:
        name = await store.identify(token)
        await store.record_usage(UsageEntry(device=name, session_id=..., event_id=..., ...))
    finally:
        await store.close()

One interface, two back ends: SQLite (the default: one file in the companion's state directory,
`/var/lib/wakertc-companion/companion.db`) and PostgreSQL (`[store] url = "postgresql://..."`),
for several companion processes behind one address. Every call is one transaction and nothing is
cached between calls, so what one process changes (a device removed by `remove-device`, a token
taken from a rate-limit bucket) holds for every other process at its next call. A call returns
only after its transaction committed (SQLite in WAL mode with `synchronous=FULL`: the commit is
fsynced; PostgreSQL: COMMIT returned), so what was acknowledged survives a crash.

The blocking driver (stdlib `sqlite3`, psycopg 3) runs in one worker thread per store, which
owns the connection: calls are serialised in the order they were made.

Device tokens are stored as SHA-256 hashes only (`devices.token_hash`) and looked up by hash:
what a lookup's timing could reveal is about the hash of a guess, which says nothing about any
stored token.

Errors: `StoreError` (the store cannot be opened or used; the message names the file or the
server, never a password), `DeviceError` (from `devices`: a bad name, a duplicate, no such
device), ValueError for a bad argument.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

from .devices import TOKEN_PREFIX, UNSAFE_MODE, DeviceError, DeviceStore, check_name, token_hash

if TYPE_CHECKING:
    from .config import StoreSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
APIS = ("realtime", "live")
ROLES = ("user", "assistant")
SCHEMA_VERSION = 1
# The key of the bucket every device's mints also come out of.
GLOBAL_BUCKET = "global"
# Where a migrated devices file goes (kept as a backup; never read again).
MIGRATED_SUFFIX = ".migrated"


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says which and why."""


@dataclass(frozen=True)
class UsageEntry:
    """What one upstream usage report (a `response.done`, a Live usage update) cost one device."""

    device: str
    """The device the session belongs to."""
    session_id: str
    """The upstream session (or call) id."""
    event_id: str
    """The upstream event the usage came from: with `session_id`, the entry's identity (a write
    retried with the same pair is counted once)."""
    api: Literal["realtime", "live"]
    """Which OpenAI API the session used."""
    at: float
    """When it was reported, unix time."""
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_cached_tokens: int = 0
    """Of the input tokens above, how many were cached (part of them, not added to the total)."""
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    seconds: float = 0.0
    """Session time billed by the second (Live)."""
    cost_usd: float = 0.0
    """The price of this entry in US dollars."""

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"UsageEntry.api: expected one of {', '.join(APIS)}, got {self.api!r}")
        if not self.device or not self.session_id or not self.event_id:
            raise ValueError("UsageEntry: device, session_id and event_id must not be empty")

    @property
    def tokens(self) -> int:
        """All tokens in and out (cached input tokens are already among the input tokens)."""
        return (
            self.input_text_tokens
            + self.input_audio_tokens
            + self.output_text_tokens
            + self.output_audio_tokens
        )


@dataclass(frozen=True)
class Spend:
    """What a device (or the household) used over a period."""

    cost_usd: float = 0.0
    seconds: float = 0.0
    tokens: int = 0
    """All tokens in and out (`UsageEntry.tokens` summed)."""
    sessions: int = 0
    """Distinct sessions with at least one usage entry."""


@dataclass(frozen=True)
class Turn:
    """One remembered turn of a conversation."""

    role: Literal["user", "assistant"]
    text: str
    at: float


_USAGE_COLUMNS = tuple(f.name for f in fields(UsageEntry))
_ALL_COUNTS = "input_text_tokens + input_audio_tokens + output_text_tokens + output_audio_tokens"


class Store:
    """The store's interface and the SQL both back ends share; `open_store` makes one."""

    kind = ""
    # How the back end spells an auto-numbered primary key.
    _serial = ""

    def __init__(self, where: str) -> None:
        self.where = where
        """The file or server, for messages (no password)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"store-{self.kind}")
        self._conn: Any = None

    # -- devices ----------------------------------------------------------------------------------

    async def add_device(self, name: str) -> str:
        """Register `name` and return its new token (the only time it is ever visible)."""
        check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def work(cur: Any) -> None:
            cur.execute(self._sql("SELECT 1 FROM devices WHERE name = ?"), (name,))
            if cur.fetchone() is not None:
                raise DeviceError(
                    f"device {name!r} already exists in {self.where}; remove it first"
                )
            cur.execute(
                self._sql("INSERT INTO devices (name, sha256, added_at) VALUES (?, ?, ?)"),
                (name, token_hash(token), time.time()),
            )

        await self._run(work)
        return token

    async def remove_device(self, name: str) -> None:
        """Revoke a device's token (its ledger and memory stay)."""

        def work(cur: Any) -> None:
            cur.execute(self._sql("DELETE FROM devices WHERE name = ?"), (name,))
            if cur.rowcount == 0:
                raise DeviceError(f"no device {name!r} in {self.where}")

        await self._run(work)

    async def identify(self, token: str) -> str | None:
        """The name of the device holding `token`, or None."""

        def work(cur: Any) -> str | None:
            cur.execute(
                self._sql("SELECT name FROM devices WHERE sha256 = ?"), (token_hash(token),)
            )
            row = cur.fetchone()
            return None if row is None else str(row[0])

        return await self._run(work)

    async def device_names(self) -> list[str]:
        """Registered device names, sorted."""

        def work(cur: Any) -> list[str]:
            cur.execute("SELECT name FROM devices")
            return sorted(str(row[0]) for row in cur.fetchall())

        return await self._run(work)

    # -- usage ledger -----------------------------------------------------------------------------

    async def record_usage(self, entry: UsageEntry) -> bool:
        """Add `entry` to the ledger, committed before this returns; False if an entry with its
        (session_id, event_id) was there already (a retry: nothing is counted twice)."""
        columns = ", ".join(_USAGE_COLUMNS)
        marks = ", ".join("?" for _ in _USAGE_COLUMNS)
        sql = self._sql(
            f"INSERT INTO usage_ledger ({columns}) VALUES ({marks}) "  # noqa: S608 (our names)
            "ON CONFLICT (session_id, event_id) DO NOTHING"
        )
        values = tuple(getattr(entry, name) for name in _USAGE_COLUMNS)

        def work(cur: Any) -> bool:
            cur.execute(sql, values)
            return bool(cur.rowcount == 1)

        return await self._run(work)

    async def spent(self, device: str | None, since: float) -> Spend:
        """What `device` (None: all devices together) used from `since` (unix time) on."""
        spends = await self._spends(device, since, by_device=False)
        return spends.get("", Spend())

    async def spent_by_device(self, since: float) -> dict[str, Spend]:
        """What each device that used anything from `since` on used, by name."""
        return await self._spends(None, since, by_device=True)

    async def _spends(
        self, device: str | None, since: float, *, by_device: bool
    ) -> dict[str, Spend]:
        where, args = self._usage_filter(device, since)
        group = "device" if by_device else "''"
        sql = self._sql(
            f"SELECT {group}, COALESCE(SUM(cost_usd), 0), COALESCE(SUM(seconds), 0), "  # noqa: S608
            f"COALESCE(SUM({_ALL_COUNTS}), 0), COUNT(DISTINCT session_id) FROM usage_ledger "
            f"WHERE {where}" + (" GROUP BY device" if by_device else "")
        )

        def work(cur: Any) -> dict[str, Spend]:
            cur.execute(sql, args)
            return {
                str(row[0]): Spend(float(row[1]), float(row[2]), int(row[3]), int(row[4]))
                for row in cur.fetchall()
                if int(row[4])
            }

        return await self._run(work)

    async def usage(self, device: str | None, since: float) -> list[UsageEntry]:
        """The ledger's entries for `device` (None: all) from `since` on, oldest first."""
        where, args = self._usage_filter(device, since)
        sql = self._sql(
            f"SELECT {', '.join(_USAGE_COLUMNS)} FROM usage_ledger WHERE {where} "  # noqa: S608
            "ORDER BY at, session_id, event_id"
        )

        def work(cur: Any) -> list[UsageEntry]:
            cur.execute(sql, args)
            return [_usage_entry(row) for row in cur.fetchall()]

        return await self._run(work)

    @staticmethod
    def _usage_filter(device: str | None, since: float) -> tuple[str, tuple[Any, ...]]:
        if device is None:
            return "at >= ?", (since,)
        return "at >= ? AND device = ?", (since, device)

    # -- memory -----------------------------------------------------------------------------------

    async def remember(self, device: str, role: str, text: str, at: float) -> None:
        """Keep one turn of `device`'s conversation (`role` is "user" or "assistant")."""
        if role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")

        def work(cur: Any) -> None:
            cur.execute(
                self._sql("INSERT INTO memory (device, role, text, at) VALUES (?, ?, ?, ?)"),
                (device, role, text, at),
            )

        await self._run(work)

    async def recall(
        self, device: str, limit: int, max_age_s: float, *, now: float | None = None
    ) -> list[Turn]:
        """`device`'s last `limit` turns no older than `max_age_s` (at `now`, default the wall
        clock), oldest first."""
        since = (time.time() if now is None else now) - max_age_s

        def work(cur: Any) -> list[Turn]:
            cur.execute(
                self._sql(
                    "SELECT role, text, at FROM memory WHERE device = ? AND at >= ? "
                    "ORDER BY at DESC, id DESC LIMIT ?"
                ),
                (device, since, max(0, limit)),
            )
            return [Turn(row[0], str(row[1]), float(row[2])) for row in reversed(cur.fetchall())]

        return await self._run(work)

    async def forget(self, device: str) -> int:
        """Delete everything remembered for `device`; returns how many turns that was."""

        def work(cur: Any) -> int:
            cur.execute(self._sql("DELETE FROM memory WHERE device = ?"), (device,))
            return int(cur.rowcount)

        return await self._run(work)

    # -- rate limits ------------------------------------------------------------------------------

    async def take_tokens(self, buckets: Sequence[tuple[str, int]], now: float) -> float:
        """Take one token from each (key, per-minute rate) bucket, all or none, in one
        transaction that no other process interleaves with: 0.0 if taken, else the seconds until
        the first bucket that is short has one. A bucket holds up to its per-minute rate and
        refills at that rate; a new bucket is full. `now` is wall-clock time (shared by the
        processes); a clock that went back refills nothing."""

        def work(cur: Any) -> float:
            levels: list[float] = []
            wait = 0.0
            for key, per_minute in buckets:
                cur.execute(
                    self._sql("SELECT tokens, updated FROM rate_buckets WHERE key = ?"), (key,)
                )
                row = cur.fetchone()
                capacity, per_second = float(per_minute), per_minute / 60.0
                tokens = capacity
                if row is not None:
                    elapsed = max(0.0, now - float(row[1]))
                    tokens = min(capacity, float(row[0]) + elapsed * per_second)
                if tokens < 1.0 and not wait:
                    wait = (1.0 - tokens) / per_second
                levels.append(tokens)
            if not wait:
                levels = [tokens - 1.0 for tokens in levels]
            # Written refused or not, each level as of `now`: the same refill either way, and a
            # clock that went back counts from where it is now.
            for (key, _), tokens in zip(buckets, levels, strict=True):
                cur.execute(
                    self._sql(
                        "INSERT INTO rate_buckets (key, tokens, updated) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, "
                        "updated = excluded.updated"
                    ),
                    (key, tokens, now),
                )
            return wait

        return await self._run(work, exclusive=True)

    # -- life cycle -------------------------------------------------------------------------------

    async def _open(self, devices_file: Path | None) -> None:
        await self._run(self._create_schema, exclusive=True)
        if devices_file is not None:
            await self._migrate(devices_file)

    async def close(self) -> None:
        """Close the connection and the worker thread."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    def _create_schema(self, cur: Any) -> None:
        real = "DOUBLE PRECISION"
        tokens = ", ".join(f"{name} BIGINT NOT NULL DEFAULT 0" for name in _USAGE_COLUMNS[5:10])
        for statement in (
            "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS devices (name TEXT PRIMARY KEY, "
            f"sha256 TEXT NOT NULL UNIQUE, added_at {real} NOT NULL)",
            "CREATE TABLE IF NOT EXISTS usage_ledger (session_id TEXT NOT NULL, "
            f"event_id TEXT NOT NULL, device TEXT NOT NULL, api TEXT NOT NULL, at {real} NOT NULL, "
            f"{tokens}, seconds {real} NOT NULL DEFAULT 0, cost_usd {real} NOT NULL DEFAULT 0, "
            "PRIMARY KEY (session_id, event_id))",
            "CREATE INDEX IF NOT EXISTS usage_ledger_at ON usage_ledger (at)",
            "CREATE INDEX IF NOT EXISTS usage_ledger_device_at ON usage_ledger (device, at)",
            f"CREATE TABLE IF NOT EXISTS memory (id {self._serial}, device TEXT NOT NULL, "
            f"role TEXT NOT NULL, text TEXT NOT NULL, at {real} NOT NULL)",
            "CREATE INDEX IF NOT EXISTS memory_device_at ON memory (device, at)",
            "CREATE TABLE IF NOT EXISTS rate_buckets (key TEXT PRIMARY KEY, "
            f"tokens {real} NOT NULL, updated {real} NOT NULL)",
        ):
            cur.execute(statement)
        cur.execute(self._sql("SELECT value FROM store_meta WHERE key = ?"), ("schema",))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                self._sql("INSERT INTO store_meta (key, value) VALUES (?, ?)"),
                ("schema", str(SCHEMA_VERSION)),
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.where}: the store has schema version {row[0]}, newer than this wakertc "
                f"understands ({SCHEMA_VERSION}); upgrade wakertc"
            )

    async def _migrate(self, devices_file: Path) -> None:
        """Move a devices file of earlier versions into the store, once: its devices are added
        (a name already in the store keeps the store's token) and the file is renamed to
        `*.migrated`, so it is never read again."""
        records = await asyncio.to_thread(_read_devices_file, devices_file)
        if records is None:
            return

        def work(cur: Any) -> list[str]:
            kept = []
            for name, record in sorted(records.items()):
                cur.execute(self._sql("SELECT sha256 FROM devices WHERE name = ?"), (name,))
                row = cur.fetchone()
                if row is None:
                    cur.execute(
                        self._sql("INSERT INTO devices (name, sha256, added_at) VALUES (?, ?, ?)"),
                        (name, str(record["sha256"]), float(record.get("added_at", time.time()))),
                    )
                elif str(row[0]) != record["sha256"]:
                    kept.append(name)
            return kept

        kept = await self._run(work)
        moved = devices_file.with_name(devices_file.name + MIGRATED_SUFFIX)
        try:
            await asyncio.to_thread(os.replace, devices_file, moved)
        except OSError as exc:
            # Left in place it would be imported again, bringing back devices removed since.
            raise StoreError(
                f"{devices_file}: its devices are in {self.where} now, but the file cannot be "
                f"renamed to {moved.name} ({exc.strerror}); move it away by hand"
            ) from None
        log.info(
            "migrated %d devices from %s into the store %s (the old file is now %s)%s",
            len(records),
            devices_file,
            self.where,
            moved.name,
            f"; kept the store's own token for {', '.join(kept)}" if kept else "",
        )

    # -- the worker thread ------------------------------------------------------------------------

    async def _run(self, work: Callable[[Any], T], *, exclusive: bool = False) -> T:
        """Run `work(cursor)` as one transaction in the worker thread; committed when this
        returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._transaction, work, exclusive)

    def _transaction(self, work: Callable[[Any], T], exclusive: bool) -> T:
        conn = self._connection()
        try:
            cur = conn.cursor()
            self._begin(cur, exclusive)
            result = work(cur)
            self._commit(conn, cur)
            return result
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, self._driver_errors()):
                raise StoreError(f"{self.where}: {self._describe(exc)}") from exc
            raise

    def _sql(self, statement: str) -> str:
        """`statement` with `?` placeholders in the back end's style."""
        return statement

    def _connection(self) -> Any:
        raise NotImplementedError

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _begin(self, cur: Any, exclusive: bool) -> None:
        raise NotImplementedError

    def _commit(self, conn: Any, cur: Any) -> None:
        raise NotImplementedError

    def _rollback(self, conn: Any) -> None:
        raise NotImplementedError

    def _driver_errors(self) -> tuple[type[Exception], ...]:
        raise NotImplementedError

    def _describe(self, exc: BaseException) -> str:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class SQLiteStore(Store):
    """One SQLite file (WAL, synchronous=FULL), mode 0600, owned like the state directory."""

    kind = "sqlite"
    _serial = "INTEGER PRIMARY KEY"

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        super().__init__(str(path))
        self.path = path
        self._busy_timeout_s = busy_timeout_s

    def _connection(self) -> Any:
        self._check_file()
        if self._conn is None:
            # nofollow: whoever owns the state directory could plant a link there for root.
            uri = f"file:{quote(str(self.path))}?nofollow=1"
            try:
                conn = sqlite3.connect(
                    uri,
                    uri=True,
                    timeout=self._busy_timeout_s,
                    isolation_level=None,  # we say BEGIN and COMMIT ourselves
                    check_same_thread=False,  # only ever used by the one worker thread
                )
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a commit is fsynced before it returns (NORMAL may lose the last ones to a
                # power cut in WAL mode); what was acknowledged is committed.
                conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot open the store: {exc}") from None
            self._conn = conn
        return self._conn

    def _check_file(self) -> None:
        """Create the file 0600 for the directory's owner, or refuse one others may write to
        (whoever can write it can add a device) or read."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            fd = None
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the store: {exc.strerror}") from None
        if fd is not None:
            try:
                owner = self._owner()
                if owner is not None:
                    os.fchown(fd, *owner)
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            return
        try:
            info = os.lstat(self.path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read the store: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{self.path}: the store is not a regular file")
        if info.st_mode & UNSAFE_MODE:
            self._disconnect()
            mode = stat.S_IMODE(info.st_mode)
            raise StoreError(
                f"{self.path}: store file has mode {mode:04o} (readable by others or writable "
                f"by others or the group); chmod 600 {self.path}"
            )
        if info.st_uid == 0 and os.geteuid() == 0:
            owner = self._owner()
            if owner is not None and owner[0] != 0:
                # A file root made earlier goes back to the service that reads it.
                os.chown(self.path, *owner, follow_symlinks=False)

    def _owner(self) -> tuple[int, int] | None:
        """Run as root (`sudo wakertc companion add-device`), the file goes to the owner of its
        directory, the service's state directory; SQLite gives its -wal and -shm files the
        database file's owner."""
        if os.geteuid() != 0:
            return None
        info = self.path.parent.stat()
        return info.st_uid, info.st_gid

    def _begin(self, cur: Any, exclusive: bool) -> None:
        # IMMEDIATE takes the write lock now, so two processes' read-modify-write of a bucket
        # cannot interleave (the other waits, up to the busy timeout).
        cur.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")

    def _commit(self, conn: Any, cur: Any) -> None:
        cur.execute("COMMIT")

    def _rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _driver_errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)


# Any constant: the key of the transaction-scoped advisory lock that serialises schema creation and
# the rate-limit buckets between companion processes.
_PG_LOCK = 0x77616B65


class PostgresStore(Store):
    """A PostgreSQL database, shared by several companion processes."""

    kind = "postgresql"
    _serial = "BIGSERIAL PRIMARY KEY"

    def __init__(
        self, url: str, *, password: str | None = None, connect_timeout_s: int = 10
    ) -> None:
        super().__init__(_redact(url))
        self._url = url
        self._password = password
        self._connect_timeout_s = connect_timeout_s

    def _connection(self) -> Any:
        import psycopg

        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._disconnect()  # the server restarted or the network dropped: connect again
        if self._conn is None:
            extra: dict[str, Any] = {"connect_timeout": self._connect_timeout_s}
            if self._password is not None:
                extra["password"] = self._password
            try:
                self._conn = psycopg.connect(
                    self._url, application_name="wakertc-companion", **extra
                )
            except psycopg.Error as exc:
                raise StoreError(f"{self.where}: cannot connect: {self._describe(exc)}") from None
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def _begin(self, cur: Any, exclusive: bool) -> None:
        if exclusive:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))

    def _commit(self, conn: Any, cur: Any) -> None:
        conn.commit()

    def _rollback(self, conn: Any) -> None:
        if not conn.closed:
            try:
                conn.rollback()
            except Exception:  # a broken connection: it is replaced at the next call
                self._disconnect()

    def _driver_errors(self) -> tuple[type[Exception], ...]:
        import psycopg

        return (psycopg.Error,)


async def open_store(settings: StoreSettings, *, devices_file: Path | None = None) -> Store:
    """Open (creating if need be) the store `settings` name; if `devices_file` exists, move its
    devices into the store first (once: the file is renamed). Raises StoreError, DeviceError."""
    store: Store
    if settings.url:
        store = PostgresStore(settings.url, password=_read_password(settings))
    else:
        store = SQLiteStore(settings.file)
    try:
        await store._open(devices_file)
    except BaseException:
        await store.close()
        raise
    return store


def _read_devices_file(path: Path) -> dict[str, dict[str, Any]] | None:
    """The records of a devices file of earlier versions, None if there is none."""
    if not path.exists():
        return None
    return DeviceStore(path).records()  # refuses a file others could have written to


def _read_password(settings: StoreSettings) -> str | None:
    if settings.password_file is None:
        return None
    path = settings.password_file
    try:
        mode = path.stat().st_mode
        password = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StoreError(f"store.password_file: cannot read {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        raise StoreError(
            f"store.password_file: {path} is readable by other users; chmod 600 {path}"
        )
    return password


def _redact(url: str) -> str:
    """`url` without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}@{netloc}").geturl()


def _usage_entry(row: Sequence[Any]) -> UsageEntry:
    values = dict(zip(_USAGE_COLUMNS, row, strict=True))
    for name in _USAGE_COLUMNS[5:10]:
        values[name] = int(values[name])
    for name in ("at", "seconds", "cost_usd"):
        values[name] = float(values[name])
    return UsageEntry(**values)
