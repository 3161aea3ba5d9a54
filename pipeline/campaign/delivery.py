"""What became of the messages a campaign sent, in bulk: each row's delivery columns from its messages' statuses,
which failed rows are worth sending again, and the statuses the webhook store holds, as facts for the state.

A row may have several messages (one per channel: `result_message_id` lists them, comma-separated). Its status is
that of the furthest along of its messages that did not fail (READ > DELIVERED > SENT > ROUTED > QUEUED); FAILED
only when every one of its messages failed; empty while nothing is known of a message that has not failed. The
error, time and channel are those of the message that gave the status (for FAILED, the first message listed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline import payload
from pipeline.results import DELIVERY_SCHEMA
from pipeline.state import DELIVERY_COLUMNS, DeliveryFact
from pipeline.webhooks.events import STATUS_RANK, UNKNOWN_RANK

FAILED = "FAILED"
# DELIVERED and READ are final for polling; READ may still follow DELIVERED on WhatsApp and RCS, and is taken when a
# webhook or a later `track --poll` of a not-yet-final row brings it, but a delivered message is not asked again
FINAL = ("DELIVERED", "READ", FAILED)
# Failure reasons that must never be resent: the person opted out or the number is blocked. Matched anywhere in the
# reason, upper-cased, so `ERR_CONSENT_BLOCKED`, `ERR_OPTED_OUT`, `ERR_NUMBER_BLOCKED`, `ERR_UNSUBSCRIBED` all count.
NEVER_RESEND = ("CONSENT", "OPT_OUT", "OPTED_OUT", "OPTOUT", "BLOCK", "UNSUBSCRIB", "STOP")
# Reasons the same request would meet again: resending is pointless until the spec or data changes
NOT_WORTH_RESENDING = ("TEMPLATE_PARAMS_INVALID", "INVALID_NUMBER", "INVALID_PARAMETER", "TEMPLATE")

_MESSAGE = "message_id"
_POSITION = "position"
_ORDER = "order"


def row_deliveries(messages: pl.DataFrame, facts: pl.DataFrame) -> pl.DataFrame:
    """Each row's delivery columns (DELIVERY_SCHEMA), by idempotency key, from `messages` (idempotency_key,
    result_message_id) and `facts` (DELIVERY_COLUMNS). Rows without a message id get none (absent)."""
    ids = (
        messages.select(pl.col(payload.KEY), pl.col("result_message_id").str.split(",").alias(_MESSAGE))
        .drop_nulls(_MESSAGE)
        .explode(_MESSAGE)
        .with_columns(pl.col(_MESSAGE).str.strip_chars())
        .filter(pl.col(_MESSAGE) != "")
        .with_columns(pl.int_range(pl.len()).over(payload.KEY).alias(_POSITION))
    )
    joined = ids.join(facts.select(*DELIVERY_COLUMNS), on=_MESSAGE, how="left")
    failed = pl.col("delivery_status") == FAILED
    # the message that speaks for the row: the furthest along that did not fail, else the first that failed
    order = pl.when(failed).then(-1).otherwise(pl.col("delivery_rank")).fill_null(-2)
    chosen = (
        joined.with_columns(order.alias(_ORDER))
        .sort([payload.KEY, _ORDER, _POSITION], descending=[False, True, False])
        .group_by(payload.KEY, maintain_order=True)
        .agg(
            pl.col("delivery_status", "delivery_error", "delivery_at", "delivery_channel").first(),
            failed.fill_null(False).all().alias("all_failed"),
        )
    )
    speaks = pl.col("delivery_status").is_not_null() & ((pl.col("delivery_status") != FAILED) | pl.col("all_failed"))
    return chosen.select(
        pl.col(payload.KEY),
        *(
            pl.when(speaks).then(pl.col(f"delivery_{name}")).otherwise(None).alias(f"result_delivery_{name}")
            for name in ("status", "error", "at", "channel")
        ),
    ).cast(DELIVERY_SCHEMA)  # type: ignore[arg-type]


def worth_resending(status: pl.Expr, error: pl.Expr) -> pl.Expr:
    """Rows whose delivery failed for a reason a new attempt may overcome (a route denied, a transient or unknown
    reason) - never an opted-out or blocked number, nor a reason the same request would meet again."""
    reason = error.fill_null("").str.to_uppercase()
    never = pl.any_horizontal([reason.str.contains(word, literal=True) for word in NEVER_RESEND])
    pointless = pl.any_horizontal([reason.str.contains(word, literal=True) for word in NOT_WORTH_RESENDING])
    return (status == FAILED) & ~never & ~pointless


def unsettled_messages(messages: pl.DataFrame, facts: pl.DataFrame) -> list[str]:
    """The message ids of `messages` (idempotency_key, result_message_id) without a final status in `facts`."""
    ids = (
        messages.select(pl.col("result_message_id").str.split(",").alias(_MESSAGE))
        .explode(_MESSAGE)
        .select(pl.col(_MESSAGE).str.strip_chars())
        .filter(pl.col(_MESSAGE).is_not_null() & (pl.col(_MESSAGE) != ""))
        .unique(maintain_order=True)
    )
    final = facts.filter(pl.col("delivery_status").is_in(FINAL)).select(_MESSAGE)
    return ids.join(final, on=_MESSAGE, how="anti", maintain_order="left")[_MESSAGE].to_list()


def failed_without_reason(facts: pl.DataFrame) -> list[str]:
    """The message ids in `facts` that FAILED with no reason known: Sent.dm's webhook payload documents no field for
    one, so a status lookup is the place to find it (`events[].description`)."""
    missing = facts.filter((pl.col("delivery_status") == FAILED) & pl.col("delivery_error").is_null())
    return missing["message_id"].to_list()


def message_ids(messages: pl.DataFrame) -> list[str]:
    """Every message id of `messages` (result_message_id lists them comma-separated)."""
    ids = messages.select(pl.col("result_message_id").str.split(",").explode().str.strip_chars().alias(_MESSAGE))
    return ids.filter(pl.col(_MESSAGE).is_not_null() & (pl.col(_MESSAGE) != ""))[_MESSAGE].unique().to_list()


def rank_of(status: str) -> int:
    return STATUS_RANK.get(status.upper(), UNKNOWN_RANK)


def facts_from_events(store: Path, ids: Sequence[str]) -> list[DeliveryFact]:
    """The webhook store's current status of each of `ids` it has events for, as facts for the state."""
    from pipeline.webhooks.lookup import statuses  # the receiver's module: read-only, SQLite

    found = statuses(store, ids)
    # only a failure has a reason: a `description` on another status is a note ("delivered to the handset")
    return [
        (m.message_id, m.status, rank_of(m.status), m.error if m.status == FAILED else None, m.at, m.channel, "events")
        for m in found.values()
    ]
