"""The sending pass: rows read as workers take them, sent under the pacer, outcomes committed to the state, progress
and signals watched while it runs."""

from __future__ import annotations

import random
import signal
import threading
from array import array
from collections.abc import Iterable, Iterator
from datetime import datetime

import anyio
import polars as pl

from pipeline import api, objects, payload
from pipeline.campaign.broadcast import Broadcasts, resumed
from pipeline.campaign.guards import Guards
from pipeline.campaign.options import ProgressSink, RunOptions, RunStart
from pipeline.campaign.outcomes import PENDING_FLAG, select_rows
from pipeline.campaign.prepare import prepared_batches
from pipeline.errors import InputError, OutputError
from pipeline.limits import Pacer
from pipeline.outcome import FAILED, SENT, UNKNOWN
from pipeline.send import RunControl, SenderConfig, SendJob, SendOutcome, send_all
from pipeline.slowdowns import SlowdownWatch
from pipeline.spec import CampaignSpec
from pipeline.state import GroupCommitter, InFlightRequest, StateStore, StateWriteError


class Tally:
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
        self.deferred = 0  # rows left for their sending hours in the last pass
        self.next_opening: datetime | None = None  # the first moment one of them may go (UTC)
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


def rows_to_send(
    spec: CampaignSpec,
    options: RunOptions,
    store: StateStore,
    tally: Tally,
    control: RunControl,
    declared: payload.Declared = None,
    guards: Guards | None = None,
) -> Iterator[SendJob]:
    """The rows to send, read batch by batch as the workers take them: rows without an outcome yet (or, for
    `retry`, the rows it selects), at most `options.limit` of them.

    The file is checked as it is read (no full pass before the first request), so a broken line far into it is
    found only when its block comes: then the run stops taking rows, lets requests in flight finish, and reports
    the line (see run_campaign)."""
    left = options.limit
    batches = prepared_batches(spec, options.shard, declared=declared, rehearsal=options.server_dry_run, guards=guards)
    tally.deferred, tally.next_opening = 0, None
    broadcasts = Broadcasts(spec) if spec.send.batch_recipients > 1 else None
    resent: set[str] = set()
    if broadcasts is not None and options.retry is None:
        # broadcasts an earlier run died with go first, exactly as they were; their rows are not grouped anew
        for request in store.pending_requests():
            resent.update(key for key, _ in request.members)
            yield resumed(request)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            if broadcasts is not None:
                yield from broadcasts.rest()
            return
        except InputError as exc:
            tally.input_error = exc
            control.abort(f"the input is broken further on: {exc}")
            return
        recorded = store.lookup(batch.payloads[payload.KEY].to_list())
        chosen, selected = select_rows(batch.payloads, recorded, options)
        tally.skipped += selected.skipped
        tally.retry_unknown_left += selected.unknown_left
        tally.retry_refused_left += selected.refused_left
        tally.deferred += selected.deferred
        if selected.next_opening is not None:
            tally.next_opening = min(tally.next_opening or selected.next_opening, selected.next_opening)
        tally.passed(batch.frame.height - chosen.height)
        if resent:  # already on their way again, in the broadcasts resumed above (counted by their outcomes)
            chosen = chosen.filter(~pl.col(payload.KEY).is_in(list(resent)))
        if left is not None:
            chosen = chosen.head(left)
            left -= chosen.height
        if broadcasts is not None:
            yield from broadcasts.jobs(chosen)
        else:
            # a row an earlier run sent and lost the answer to (pending after a crash, or `unknown` picked by
            # `retry`) may have been delivered already: failing now must not report it `failed`
            for row, body, key, earlier in chosen.select(
                payload.ROW, payload.BODY, payload.KEY, PENDING_FLAG
            ).iter_rows():
                yield SendJob(row=row, key=key, body=body.encode(), maybe_delivered=earlier)
        if left == 0:
            if broadcasts is not None:
                yield from broadcasts.rest()
            return


def send_rows(
    spec: CampaignSpec,
    base_url: str,
    jobs: Iterator[SendJob],
    total_rows: int | None,
    store: StateStore,
    tally: Tally,
    control: RunControl,
    options: RunOptions,
) -> None:
    sender_id, api_key = spec.api.credentials()
    send = spec.send
    config = SenderConfig(
        base_url=base_url,
        sender_id=sender_id,  # a generation that does not use it (v3) sends no x-sender-id
        api_key=api_key,
        generation=api.generation(spec.api.version),
        profile_id=spec.api.profile_id or "",
        timeout_s=spec.api.timeout_s,
        concurrency=send.concurrency,
        max_attempts=send.max_attempts,
        max_retry_s=send.max_retry_s,
        retry_ambiguous=spec.retry_ambiguous,
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
        progress.start(RunStart(command, spec.name, str(spec.spec_path), objects.display(spec.input.path), total_rows))
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
    tally: Tally,
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
        request = None
        if job.members:
            members = [(key, number) for _, key, number in job.members]
            request = InFlightRequest(job.key, job.body.decode(), members)
        try:
            await committer.before_send(job.key, request)
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
        raise OutputError(
            f"{committer.error}. Hint: make the state writable again (free disk space; for a PostgreSQL state, check "
            "the database is up and reachable) and run again: nothing acknowledged is sent twice.",
            after_sending=True,
        )


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


async def _report_progress(tally: Tally, interval_s: float, pacer: Pacer, control: RunControl) -> None:
    assert tally.progress is not None
    assert tally.watch is not None
    while True:
        await anyio.sleep(interval_s)
        pace = tally.watch.tick(sum(tally.counts.values()), pacer, control)
        tally.progress.update(tally.counts, pace)
