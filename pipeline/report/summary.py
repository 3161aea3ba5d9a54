"""What a campaign's results file says, in aggregates: the funnel (rows -> valid -> accepted -> delivered -> read, and
what was lost at each step), the reasons rows were not sent or not delivered, delivery status by channel, and the
sending rate and request latency over the run's time in bins. Everything is computed with polars over the result
columns only (the input's columns - names, phone numbers, texts - are never read), so a report holds no one's data
and stays quick on a million rows.

The delivery columns (`result_delivery_status`, `result_delivery_error`, `result_delivery_at`,
`result_delivery_channel`) come from `track`; a results file without them reports delivery as not yet known.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.errors import UsageError
from pipeline.formulas import unquote_cells

DELIVERY_COLUMNS = ("result_delivery_status", "result_delivery_error", "result_delivery_at", "result_delivery_channel")
_COLUMNS: dict[str, type[pl.DataType]] = {
    "result_status": pl.String,
    "result_error": pl.String,
    "result_sent_at": pl.String,
    "result_latency_ms": pl.Float64,
    "result_delivery_status": pl.String,
    "result_delivery_error": pl.String,
    "result_delivery_at": pl.String,
    "result_delivery_channel": pl.String,
}
_REQUIRED = ("result_status", "result_error", "result_sent_at", "result_latency_ms")

# how far each message got, in order; FAILED can happen at any step and is final
DELIVERED = ("DELIVERED", "READ")
IN_FLIGHT = ("QUEUED", "ROUTED", "SENT")
NOT_YET_KNOWN = "not yet known"
# the row statuses that never reached the API: the valid step's losses
NOT_VALID = ("invalid", "duplicate")
TOP_REASONS = 12
MAX_BINS = 120
# bin widths for the time series, in milliseconds: the narrowest that keeps a run within MAX_BINS
_BIN_WIDTHS_MS = (
    10, 20, 50, 100, 200, 500,
    1_000, 2_000, 5_000, 10_000, 15_000, 30_000,
    60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
    3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
)  # fmt: skip
_MASK = "[number]"
_ISO_DATE_STANDIN = "\ue000"  # a private-use character: ISO dates are hidden from the number mask, then restored


@dataclass(frozen=True)
class Step:
    """One step of the funnel: how many rows reached it, and what stopped the others at this step."""

    name: str
    count: int
    lost: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reason:
    step: str  # "not sent" (with the row status) or "delivery"
    status: str
    reason: str
    count: int


@dataclass(frozen=True)
class Timing:
    first_at: datetime
    last_at: datetime
    requests: int  # rows with an answer time: every row a request was made for
    duration_s: float
    average_rate_per_s: float | None  # None for a run shorter than a second: its rate says little
    peak_rate_per_s: float | None  # the busiest window of peak_window_ms; None when the run is under two windows
    peak_window_ms: int
    bin_ms: int  # the width of the series' bins
    latency_ms: dict[str, float]  # p50, p90, p99, max
    delivery_delay_s: dict[str, float]  # p50, p90, max of result_delivery_at - result_sent_at (delivered rows)


@dataclass(frozen=True)
class CampaignReport:
    campaign: str
    results_path: str
    rows: int
    statuses: dict[str, int]  # result_status -> rows
    funnel: list[Step]
    delivery_known: bool  # the results file has the delivery columns (`track` ran)
    delivery_statuses: dict[str, int]  # among accepted rows; "not yet known" for an empty status
    reasons: list[Reason]  # the most frequent reasons, masked: never a phone number
    other_reasons: int  # rows whose reason is beyond the top ones
    channels: dict[str, dict[str, int]]  # channel -> delivery status -> accepted rows
    timing: Timing | None
    series: pl.DataFrame  # bin start (UTC), requests, accepted, not_accepted, rate_per_s, p50_ms, p90_ms, max_ms

    def count(self, step: str) -> int:
        return next(s.count for s in self.funnel if s.name == step)

    def to_json(self) -> dict[str, object]:
        """The aggregates as one JSON-ready object (the time series left out: it is for the charts)."""
        timing = None
        if self.timing is not None:
            timing = {
                **asdict(self.timing),
                "first_at": _iso(self.timing.first_at),
                "last_at": _iso(self.timing.last_at),
            }
        return {
            "campaign": self.campaign,
            "results": self.results_path,
            "rows": self.rows,
            "funnel": [asdict(step) for step in self.funnel],
            "statuses": self.statuses,
            "delivery_known": self.delivery_known,
            "delivery_statuses": self.delivery_statuses,
            "channels": self.channels,
            "reasons": [asdict(reason) for reason in self.reasons],
            "other_reasons": self.other_reasons,
            "timing": timing,
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def read_results(path: Path, *, separator: str = ",") -> pl.DataFrame:
    """The result columns of a results file (CSV, Parquet or JSON Lines), typed; the input's columns are not read.
    Raises UsageError, with the fix, when the file is missing or is not a results file."""
    if not path.is_file():
        raise UsageError(
            f"{path}: no results file to report on. Hint: run the campaign first (`python -m pipeline run SPEC`), "
            "or `merge` the shards of a sharded run."
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.scan_parquet(path)
        elif suffix == ".jsonl":
            frame = pl.scan_ndjson(path, infer_schema_length=None)
        else:
            frame = pl.scan_csv(path, infer_schema=False, separator=separator, encoding="utf8-lossy")
        names = frame.collect_schema().names()
        names = [n.removeprefix("\ufeff") if i == 0 else n for i, n in enumerate(names)]
        missing = [c for c in _REQUIRED if c not in names]
        if missing:
            raise UsageError(
                f"{path}: this is not a results file of the tool (no {', '.join(missing)} column). Hint: point "
                "output.results at the file `run` wrote."
            )
        if names[0] != frame.collect_schema().names()[0]:
            frame = frame.rename({frame.collect_schema().names()[0]: names[0]})
        present = [c for c in _COLUMNS if c in names]
        table = frame.select(pl.col(c).cast(pl.String) for c in present).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UsageError(f"{path}: cannot read this results file: {str(exc).splitlines()[0]}") from None
    if suffix not in (".parquet", ".jsonl"):
        table = unquote_cells(table)  # a CSV's formula guard: `'-...` reads back as `-...`
    return table.with_columns(pl.col(c).cast(_COLUMNS[c], strict=False) for c in present)


def summarize_results(results: pl.DataFrame, *, campaign: str, results_path: str) -> CampaignReport:
    """The report's aggregates from `read_results`' frame."""
    delivery_known = "result_delivery_status" in results.columns
    frame = results.with_columns(
        pl.lit(None, dtype=_COLUMNS[c]).alias(c) for c in DELIVERY_COLUMNS if c not in results.columns
    ).with_columns(
        pl.col("result_status").fill_null("").str.strip_chars(),
        pl.col("result_delivery_status").str.strip_chars().str.to_uppercase().replace("", None),
        pl.col("result_delivery_channel").str.strip_chars().replace("", None),
    )
    statuses = _counts(frame, "result_status")
    rows = frame.height
    not_valid = {s: statuses[s] for s in NOT_VALID if statuses.get(s)}
    valid = rows - sum(not_valid.values())
    accepted = statuses.get("sent", 0)
    not_accepted = {s: n for s, n in statuses.items() if s not in (*NOT_VALID, "sent")}

    sent = frame.filter(pl.col("result_status") == "sent")
    delivery = (
        _counts(sent.with_columns(pl.col("result_delivery_status").fill_null(NOT_YET_KNOWN)), "result_delivery_status")
        if delivery_known
        else {NOT_YET_KNOWN: accepted}
    )
    delivered = sum(delivery.get(s, 0) for s in DELIVERED)
    read = delivery.get("READ", 0)
    undelivered = {s: n for s, n in delivery.items() if s not in DELIVERED}
    funnel = [
        Step("rows", rows),
        Step("valid", valid, not_valid),
        Step("accepted", accepted, not_accepted),
        Step("delivered", delivered, undelivered),
        # DELIVERED and not READ: not read, or the channel reports no reads (SMS)
        Step("read", read, {"delivered, not read": delivery.get("DELIVERED", 0)} if delivery.get("DELIVERED") else {}),
    ]
    reasons, other = _reasons(frame)
    timed = _timed(frame)
    return CampaignReport(
        campaign=campaign,
        results_path=results_path,
        rows=rows,
        statuses=statuses,
        funnel=funnel,
        delivery_known=delivery_known,
        delivery_statuses=delivery,
        reasons=reasons,
        other_reasons=other,
        channels=_channels(sent) if delivery_known else {},
        timing=_timing(timed),
        series=_series(timed),
    )


def mask_reason(reason: pl.Expr) -> pl.Expr:
    """A reason fit for a report: `duplicate of row N` as one reason, and anything that could be a phone number
    (7 or more digits, with or without +, spaces, dots, dashes and parentheses) as `[number]`; ISO dates and times
    are kept."""
    date = r"(\d{4})-(\d{2})-(\d{2})"
    hidden = f"${{1}}{_ISO_DATE_STANDIN}${{2}}{_ISO_DATE_STANDIN}${{3}}"
    return (
        reason.str.replace_all(r"duplicate of row \d+", "duplicate of row N")
        .str.replace_all(date, hidden)
        .str.replace_all(r"\+?\(?\d(?:[\s().\-]{0,2}\d){6,}\)?", _MASK)
        .str.replace_all(_ISO_DATE_STANDIN, "-", literal=True)
        .str.strip_chars()
    )


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counted = frame.group_by(column).len().sort(["len", column], descending=[True, False])
    return {str(k): int(n) for k, n in counted.iter_rows()}


def _reasons(frame: pl.DataFrame) -> tuple[list[Reason], int]:
    not_sent = frame.filter(pl.col("result_status") != "sent").select(
        pl.lit("not sent").alias("step"),
        pl.col("result_status").alias("status"),
        mask_reason(pl.col("result_error").fill_null("")).alias("reason"),
    )
    failed = frame.filter((pl.col("result_status") == "sent") & (pl.col("result_delivery_status") == "FAILED")).select(
        pl.lit("delivery").alias("step"),
        pl.lit("FAILED").alias("status"),
        mask_reason(pl.col("result_delivery_error").fill_null("")).alias("reason"),
    )
    grouped = (
        pl.concat([not_sent, failed])
        .with_columns(pl.col("reason").replace("", "(no reason given)"))
        .group_by("step", "status", "reason")
        .len()
        .sort(["len", "step", "status", "reason"], descending=[True, False, False, False])
    )
    top = [Reason(str(s), str(st), str(r), int(n)) for s, st, r, n in grouped.head(TOP_REASONS).iter_rows()]
    other = int(grouped.slice(TOP_REASONS)["len"].sum())
    return top, other


def _channels(sent: pl.DataFrame) -> dict[str, dict[str, int]]:
    counted = (
        sent.with_columns(
            pl.col("result_delivery_channel").fill_null("(unknown)"),
            pl.col("result_delivery_status").fill_null(NOT_YET_KNOWN),
        )
        .group_by("result_delivery_channel", "result_delivery_status")
        .len()
        .sort("result_delivery_channel")
    )
    channels: dict[str, dict[str, int]] = {}
    for channel, status, n in counted.iter_rows():
        channels.setdefault(str(channel), {})[str(status)] = int(n)
    return dict(sorted(channels.items(), key=lambda item: -sum(item[1].values())))


def _times(column: str) -> pl.Expr:
    # ISO-8601 with Z (as the tool writes it) or an offset (as a track source may give it), any fraction of a second
    return (
        pl.col(column)
        .str.strip_chars()
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_zone="UTC", strict=False, time_unit="ms")
    )


def _timed(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        _times("result_sent_at").alias("at"),
        _times("result_delivery_at").alias("delivered_at"),
        pl.col("result_latency_ms").alias("latency_ms"),
        (pl.col("result_status") == "sent").alias("accepted"),
        pl.col("result_delivery_status").is_in(DELIVERED).fill_null(value=False).alias("delivered"),
    ).filter(pl.col("at").is_not_null())


def _bin_ms(span: timedelta, requests: int) -> int:
    """The narrowest bin width that keeps the series within MAX_BINS bins and, where there are few requests, about
    four requests a bin (a rate from one or two requests a bin is all noise)."""
    most = max(1, min(MAX_BINS, requests // 4))
    span_ms = span.total_seconds() * 1000
    return next((w for w in _BIN_WIDTHS_MS if span_ms / w < most), _BIN_WIDTHS_MS[-1])


def _series(timed: pl.DataFrame) -> pl.DataFrame:
    empty = pl.DataFrame(
        schema={
            "at": pl.Datetime("ms", "UTC"),
            "requests": pl.UInt32,
            "accepted": pl.UInt32,
            "not_accepted": pl.UInt32,
            "rate_per_s": pl.Float64,
            "p50_ms": pl.Float64,
            "p90_ms": pl.Float64,
            "max_ms": pl.Float64,
        }
    )
    if timed.is_empty():
        return empty
    first, last = timed["at"].min(), timed["at"].max()
    assert isinstance(first, datetime)
    assert isinstance(last, datetime)
    width = _bin_ms(last - first, timed.height)
    binned = (
        timed.with_columns(pl.col("at").dt.truncate(f"{width}ms"))
        .group_by("at")
        .agg(
            pl.len().alias("requests"),
            pl.col("accepted").sum().cast(pl.UInt32),
            pl.col("latency_ms").quantile(0.5, "linear").alias("p50_ms"),
            pl.col("latency_ms").quantile(0.9, "linear").alias("p90_ms"),
            pl.col("latency_ms").max().alias("max_ms"),
        )
    )
    start = binned["at"].min()
    end = binned["at"].max()
    assert isinstance(start, datetime)
    assert isinstance(end, datetime)
    every = pl.datetime_range(start, end, f"{width}ms", time_unit="ms", time_zone="UTC", eager=True).alias("at")
    return (
        every.to_frame()
        .join(binned, on="at", how="left")
        .with_columns(pl.col("requests", "accepted").fill_null(0))
        .with_columns(
            (pl.col("requests") - pl.col("accepted")).alias("not_accepted"),
            (pl.col("requests") * 1000 / width).alias("rate_per_s"),
        )
        .select(empty.columns)
        .cast(empty.schema)
    )


def _timing(timed: pl.DataFrame) -> Timing | None:
    if timed.is_empty():
        return None
    first, last = timed["at"].min(), timed["at"].max()
    assert isinstance(first, datetime)
    assert isinstance(last, datetime)
    width = _bin_ms(last - first, timed.height)
    duration_s = (last - first).total_seconds()
    window = max(width, 1000)
    peak = int(timed.group_by(pl.col("at").dt.truncate(f"{window}ms")).len()["len"].max() or 0)  # type: ignore[arg-type]
    latency = timed.select(
        pl.col("latency_ms").quantile(0.5, "linear").alias("p50"),
        pl.col("latency_ms").quantile(0.9, "linear").alias("p90"),
        pl.col("latency_ms").quantile(0.99, "linear").alias("p99"),
        pl.col("latency_ms").max().alias("max"),
    ).row(0, named=True)
    delays = (
        timed.filter(pl.col("delivered") & pl.col("delivered_at").is_not_null())
        .select(((pl.col("delivered_at") - pl.col("at")).dt.total_milliseconds() / 1000).alias("s"))
        .select(
            pl.col("s").quantile(0.5, "linear").alias("p50"),
            pl.col("s").quantile(0.9, "linear").alias("p90"),
            pl.col("s").max().alias("max"),
        )
        .row(0, named=True)
    )
    return Timing(
        first_at=first,
        last_at=last,
        requests=timed.height,
        duration_s=duration_s,
        average_rate_per_s=timed.height / duration_s if duration_s >= 1 else None,
        peak_rate_per_s=peak * 1000 / window if duration_s * 1000 >= 2 * window else None,
        peak_window_ms=window,
        bin_ms=width,
        latency_ms={k: float(v) for k, v in latency.items() if v is not None},
        delivery_delay_s={k: float(v) for k, v in delays.items() if v is not None},
    )
