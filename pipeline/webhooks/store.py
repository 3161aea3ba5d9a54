"""The webhook store: one SQLite file (WAL) holding every event, each message's current status, and the signed
bodies that were not events. Owns the schema and its version, and the only writer.

Durability: a request is answered only after the transaction holding its event is committed with
synchronous=FULL (an fsync of the WAL), so neither a killed receiver nor a lost machine loses an acknowledged event.
One writer thread commits whatever has queued up meanwhile in one transaction (group commit): under a burst one
fsync covers many events, and a lone event waits for nobody.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pipeline import errors
from pipeline.webhooks.events import Event

SCHEMA_VERSION = 1

# each entry takes the store from the version before it to its own; later versions append, never edit
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # every distinct event, in arrival order: dedupe_key is what recognises a repeat (see events.py)
        """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        dedupe_key TEXT NOT NULL UNIQUE,
        message_id TEXT,
        status TEXT,
        rank INTEGER,
        sub_type TEXT NOT NULL,
        channel TEXT,
        error TEXT,
        event_at TEXT,
        received_at TEXT NOT NULL,
        body TEXT NOT NULL
    )""",
        "CREATE INDEX events_by_message ON events (message_id) WHERE message_id IS NOT NULL",
        # each message's current status: the furthest along in the lifecycle order seen so far (rank, events.py)
        """CREATE TABLE messages (
        message_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        error TEXT,
        channel TEXT,
        event_at TEXT,
        updated_at TEXT NOT NULL
    ) WITHOUT ROWID""",
        # the current status is kept by SQLite itself, for each event actually inserted (a repeat is ignored and
        # fires nothing): a status replaces the current one only when it is further along the order. In the
        # database, this work runs without Python's GIL, beside the event loop
        """CREATE TRIGGER events_move_messages AFTER INSERT ON events
        WHEN new.message_id IS NOT NULL AND new.status IS NOT NULL
        BEGIN
            INSERT INTO messages (message_id, status, rank, error, channel, event_at, updated_at)
            VALUES (new.message_id, new.status, new.rank, new.error, new.channel, new.event_at, new.received_at)
            ON CONFLICT (message_id) DO UPDATE SET
                status = excluded.status, rank = excluded.rank, error = excluded.error,
                channel = coalesce(excluded.channel, messages.channel), event_at = excluded.event_at,
                updated_at = excluded.updated_at
            WHERE excluded.rank > messages.rank;
        END""",
        # signed bodies that are not events, kept for inspection
        """CREATE TABLE rejected (
        id INTEGER PRIMARY KEY,
        received_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        body BLOB NOT NULL
    )""",
    ),
}

_INSERT_EVENT = """
INSERT OR IGNORE INTO events
    (dedupe_key, message_id, status, rank, sub_type, channel, error, event_at, received_at, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_REJECTED = "INSERT INTO rejected (received_at, reason, body) VALUES (?, ?, ?)"

# an upper bound on one transaction, so a flood cannot make one commit (and its waiting requests) arbitrarily long
_MAX_BATCH = 2000


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the store with its schema at the current version (created or migrated as needed)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = 10000")  # `track` may be reading at the same time
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        _migrate(connection, path)
    except sqlite3.DatabaseError as exc:
        raise errors.OutputError(f"{path}: cannot open the webhook store: {exc}") from None
    except OSError as exc:
        raise errors.OutputError(f"{path}: cannot open the webhook store: {exc.strerror or exc}") from None
    return connection


def schema_version(connection: sqlite3.Connection) -> int:
    """0 for an empty file; the store's version otherwise."""
    if not connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
        if connection.execute("SELECT 1 FROM sqlite_master").fetchone():
            raise sqlite3.DatabaseError("it is an SQLite file of something else (no meta table)")
        return 0
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = schema_version(connection)
        if version > SCHEMA_VERSION:
            raise errors.OutputError(
                f"{path}: the webhook store has schema version {version}, newer than this sentdm-batch knows "
                f"({SCHEMA_VERSION}): upgrade sentdm-batch"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(target),),
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class _Rejected:
    reason: str
    body: bytes


_Item = tuple[Event | _Rejected, "asyncio.Future[None]"]


class StoreFailed(Exception):
    """The commit covering a request failed (disk full, I/O error): the request must not be acknowledged."""


class EventStore:
    """The receiver's writer. `record` and `reject` return once the row is committed; `close` commits what is
    queued and closes the file. Awaited from one event loop; the writes happen on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection = connect(path)
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="webhook-store", daemon=True)
        self._thread.start()
        self.commits = 0  # how many transactions: with `events` it shows how well commits were grouped
        self.events = 0

    async def record(self, event: Event) -> None:
        await self._submit(event)

    async def reject(self, reason: str, body: bytes) -> None:
        await self._submit(_Rejected(reason, body))

    async def _submit(self, entry: Event | _Rejected) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put((entry, future))
        await future

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the file. Idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            self._connection.close()

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                error = self._write(batch)
            except Exception as exc:  # noqa: BLE001 - its requests must get an answer (503), not wait forever
                error = StoreFailed(f"{self.path}: {type(exc).__name__}: {exc}")
            loop = batch[0][1].get_loop()
            # one wake-up of the event loop per commit, not one per request
            loop.call_soon_threadsafe(_settle, [future for _, future in batch], error)
            if stop:
                return

    def _write(self, batch: Sequence[_Item]) -> BaseException | None:
        # one time for the batch, taken on this thread: received_at is when the receiver stored the event (within
        # one commit, milliseconds after it arrived), and the event loop's thread saves the clock call per request
        at = now_iso()
        events = [entry for entry, _ in batch if isinstance(entry, Event)]
        rejected = [entry for entry, _ in batch if isinstance(entry, _Rejected)]
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(
                _INSERT_EVENT,
                [
                    (
                        e.dedupe_key,
                        e.message_id,
                        e.status,
                        e.rank,
                        e.sub_type,
                        e.channel,
                        e.error,
                        e.event_at,
                        at,
                        e.body,
                    )
                    for e in events
                ],
            )
            connection.executemany(_INSERT_REJECTED, [(at, r.reason, r.body) for r in rejected])
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return StoreFailed(f"{self.path}: {exc}")
        self.commits += 1
        self.events += len(events)
        return None


def _settle(futures: Sequence[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (client gone); its row is committed anyway
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
