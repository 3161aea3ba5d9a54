"""The campaign state in PostgreSQL (`output.state: postgresql://...`): the SQLite store's guarantees, for workers
that share a database and no disk.

Every campaign, and every shard of one, keeps its rows in the same tables of schema `sentdm`, under its state name
(pipeline/state_location.py). The tool creates and migrates the tables itself; `sentdm.schema_version` lists the
migrations applied. The lock is a session advisory lock keyed by the state name, held on the store's own connection:
a second live worker gets CampaignBusy, and the lock of a worker that dies goes with its connection (TCP keepalives
are set on the session, so even a vanished machine's lock ends within about a minute), so a retry is never blocked
for good. Commits are synchronous (the server's default): an acknowledged in-flight mark survives a server crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import polars as pl
import psycopg

from pipeline.errors import CampaignBusy, OutputError
from pipeline.state import (
    DELIVERY_COLUMNS,
    IN_FLIGHT,
    KEY_TOO_OLD,
    LOST_IN_FLIGHT,
    OUTCOME_COLUMNS,
    PENDING,
    UPSERT_DELIVERY,
    DeliveryFact,
    InFlightRequest,
    Outcome,
    PendingRequest,
    StateStore,
)
from pipeline.state_location import PostgresState, mask_url

# Migrations, in order; each runs once per database, in one transaction with its row in schema_version. Append,
# never edit: a database some worker already migrated must reach the same tables as a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE sentdm.states (
        state TEXT PRIMARY KEY,        -- the campaign's name, plus `/shard-I-of-N` for a shard
        campaign TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX states_campaign ON sentdm.states (campaign);
    CREATE TABLE sentdm.messages (
        state TEXT NOT NULL REFERENCES sentdm.states,
        idempotency_key TEXT NOT NULL,
        status TEXT NOT NULL,          -- in_flight | pending | sent | failed | unknown
        verdict TEXT,
        http_status INTEGER,
        message_id TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        sent_at TEXT,
        latency_ms DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        first_attempt_at DOUBLE PRECISION,
        request_key TEXT,
        recipient TEXT,
        PRIMARY KEY (state, idempotency_key)
    );
    -- recovery and resends look rows up by status: few are ever in flight or pending
    CREATE INDEX messages_unsettled ON sentdm.messages (state, status) WHERE status IN ('in_flight', 'pending');
    CREATE TABLE sentdm.requests (
        state TEXT NOT NULL REFERENCES sentdm.states,
        request_key TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (state, request_key)
    );
    """,
    # 2: delivery tracking (`track`, `retry --delivery-failed`; see pipeline/state.py's SQLite schema)
    """
    ALTER TABLE sentdm.messages ADD COLUMN delivery_retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sentdm.states ADD COLUMN tracked_at DOUBLE PRECISION;
    CREATE TABLE sentdm.deliveries (
        state TEXT NOT NULL REFERENCES sentdm.states,
        message_id TEXT NOT NULL,
        status TEXT NOT NULL,
        rank INTEGER NOT NULL,
        error TEXT,
        event_at TEXT,
        channel TEXT,
        source TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (state, message_id)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_LOOKUP = (
    "SELECT idempotency_key, verdict, status, http_status, message_id, error, attempts, sent_at, latency_ms, "
    "delivery_retries FROM sentdm.messages WHERE state = %s AND idempotency_key = ANY(%s)"
)
# tables of version 1, read without migrating them (by a dry run): nothing was resent for delivery yet
_LOOKUP_VERSION_1 = _LOOKUP.replace("delivery_retries FROM", "0 FROM")

# advisory-lock keys are one 64-bit space per database, shared with other applications: a fixed one for migrating,
# and one per state name from a hash, both salted with the tool's name
_MIGRATION_LOCK = int.from_bytes(
    hashlib.blake2b(b"sentdm-batch migrations", digest_size=8).digest(), "big", signed=True
)


def _lock_key(state_name: str) -> int:
    digest = hashlib.blake2b(f"sentdm-batch state {state_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _connect(location: PostgresState, *, read_only: bool) -> psycopg.Connection[tuple[object, ...]]:
    """A connection in autocommit mode (transactions are explicit). libpq reads the password from PGPASSWORD or a
    .pgpass itself; the keepalives let the server notice a vanished worker and end its session, and so its lock."""
    try:
        return psycopg.connect(
            location.url,
            autocommit=True,
            application_name=f"sentdm-batch pid {os.getpid()} on {socket.gethostname()}"[:63],
            connect_timeout=10,
            # the session's own settings: the server probes an idle client after 20 s, every 5 s, 4 times
            options="-c tcp_keepalives_idle=20 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4"
            + (" -c default_transaction_read_only=on" if read_only else ""),
        )
    except psycopg.Error as exc:
        raise OutputError(f"{location}: cannot open the campaign state: {_message(exc, location)}") from None


def _message(exc: BaseException, location: PostgresState) -> str:
    """The driver's message, first line, with no trace of a password the URL may hold."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.replace(location.url, mask_url(location.url))


def _migrate(db: psycopg.Connection[tuple[object, ...]]) -> None:
    with db.transaction():
        # two workers starting at once: the second waits here, then finds the tables made
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        db.execute("CREATE SCHEMA IF NOT EXISTS sentdm")
        db.execute(
            "CREATE TABLE IF NOT EXISTS sentdm.schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = db.execute("SELECT COALESCE(MAX(version), 0) FROM sentdm.schema_version").fetchone()
        current = int(row[0]) if row is not None else 0  # type: ignore[call-overload]
        if current > SCHEMA_VERSION:
            raise _TooNew(current)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            db.execute(MIGRATIONS[version - 1].encode())
            db.execute("INSERT INTO sentdm.schema_version (version) VALUES (%s)", (version,))


class _TooNew(Exception):
    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


def _has_tables(db: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = db.execute("SELECT to_regclass('sentdm.schema_version') IS NOT NULL").fetchone()
    return bool(row and row[0])


def postgres_state_exists(location: PostgresState, campaign: str) -> bool:
    with _connect(location, read_only=True) as db:
        try:
            if not _has_tables(db):
                return False
            row = db.execute("SELECT 1 FROM sentdm.states WHERE state = %s", (location.state_name(campaign),))
            return row.fetchone() is not None
        except psycopg.Error as exc:
            raise OutputError(f"{location}: cannot read the campaign state: {_message(exc, location)}") from None


def postgres_shard_counts(location: PostgresState, campaign: str) -> set[int]:
    """The shard counts of the campaign's states in the database (1: unsharded)."""
    with _connect(location, read_only=True) as db:
        try:
            if not _has_tables(db):
                return set()
            rows = db.execute("SELECT state FROM sentdm.states WHERE campaign = %s", (campaign,)).fetchall()
        except psycopg.Error as exc:
            raise OutputError(f"{location}: cannot read the campaign state: {_message(exc, location)}") from None
    found: set[int] = set()
    for (state,) in rows:
        name = str(state)
        found.add(1 if name == campaign else int(name.rsplit("-of-", 1)[1]))
    return found


class PostgresStore(StateStore):
    """The state in PostgreSQL, locked by a session advisory lock on its connection."""

    write_errors = (psycopg.Error,)
    commits_in_thread = True

    def __init__(
        self,
        location: PostgresState,
        campaign: str,
        *,
        read_only: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(campaign, read_only=read_only, clock=clock)
        self.state = location
        self.name = location.state_name(campaign)
        self._db: psycopg.Connection[tuple[object, ...]] | None = None
        self._version = SCHEMA_VERSION  # what a read-only store finds (it migrates nothing)
        # commits run in a worker thread (commits_in_thread) while the sending pass looks rows up on the event
        # loop: one operation at a time on the connection, so a lookup never lands inside a commit's transaction
        self._busy = threading.Lock()

    @property
    def location(self) -> str:
        return str(self.state)

    def open(self) -> None:
        db = _connect(self.state, read_only=self.read_only)
        try:
            if self.read_only:
                self._db = db
                if _has_tables(db):
                    row = db.execute("SELECT MAX(version) FROM sentdm.schema_version").fetchone()
                    self._version = int(row[0]) if row is not None and row[0] is not None else 0  # type: ignore[call-overload]
                return
            self._lock(db)
            _migrate(db)
            db.execute(
                "INSERT INTO sentdm.states (state, campaign, created_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (self.name, self.campaign, time.time()),
            )
        except _TooNew as exc:
            db.close()
            raise OutputError(
                f"{self.state}: the state tables are at version {exc.version}, newer than this version of "
                f"sentdm-batch knows ({SCHEMA_VERSION}). Hint: run the campaign with the newer version."
            ) from None
        except psycopg.Error as exc:
            db.close()
            raise OutputError(f"{self.state}: cannot open the campaign state: {_message(exc, self.state)}") from None
        except BaseException:
            db.close()
            raise
        self._db = db

    def _lock(self, db: psycopg.Connection[tuple[object, ...]]) -> None:
        key = _lock_key(self.name)
        row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row is not None and row[0]:
            return
        # who holds it: the holder's session named itself (pid and host) when it connected
        holder = db.execute(
            "SELECT a.application_name FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        ).fetchone()
        found = str(holder[0]).removeprefix("sentdm-batch ") if holder and holder[0] else "another process"
        raise CampaignBusy(
            f"campaign {self.campaign!r} is already running ({found}, advisory lock on {self.name!r} in "
            f"{self.state}). Hint: wait for it to finish; two runs of one campaign at once could send a message twice."
        )

    @contextlib.contextmanager
    def _reporting(self) -> Iterator[None]:
        """A lost connection or a failed query is the state's error, said where, never a traceback."""
        try:
            yield
        except psycopg.Error as exc:
            raise OutputError(f"{self.state}: cannot use the campaign state: {_message(exc, self.state)}") from None

    def close(self) -> None:
        # closing the session releases the advisory lock
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._db is None:
            raise RuntimeError("state store is not open")
        return self._db

    # --- reading ---------------------------------------------------------------------------------------------------

    def recover_in_flight(self, *, resend: bool, resend_window_s: float | None = None) -> int:
        with self._busy, self._reporting():
            return self._recover_in_flight(resend=resend, resend_window_s=resend_window_s)

    def _recover_in_flight(self, *, resend: bool, resend_window_s: float | None = None) -> int:
        now = self.clock()
        name = self.name
        db = self.db
        with db.transaction():
            row = db.execute(
                "SELECT COUNT(*) FROM sentdm.messages WHERE state = %s AND status = %s", (name, IN_FLIGHT)
            ).fetchone()
            in_flight = int(row[0]) if row is not None else 0  # type: ignore[call-overload]
            if resend and resend_window_s is not None:
                db.execute(
                    "UPDATE sentdm.messages SET status = 'unknown', verdict = 'ambiguous', error = %s, "
                    "updated_at = %s WHERE state = %s AND status IN (%s, %s) "
                    "AND COALESCE(first_attempt_at, updated_at) < %s",
                    (
                        KEY_TOO_OLD.format(hours=f"{resend_window_s / 3600:.3g}"),
                        now,
                        name,
                        IN_FLIGHT,
                        PENDING,
                        now - resend_window_s,
                    ),
                )
            if resend:
                db.execute(
                    "UPDATE sentdm.messages SET status = %s, updated_at = %s WHERE state = %s AND status = %s",
                    (PENDING, now, name, IN_FLIGHT),
                )
            else:
                db.execute(
                    "UPDATE sentdm.messages SET status = 'unknown', verdict = 'ambiguous', error = %s, "
                    "updated_at = %s WHERE state = %s AND status = %s",
                    (LOST_IN_FLIGHT, now, name, IN_FLIGHT),
                )
            db.execute(
                "DELETE FROM sentdm.requests AS r WHERE r.state = %s AND NOT EXISTS (SELECT 1 FROM sentdm.messages "
                "AS m WHERE m.state = r.state AND m.request_key = r.request_key AND m.status = %s)",
                (name, PENDING),
            )
        return in_flight

    def pending_requests(self) -> list[PendingRequest]:
        with self._busy, self._reporting():
            return self._pending_requests()

    def _pending_requests(self) -> list[PendingRequest]:
        rows = self.db.execute(
            "SELECT m.request_key, r.body, m.idempotency_key, m.recipient FROM sentdm.messages AS m "
            "JOIN sentdm.requests AS r ON r.state = m.state AND r.request_key = m.request_key "
            "WHERE m.state = %s AND m.status = %s ORDER BY m.request_key",
            (self.name, PENDING),
        ).fetchall()
        grouped: dict[str, PendingRequest] = {}
        for request_key, body, key, recipient in rows:
            request = grouped.setdefault(str(request_key), PendingRequest(str(request_key), str(body), []))
            request.members.append((str(key), str(recipient)))
        return list(grouped.values())

    def lookup(self, keys: Sequence[str]) -> pl.DataFrame:
        with self._busy, self._reporting():
            return self._lookup(keys)

    def _lookup(self, keys: Sequence[str]) -> pl.DataFrame:
        if self.read_only and not _has_tables(self.db):
            return pl.DataFrame(schema=OUTCOME_COLUMNS)
        # one round trip for the whole batch: the keys travel as one array. Tables of version 1 (read without
        # migrating them, by a dry run) have resent nothing yet.
        query = _LOOKUP if self._version >= 2 else _LOOKUP_VERSION_1
        cursor = self.db.execute(query, (self.name, list(keys)))
        return pl.DataFrame(cursor.fetchall(), schema=OUTCOME_COLUMNS, orient="row")

    # --- delivery tracking -----------------------------------------------------------------------------------------

    @property
    def tracked(self) -> bool:
        if self._version < 2:
            return False
        with self._busy, self._reporting():
            row = self.db.execute("SELECT tracked_at FROM sentdm.states WHERE state = %s", (self.name,)).fetchone()
        return row is not None and row[0] is not None

    def mark_tracked(self) -> None:
        with self._busy, self._reporting():
            self.db.execute("UPDATE sentdm.states SET tracked_at = %s WHERE state = %s", (self.clock(), self.name))

    def sent_messages(self) -> pl.DataFrame:
        schema = {"idempotency_key": pl.String, "result_message_id": pl.String}
        if self.read_only and not _has_tables(self.db):
            return pl.DataFrame(schema=schema)
        with self._busy, self._reporting():
            cursor = self.db.execute(
                "SELECT idempotency_key, message_id FROM sentdm.messages WHERE state = %s AND message_id IS NOT NULL",
                (self.name,),
            )
            return pl.DataFrame(cursor.fetchall(), schema=schema, orient="row")

    def delivery_facts(self, message_ids: Sequence[str] | None = None) -> pl.DataFrame:
        if self._version < 2 or (self.read_only and not _has_tables(self.db)):
            return pl.DataFrame(schema=DELIVERY_COLUMNS)
        query = "SELECT message_id, status, rank, error, event_at, channel FROM sentdm.deliveries WHERE state = %s"
        with self._busy, self._reporting():
            if message_ids is None:
                cursor = self.db.execute(query, (self.name,))
            else:
                cursor = self.db.execute(f"{query} AND message_id = ANY(%s)".encode(), (self.name, list(message_ids)))
            return pl.DataFrame(cursor.fetchall(), schema=DELIVERY_COLUMNS, orient="row")

    def record_deliveries(self, facts: Sequence[DeliveryFact]) -> None:
        if not facts:
            return
        now = self.clock()
        sql = UPSERT_DELIVERY.format(
            table="sentdm.deliveries", columns="state, ", values=", ".join(["%s"] * 9), conflict="state, "
        )
        with self._busy, self._reporting(), self.db.transaction(), self.db.cursor() as cursor:
            cursor.executemany(sql.encode(), [(self.name, *fact, now) for fact in facts])

    def count_delivery_retries(self, keys: Sequence[str]) -> None:
        with self._busy, self._reporting():
            self.db.execute(
                "UPDATE sentdm.messages SET delivery_retries = delivery_retries + 1 "
                "WHERE state = %s AND idempotency_key = ANY(%s)",
                (self.name, list(keys)),
            )

    # --- writing ---------------------------------------------------------------------------------------------------

    def commit(
        self, in_flight: Iterable[str], outcomes: Iterable[Outcome], requests: Sequence[InFlightRequest] = ()
    ) -> None:
        with self._busy:
            self._commit(in_flight, outcomes, requests)

    def _commit(
        self, in_flight: Iterable[str], outcomes: Iterable[Outcome], requests: Sequence[InFlightRequest]
    ) -> None:
        now = self.clock()
        name = self.name
        db = self.db
        marks = list(in_flight)
        done = list(outcomes)
        # pipeline mode: BEGIN, the writes and COMMIT go out together and cost one round trip
        with db.pipeline(), db.transaction(), db.cursor() as cursor:
            # arrays rather than executemany: one statement per kind of write, whatever the batch's size
            if marks:
                cursor.execute(
                    "INSERT INTO sentdm.messages (state, idempotency_key, status, updated_at, first_attempt_at) "
                    "SELECT %s, k, %s, %s, %s FROM unnest(%s::text[]) AS k "
                    "ON CONFLICT (state, idempotency_key) DO UPDATE "
                    "SET status = excluded.status, updated_at = excluded.updated_at, "
                    "first_attempt_at = COALESCE(messages.first_attempt_at, excluded.first_attempt_at)",
                    (name, IN_FLIGHT, now, now, marks),
                )
            if requests:
                cursor.execute(
                    "INSERT INTO sentdm.requests (state, request_key, body) "
                    "SELECT %s, k, b FROM unnest(%s::text[], %s::text[]) AS t (k, b) ON CONFLICT DO NOTHING",
                    (name, [r.request_key for r in requests], [r.body for r in requests]),
                )
                members = [(key, number, r.request_key) for r in requests for key, number in r.members]
                cursor.execute(
                    "INSERT INTO sentdm.messages (state, idempotency_key, status, updated_at, first_attempt_at, "
                    "request_key, recipient) "
                    "SELECT %s, k, %s, %s, %s, rk, n FROM unnest(%s::text[], %s::text[], %s::text[]) AS t (k, n, rk) "
                    "ON CONFLICT (state, idempotency_key) DO UPDATE "
                    "SET status = excluded.status, updated_at = excluded.updated_at, "
                    "first_attempt_at = COALESCE(messages.first_attempt_at, excluded.first_attempt_at), "
                    "request_key = excluded.request_key, recipient = excluded.recipient",
                    (
                        name,
                        IN_FLIGHT,
                        now,
                        now,
                        [m[0] for m in members],
                        [m[1] for m in members],
                        [m[2] for m in members],
                    ),
                )
            if done:
                columns = list(zip(*done, strict=True))
                cursor.execute(
                    "UPDATE sentdm.messages AS m SET status = o.status, verdict = o.verdict, "
                    "http_status = o.http_status, message_id = o.message_id, error = o.error, "
                    "attempts = m.attempts + o.attempts, sent_at = o.sent_at, latency_ms = o.latency_ms, "
                    "updated_at = %s "
                    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::text[], %s::text[], %s::int[], "
                    "%s::text[], %s::float8[]) "
                    "AS o (key, status, verdict, http_status, message_id, error, attempts, sent_at, latency_ms) "
                    "WHERE m.state = %s AND m.idempotency_key = o.key",
                    (now, *(list(c) for c in columns), name),
                )
