"""Reading the webhook store back, for `track` and for people: each message's current status and its history.
Read-only; safe while the receiver is writing (WAL readers see the last commit)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from pipeline import errors
from pipeline.webhooks.store import SCHEMA_VERSION, schema_version

# SQLite's default limit on bound parameters is 999 in older builds: ask in chunks below it
_CHUNK = 900


@dataclass(frozen=True)
class MessageStatus:
    """A message's current status: the furthest along of its events (see events.STATUS_RANK)."""

    message_id: str
    status: str
    error: str | None  # the failure reason of the event that set the status, when it carried one
    channel: str | None
    at: str | None  # that event's own timestamp, as Sent.dm sent it
    received_at: str  # when the receiver stored that event (UTC)


@dataclass(frozen=True)
class StatusEvent:
    """One stored event of a message, in the order the receiver got them."""

    message_id: str
    status: str
    sub_type: str
    channel: str | None
    error: str | None
    at: str | None
    received_at: str


def statuses(store: Path, message_ids: Iterable[str] | None = None) -> dict[str, MessageStatus]:
    """The current status of each of `message_ids` the store knows (ids it has no event for are absent), or of
    every message when `message_ids` is None."""
    query = "SELECT message_id, status, error, channel, event_at, updated_at FROM messages"
    with closing(_open(store)) as connection:
        return {row[0]: MessageStatus(*row) for row in _select(connection, query, message_ids)}


def history(store: Path, message_ids: Iterable[str] | None = None) -> dict[str, list[StatusEvent]]:
    """Every stored event of each message, oldest received first (duplicates were never stored)."""
    query = "SELECT message_id, status, sub_type, channel, error, event_at, received_at FROM events"
    found: dict[str, list[StatusEvent]] = {}
    with closing(_open(store)) as connection:
        rows = _select(connection, query, message_ids, where="status IS NOT NULL", order="id")
        for row in rows:
            found.setdefault(row[0], []).append(StatusEvent(*row))
    return found


def _select(
    connection: sqlite3.Connection,
    query: str,
    message_ids: Iterable[str] | None,
    *,
    where: str = "1",
    order: str = "message_id",
) -> Iterator[tuple[str, ...]]:
    if message_ids is None:
        sql = f"{query} WHERE message_id IS NOT NULL AND {where} ORDER BY {order}"
        yield from connection.execute(sql)
        return
    ids = list(dict.fromkeys(message_ids))
    # a message's rows all fall in one chunk, so ordering within each chunk orders each message's history
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"{query} WHERE message_id IN ({marks}) AND {where} ORDER BY {order}"
        yield from connection.execute(sql, chunk)


def _open(store: Path) -> sqlite3.Connection:
    if not store.is_file():
        raise errors.InputError(f"{store}: no webhook store here (start `python -m pipeline webhooks --store ...`)")
    try:
        connection = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
        connection.execute("PRAGMA busy_timeout = 10000")
        version = schema_version(connection)
    except sqlite3.DatabaseError as exc:
        raise errors.InputError(f"{store}: not a webhook store: {exc}") from None
    if version != SCHEMA_VERSION:
        connection.close()
        raise errors.InputError(
            f"{store}: webhook store schema version {version}, this sentdm-batch reads {SCHEMA_VERSION}"
            + (": upgrade sentdm-batch" if version > SCHEMA_VERSION else ": start the receiver once to migrate it")
        )
    return connection
