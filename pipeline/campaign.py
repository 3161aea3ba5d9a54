"""The campaign as library functions: `prepare_campaign` (read, validate, build payloads), `validate_campaign` and
`run_campaign` (send, then write the results file). They wire the stages together and return data; they never
print. The CLI decides what to show and which exit code to use.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import polars as pl

from pipeline import payload, results, source, validate
from pipeline.limits import Pacer
from pipeline.outcome import FAILED, NOT_ATTEMPTED, SENT, UNKNOWN
from pipeline.sandbox import SandboxServer
from pipeline.send import RunControl, SenderConfig, SendJob, SendOutcome, send_all
from pipeline.spec import CampaignSpec, SandboxSpec


@dataclass(frozen=True)
class PreparedCampaign:
    """Everything known before the first request: the input, each row's validation outcome, and the payloads."""

    spec: CampaignSpec
    frame: pl.DataFrame  # the input as read, with `result_row`
    checked: pl.DataFrame  # result_row, payload fields, result_status (invalid/duplicate/null), result_error
    payloads: pl.DataFrame  # result_row, payload (JSON text), idempotency_key - only rows to send, in input order

    @property
    def rows(self) -> int:
        return self.frame.height

    def count(self, status: str) -> int:
        return int(self.checked.select((pl.col(validate.STATUS) == status).sum()).item())


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    rows: int
    example_rows: list[int]


@dataclass(frozen=True)
class ValidationReport:
    rows: int
    valid: int  # rows that would be sent (first occurrences)
    invalid: int
    duplicates: int
    reasons: list[ReasonCount]
    example_payload: dict[str, Any] | None


def prepare_campaign(spec: CampaignSpec) -> PreparedCampaign:
    """Read and validate the input and build every payload. Raises InputError for an unusable file."""
    frame = source.read_contacts(spec.input, spec.input_format, required=spec.message.columns())
    fields = payload.message_fields(frame, spec.message)
    checked = validate.check_rows(fields, spec.message)
    to_send = checked.filter(pl.col(validate.STATUS).is_null())
    payloads = payload.encode_payloads(to_send, spec.message, campaign=spec.name)
    return PreparedCampaign(spec=spec, frame=frame, checked=checked, payloads=payloads)


def validate_campaign(spec: CampaignSpec) -> tuple[ValidationReport, PreparedCampaign]:
    prepared = prepare_campaign(spec)
    reasons = [
        ReasonCount(reason=r["reason"], rows=r["rows"], example_rows=list(r["example_rows"]))
        for r in validate.reason_counts(prepared.checked).iter_rows(named=True)
    ]
    example = json.loads(prepared.payloads[payload.BODY][0]) if prepared.payloads.height else None
    report = ValidationReport(
        rows=prepared.rows,
        valid=prepared.payloads.height,
        invalid=prepared.count(validate.INVALID),
        duplicates=prepared.count(validate.DUPLICATE),
        reasons=reasons,
        example_payload=example,
    )
    return report, prepared


def validation_outcomes(prepared: PreparedCampaign) -> pl.DataFrame:
    """Per-row outcome of validation alone, in the results format: rows that would be sent are `not_attempted`."""
    return prepared.checked.select(
        pl.col(payload.ROW),
        pl.col(validate.STATUS).fill_null(NOT_ATTEMPTED),
        pl.col(validate.ERROR),
        pl.lit(0).alias("result_attempts"),
    )


def write_validation_results(prepared: PreparedCampaign, path: Path) -> None:
    table = results.assemble_results(prepared.frame, validation_outcomes(prepared))
    results.write_results(table, Path(path))


# --- run ---------------------------------------------------------------------------------------------------------


class ProgressSink(Protocol):
    """Where a run reports progress; the CLI supplies a bar or periodic log lines."""

    def start(self, total: int) -> None: ...
    def update(self, counts: Mapping[str, int]) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    limit: int | None = None
    transport: httpx.AsyncBaseTransport | None = None  # tests inject one; None = a real network client
    progress_interval_s: float = 0.2
    handle_signals: bool = True


@dataclass(frozen=True)
class RunSummary:
    campaign: str
    rows: int
    counts: dict[str, int]
    top_errors: list[tuple[str, int]]
    attempted: int
    wall_s: float
    messages_per_s: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    results_path: str
    dry_run: bool
    aborted_reason: str | None
    interrupted_by: str | None  # "SIGINT" / "SIGTERM"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Outcomes:
    """Columns of per-row outcomes, appended as answers arrive (one task owns it: the event loop's)."""

    def __init__(self, progress: ProgressSink | None) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in _OUTCOME_COLUMNS}
        self.counts: dict[str, int] = {SENT: 0, FAILED: 0, UNKNOWN: 0}
        self.progress = progress

    def add(self, outcome: SendOutcome) -> None:
        c = self.columns
        c["result_row"].append(outcome.row)
        c["result_status"].append(outcome.status)
        c["result_http_status"].append(outcome.http_status)
        c["result_message_id"].append(outcome.message_id)
        c["result_error"].append(outcome.error)
        c["result_attempts"].append(outcome.attempts)
        c["result_sent_at"].append(outcome.sent_at)
        c["result_latency_ms"].append(outcome.latency_ms)
        self.counts[outcome.status] += 1

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.columns, schema={n: results.RESULT_SCHEMA[n] for n in _OUTCOME_COLUMNS})


_OUTCOME_COLUMNS = (
    "result_row",
    "result_status",
    "result_http_status",
    "result_message_id",
    "result_error",
    "result_attempts",
    "result_sent_at",
    "result_latency_ms",
)


def dry_run_path(path: Path) -> Path:
    """Where a dry run writes its results: beside the real file, never over it."""
    return path.with_name(f"{path.stem}.dry-run{path.suffix}")


def run_campaign(
    spec: CampaignSpec, options: RunOptions | None = None, *, progress: ProgressSink | None = None
) -> RunSummary:
    """Validate, send every valid row (unless dry run), write the results file, and summarise."""
    options = options or RunOptions()
    started = time.monotonic()
    prepared = prepare_campaign(spec)
    results_path = dry_run_path(spec.output.results) if options.dry_run else spec.output.results
    results.check_writable(results_path)

    to_send = prepared.payloads
    if options.limit is not None:
        to_send = to_send.head(options.limit)
    outcomes = _Outcomes(progress)
    control = RunControl()
    send_started = time.monotonic()
    if not options.dry_run and to_send.height:
        _send(spec, to_send, outcomes, control, options, progress)
    send_wall_s = time.monotonic() - send_started

    not_attempted_reason = (
        "dry run: not sent"
        if options.dry_run
        else f"not sent: run aborted: {control.abort_reason}"
        if control.abort_reason
        else "not sent: run interrupted"
        if control.interrupt_signal is not None
        else f"not sent: beyond --limit {options.limit}"
    )
    table = _final_outcomes(prepared, outcomes.frame(), not_attempted_reason)
    results.write_results(
        results.assemble_results(prepared.frame, table), results_path, after_sending=outcomes.counts[SENT] > 0
    )
    return _summarise(spec, table, outcomes, control, options, results_path, send_wall_s, started)


def _final_outcomes(prepared: PreparedCampaign, sent: pl.DataFrame, not_attempted_reason: str) -> pl.DataFrame:
    """Every input row's outcome: validation's verdict, the sender's, or not_attempted."""
    checked = prepared.checked.select(
        pl.col(payload.ROW), pl.col(validate.STATUS).alias("check_status"), pl.col(validate.ERROR).alias("check_error")
    )
    merged = checked.join(sent, on=payload.ROW, how="left", maintain_order="left")
    status = pl.coalesce(pl.col("check_status"), pl.col("result_status"), pl.lit(NOT_ATTEMPTED))
    error = (
        pl.when(pl.col("check_status").is_not_null())
        .then(pl.col("check_error"))
        .when(pl.col("result_status").is_not_null())
        .then(pl.col("result_error"))
        .otherwise(pl.lit(not_attempted_reason))
    )
    return merged.with_columns(
        status.alias("result_status"),
        error.alias("result_error"),
        pl.col("result_attempts").fill_null(0),
    ).drop("check_status", "check_error")


def _send(
    spec: CampaignSpec,
    to_send: pl.DataFrame,
    outcomes: _Outcomes,
    control: RunControl,
    options: RunOptions,
    progress: ProgressSink | None,
) -> None:
    sender_id, api_key = spec.api.credentials()
    with contextlib.ExitStack() as stack:
        base_url = spec.api.base_url
        if spec.api.is_sandbox:
            box = spec.api.sandbox or SandboxSpec()
            server = SandboxServer(latency_ms=box.latency_ms, failure_rate=box.failure_rate, seed=box.seed)
            base_url = stack.enter_context(server).url
        send = spec.send
        config = SenderConfig(
            base_url=base_url,
            sender_id=sender_id,
            api_key=api_key,
            timeout_s=spec.api.timeout_s,
            concurrency=send.concurrency,
            max_attempts=send.max_attempts,
            max_retry_s=send.max_retry_s,
            retry_ambiguous=send.retry_ambiguous,
            backoff_base_s=send.backoff_s,
        )
        rate = send.rate_per_s
        # without an explicit burst, allow about one second's worth (at least one request)
        pacer = Pacer(rate_per_s=rate, burst=send.burst or max(1, int(rate or 1)))
        jobs = (
            SendJob(row=row, key=key, body=body.encode())
            for row, body, key in to_send.select(payload.ROW, payload.BODY, payload.KEY).iter_rows()
        )
        if progress is not None:
            progress.start(to_send.height)
        try:
            anyio.run(_send_async, jobs, config, pacer, outcomes, control, options)
        finally:
            if progress is not None:
                progress.update(outcomes.counts)
                progress.finish()


async def _send_async(
    jobs: Iterable[SendJob],
    config: SenderConfig,
    pacer: Pacer,
    outcomes: _Outcomes,
    control: RunControl,
    options: RunOptions,
) -> None:
    async with anyio.create_task_group() as group:
        if options.handle_signals and threading.current_thread() is threading.main_thread():
            group.start_soon(_watch_signals, control, group.cancel_scope, config.timeout_s)
        if outcomes.progress is not None:
            group.start_soon(_report_progress, outcomes, options.progress_interval_s)
        await send_all(jobs, config, on_outcome=outcomes.add, control=control, pacer=pacer, transport=options.transport)
        group.cancel_scope.cancel()


async def _watch_signals(control: RunControl, scope: anyio.CancelScope, grace_s: float) -> None:
    """First SIGINT/SIGTERM: stop taking rows and let requests in flight finish (at most `grace_s` more).
    A second signal, or the grace running out, cancels them: those rows become `unknown`."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if control.interrupt_signal is not None:
                scope.cancel()
                return
            control.interrupt_signal = signum
            control.stop()
            scope.deadline = min(scope.deadline, anyio.current_time() + grace_s)


async def _report_progress(outcomes: _Outcomes, interval_s: float) -> None:
    assert outcomes.progress is not None
    while True:
        await anyio.sleep(interval_s)
        outcomes.progress.update(outcomes.counts)


def _summarise(
    spec: CampaignSpec,
    table: pl.DataFrame,
    outcomes: _Outcomes,
    control: RunControl,
    options: RunOptions,
    results_path: Path,
    send_wall_s: float,
    started: float,
) -> RunSummary:
    counts = dict.fromkeys((SENT, FAILED, validate.INVALID, validate.DUPLICATE, UNKNOWN, NOT_ATTEMPTED), 0)
    for status, n in table.group_by("result_status").len().iter_rows():
        counts[status] = n
    errors = (
        table.filter(pl.col("result_status").is_in([FAILED, UNKNOWN]))
        .group_by("result_error")
        .len()
        .sort(["len", "result_error"], descending=[True, False])
        .head(5)
    )
    latency = outcomes.frame()["result_latency_ms"]
    attempted = latency.len()
    signal_name = signal.Signals(control.interrupt_signal).name if control.interrupt_signal is not None else None
    return RunSummary(
        campaign=spec.name,
        rows=table.height,
        counts=counts,
        top_errors=[(str(e), int(n)) for e, n in errors.iter_rows()],
        attempted=attempted,
        wall_s=round(time.monotonic() - started, 3),
        messages_per_s=round(attempted / send_wall_s, 1) if attempted and send_wall_s > 0 else 0.0,
        latency_p50_ms=_quantile(latency, 0.5),
        latency_p95_ms=_quantile(latency, 0.95),
        results_path=str(results_path),
        dry_run=options.dry_run,
        aborted_reason=control.abort_reason,
        interrupted_by=signal_name,
    )


def _quantile(values: pl.Series, q: float) -> float | None:
    if values.len() == 0:
        return None
    result = values.quantile(q, interpolation="linear")
    return round(float(result), 1) if result is not None else None
