"""`run_campaign`: check outputs, send, write the results file and summarise; sharding and the run summary."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import api, objects, payload, results, source, validate
from pipeline.campaign.caps import check_cap
from pipeline.campaign.endpoint import api_endpoint, checked_templates
from pipeline.campaign.guards import Guards, utc_text
from pipeline.campaign.options import ProgressSink, RunOptions
from pipeline.campaign.outcomes import Totals, final_outcomes, write_results
from pipeline.campaign.prepare import input_files
from pipeline.campaign.sending import Tally, rows_to_send, send_rows
from pipeline.campaign.test_send import TestSend, choose_test_rows, parse_test_numbers
from pipeline.campaign.waiting import wait_for_window
from pipeline.errors import InputError, UsageError
from pipeline.merge import manifest_path, write_shard_manifest
from pipeline.outcome import FAILED, NOT_ATTEMPTED, SENT, UNKNOWN
from pipeline.outputs import Kind, Output, check_outputs, dry_run_path, server_dry_run_path, test_send_path
from pipeline.send import KEY_RESEND_WINDOW_S, RunControl
from pipeline.shard import Shard
from pipeline.spec import CampaignSpec
from pipeline.state import StateStore, earlier_state, open_state, shard_counts, state_path_for
from pipeline.state_location import PostgresState, StateLocation, shard_location


@dataclass(frozen=True)
class RunSummary:
    campaign: str
    api_version: str  # v1, v2 or v3
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
    recovered_resent: bool  # ...sent again under their keys (send.retry_ambiguous), rather than left `unknown`
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
    server_dry_run: bool  # v3 rows sent with "sandbox": true: checked by the server, sent to nobody
    test_send: bool  # v3 --test-to: the first valid rows' messages went to the test numbers, not the campaign's
    template_check: str | None  # v3: the templates checked with the API before the first send
    next_window_opens: str | None  # send.window: when the first deferred row's window opens (ISO 8601, UTC)
    aborted_reason: str | None
    interrupted_by: str | None  # "SIGINT" / "SIGTERM"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def state_path(spec: CampaignSpec) -> StateLocation:
    """Where the campaign's state is: output.state (a SQLite file or a PostgreSQL URL) or the default file."""
    return spec.output.state or state_path_for(spec.output.results, spec.name)


def shard_spec(spec: CampaignSpec, shard: Shard) -> CampaignSpec:
    """The spec a shard runs with: its own results file and state, and 1/N of the campaign's rate (the API's limit
    is per account, so `send.rate` is the total for all shards)."""
    state = state_path(spec)
    check_shard_layout(state, spec.name, shard)
    rate = spec.send.rate_per_s
    send = spec.send if rate is None else spec.send.model_copy(update={"rate": f"{rate / shard.count:.6f}/s"})
    output = spec.output.model_copy(
        update={"results": shard.path(spec.output.results), "state": shard_location(state, shard)}
    )
    return spec.model_copy(update={"output": output, "send": send})


def check_shard_layout(state: StateLocation, campaign: str, shard: Shard | None) -> None:
    """Refuse to run with a different shard count than earlier runs of the campaign: rows would move to shards whose
    state does not know them, and be sent again."""
    found = shard_counts(state, campaign)
    count = shard.count if shard is not None else 1
    if found - {count}:
        where = state if isinstance(state, PostgresState) else state.parent
        earlier = ", ".join("no shards" if n == 1 else f"{n} shards" for n in sorted(found))
        raise UsageError(
            f"campaign {campaign!r} was run before with {earlier} (state in {where}); running it now with "
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
    if options.server_dry_run:
        _check_server_dry_run(spec, options)
    test_numbers: list[str] = []
    if options.test_to:
        _check_test_send(spec, options)
        test_numbers = parse_test_numbers(",".join(options.test_to), default_region=spec.message.default_region)
    if options.wait and (options.dry_run or options.server_dry_run or options.test_to or spec.send.window is None):
        raise UsageError(
            "--wait sends deferred rows when their sending hours open: it needs send.window, and goes neither with "
            "--dry-run, --server-dry-run nor --test-to"
        )
    check_outputs(input_files(spec), _run_outputs(spec, options))
    missing = [] if options.dry_run else spec.api.missing_credentials()
    if missing:
        # load_spec(offline=True) lets a spec without credentials through for commands that send nothing
        raise UsageError(f"{spec.spec_path}: api.{missing[0]} is required to send (only --dry-run works without it)")
    if options.dry_run:
        path = dry_run_path(spec.output.results)
        results.check_writable(path)
        guards = Guards.of(spec, options.clock())
        # rows an earlier run settled would not be sent again: say so, without taking the campaign's lock
        with earlier_state(state_path(spec), spec.name) as store:
            check_cap(spec, options, store, guards)
            totals = write_results(spec, options, path, store, None, after_sending=False, guards=guards)
        return _summarise(
            spec, totals, Tally(None), RunControl(), options, path, None, (0, 0), 0.0, started, guards=guards
        )

    with contextlib.ExitStack() as stack:
        if options.server_dry_run or options.test_to:
            # a state of its own, thrown away after: a rehearsal or a test send never marks a row of the campaign
            # as sent
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sentdm-rehearsal-")))
            results_path = (test_send_path if options.test_to else server_dry_run_path)(spec.output.results)
            output = spec.output.model_copy(update={"results": results_path, "state": scratch / "state.sqlite"})
            spec = spec.model_copy(update={"output": output})
        # a missing file, a bad header or a missing column fails here, before anything is sent
        contacts = source.open_contacts(spec.input, spec.input_format, required=spec.input_columns())
        results.check_writable(spec.output.results)
        if options.shard is None and not options.server_dry_run and not options.test_to:
            check_shard_layout(state_path(spec), spec.name, None)
        # a suppression list that cannot be read stops the run here, before anything is sent; a test send goes to
        # the team's own numbers, and a rehearsal to nobody, whatever the hour
        guards = None if options.test_to else Guards.of(spec, options.clock(), hours=not options.server_dry_run)
        if guards is not None and progress is not None:
            for note in guards.notes():
                progress.warn(note)
        base_url = stack.enter_context(api_endpoint(spec))
        # v3: every template exists, is approved and has its variables mapped - or nothing is sent (exit 2)
        templates = checked_templates(spec, base_url)
        if templates is not None and progress is not None:
            for warning in templates.warnings:
                progress.warn(warning)
        store = stack.enter_context(open_state(state_path(spec), spec.name))
        # where the server keeps keys (v3: 24 h), a row is resent with its key only while the server knows it: its
        # retries too (up to send.max_retry_s) must end within 23 hours of its first attempt
        keeps_keys = api.generation(spec.api.version).keeps_keys
        window = max(KEY_RESEND_WINDOW_S - spec.send.max_retry_s, 0.0) if keeps_keys else None
        if test_numbers:
            recovered = 0
        else:
            check_cap(spec, options, store, guards)
            recovered = store.recover_in_flight(resend=spec.retry_ambiguous, resend_window_s=window)
        tally = Tally(progress)
        control = RunControl()
        declared = templates.declared if templates is not None else None
        test = choose_test_rows(spec, test_numbers, declared=declared) if test_numbers else None
        send_started = time.monotonic()
        # a shard's share of the rows is not known before reading them
        total = len(test.jobs) if test is not None else contacts.total_rows if options.shard is None else None
        while True:
            jobs = (
                iter(test.jobs)
                if test is not None
                else rows_to_send(spec, options, store, tally, control, declared, guards)
            )
            send_rows(spec, base_url, jobs, total, store, tally, control, options)
            if not options.wait or guards is None or tally.next_opening is None or control.stopping:
                break
            if tally.input_error is not None or (options.limit is not None and tally.attempted >= options.limit):
                break
            if not wait_for_window(tally.next_opening, tally.deferred, options, control, progress):
                break
            guards = guards.at(options.clock())
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
            if test is not None:
                totals = _write_test_results(spec, test, store, reason)
            else:
                totals = write_results(
                    spec, options, spec.output.results, store, reason, after_sending=tally.attempted > 0, guards=guards
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
        None if options.server_dry_run or options.test_to else state_path(spec),
        (tally.skipped, recovered),
        send_wall_s,
        started,
        templates.describe() if templates is not None else None,
        guards=guards,
        next_opening=tally.next_opening,
    )


def _check_server_dry_run(spec: CampaignSpec, options: RunOptions) -> None:
    if spec.api.version != "v3":
        raise UsageError(
            f"{spec.spec_path}: --server-dry-run needs api.version v3 ({spec.api.version} has no server-side dry "
            "run). Hint: use --dry-run, which checks everything locally."
        )
    if options.dry_run or options.retry is not None or options.shard is not None:
        raise UsageError("--server-dry-run goes alone: not with --dry-run, --shard or the retry command")


def _check_test_send(spec: CampaignSpec, options: RunOptions) -> None:
    if spec.api.version != "v3":
        raise UsageError(
            f"{spec.spec_path}: --test-to needs api.version v3 (it addresses phone numbers; {spec.api.version} "
            "addresses contact ids)"
        )
    if options.dry_run or options.server_dry_run or options.retry is not None or options.shard is not None:
        raise UsageError("--test-to goes alone: not with --dry-run, --server-dry-run, --shard or the retry command")


def _write_test_results(spec: CampaignSpec, test: TestSend, store: StateStore, reason: str) -> Totals:
    """The test send's results file: one row per test message, the input row it was made from and the number it
    went to (`result_to`)."""
    recorded = store.lookup(test.batch.checked[payload.KEY].to_list())
    table = final_outcomes(test.batch, recorded, reason)
    totals = Totals()
    totals.add(table)
    writer = results.ResultsWriter(spec.output.results, after_sending=True, csv=results.CsvOptions.of(spec))
    try:
        writer.write(results.assemble_results(test.batch.frame, table))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    totals.guarded_cells = writer.guarded_cells
    return totals


def _run_outputs(spec: CampaignSpec, options: RunOptions) -> list[Output]:
    """Every file a run (as `options` shape it) writes: checked together before anything is read or sent."""
    if options.dry_run:
        outputs = [Output("the dry run's results", dry_run_path(spec.output.results), Kind.RESULTS)]
    elif options.server_dry_run:
        outputs = [Output("the server dry run's results", server_dry_run_path(spec.output.results), Kind.RESULTS)]
    elif options.test_to:
        outputs = [Output("the test send's results", test_send_path(spec.output.results), Kind.RESULTS)]
    else:
        state = state_path(spec)
        outputs = [
            Output(
                "output.results" if options.shard is None else "the shard's results", spec.output.results, Kind.RESULTS
            ),
        ]
        if isinstance(state, Path):  # a PostgreSQL state is no file, and its lock lives in the database
            outputs += [
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


def _summarise(
    spec: CampaignSpec,
    totals: Totals,
    tally: Tally,
    control: RunControl,
    options: RunOptions,
    results_path: Path,
    state_file: StateLocation | None,
    skipped_recovered: tuple[int, int],
    send_wall_s: float,
    started: float,
    template_check: str | None = None,
    *,
    guards: Guards | None = None,
    next_opening: datetime | None = None,
) -> RunSummary:
    # a server dry run sent nothing: what the server accepted is `valid` (so the results pass counted it)
    accepted = validate.VALID if options.server_dry_run else SENT
    counts = dict.fromkeys((accepted, FAILED, validate.INVALID, validate.DUPLICATE, UNKNOWN, NOT_ATTEMPTED), 0)
    if guards is not None and guards.suppressed is not None:
        counts[validate.SUPPRESSED] = 0
    if guards is not None and guards.hours:
        counts[validate.DEFERRED] = 0
    counts.update(totals.counts)
    top_errors = sorted(totals.errors.items(), key=lambda item: (-item[1], item[0]))[:5]
    latency = pl.Series(tally.latencies_ms, dtype=pl.Float64)
    signal_name = signal.Signals(control.interrupt_signal).name if control.interrupt_signal is not None else None
    return RunSummary(
        campaign=spec.name,
        api_version=spec.api.version,
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
        recovered_resent=spec.retry_ambiguous,
        wall_s=round(time.monotonic() - started, 3),
        messages_per_s=round(tally.attempted / send_wall_s, 1) if tally.attempted and send_wall_s > 0 else 0.0,
        latency_p50_ms=_quantile(latency, 0.5),
        latency_p95_ms=_quantile(latency, 0.95),
        results_path=objects.display(results_path),
        skipped_lines=totals.skipped_lines,
        input_notes=totals.notes,
        guarded_cells=totals.guarded_cells,
        state_path=str(state_file) if state_file is not None else None,
        dry_run=options.dry_run,
        server_dry_run=options.server_dry_run,
        test_send=bool(options.test_to),
        template_check=template_check,
        next_window_opens=utc_text(next_opening) if counts.get(validate.DEFERRED) else None,
        aborted_reason=control.abort_reason,
        interrupted_by=signal_name,
    )


def _quantile(values: pl.Series, q: float) -> float | None:
    if values.len() == 0:
        return None
    result = values.quantile(q, interpolation="linear")
    return round(float(result), 1) if result is not None else None
