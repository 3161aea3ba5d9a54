"""Each row's outcome from validation and the state: which rows a run or a retry sends, and the results pass that
writes one results row per input row."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import payload, results, source, validate
from pipeline.campaign.delivery import message_ids, row_deliveries, worth_resending
from pipeline.campaign.guards import CLOSES_AT, DEFERRED_REASON, OPENS_AT, ZONES, Guards
from pipeline.campaign.options import RetrySelection, RunOptions
from pipeline.campaign.prepare import PreparedBatch, prepared_batches
from pipeline.outcome import FAILED, NOT_ATTEMPTED, SENT, UNKNOWN, Verdict
from pipeline.spec import CampaignSpec
from pipeline.state import DELIVERY_COLUMNS, OUTCOME_COLUMNS, PENDING, StateStore

# in the rows to send: the row was sent before and its answer was lost, so it goes alone again (see broadcast.py)
PENDING_FLAG = "pending"
# in the rows to send: the Idempotency-Key its request carries - the row's key, or, for a row sent again because its
# delivery failed, the row's key and the attempt (`KEY-d1`, `KEY-d2`...): the server answers a key it has seen with
# its first answer, so a resend under the old key would send nothing. Such a row goes alone, never in a broadcast.
SEND_KEY = "send_key"


@dataclass
class Totals:
    """What the results pass counted: rows, statuses, top errors."""

    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    guarded_cells: int = 0
    skipped_lines: int = 0
    notes: list[str] = field(default_factory=list)
    delivery: dict[str, int] = field(default_factory=dict)  # rows by result_delivery_status ("" for none known)

    def add(self, table: pl.DataFrame) -> None:
        self.rows += table.height
        for status, n in table.group_by("result_status").len().iter_rows():
            self.counts[status] = self.counts.get(status, 0) + n
        if "result_delivery_status" in table.columns:
            sent = table.filter(pl.col("result_status") == SENT)
            for status, n in sent.group_by("result_delivery_status").len().iter_rows():
                self.delivery[status or ""] = self.delivery.get(status or "", 0) + n
        problems = table.filter(pl.col("result_status").is_in([FAILED, UNKNOWN]))
        for error, n in problems.group_by("result_error").len().iter_rows():
            if len(self.errors) < _MAX_DISTINCT_ERRORS or error in self.errors:
                self.errors[str(error)] += n


_MAX_DISTINCT_ERRORS = 10_000
_TIMING = (ZONES, DEFERRED_REASON, OPENS_AT, CLOSES_AT)


def write_results(
    spec: CampaignSpec,
    options: RunOptions,
    path: Path,
    store: StateStore | None,
    not_sent_reason: str | None,
    *,
    after_sending: bool,
    guards: Guards | None = None,
) -> Totals:
    """Write every row's outcome; rows with none are `deferred` (outside their sending hours, as of the guards'
    moment), or `not_attempted` with `not_sent_reason`, or, when it is None (a dry run), `valid`."""
    totals = Totals()
    # once `track` has run for the campaign, every results file it writes carries the delivery columns
    tracked = store is not None and store.tracked
    writer = results.ResultsWriter(path, after_sending=after_sending, csv=results.CsvOptions.of(spec))
    try:
        opened: list[source.ContactSource] = []
        batches = prepared_batches(
            spec,
            options.shard,
            keys=store is not None,
            opened=opened,
            rehearsal=options.server_dry_run,
            bodies=0,
            guards=guards,
        )
        for batch in batches:
            # suppressed rows too: one an earlier run sent is reported sent
            keys = batch.checked[payload.KEY].drop_nulls().to_list()
            recorded = store.lookup(keys) if store is not None else empty_outcomes()
            delivery = delivery_of(store, recorded) if tracked else None
            table = final_outcomes(
                batch, recorded, not_sent_reason, rehearsal=options.server_dry_run, delivery=delivery
            )
            totals.add(table)
            writer.write(results.assemble_results(batch.frame, table))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    totals.guarded_cells = writer.guarded_cells
    totals.skipped_lines = opened[0].skipped_blank_lines
    totals.notes = list(opened[0].notes)
    return totals


def delivery_of(store: StateStore | None, recorded: pl.DataFrame) -> pl.DataFrame:
    """The delivery columns of the `recorded` rows (by idempotency key) from what `track` stored."""
    messages = recorded.select(payload.KEY, "result_message_id").drop_nulls("result_message_id")
    if store is None or messages.height == 0:
        return row_deliveries(messages, pl.DataFrame(schema=DELIVERY_COLUMNS))
    return row_deliveries(messages, store.delivery_facts(message_ids(messages)))


def send_key(retries: pl.Expr) -> pl.Expr:
    """The Idempotency-Key a row's request carries, given how many times its delivery was retried."""
    derived = pl.concat_str(pl.col(payload.KEY), pl.lit("-d"), retries.cast(pl.String))
    return pl.when(retries > 0).then(derived).otherwise(pl.col(payload.KEY)).alias(SEND_KEY)


def select_rows(
    payloads: pl.DataFrame, recorded: pl.DataFrame, options: RunOptions, delivery: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, Selected]:
    """The payload rows to send now (result_row, payload, idempotency_key, pending, send_key), and how many were
    left alone: rows that already have an outcome (a normal run), or - for `retry` - rows the selection leaves out
    because resending them could text a person twice (`unknown`), would be refused again (failed for good), or -
    with `delivery_failed` - whose delivery failed for a reason no resend overcomes (opted out, blocked). `delivery`:
    the rows' delivery columns by key (delivery_of), needed for `delivery_failed`."""
    joined = payloads.join(
        recorded.select(payload.KEY, "result_status", "result_verdict", "delivery_retries"),
        on=payload.KEY,
        how="left",
        maintain_order="left",
    )
    retries = pl.col("delivery_retries").fill_null(0)
    fresh = pl.col("result_status").is_null() | (pl.col("result_status") == PENDING)
    # rows sent before whose answer was lost go out again alone, under their own key, never in a new broadcast
    alone = pl.col("result_status").is_in([PENDING, UNKNOWN]).fill_null(False).alias(PENDING_FLAG)
    if options.retry is None:
        chosen, waiting = _open_only(joined.filter(fresh))
        return chosen.select(payload.ROW, payload.BODY, payload.KEY, alone, send_key(retries)), Selected(
            skipped=joined.height - chosen.height - waiting.height, **_deferred(waiting)
        )
    selection = options.retry
    if selection.delivery_failed:
        return _delivery_failed(joined, delivery, selection, alone, retries)
    refused = (pl.col("result_status") == FAILED) & pl.col("result_verdict").is_in(
        [Verdict.PERMANENT.value, Verdict.AUTH.value]
    )
    in_rows = pl.lit(True) if selection.rows is None else pl.col(payload.ROW).is_in(list(selection.rows))
    wanted = pl.col("result_status").is_in(list(selection.statuses))
    if not selection.include_permanent:
        wanted = wanted & ~refused
    left_unknown = in_rows & (pl.col("result_status") == UNKNOWN) & ~wanted
    # refused rows count as left out only when failed rows were asked for
    left_refused = in_rows & refused & ~wanted & pl.lit(FAILED in selection.statuses)
    counts = joined.select(left_unknown.sum().alias("unknown"), left_refused.sum().alias("refused")).row(0)
    chosen, waiting = _open_only(joined.filter(wanted & in_rows))
    return chosen.select(payload.ROW, payload.BODY, payload.KEY, alone, send_key(retries)), Selected(
        unknown_left=int(counts[0]), refused_left=int(counts[1]), **_deferred(waiting)
    )


def _delivery_failed(
    joined: pl.DataFrame, delivery: pl.DataFrame | None, selection: RetrySelection, alone: pl.Expr, retries: pl.Expr
) -> tuple[pl.DataFrame, Selected]:
    """`retry --delivery-failed`: rows the server accepted whose delivery failed for a reason worth another attempt,
    each under the next key of its own (its delivery_retries goes up by one as it is sent: sending.rows_to_send)."""
    if delivery is None:
        raise ValueError("delivery_failed needs the rows' delivery columns")
    with_delivery = joined.join(delivery, on=payload.KEY, how="left", maintain_order="left")
    in_rows = pl.lit(True) if selection.rows is None else pl.col(payload.ROW).is_in(list(selection.rows))
    status, error = pl.col("result_delivery_status"), pl.col("result_delivery_error")
    accepted = (pl.col("result_status") == SENT) & in_rows
    wanted = accepted & worth_resending(status, error)
    kept = accepted & (status == "FAILED") & ~worth_resending(status, error)
    counts = with_delivery.select(kept.sum().alias("kept")).row(0)
    chosen, waiting = _open_only(with_delivery.filter(wanted))
    return chosen.select(payload.ROW, payload.BODY, payload.KEY, alone, send_key(retries + 1)), Selected(
        delivery_kept=int(counts[0]), **_deferred(waiting)
    )


def _open_only(chosen: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The chosen rows whose sending hours are open now, and those that wait for them (send.window)."""
    if DEFERRED_REASON not in chosen.columns:
        return chosen, chosen.clear()
    waiting = pl.col(DEFERRED_REASON).is_not_null()
    return chosen.filter(~waiting), chosen.filter(waiting)


def _deferred(waiting: pl.DataFrame) -> dict[str, Any]:
    if waiting.height == 0:
        return {}
    rows = waiting.select(payload.ROW, payload.BODY, payload.KEY, OPENS_AT)
    return {"deferred": waiting.height, "next_opening": waiting[OPENS_AT].min(), "waiting": rows}


@dataclass(frozen=True)
class Selected:
    skipped: int = 0  # already had an outcome (a normal run)
    unknown_left: int = 0  # retry: `unknown` rows not resent (no --include-unknown)
    refused_left: int = 0  # retry: rows the server refused for good, not resent (no --include-permanent)
    delivery_kept: int = 0  # retry --delivery-failed: delivery failed for a reason no resend overcomes (opted out)
    deferred: int = 0  # outside their sending hours now: left for a later run (or `run --wait`)
    next_opening: datetime | None = None  # the first moment one of them may go (UTC)
    waiting: pl.DataFrame | None = None  # those rows: result_row, payload, idempotency_key, window_opens_at


def empty_outcomes() -> pl.DataFrame:
    return pl.DataFrame(schema=OUTCOME_COLUMNS)


def final_outcomes(
    batch: PreparedBatch,
    recorded: pl.DataFrame,
    not_sent_reason: str | None,
    *,
    rehearsal: bool = False,
    delivery: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Every row's outcome: validation's verdict, the recorded delivery outcome, or - for rows with neither -
    `deferred` when outside their sending hours, else `not_attempted` with `not_sent_reason`, or `valid` when that
    is None (commands that send nothing). In a
    `rehearsal` (a server-side dry run) what the server accepted is `valid`: it was sent to nobody. On v3 the number
    as sent is `result_to`."""
    numbers = [pl.col(payload.TO).alias(results.TO_COLUMN)] if payload.TO in batch.checked.columns else []
    checked = batch.checked.select(
        pl.col(payload.ROW),
        pl.col(payload.KEY),
        pl.col(validate.STATUS).alias("check_status"),
        pl.col(validate.ERROR).alias("check_error"),
        *numbers,
        *[c for c in (DEFERRED_REASON,) if c in batch.checked.columns],
    )
    delivered = recorded.filter(pl.col("result_status").is_in([SENT, FAILED, UNKNOWN]))
    if rehearsal:
        accepted = pl.col("result_status") == SENT
        delivered = delivered.with_columns(
            pl.when(accepted).then(pl.lit(validate.VALID)).otherwise(pl.col("result_status")).alias("result_status")
        )
    merged = checked.join(delivered, on=payload.KEY, how="left", maintain_order="left")
    if delivery is not None:  # `track` ran: the delivery columns, by key (delivery_of)
        merged = merged.join(delivery, on=payload.KEY, how="left", maintain_order="left")
    # a row whose person was listed after an earlier run sent it (or may have: unknown) keeps that outcome; one that
    # only failed is suppressed now, never to be sent
    reached = (pl.col("check_status") == validate.SUPPRESSED) & pl.col("result_status").is_in([SENT, UNKNOWN])
    merged = merged.with_columns(pl.when(reached).then(None).otherwise(pl.col("check_status")).alias("check_status"))
    unsent = NOT_ATTEMPTED if not_sent_reason is not None else validate.VALID
    # a row outside its sending hours that no earlier run sent waits for them
    waiting = pl.col(DEFERRED_REASON) if DEFERRED_REASON in merged.columns else pl.lit(None, dtype=pl.String)
    status = pl.coalesce(
        pl.col("check_status"),
        pl.col("result_status"),
        pl.when(waiting.is_not_null()).then(pl.lit(validate.DEFERRED)),
        pl.lit(unsent),
    )
    error = (
        pl.when(pl.col("check_status").is_not_null())
        .then(pl.col("check_error"))
        .when(pl.col("result_status").is_not_null())
        .then(pl.col("result_error"))
        .when(waiting.is_not_null())
        .then(waiting)
        .otherwise(pl.lit(not_sent_reason, dtype=pl.String))
    )
    # a duplicate row carries no delivery outcome of its own: its original's is on the original's row
    delivered_columns = [c for c in results.DELIVERY_SCHEMA if c in merged.columns]
    is_duplicate = pl.col("check_status").is_not_null()
    return merged.with_columns(
        status.alias("result_status"),
        error.alias("result_error"),
        *(
            pl.when(is_duplicate).then(None).otherwise(pl.col(c)).alias(c)
            for c in (
                "result_http_status",
                "result_message_id",
                "result_sent_at",
                "result_latency_ms",
                *delivered_columns,
            )
        ),
        pl.when(is_duplicate).then(0).otherwise(pl.col("result_attempts").fill_null(0)).alias("result_attempts"),
    ).drop("check_status", "check_error", payload.KEY, "result_verdict", "delivery_retries", *_TIMING, strict=False)
