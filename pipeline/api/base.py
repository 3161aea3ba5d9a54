"""The interface every API generation implements, and what reading an answer yields."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from pipeline import __version__
from pipeline.outcome import Verdict
from pipeline.spec import MessageSpec

USER_AGENT = f"sentdm-batch/{__version__}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one HTTP answer means for the message it answers."""

    verdict: Verdict
    message_id: str | None = None  # every id the server gave the message (one per channel), comma-separated
    error: str | None = None  # one line, for result_error; never holds the API key
    stop: str | None = None  # why the whole run must stop now (e.g. an empty balance): every further row would fail
    # a request to several numbers (a broadcast): each number's message ids, comma-separated
    by_number: dict[str, str] | None = None
    found: MessageState | None = None  # a status lookup's answer: what the server says of the message


@dataclass(frozen=True, slots=True)
class MessageState:
    """One message's status as a status lookup (v3 `GET /v3/messages/{id}`) tells it."""

    message_id: str
    status: str  # QUEUED, ROUTED, SENT, DELIVERED, READ, FAILED (upper case, as Sent.dm names them)
    error: str | None  # the description of the event that set the status (a failure's reason, e.g. ERR_ROUTE_DENIED)
    at: str | None  # that event's timestamp, as sent
    channel: str | None


@dataclass(frozen=True)
class Credentials:
    api_key: str
    sender_id: str = ""  # v1, v2
    profile_id: str = ""  # v3, optional


class Generation(ABC):
    """One API generation. Instances hold no state; `pipeline.api.generation(version)` gives the shared one."""

    version: ClassVar[str]
    messages_path: ClassVar[str]
    # The server keeps each Idempotency-Key's first answer (v3: 24 hours) and replays it to a repeat: a request
    # whose answer was lost can be sent again with the same key without texting anyone twice.
    keeps_keys: ClassVar[bool] = False
    credentials_hint: ClassVar[str]  # what to check when the server refuses the credentials

    @abstractmethod
    def headers(self, credentials: Credentials) -> list[tuple[bytes, bytes]]:
        """Every header of a send except the Idempotency-Key, which is per request."""

    @abstractmethod
    def recipient_fields(
        self, texts: pl.DataFrame, message: MessageSpec, *, numbers: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        """The addressing columns of every row (recipient, template, channel...), from `texts`: `result_row` and the
        message's input columns as text. Returns `result_row` plus the generation's columns (payload.py names).
        `numbers`: the rows' phone numbers as phones.normalise_phones decided them, when the caller did so for a
        larger span of rows at once (generations that address phone numbers)."""

    @abstractmethod
    def reasons(self, message: MessageSpec) -> list[pl.Expr]:
        """Why a row of the fields frame cannot be sent, one expression per check (null when it passes). Reasons
        name the field and the column, never the value."""

    @abstractmethod
    def identity(self, message: MessageSpec) -> list[pl.Expr]:
        """The fields that, with the variables, say what a message is and to whom: rows equal in all of them are
        duplicates, and a row's idempotency key derives from them."""

    @abstractmethod
    def body(self, message: MessageSpec, parameters: pl.Expr | None, *, rehearsal: bool = False) -> pl.Expr:
        """The JSON request body of each row, given its template variables as a struct (None: it has none);
        `rehearsal` asks the server to check everything and send nothing (only generations that support it)."""

    @abstractmethod
    def read_answer(self, status: int, content: bytes, *, secret: str) -> Answer:
        """What an HTTP answer means: verdict, message id or error text (with `secret` masked if echoed)."""

    def status_path(self, message_id: str) -> str | None:
        """The path that answers a message's delivery status (`GET`), or None where the generation has none."""
        return None

    def read_status(self, status: int, content: bytes, *, secret: str) -> Answer:
        """What a status lookup's answer means: verdict (retries and stops as for a send), and `found`."""
        raise NotImplementedError(f"API {self.version} has no message status lookup")


def optional_field(fields: dict[str, pl.Expr], name: str, value: pl.Expr, *, present: pl.Expr | None = None) -> pl.Expr:
    """The JSON text of `fields`, plus `name` where `present` holds (everywhere when it is None): an optional
    field is left out of the body, not sent as null."""
    without = pl.struct([e.alias(k) for k, e in fields.items()]).struct.json_encode()
    with_it = pl.struct([*(e.alias(k) for k, e in fields.items()), value.alias(name)]).struct.json_encode()
    if present is None:
        return with_it
    return pl.when(present).then(with_it).otherwise(without)
