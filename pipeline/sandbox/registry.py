"""The messages a sandbox accepted, kept so that ``GET /v3/messages/{id}`` finds them - in a later process too.

`track --poll` runs after the run that sent a campaign, in a new process with a new in-process sandbox: that sandbox
must know the campaign's messages. So each accepted message is kept - id, moment of acceptance, number, channel and
template; nothing else is needed, as its status at any moment follows from these (``lifecycle``) - in a small SQLite
file. A campaign's sandbox keeps it beside the results file (``pipeline.campaign.endpoint`` names it); without a
path it lives in memory, for as long as the server runs.

Messages are gathered in memory and written in batches - by the server's timer and when it stops - so accepting
stays cheap (one executemany per batch, not a statement per message); lookups see the gathered ones too. WAL mode
lets shards of one campaign share the file. Only the server's thread touches it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

_SCHEMA_VERSION = 1
# a rowid table: random message ids inserted into a WITHOUT ROWID table's b-tree cost twice as much, measured
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    accepted_at REAL NOT NULL,
    phone TEXT NOT NULL,
    channel TEXT NOT NULL,
    template_id TEXT NOT NULL
)
"""


class RegistryError(Exception):
    """The registry file cannot be opened or written; the message names the file and never a message's content."""


@dataclass(frozen=True)
class KeptMessage:
    id: str
    accepted_at: float  # Unix seconds
    phone: str
    channel: str
    template_id: str


class MessageRegistry:
    """Accepted messages by id. Opened on first use: a sandbox that accepts nothing and looks nothing up (the
    template check of `validate`) creates no file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._pending: dict[str, KeptMessage] = {}

    def add(self, message: KeptMessage, *, check_kept: bool = False) -> bool:
        """Keep a newly accepted message; False when its id is already kept, which keeps its first acceptance.
        Messages kept by an earlier process (a resend under the same key that a new sandbox did not recognise as a
        replay, with seeded ids) are looked for only with ``check_kept``, as that costs a query."""
        self._open(create=True)  # a registry that cannot be opened refuses the first message, not a later commit
        if message.id in self._pending or (check_kept and self.find(message.id) is not None):
            return False
        self._pending[message.id] = message
        return True

    def find(self, message_id: str) -> KeptMessage | None:
        gathered = self._pending.get(message_id)
        if gathered is not None:
            return gathered
        connection = self._open(create=False)
        if connection is None:
            return None
        try:
            row = connection.execute(
                "SELECT id, accepted_at, phone, channel, template_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise RegistryError(f"the sandbox's message registry {self.path} cannot be read: {exc}") from None
        return None if row is None else KeptMessage(*row)

    @property
    def pending(self) -> int:
        """Messages added since the last commit."""
        return len(self._pending)

    def commit(self) -> None:
        if self._connection is None or not self._pending:
            return
        rows = [(m.id, m.accepted_at, m.phone, m.channel, m.template_id) for m in self._pending.values()]
        try:
            with self._connection:
                self._connection.executemany(
                    "INSERT OR IGNORE INTO messages (id, accepted_at, phone, channel, template_id) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.Error as exc:
            raise RegistryError(f"the sandbox's message registry {self.path} cannot be written: {exc}") from None
        self._pending.clear()

    def close(self) -> None:
        if self._connection is None:
            return
        try:
            self.commit()
        finally:
            self._connection.close()
            self._connection = None

    def _open(self, *, create: bool) -> sqlite3.Connection | None:
        if self._connection is not None:
            return self._connection
        if self.path is not None and not create and not self.path.exists():
            return None  # nothing was ever kept there: every lookup misses, and no file appears
        try:
            if self.path is None:
                connection = sqlite3.connect(":memory:", check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # the server's thread alone uses it, but it may be opened in one thread and closed in another
                connection = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                # a sandbox's messages are a rehearsal's: losing the last batch to a power cut costs nothing real
                connection.execute("PRAGMA synchronous=NORMAL")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                connection.close()
                raise RegistryError(
                    f"the sandbox's message registry {self.path} was written by a newer version of this tool "
                    "(delete it: it only serves lookups of sandbox messages)"
                )
            connection.execute(_SCHEMA)
            connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            connection.commit()
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(f"the sandbox's message registry {self.path} cannot be opened: {exc}") from None
        self._connection = connection
        return connection
