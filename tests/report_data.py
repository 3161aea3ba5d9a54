"""Delivery columns for results files, made up as `track` would write them, for the report's tests, its benchmark
(bench/report.py) and the screenshot in docs/ (docs/make_report_screenshot.py) - until `track` fills them for real.

`add_delivery` decides each accepted row's fate from a hash of its row number, so the same results always get the
same delivery columns; `synthetic_results` makes a whole results table of any size with no input columns.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

FAILURE_CODES = ("ERR_CONSENT_BLOCKED", "ERR_ROUTE_DENIED", "ERR_TEMPLATE_PARAMS_INVALID")


def add_delivery(results: pl.DataFrame, *, channels: tuple[str, ...] = ("sms", "whatsapp")) -> pl.DataFrame:
    """`results` with result_delivery_status, _error, _at and _channel for its `sent` rows: about 80% delivered (half
    of those on WhatsApp read), 8% failed with one of FAILURE_CODES, the rest still SENT, QUEUED or not yet known."""
    roll = (pl.col("result_row").cast(pl.UInt64).hash(seed=11) % 100).cast(pl.Int64)
    pick = (pl.col("result_row").cast(pl.UInt64).hash(seed=29) % 1000).cast(pl.Int64)
    sent = pl.col("result_status") == "sent"
    channel = pl.lit(pl.Series(list(channels))).get(pick % len(channels))
    status = (
        pl.when(~sent)
        .then(None)
        .when(roll < 80)
        .then(
            pl.when((channel == "whatsapp") & (pick // 2 % 2 == 0)).then(pl.lit("READ")).otherwise(pl.lit("DELIVERED"))
        )
        .when(roll < 88)
        .then(pl.lit("FAILED"))
        .when(roll < 94)
        .then(pl.lit("SENT"))
        .when(roll < 97)
        .then(pl.lit("QUEUED"))
        .otherwise(None)
    )
    sent_at = pl.col("result_sent_at").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", time_unit="ms")
    delay = pl.duration(milliseconds=800 + (pick * 37) % 9000)
    return (
        results.with_columns(status.alias("result_delivery_status"), channel.alias("_channel"))
        .with_columns(
            pl.when(pl.col("result_delivery_status") == "FAILED")
            .then(pl.lit(pl.Series(list(FAILURE_CODES))).get(pick % len(FAILURE_CODES)))
            .alias("result_delivery_error"),
            pl.when(pl.col("result_delivery_status").is_not_null())
            .then((sent_at + delay).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
            .alias("result_delivery_at"),
            pl.when(sent).then(pl.col("_channel")).alias("result_delivery_channel"),
        )
        .drop("_channel")
    )


def synthetic_results(rows: int, *, start: datetime | None = None, rate_per_s: float = 250.0) -> pl.DataFrame:
    """A results table of `rows` rows as a v3 run writes it (result columns only): 2% invalid, 0.5% duplicates,
    1% refused by the API, the rest accepted, answered at about `rate_per_s` with latencies of 40-400 ms."""
    begin = start or datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    row = pl.int_range(1, rows + 1, dtype=pl.Int64, eager=True).alias("result_row")
    frame = row.to_frame()
    roll = (pl.col("result_row").cast(pl.UInt64).hash(seed=3) % 1000).cast(pl.Int64)
    status = (
        pl.when(roll < 20)
        .then(pl.lit("invalid"))
        .when(roll < 25)
        .then(pl.lit("duplicate"))
        .when(roll < 35)
        .then(pl.lit("failed"))
        .otherwise(pl.lit("sent"))
    )
    attempted = status.is_in(["sent", "failed"])
    at = pl.lit(begin) + pl.duration(milliseconds=(pl.col("result_row") * 1000 / rate_per_s).cast(pl.Int64))
    return frame.with_columns(
        status.alias("result_status"),
        pl.when(roll < 20)
        .then(pl.lit("to: not a valid phone number (column phone)"))
        .when(roll < 25)
        .then(pl.format("duplicate of row {}", (pl.col("result_row") - 1).clip(1)))
        .when(roll < 35)
        .then(pl.lit("HTTP 422 BUSINESS_004: every recipient opted out"))
        .alias("result_error"),
        pl.when(attempted).then(pl.lit(1)).otherwise(pl.lit(0)).alias("result_attempts"),
        pl.when(attempted).then(at.dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")).alias("result_sent_at"),
        pl.when(attempted).then(40 + (roll * 7919 % 360).cast(pl.Float64)).alias("result_latency_ms"),
    )
