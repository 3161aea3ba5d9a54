"""Durable per-campaign delivery state: what happened to each message, kept across runs and crashes, so a rerun
never sends again what the server acknowledged.

`StateStore` is the one interface; this module holds it, the SQLite store (one database file per campaign, WAL
mode) and `GroupCommitter`, which works on either store. pipeline/state_pg.py is the PostgreSQL store (several
campaigns in one database); `open_state` picks by what `output.state` names (pipeline/state_location.py).

Rows are keyed by each row's idempotency key, which is derived from the
campaign name and the row's content: rows can move, be added or change between runs and still be recognised. A row is
marked `in_flight` - and that mark is committed - before its request goes out; its outcome replaces the mark after.
A row found `in_flight` when a run starts belonged to a process that died with the request on the wire: it may have
been delivered, so it becomes `unknown` (or, with send.retry_ambiguous - the default on v3 - is sent again with the
same key; on v3 only within 23 hours of its first attempt, as the server keeps keys 24). A v3 broadcast's body and
members are kept with their marks, so that exactly that request can be resent.

Marks and outcomes are group-committed: workers that are about to send wait together for one transaction, so
durability costs one commit per batch rather than one per row. A lock (a file lock beside a SQLite state, an
advisory lock in PostgreSQL) keeps two processes from running the same campaign (or shard) at once.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import polars as pl

from pipeline.errors import CampaignBusy, OutputError
from pipeline.results import RESULT_SCHEMA
from pipeline.state_location import PostgresState, StateLocation

SCHEMA_VERSION = "2"  # 2: delivery tracking (the deliveries table, messages.delivery_retries); 1 is migrated
IN_FLIGHT = "in_flight"
PENDING = "pending"
LOST_IN_FLIGHT = "the process stopped while this request was in flight; it may have been delivered"
KEY_TOO_OLD = (
    "first sent more than {hours} hours ago and its answer was lost; the server keeps an Idempotency-Key 24 hours, "
    "so a resend could no longer be recognised as one - not resent (it may have been delivered)"
)

# What lookup() returns: the row's key, how its last answer was classified, and the result columns it fills (typed as
# in the results file, so the two join without casts). The SELECT in lookup() lists them in this order.
OUTCOME_COLUMNS: dict[str, type[pl.DataType]] = {
    "idempotency_key": pl.String,
    "result_verdict": pl.String,
    **{name: dtype for name, dtype in RESULT_SCHEMA.items() if name != "result_row"},
    # how many times `retry --delivery-failed` sent the row again: its Idempotency-Key is the row's key plus that
    # number (sending.send_key), so a resent row never reuses a key the server would answer with the first answer
    "delivery_retries": pl.Int64,
}
# What delivery_facts() returns: one row per message id, its furthest-along status as `track` learnt it (from the
# webhook store or the status lookup), ranked as the webhook receiver ranks them (webhooks/events.py)
DELIVERY_COLUMNS: dict[str, type[pl.DataType]] = {
    "message_id": pl.String,
    "delivery_status": pl.String,
    "delivery_rank": pl.Int64,
    "delivery_error": pl.String,
    "delivery_at": pl.String,
    "delivery_channel": pl.String,
}
# (message_id, status, rank, error, at, channel, source): one fact for record_deliveries
DeliveryFact = tuple[str, str, int, str | None, str | None, str | None, str]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    idempotency_key TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- in_flight | pending | sent | failed | unknown
    verdict TEXT,                  -- sent | permanent | auth | transient | ambiguous | systemic
    http_status INTEGER,
    message_id TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_at TEXT,
    latency_ms REAL,
    updated_at REAL NOT NULL,
    first_attempt_at REAL,         -- Unix seconds of the first in-flight mark: how old the row's key is
    request_key TEXT,              -- a broadcast's request (send.batch_recipients): the Idempotency-Key it went with
    recipient TEXT,                -- a broadcast member's number, to find its message id in the answer
    delivery_retries INTEGER NOT NULL DEFAULT 0  -- resends by `retry --delivery-failed` (schema 2)
);
-- The body of every broadcast request marked in flight: a resumed run resends exactly it, with its key, so the
-- server recognises the repeat and no number in it is texted twice. Dropped when a run starts and no member waits.
CREATE TABLE IF NOT EXISTS requests (request_key TEXT PRIMARY KEY, body TEXT NOT NULL);
-- What `track` learnt of each message (schema 2): its furthest-along status, never moved backwards
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,          -- QUEUED | ROUTED | SENT | DELIVERED | READ | FAILED (as Sent.dm names them)
    rank INTEGER NOT NULL,         -- webhooks/events.py STATUS_RANK: a fact replaces another only at a higher rank
    error TEXT,
    event_at TEXT,
    channel TEXT,
    source TEXT NOT NULL,          -- events | poll
    updated_at REAL NOT NULL
);
"""

# The upsert both stores use (SQLite and PostgreSQL read it alike; `{table}` is each one's name for the table): a
# fact replaces the recorded one only at a higher rank; at the same rank it only fills what was missing.
UPSERT_DELIVERY = """
INSERT INTO {table} AS d ({columns}message_id, status, rank, error, event_at, channel, source, updated_at)
VALUES ({values}) ON CONFLICT ({conflict}message_id) DO UPDATE SET
    status = excluded.status,
    error = CASE WHEN excluded.rank > d.rank THEN excluded.error ELSE COALESCE(d.error, excluded.error) END,
    event_at = CASE WHEN excluded.rank > d.rank THEN excluded.event_at ELSE COALESCE(d.event_at, excluded.event_at) END,
    channel = COALESCE(excluded.channel, d.channel),
    source = CASE WHEN excluded.rank > d.rank THEN excluded.source ELSE d.source END,
    rank = excluded.rank,
    updated_at = excluded.updated_at
WHERE excluded.rank >= d.rank
"""


_LOOKUP = (
    "SELECT m.idempotency_key, verdict, status, http_status, message_id, error, attempts, sent_at, latency_ms, "
    "delivery_retries FROM wanted JOIN messages AS m USING (idempotency_key)"
)
# a schema-1 state read without its lock (a dry run beside a run of an earlier version) is not migrated: it has
# resent nothing for delivery yet
_LOOKUP_SCHEMA_1 = _LOOKUP.replace("delivery_retries FROM", "0 FROM")


def state_path_for(results_path: Path, campaign: str) -> Path:
    """Default location: beside the results file, named after the campaign."""
    return results_path.parent / f"{campaign}.state.sqlite"


Outcome = tuple[Any, ...]  # (key, status, verdict, http_status, message_id, error, attempts, sent_at, latency_ms)


class StateStore(abc.ABC):
    """A campaign's state and its lock: SQLite (`SqliteStore`) or PostgreSQL (`pipeline.state_pg.PostgresStore`),
    with the same guarantees. Use as a context manager; one instance per process. Make one with `open_state`."""

    # what a failed write raises: GroupCommitter turns it into StateWriteError, and nothing more is sent
    write_errors: tuple[type[Exception], ...] = ()
    # a commit that waits on a server (PostgreSQL: a round trip and the server's fsync, about a millisecond or more)
    # runs in a worker thread, so workers keep sending - and gather into the next, bigger batch - meanwhile; a
    # local SQLite commit is cheaper than the hop to a thread
    commits_in_thread: bool = False

    def __init__(self, campaign: str, *, read_only: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.campaign = campaign
        self.clock = clock  # Unix seconds; tests move it to age rows
        # read-only: to look outcomes up without taking the lock (a dry run beside a live run); writes fail
        self.read_only = read_only

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the state is, as printed: a path, or a URL without its password."""

    def __enter__(self) -> StateStore:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def open(self) -> None:
        """Open (creating or migrating the tables) and take the lock, unless read-only; CampaignBusy when another
        live process holds it, OutputError when the state cannot be opened."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close, releasing the lock."""

    @abc.abstractmethod
    def recover_in_flight(self, *, resend: bool, resend_window_s: float | None = None) -> int:
        """Settle rows a dead process left in flight: `unknown`, or `pending` (to send again) when `resend`.

        With `resend_window_s` (where the server keeps Idempotency-Keys for a while), a row first sent longer ago
        than that is never sent again automatically - neither now nor when an earlier recovery left it pending:
        it becomes `unknown`, saying why. Returns how many rows were in flight."""

    @abc.abstractmethod
    def pending_requests(self) -> list[PendingRequest]:
        """Broadcast requests whose members are all still waiting to be resent (an earlier run died with them in
        flight), each with its body, to be sent again exactly as before."""

    @abc.abstractmethod
    def lookup(self, keys: Sequence[str]) -> pl.DataFrame:
        """The recorded rows among `keys`: OUTCOME_COLUMNS (status as recorded)."""

    @abc.abstractmethod
    def commit(
        self, in_flight: Iterable[str], outcomes: Iterable[Outcome], requests: Sequence[InFlightRequest] = ()
    ) -> None:
        """One transaction: mark `in_flight` keys and the members of broadcast `requests` (with their bodies), then
        record outcomes (key, status, verdict, http_status, message_id, error, attempts, sent_at, latency_ms)."""

    # --- delivery tracking (`track`, `retry --delivery-failed`) -----------------------------------------------------

    @property
    @abc.abstractmethod
    def tracked(self) -> bool:
        """Whether `track` ever ran for the campaign: then results files carry the delivery columns."""

    @abc.abstractmethod
    def mark_tracked(self) -> None:
        """Note that `track` ran (see `tracked`)."""

    @abc.abstractmethod
    def sent_messages(self) -> pl.DataFrame:
        """Every recorded row that has message ids: idempotency_key, result_message_id (comma-separated)."""

    @abc.abstractmethod
    def delivery_facts(self, message_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """DELIVERY_COLUMNS of the messages among `message_ids` that have a recorded status (None: all)."""

    @abc.abstractmethod
    def record_deliveries(self, facts: Sequence[DeliveryFact]) -> None:
        """One transaction: record each fact unless its message already has a status of a higher rank."""

    @abc.abstractmethod
    def count_delivery_retries(self, keys: Sequence[str]) -> None:
        """One transaction, committed before the rows are sent again: each row's delivery_retries goes up by one, so
        its next request carries a key never used before."""


def open_state(
    location: StateLocation, campaign: str, *, read_only: bool = False, clock: Callable[[], float] = time.time
) -> StateStore:
    """The store for `location` (not yet open: use it as a context manager)."""
    if isinstance(location, PostgresState):
        # imported here: a SQLite campaign never loads the PostgreSQL driver
        from pipeline.state_pg import PostgresStore

        return PostgresStore(location, campaign, read_only=read_only, clock=clock)
    return SqliteStore(location, campaign, read_only=read_only, clock=clock)


def state_exists(location: StateLocation, campaign: str) -> bool:
    """Whether an earlier run left a state there (read without taking its lock)."""
    if isinstance(location, PostgresState):
        from pipeline.state_pg import postgres_state_exists

        return postgres_state_exists(location, campaign)
    return location.exists()


@contextlib.contextmanager
def earlier_state(location: StateLocation, campaign: str) -> Iterator[StateStore | None]:
    """The state an earlier run left, opened read-only without its lock (a dry run or a plan beside a live run),
    or None when there is none yet."""
    if not state_exists(location, campaign):
        yield None
        return
    with open_state(location, campaign, read_only=True) as store:
        yield store


def shard_counts(location: StateLocation, campaign: str) -> set[int]:
    """The shard counts earlier runs of the campaign used, as their states show (1: unsharded)."""
    if isinstance(location, PostgresState):
        from pipeline.state_pg import postgres_shard_counts

        return postgres_shard_counts(location, campaign)
    found: set[int] = set()
    if location.exists():
        found.add(1)
    for other in location.parent.glob(f"{location.stem}.shard-*-of-*{location.suffix}"):
        found.add(int(other.stem.rsplit("-of-", 1)[1]))
    return found


class SqliteStore(StateStore):
    """The state in a SQLite file (WAL mode), locked by a file lock beside it."""

    write_errors = (sqlite3.Error,)

    def __init__(
        self, path: Path, campaign: str, *, read_only: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(campaign, read_only=read_only, clock=clock)
        self.path = path
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._schema: str | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    def open(self) -> None:
        if self.read_only:
            try:
                self._db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, isolation_level=None)
                self._check_campaign()
            except sqlite3.Error as exc:
                self.close()
                raise OutputError(f"{self.path}: cannot read the campaign state: {exc}") from None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a committed transaction survives the process being killed; only a power loss can lose the
            # last commits (FULL would fsync every commit, about twice the cost)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            for column in (
                "first_attempt_at REAL",
                "request_key TEXT",
                "recipient TEXT",
                "delivery_retries INTEGER NOT NULL DEFAULT 0",
            ):
                if column.split()[0] not in columns:  # a state written by an earlier version
                    db.execute(f"ALTER TABLE messages ADD COLUMN {column}")
        except sqlite3.Error as exc:
            self.close()
            raise OutputError(f"{self.path}: cannot open the campaign state: {exc}") from None
        except OSError as exc:
            self.close()
            raise OutputError(f"{self.path}: cannot open the campaign state: {exc.strerror or exc}") from None
        self._db = db
        self._check_campaign()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CampaignBusy(
                f"campaign {self.campaign!r} is already running (pid {holder}, lock {lock_path}). "
                "Hint: wait for it to finish; two runs of one campaign at once could send a message twice."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("state store is not open")
        return self._db

    def _check_campaign(self) -> None:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if not rows and not self.read_only:
            self.db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("campaign", self.campaign), ("schema", SCHEMA_VERSION), ("created_at", str(time.time()))],
            )
            self._schema = SCHEMA_VERSION
            return
        if rows.get("campaign") != self.campaign:
            raise OutputError(
                f"{self.path}: this state belongs to campaign {rows.get('campaign')!r}, not {self.campaign!r}. "
                "Hint: point output.state at this campaign's own file."
            )
        self._schema = rows.get("schema")
        if self._schema == "1" and not self.read_only:
            # schema 1 (before delivery tracking): open() has added the table and the column; say so in the state
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            self._schema = SCHEMA_VERSION
        if self._schema not in ("1", SCHEMA_VERSION):
            raise OutputError(
                f"{self.path}: state schema {self._schema!r} is not supported by this version of sentdm-batch. "
                "Hint: use the version that wrote it."
            )

    # --- reading ---------------------------------------------------------------------------------------------------

    def recover_in_flight(self, *, resend: bool, resend_window_s: float | None = None) -> int:
        now = self.clock()
        with self._transaction() as db:
            # counted first: rows too old to resend are in flight too, and their count is what the summary reports
            (in_flight,) = db.execute("SELECT COUNT(*) FROM messages WHERE status = ?", (IN_FLIGHT,)).fetchone()
            if resend and resend_window_s is not None:
                db.execute(
                    "UPDATE messages SET status = 'unknown', verdict = 'ambiguous', error = ?, updated_at = ? "
                    "WHERE status IN (?, ?) AND COALESCE(first_attempt_at, updated_at) < ?",
                    (
                        KEY_TOO_OLD.format(hours=f"{resend_window_s / 3600:.3g}"),
                        now,
                        IN_FLIGHT,
                        PENDING,
                        now - resend_window_s,
                    ),
                )
            if resend:
                db.execute("UPDATE messages SET status = ?, updated_at = ? WHERE status = ?", (PENDING, now, IN_FLIGHT))
            else:
                db.execute(
                    "UPDATE messages SET status = 'unknown', verdict = 'ambiguous', error = ?, updated_at = ? "
                    "WHERE status = ?",
                    (LOST_IN_FLIGHT, now, IN_FLIGHT),
                )
            db.execute(
                "DELETE FROM requests WHERE request_key NOT IN (SELECT request_key FROM messages "
                "WHERE status = ? AND request_key IS NOT NULL)",
                (PENDING,),
            )
        return int(in_flight)

    def pending_requests(self) -> list[PendingRequest]:
        rows = self.db.execute(
            "SELECT m.request_key, r.body, m.idempotency_key, m.recipient FROM messages AS m "
            "JOIN requests AS r USING (request_key) WHERE m.status = ? ORDER BY m.request_key",
            (PENDING,),
        ).fetchall()
        grouped: dict[str, PendingRequest] = {}
        for request_key, body, key, recipient in rows:
            request = grouped.setdefault(request_key, PendingRequest(request_key, body, []))
            request.members.append((key, recipient))
        return list(grouped.values())

    def lookup(self, keys: Sequence[str]) -> pl.DataFrame:
        db = self.db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (idempotency_key TEXT PRIMARY KEY) WITHOUT ROWID")
        with self._transaction():
            db.execute("DELETE FROM wanted")
            db.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", ((k,) for k in keys))
        # a schema-1 state read without its lock (a dry run) is not migrated: it has resent nothing yet
        cursor = db.execute(_LOOKUP_SCHEMA_1 if self._schema == "1" else _LOOKUP)
        return pl.DataFrame(cursor.fetchall(), schema=OUTCOME_COLUMNS, orient="row")

    # --- delivery tracking -----------------------------------------------------------------------------------------

    @property
    def tracked(self) -> bool:
        return self.db.execute("SELECT 1 FROM meta WHERE key = 'tracked_at'").fetchone() is not None

    def mark_tracked(self) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('tracked_at', ?)", (str(self.clock()),))

    def sent_messages(self) -> pl.DataFrame:
        cursor = self.db.execute("SELECT idempotency_key, message_id FROM messages WHERE message_id IS NOT NULL")
        return pl.DataFrame(
            cursor.fetchall(), schema={"idempotency_key": pl.String, "result_message_id": pl.String}, orient="row"
        )

    def delivery_facts(self, message_ids: Sequence[str] | None = None) -> pl.DataFrame:
        if self._schema == "1":
            return pl.DataFrame(schema=DELIVERY_COLUMNS)
        query = "SELECT d.message_id, status, rank, error, event_at, channel FROM deliveries AS d"
        db = self.db
        if message_ids is None:
            rows = db.execute(query).fetchall()
        else:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_ids (message_id TEXT PRIMARY KEY) WITHOUT ROWID")
            with self._transaction():
                db.execute("DELETE FROM wanted_ids")
                db.executemany("INSERT OR IGNORE INTO wanted_ids VALUES (?)", ((m,) for m in message_ids))
            rows = db.execute(f"{query} JOIN wanted_ids USING (message_id)").fetchall()
        return pl.DataFrame(rows, schema=DELIVERY_COLUMNS, orient="row")

    def record_deliveries(self, facts: Sequence[DeliveryFact]) -> None:
        now = self.clock()
        sql = UPSERT_DELIVERY.format(table="deliveries", columns="", values=", ".join("?" * 8), conflict="")
        with self._transaction() as db:
            db.executemany(sql, [(*fact, now) for fact in facts])

    def count_delivery_retries(self, keys: Sequence[str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE messages SET delivery_retries = delivery_retries + 1 WHERE idempotency_key = ?",
                [(key,) for key in keys],
            )

    # --- writing ---------------------------------------------------------------------------------------------------

    def commit(
        self,
        in_flight: Iterable[str],
        outcomes: Iterable[Outcome],
        requests: Sequence[InFlightRequest] = (),
    ) -> None:
        now = self.clock()
        with self._transaction() as db:
            # a row sent again keeps the time of its first attempt: its key's age counts from then
            db.executemany(
                "INSERT INTO messages (idempotency_key, status, updated_at, first_attempt_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (idempotency_key) DO UPDATE "
                "SET status = excluded.status, updated_at = excluded.updated_at, "
                "first_attempt_at = COALESCE(messages.first_attempt_at, excluded.first_attempt_at)",
                [(key, IN_FLIGHT, now, now) for key in in_flight],
            )
            if requests:
                db.executemany(
                    "INSERT OR IGNORE INTO requests (request_key, body) VALUES (?, ?)",
                    [(r.request_key, r.body) for r in requests],
                )
                db.executemany(
                    "INSERT INTO messages (idempotency_key, status, updated_at, first_attempt_at, request_key, "
                    "recipient) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (idempotency_key) DO UPDATE "
                    "SET status = excluded.status, updated_at = excluded.updated_at, "
                    "first_attempt_at = COALESCE(messages.first_attempt_at, excluded.first_attempt_at), "
                    "request_key = excluded.request_key, recipient = excluded.recipient",
                    [(key, IN_FLIGHT, now, now, r.request_key, number) for r in requests for key, number in r.members],
                )
            db.executemany(
                "UPDATE messages SET status = ?, verdict = ?, http_status = ?, message_id = ?, error = ?, "
                "attempts = attempts + ?, sent_at = ?, latency_ms = ?, updated_at = ? WHERE idempotency_key = ?",
                [(*o[1:], now, o[0]) for o in outcomes],
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")


@dataclass(frozen=True)
class InFlightRequest:
    """A broadcast request about to go out: its key, its body, and its members (row key, number)."""

    request_key: str
    body: str
    members: Sequence[tuple[str, str]]


@dataclass
class PendingRequest:
    """A broadcast request an earlier run left in flight, to be resent as it was."""

    request_key: str
    body: str
    members: list[tuple[str, str]]  # (row key, number)


class StateWriteError(Exception):
    """The state could not be written (disk full, I/O error): nothing more may be sent."""


class GroupCommitter:
    """Batches state writes from many workers into few transactions: gathered on the event loop, written there or
    (`StateStore.commits_in_thread`) in a worker thread. The same for every store.

    `before_send` returns only once the row's in-flight mark is committed; `record` queues an outcome for the next
    commit. Run `run()` in a task and call `flush()` at the end."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._in_flight: list[str] = []
        self._requests: list[InFlightRequest] = []
        self._outcomes: list[Outcome] = []
        self._wake = anyio.Event()
        self._committed = anyio.Event()
        self.error: str | None = None

    async def before_send(self, key: str, request: InFlightRequest | None = None) -> None:
        """Wait until `key` - or, for a broadcast, every member of `request` and its body - is committed in flight."""
        if self.error is not None:
            raise StateWriteError(self.error)
        if request is None:
            self._in_flight.append(key)
        else:
            self._requests.append(request)
        committed = self._committed
        self._wake.set()
        await committed.wait()
        if self.error is not None:
            raise StateWriteError(self.error)

    def record(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            # a commit costs about as much as a request: give workers that are about to send a few turns to join
            # this transaction, as long as more keep coming
            for _ in range(4):
                pending = len(self._in_flight) + len(self._requests) + len(self._outcomes)
                await anyio.sleep(0)
                if len(self._in_flight) + len(self._requests) + len(self._outcomes) == pending:
                    break
            batch = self._take()
            try:
                if self._store.commits_in_thread:
                    # not abandoned on cancel: the task ends only once the transaction has, so flush() never
                    # writes beside it
                    await anyio.to_thread.run_sync(self._write, batch)
                else:
                    self._write(batch)
            finally:
                batch.committed.set()
            # let the woken workers send before the next commit, so marks gather into batches
            await anyio.sleep(0)

    def flush(self) -> None:
        batch = self._take()
        self._write(batch)
        batch.committed.set()

    def _take(self) -> _Batch:
        """What waits to be committed, taken on the event loop (workers append to these lists there)."""
        batch = _Batch(self._in_flight, self._outcomes, self._requests, self._committed)
        self._in_flight, self._outcomes, self._requests = [], [], []
        self._committed = anyio.Event()
        return batch

    def _write(self, batch: _Batch) -> None:
        if (batch.in_flight or batch.requests or batch.outcomes) and self.error is None:
            try:
                self._store.commit(batch.in_flight, batch.outcomes, batch.requests)
            except self._store.write_errors as exc:
                self.error = f"cannot write the campaign state {self._store.location}: {exc}"


@dataclass
class _Batch:
    in_flight: list[str]
    outcomes: list[Outcome]
    requests: list[InFlightRequest]
    committed: anyio.Event  # set once the batch is written (or could not be)
