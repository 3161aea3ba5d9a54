"""Where a campaign's state lives, as `output.state` names it: a SQLite file (a path) or a PostgreSQL database (a
`postgresql://` URL), the name each shard's state goes by, and the printed form of a URL, which never shows a
password. Knows nothing of SQL; pipeline/state.py and pipeline/state_pg.py open what this names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from pipeline.shard import Shard

URL_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def mask_url(url: str) -> str:
    """`url` with any password replaced by `***`: the only form of a URL that is printed, logged or raised."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address goes back in brackets
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


@dataclass(frozen=True)
class PostgresState:
    """A campaign state kept in PostgreSQL. Several campaigns (and the shards of one) share a database: each keeps
    its rows under its own state name, the campaign's name plus the shard's label."""

    # the URL as written; it may hold a password, so it is never part of repr() or str()
    url: str = field(repr=False)
    shard: str | None = None  # "shard-2-of-4"

    @property
    def has_password(self) -> bool:
        return urlsplit(self.url).password is not None

    def state_name(self, campaign: str) -> str:
        """The key of this state's rows: `campaign`, or `campaign/shard-I-of-N` for a shard (a campaign's name has
        no `/`, so no campaign's state name is another's shard's)."""
        return campaign if self.shard is None else f"{campaign}/{self.shard}"

    def for_shard(self, label: str) -> PostgresState:
        return PostgresState(self.url, label)

    def __str__(self) -> str:
        masked = mask_url(self.url)
        return masked if self.shard is None else f"{masked} ({self.shard})"

    def __repr__(self) -> str:
        return f"PostgresState({str(self)!r})"


StateLocation = Path | PostgresState


def shard_location(location: StateLocation, shard: Shard) -> StateLocation:
    """A shard's own state: `NAME.state.shard-2-of-4.sqlite` beside the campaign's, or, in PostgreSQL, the state
    named `NAME.shard-2-of-4` in the same database."""
    if isinstance(location, PostgresState):
        return location.for_shard(shard.label)
    return shard.path(location)
