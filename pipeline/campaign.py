"""The campaign as library functions: `prepare_campaign` (read, validate, build payloads), `validate_campaign` and
`run_campaign` (send, then write the results file). They wire the stages together and return data; they never
print. The CLI decides what to show and which exit code to use.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import httpx
import polars as pl

from pipeline import payload, results, source, validate
from pipeline.errors import InputError, OutputError, UsageError
from pipeline.limits import Pacer
from pipeline.merge import manifest_path, write_shard_manifest
from pipeline.outcome import FAILED, NOT_ATTEMPTED, SENT, UNKNOWN, Verdict
from pipeline.outputs import Kind, Output, check_outputs, dry_run_path
from pipeline.sandbox import SandboxServer
from pipeline.send import RunControl, SenderConfig, SendJob, SendOutcome, send_all
from pipeline.shard import Shard
from pipeline.slowdowns import SlowdownWatch
from pipeline.spec import CampaignSpec, SandboxSpec
from pipeline.state import OUTCOME_COLUMNS, PENDING, GroupCommitter, StateStore, StateWriteError, state_path_for


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
    skipped_lines: int = 0  # blank and separator-only lines of the input (not rows)
    notes: list[str] = field(default_factory=list)  # about the input, e.g. unnamed columns left out


@dataclass(frozen=True)
class PreparedBatch:
    """One batch of input rows, checked, with the payloads of the rows to send."""

    frame: pl.DataFrame  # the input rows as read, with `result_row`
    checked: pl.DataFrame  # result_row, idempotency_key, result_status (invalid/duplicate/null), result_error
    payloads: pl.DataFrame  # result_row, payload (JSON text), idempotency_key - rows to send, in input order


def prepared_batches(
    spec: CampaignSpec,
    shard: Shard | None = None,
    *,
    keys: bool = True,
    opened: list[source.ContactSource] | None = None,
) -> Iterator[PreparedBatch]:
    """Read, validate and build payloads batch by batch (only the rows of `shard`, if given). Duplicates are found
    across the whole input. Idempotency keys, the costliest part, are derived only for the rows to send, and only
    when `keys` (validation alone does not need them). Raises InputError for an unusable file."""
    contacts = source.open_contacts(spec.input, spec.input_format, required=spec.message.columns())
    if opened is not None:  # the caller reads the skipped-line count and the notes after the pass
        opened.append(contacts)
    seen = validate.SeenKeys()
    for frame in contacts.batches():
        fields = payload.message_fields(frame, spec.message)
        if shard is not None:  # the shard follows from the key, so every row needs one
            fields = fields.with_columns(payload.idempotency_keys(fields[payload.CONTENT], campaign=spec.name))
            mine = fields.select(shard.selects(pl.col(payload.KEY))).to_series()
            frame, fields = frame.filter(mine), fields.filter(mine)
        checked = seen.mark_duplicates(validate.check_rows(fields, spec.message))
        to_send = checked.filter(pl.col(validate.STATUS).is_null())
        payloads = payload.encode_payloads(to_send, spec.message, campaign=spec.name, keys=keys)
        yield PreparedBatch(
            frame=frame,
            checked=checked.select(payload.ROW, validate.STATUS, validate.ERROR).join(
                payloads.select(payload.ROW, payload.KEY), on=payload.ROW, how="left", maintain_order="left"
            ),
            payloads=payloads,
        )


def prepare_campaign(spec: CampaignSpec, shard: Shard | None = None) -> PreparedCampaign:
    """The whole input prepared in memory at once: for tests and small tools; campaigns stream batches."""
    batches = list(prepared_batches(spec, shard))
    return PreparedCampaign(
        spec=spec,
        frame=pl.concat([b.frame for b in batches]),
        checked=pl.concat([b.checked for b in batches]),
        payloads=pl.concat([b.payloads for b in batches]),
    )


class _ReasonTally:
    """Invalid-row reasons over all batches: counts and the first few example rows of each."""

    def __init__(self, examples: int = 5) -> None:
        self.examples = examples
        self.rows: dict[str, int] = {}
        self.example_rows: dict[str, list[int]] = {}

    def add(self, checked: pl.DataFrame) -> None:
        for reason, rows, example_rows in validate.reason_counts(checked, examples=self.examples).iter_rows():
            self.rows[reason] = self.rows.get(reason, 0) + rows
            kept = self.example_rows.setdefault(reason, [])
            kept.extend(example_rows[: self.examples - len(kept)])

    def report(self) -> list[ReasonCount]:
        ordered = sorted(self.rows.items(), key=lambda item: (-item[1], item[0]))
        return [ReasonCount(reason, n, self.example_rows[reason]) for reason, n in ordered]


def validate_campaign(spec: CampaignSpec, *, output: Path | None = None) -> ValidationReport:
    """Check every row and build every payload, sending nothing; with `output`, write each row's outcome in the
    results format (rows that would be sent are `valid`)."""
    if output is not None:
        check_outputs(_inputs(spec), [Output("--output", output, Kind.RESULTS)])
    writer = results.ResultsWriter(output, csv=results.CsvOptions.of(spec)) if output is not None else None
    rows = valid = invalid = duplicates = 0
    reasons = _ReasonTally()
    example: dict[str, Any] | None = None
    try:
        opened: list[source.ContactSource] = []
        for batch in prepared_batches(spec, keys=False, opened=opened):
            rows += batch.frame.height
            valid += batch.payloads.height
            statuses = batch.checked[validate.STATUS]
            invalid += int((statuses == validate.INVALID).sum())
            duplicates += int((statuses == validate.DUPLICATE).sum())
            reasons.add(batch.checked)
            if example is None and batch.payloads.height:
                example = json.loads(batch.payloads[payload.BODY][0])
            if writer is not None:
                writer.write(results.assemble_results(batch.frame, _final_outcomes(batch, _empty_outcomes(), None)))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    contacts = opened[0]
    return ValidationReport(
        rows, valid, invalid, duplicates, reasons.report(), example, contacts.skipped_blank_lines, list(contacts.notes)
    )


# --- run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStart:
    """What a progress display says when sending begins."""

    command: str  # "run" or "retry"
    campaign: str
    spec_path: str
    input_path: str
    total_rows: int | None  # None when not known before reading (CSV, or a shard's share)


class ProgressSink(Protocol):
    """Where a run reports progress; the CLI supplies a bar or periodic log lines."""

    def start(self, run: RunStart) -> None: ...
    def update(self, counts: Mapping[str, int], pace: str = "") -> None: ...
    def notice(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class RetrySelection:
    """Which rows with an earlier outcome the `retry` command sends again."""

    statuses: frozenset[str] = frozenset({FAILED})
    include_permanent: bool = False  # failed rows the server refused for good (4xx) or that failed authentication
    rows: frozenset[int] | None = None  # result_row positions; None = all


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    limit: int | None = None
    retry: RetrySelection | None = None  # None: a normal run, which sends only rows with no outcome yet
    shard: Shard | None = None  # only this shard's rows, with its own results file and state
    rate: str | None = None  # overrides send.rate for this process (after a shard took its share)
    transport: httpx.AsyncBaseTransport | None = None  # tests inject one; None = a real network client
    progress_interval_s: float = 0.2
    handle_signals: bool = True
    summary_json: Path | None = None  # written by the caller; checked here with the other outputs before any reading


@dataclass(frozen=True)
class RunSummary:
    campaign: str
    shard: str | None  # "shard-0-of-4" for a sharded run
    rows: int
    counts: dict[str, int]
    top_errors: list[tuple[str, int]]
    attempted: int  # rows sent (or tried) by this run
    rate_slowdowns: int  # times a 429 made the sender halve its rate
    server_pauses: int  # times the server asked every worker to wait (Retry-After, X-RateLimit-Reset)
    skipped: int  # rows that already had an outcome from an earlier run and were not sent again
    retry: bool  # the `retry` command (resending chosen rows) rather than a run
    retry_unknown_left: int  # retry: `unknown` rows not resent (they may have been delivered)
    retry_refused_left: int  # retry: rows the server refused for good (4xx, 401/403), not resent
    recovered_in_flight: int  # rows an earlier, killed run left in flight
    wall_s: float
    messages_per_s: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    results_path: str
    skipped_lines: int  # blank and separator-only lines of the input (not rows, no results row)
    input_notes: list[str]  # about the input, e.g. unnamed columns left out of the results
    guarded_cells: int  # results CSV cells written with a `'` before them (output.csv_formula_guard)
    state_path: str | None
    dry_run: bool
    aborted_reason: str | None
    interrupted_by: str | None  # "SIGINT" / "SIGTERM"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    """Live counts of this run, for progress and the summary, and a bounded sample of latencies for percentiles."""

    _SAMPLE = 100_000

    def __init__(self, progress: ProgressSink | None) -> None:
        self.counts: dict[str, int] = {SENT: 0, FAILED: 0, UNKNOWN: 0, "not sent now": 0}
        self.latencies_ms = array("d")
        self.attempted = 0
        self.skipped = 0
        self.retry_unknown_left = 0
        self.retry_refused_left = 0
        self.progress = progress
        self.slowdowns = 0
        self.pauses = 0
        self.input_error: InputError | None = None  # a broken line found while sending
        self.watch: SlowdownWatch | None = None
        self._rng = random.Random(0)

    def add(self, outcome: SendOutcome) -> None:
        self.counts[outcome.status] += 1
        self.attempted += 1
        # reservoir sampling: every latency has the same chance to be kept, in constant memory
        if len(self.latencies_ms) < self._SAMPLE:
            self.latencies_ms.append(outcome.latency_ms)
        else:
            slot = self._rng.randrange(self.attempted)
            if slot < self._SAMPLE:
                self.latencies_ms[slot] = outcome.latency_ms

    def passed(self, rows: int) -> None:
        """Rows read but not sent now (invalid, duplicate, already done): they count towards progress."""
        self.counts["not sent now"] += rows


def state_path(spec: CampaignSpec) -> Path:
    return spec.output.state or state_path_for(spec.output.results, spec.name)


def shard_spec(spec: CampaignSpec, shard: Shard) -> CampaignSpec:
    """The spec a shard runs with: its own results file and state, and 1/N of the campaign's rate (the API's limit
    is per account, so `send.rate` is the total for all shards)."""
    state = state_path(spec)
    check_shard_layout(state, spec.name, shard)
    rate = spec.send.rate_per_s
    send = spec.send if rate is None else spec.send.model_copy(update={"rate": f"{rate / shard.count:.6f}/s"})
    output = spec.output.model_copy(update={"results": shard.path(spec.output.results), "state": shard.path(state)})
    return spec.model_copy(update={"output": output, "send": send})


def check_shard_layout(state: Path, campaign: str, shard: Shard | None) -> None:
    """Refuse to run with a different shard count than earlier runs of the campaign: rows would move to shards whose
    state does not know them, and be sent again."""
    found: set[int] = set()
    if state.exists():
        found.add(1)
    for other in state.parent.glob(f"{state.stem}.shard-*-of-*{state.suffix}"):
        found.add(int(other.stem.rsplit("-of-", 1)[1]))
    count = shard.count if shard is not None else 1
    if found - {count}:
        earlier = ", ".join("no shards" if n == 1 else f"{n} shards" for n in sorted(found))
        raise UsageError(
            f"campaign {campaign!r} was run before with {earlier} (state in {state.parent}); running it now with "
            f"{'no shards' if count == 1 else f'{count} shards'} would send rows again. Hint: keep the shard count, "
            "or give the campaign a new name."
        )


def run_campaign(
    spec: CampaignSpec, options: RunOptions | None = None, *, progress: ProgressSink | None = None
) -> RunSummary:
    """Validate, send every row that has no outcome yet (or the rows `options.retry` selects), write the results
    file, and summarise. A dry run does everything but send, and touches neither the state nor the results file.

    Two passes over the input, batch by batch, keep memory flat: the first validates and sends while it reads (so
    the first request goes out after the first batch, whatever the file's size); the second rebuilds every row's
    outcome from the state and writes the results file."""
    options = options or RunOptions()
    started = time.monotonic()
    if options.shard is not None:
        spec = shard_spec(spec, options.shard)
    if options.rate is not None:
        spec = spec.model_copy(update={"send": spec.send.model_copy(update={"rate": options.rate})})
    check_outputs(_inputs(spec), _run_outputs(spec, options))
    missing = [] if options.dry_run else spec.api.missing_credentials()
    if missing:
        # load_spec(offline=True) lets a spec without credentials through for commands that send nothing
        raise UsageError(f"{spec.spec_path}: api.{missing[0]} is required to send (only --dry-run works without it)")
    if options.dry_run:
        path = dry_run_path(spec.output.results)
        results.check_writable(path)
        with contextlib.ExitStack() as stack:
            # rows an earlier run settled would not be sent again: say so, without taking the campaign's lock
            state = state_path(spec)
            store = stack.enter_context(StateStore(state, spec.name, read_only=True)) if state.exists() else None
            totals = _write_results(spec, options, path, store, None, after_sending=False)
        return _summarise(spec, totals, _Tally(None), RunControl(), options, path, None, (0, 0), 0.0, started)

    # a missing file, a bad header or a missing column fails here, before anything is sent
    contacts = source.open_contacts(spec.input, spec.input_format, required=spec.message.columns())
    results.check_writable(spec.output.results)
    if options.shard is None:
        check_shard_layout(state_path(spec), spec.name, None)
    with StateStore(state_path(spec), spec.name) as store:
        recovered = store.recover_in_flight(resend=spec.send.retry_ambiguous)
        tally = _Tally(progress)
        control = RunControl()
        jobs = _jobs(spec, options, store, tally, control)
        send_started = time.monotonic()
        # a shard's share of the rows is not known before reading them
        total = contacts.total_rows if options.shard is None else None
        _send(spec, jobs, total, store, tally, control, options)
        send_wall_s = time.monotonic() - send_started
        if tally.input_error is not None:
            # the results pass would stop at the same line: keep the state, report the line, and let a rerun on
            # the fixed file finish the campaign (nothing acknowledged is resent)
            broken = tally.input_error
            raise InputError(
                f"{broken} - {tally.counts[SENT]} row(s) before that line were sent; fix the file and run again "
                "(rows already sent are not sent again)",
                after_sending=True,
            )
        reason = (
            f"not sent: run aborted: {control.abort_reason}"
            if control.abort_reason
            else "not sent: run interrupted"
            if control.interrupt_signal is not None
            else f"not sent: beyond --limit {options.limit}"
        )
        with _finish_before_stopping(control, progress, enabled=options.handle_signals):
            totals = _write_results(
                spec, options, spec.output.results, store, reason, after_sending=tally.attempted > 0
            )
    if options.shard is not None:
        write_shard_manifest(spec.output.results, spec.name, options.shard, rows=totals.rows)
    return _summarise(
        spec,
        totals,
        tally,
        control,
        options,
        spec.output.results,
        state_path(spec),
        (tally.skipped, recovered),
        send_wall_s,
        started,
    )


def _inputs(spec: CampaignSpec) -> list[tuple[str, Path]]:
    return [("input.path", spec.input.path), ("the job spec", spec.spec_path)]


def _run_outputs(spec: CampaignSpec, options: RunOptions) -> list[Output]:
    """Every file a run (as `options` shape it) writes: checked together before anything is read or sent."""
    if options.dry_run:
        outputs = [Output("the dry run's results", dry_run_path(spec.output.results), Kind.RESULTS)]
    else:
        state = state_path(spec)
        outputs = [
            Output(
                "output.results" if options.shard is None else "the shard's results", spec.output.results, Kind.RESULTS
            ),
            Output("output.state" if options.shard is None else "the shard's state", state, Kind.STATE),
            Output("the state's lock file", state.with_name(state.name + ".lock"), Kind.OWN),
        ]
        if options.shard is not None:
            outputs.append(Output("the shard manifest", manifest_path(spec.output.results), Kind.OWN))
    if options.summary_json is not None:
        outputs.append(Output("--summary-json", options.summary_json, Kind.SUMMARY))
    return outputs


@contextlib.contextmanager
def _finish_before_stopping(control: RunControl, progress: ProgressSink | None, *, enabled: bool) -> Iterator[None]:
    """While the results file is written after sending, a first SIGINT/SIGTERM is noted (the exit code still says
    the run was interrupted) and the file is finished, so every row is accounted for; a second one stops at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, _frame: object) -> None:
        if control.interrupt_signal is not None and control.stopping_for_results:
            raise KeyboardInterrupt
        control.interrupt_signal = control.interrupt_signal or signum
        control.stopping_for_results = True
        if progress is not None:
            progress.notice(f"{signal.Signals(signum).name}: finishing the results file first (again to stop now)")

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _jobs(
    spec: CampaignSpec, options: RunOptions, store: StateStore, tally: _Tally, control: RunControl
) -> Iterator[SendJob]:
    """The rows to send, read batch by batch as the workers take them: rows without an outcome yet (or, for
    `retry`, the rows it selects), at most `options.limit` of them.

    The file is checked as it is read (no full pass before the first request), so a broken line far into it is
    found only when its block comes: then the run stops taking rows, lets requests in flight finish, and reports
    the line (see run_campaign)."""
    left = options.limit
    batches = prepared_batches(spec, options.shard)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except InputError as exc:
            tally.input_error = exc
            control.abort(f"the input is broken further on: {exc}")
            return
        recorded = store.lookup(batch.payloads[payload.KEY].to_list())
        chosen, selected = _select(batch.payloads, recorded, options)
        tally.skipped += selected.skipped
        tally.retry_unknown_left += selected.unknown_left
        tally.retry_refused_left += selected.refused_left
        tally.passed(batch.frame.height - chosen.height)
        if left is not None:
            chosen = chosen.head(left)
            left -= chosen.height
        for row, body, key in chosen.select(payload.ROW, payload.BODY, payload.KEY).iter_rows():
            yield SendJob(row=row, key=key, body=body.encode())
        if left == 0:
            return


@dataclass
class _Totals:
    """What the results pass counted: rows, statuses, top errors."""

    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    guarded_cells: int = 0
    skipped_lines: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, table: pl.DataFrame) -> None:
        self.rows += table.height
        for status, n in table.group_by("result_status").len().iter_rows():
            self.counts[status] = self.counts.get(status, 0) + n
        problems = table.filter(pl.col("result_status").is_in([FAILED, UNKNOWN]))
        for error, n in problems.group_by("result_error").len().iter_rows():
            if len(self.errors) < _MAX_DISTINCT_ERRORS or error in self.errors:
                self.errors[str(error)] += n


_MAX_DISTINCT_ERRORS = 10_000


def _write_results(
    spec: CampaignSpec,
    options: RunOptions,
    path: Path,
    store: StateStore | None,
    not_sent_reason: str | None,
    *,
    after_sending: bool,
) -> _Totals:
    """Write every row's outcome; rows with none are `not_attempted` with `not_sent_reason`, or, when it is None
    (a dry run), `valid`."""
    totals = _Totals()
    writer = results.ResultsWriter(path, after_sending=after_sending, csv=results.CsvOptions.of(spec))
    try:
        opened: list[source.ContactSource] = []
        for batch in prepared_batches(spec, options.shard, keys=store is not None, opened=opened):
            recorded = store.lookup(batch.payloads[payload.KEY].to_list()) if store is not None else _empty_outcomes()
            table = _final_outcomes(batch, recorded, not_sent_reason)
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


def _select(payloads: pl.DataFrame, recorded: pl.DataFrame, options: RunOptions) -> tuple[pl.DataFrame, _Selected]:
    """The payload rows to send now, and how many were left alone: rows that already have an outcome (a normal
    run), or - for `retry` - rows the selection leaves out because resending them could text a person twice
    (`unknown`) or would be refused again (failed for good)."""
    joined = payloads.join(
        recorded.select(payload.KEY, "result_status", "result_verdict"),
        on=payload.KEY,
        how="left",
        maintain_order="left",
    )
    fresh = pl.col("result_status").is_null() | (pl.col("result_status") == PENDING)
    if options.retry is None:
        chosen = joined.filter(fresh)
        return chosen.select(payload.ROW, payload.BODY, payload.KEY), _Selected(skipped=joined.height - chosen.height)
    selection = options.retry
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
    chosen = joined.filter(wanted & in_rows)
    return chosen.select(payload.ROW, payload.BODY, payload.KEY), _Selected(
        unknown_left=int(counts[0]), refused_left=int(counts[1])
    )


@dataclass(frozen=True)
class _Selected:
    skipped: int = 0  # already had an outcome (a normal run)
    unknown_left: int = 0  # retry: `unknown` rows not resent (no --include-unknown)
    refused_left: int = 0  # retry: rows the server refused for good, not resent (no --include-permanent)


def _empty_outcomes() -> pl.DataFrame:
    return pl.DataFrame(schema=OUTCOME_COLUMNS)


def _final_outcomes(batch: PreparedBatch, recorded: pl.DataFrame, not_sent_reason: str | None) -> pl.DataFrame:
    """Every row's outcome: validation's verdict, the recorded delivery outcome, or - for rows with neither -
    `not_attempted` with `not_sent_reason`, or `valid` when that is None (commands that send nothing)."""
    checked = batch.checked.select(
        pl.col(payload.ROW),
        pl.col(payload.KEY),
        pl.col(validate.STATUS).alias("check_status"),
        pl.col(validate.ERROR).alias("check_error"),
    )
    delivered = recorded.filter(pl.col("result_status").is_in([SENT, FAILED, UNKNOWN]))
    merged = checked.join(delivered, on=payload.KEY, how="left", maintain_order="left")
    unsent = NOT_ATTEMPTED if not_sent_reason is not None else validate.VALID
    status = pl.coalesce(pl.col("check_status"), pl.col("result_status"), pl.lit(unsent))
    error = (
        pl.when(pl.col("check_status").is_not_null())
        .then(pl.col("check_error"))
        .when(pl.col("result_status").is_not_null())
        .then(pl.col("result_error"))
        .otherwise(pl.lit(not_sent_reason, dtype=pl.String))
    )
    # a duplicate row carries no delivery outcome of its own: its original's is on the original's row
    is_duplicate = pl.col("check_status").is_not_null()
    return merged.with_columns(
        status.alias("result_status"),
        error.alias("result_error"),
        *(
            pl.when(is_duplicate).then(None).otherwise(pl.col(c)).alias(c)
            for c in ("result_http_status", "result_message_id", "result_sent_at", "result_latency_ms")
        ),
        pl.when(is_duplicate).then(0).otherwise(pl.col("result_attempts").fill_null(0)).alias("result_attempts"),
    ).drop("check_status", "check_error", payload.KEY, "result_verdict")


def _send(
    spec: CampaignSpec,
    jobs: Iterator[SendJob],
    total_rows: int | None,
    store: StateStore,
    tally: _Tally,
    control: RunControl,
    options: RunOptions,
) -> None:
    sender_id, api_key = spec.api.credentials()
    with contextlib.ExitStack() as stack:
        base_url = spec.api.base_url
        if spec.api.is_sandbox:
            box = spec.api.sandbox or SandboxSpec()
            server = SandboxServer(
                latency_ms=box.latency_ms, failure_rate=box.failure_rate, seed=box.seed, count_keys=False
            )
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
            ca_bundle=str(spec.api.ca_bundle) if spec.api.ca_bundle is not None else None,
        )
        rate = send.rate_per_s
        # without an explicit burst, allow about one second's worth (at least one request)
        progress = tally.progress
        if progress is not None:
            tally.watch = SlowdownWatch(progress.notice, progress.warn)
        pacer = Pacer(
            rate_per_s=rate,
            burst=send.burst or max(1, int(rate or 1)),
            on_event=tally.watch.on_event if tally.watch is not None else None,
        )
        if progress is not None:
            command = "retry" if options.retry is not None else "run"
            progress.start(RunStart(command, spec.name, str(spec.spec_path), str(spec.input.path), total_rows))
        try:
            anyio.run(_send_async, jobs, config, pacer, store, tally, control, options)
        finally:
            tally.slowdowns, tally.pauses = pacer.slowdowns, pacer.pauses
            if tally.progress is not None:
                tally.progress.update(tally.counts)
                tally.progress.finish()


async def _send_async(
    jobs: Iterable[SendJob],
    config: SenderConfig,
    pacer: Pacer,
    store: StateStore,
    tally: _Tally,
    control: RunControl,
    options: RunOptions,
) -> None:
    committer = GroupCommitter(store)

    def on_outcome(outcome: SendOutcome) -> None:
        tally.add(outcome)
        committer.record(
            (
                outcome.key,
                outcome.status,
                outcome.verdict.value,
                outcome.http_status,
                outcome.message_id,
                outcome.error,
                outcome.attempts,
                outcome.sent_at,
                outcome.latency_ms,
            )
        )

    async def before_send(job: SendJob) -> bool:
        try:
            await committer.before_send(job.key)
        except StateWriteError as exc:
            control.abort(str(exc))
            return False
        return True

    try:
        async with anyio.create_task_group() as group:
            if options.handle_signals and threading.current_thread() is threading.main_thread():
                group.start_soon(_watch_signals, control, group.cancel_scope, config.timeout_s, tally.progress)
            if tally.progress is not None:
                group.start_soon(_report_progress, tally, options.progress_interval_s, pacer, control)
            group.start_soon(committer.run)
            await send_all(
                jobs,
                config,
                on_outcome=on_outcome,
                before_send=before_send,
                control=control,
                pacer=pacer,
                transport=options.transport,
            )
            group.cancel_scope.cancel()
    finally:
        committer.flush()
    if committer.error is not None:
        raise OutputError(f"{committer.error}. Hint: free disk space and run again.", after_sending=True)


async def _watch_signals(
    control: RunControl, scope: anyio.CancelScope, grace_s: float, progress: ProgressSink | None
) -> None:
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
            if progress is not None:
                progress.notice(
                    f"{signal.Signals(signum).name}: sending no more rows; waiting up to {grace_s:g} s for requests "
                    "in flight (press Ctrl-C again to stop at once)"
                )


async def _report_progress(tally: _Tally, interval_s: float, pacer: Pacer, control: RunControl) -> None:
    assert tally.progress is not None
    assert tally.watch is not None
    while True:
        await anyio.sleep(interval_s)
        pace = tally.watch.tick(sum(tally.counts.values()), pacer, control)
        tally.progress.update(tally.counts, pace)


def _summarise(
    spec: CampaignSpec,
    totals: _Totals,
    tally: _Tally,
    control: RunControl,
    options: RunOptions,
    results_path: Path,
    state_file: Path | None,
    skipped_recovered: tuple[int, int],
    send_wall_s: float,
    started: float,
) -> RunSummary:
    counts = dict.fromkeys((SENT, FAILED, validate.INVALID, validate.DUPLICATE, UNKNOWN, NOT_ATTEMPTED), 0)
    counts.update(totals.counts)
    top_errors = sorted(totals.errors.items(), key=lambda item: (-item[1], item[0]))[:5]
    latency = pl.Series(tally.latencies_ms, dtype=pl.Float64)
    signal_name = signal.Signals(control.interrupt_signal).name if control.interrupt_signal is not None else None
    return RunSummary(
        campaign=spec.name,
        shard=options.shard.label if options.shard is not None else None,
        rows=totals.rows,
        counts=counts,
        top_errors=top_errors,
        attempted=tally.attempted,
        rate_slowdowns=tally.slowdowns,
        server_pauses=tally.pauses,
        skipped=skipped_recovered[0],
        retry=options.retry is not None,
        retry_unknown_left=tally.retry_unknown_left,
        retry_refused_left=tally.retry_refused_left,
        recovered_in_flight=skipped_recovered[1],
        wall_s=round(time.monotonic() - started, 3),
        messages_per_s=round(tally.attempted / send_wall_s, 1) if tally.attempted and send_wall_s > 0 else 0.0,
        latency_p50_ms=_quantile(latency, 0.5),
        latency_p95_ms=_quantile(latency, 0.95),
        results_path=str(results_path),
        skipped_lines=totals.skipped_lines,
        input_notes=totals.notes,
        guarded_cells=totals.guarded_cells,
        state_path=str(state_file) if state_file is not None else None,
        dry_run=options.dry_run,
        aborted_reason=control.abort_reason,
        interrupted_by=signal_name,
    )


def _quantile(values: pl.Series, q: float) -> float | None:
    if values.len() == 0:
        return None
    result = values.quantile(q, interpolation="linear")
    return round(float(result), 1) if result is not None else None
