"""What a person or a log sees while a run goes and when it ends: a tqdm bar on a terminal, a progress line every few
seconds otherwise (so cron and Airflow logs show the run is alive), and the end-of-run summary text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from tqdm import tqdm

from pipeline.campaign import RunStart, RunSummary
from pipeline.campaign.track import TrackSummary


def _done(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


class BarProgress:
    """A tqdm bar: rows/s, sent, failed."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm[Any] | None = None

    def start(self, run: RunStart) -> None:
        print(_describe_start(run), file=self._stream, flush=True)
        self._bar = tqdm(total=run.total_rows, file=self._stream, unit="row", dynamic_ncols=True, smoothing=0.1)

    def update(self, counts: Mapping[str, int], pace: str = "") -> None:
        if self._bar is None:
            return
        self._bar.update(_done(counts) - self._bar.n)
        postfix: dict[str, object] = {"sent": counts.get("sent", 0), "failed": counts.get("failed", 0)}
        if pace:
            postfix["pace"] = pace
        self._bar.set_postfix(postfix, refresh=False)

    def warn(self, message: str) -> None:
        self.notice(f"warning: {message}")

    def notice(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            print(message, file=self._stream, flush=True)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class LogProgress:
    """One line every `every_s` seconds, for logs that are not terminals."""

    def __init__(self, stream: TextIO, *, every_s: float = 5.0) -> None:
        self._stream = stream
        self._every_s = every_s
        self._total: int | None = None
        self._started = 0.0
        self._last = 0.0

    def start(self, run: RunStart) -> None:
        self._total = run.total_rows
        self._started = self._last = time.monotonic()
        self._begin(run)

    def update(self, counts: Mapping[str, int], pace: str = "") -> None:
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            done = _done(counts)
            self._progress(done, done / (now - self._started) if now > self._started else 0.0, counts, pace)

    def notice(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self._stream, flush=True)

    def finish(self) -> None:
        return

    def _begin(self, run: RunStart) -> None:
        print(_describe_start(run), file=self._stream, flush=True)

    def _progress(self, done: int, per_s: float, counts: Mapping[str, int], pace: str) -> None:
        parts = ", ".join(f"{k} {v}" for k, v in counts.items())
        of = f"/{self._total}" if self._total is not None else ""
        slow = f" - {pace}" if pace else ""
        print(f"progress: {done}{of} rows ({per_s:.0f}/s): {parts}{slow}", file=self._stream, flush=True)


def _describe_start(run: RunStart) -> str:
    verb = "retrying" if run.command == "retry" else "sending"
    rows = f"{run.total_rows} row(s)" if run.total_rows is not None else "rows"
    how = "" if run.total_rows is not None else " as they are read (the count is known at the end)"
    return f"{verb} campaign {run.campaign}: {rows} from {run.input_path}{how}"


def emit_json(stream: TextIO, event: str, **fields: Any) -> None:
    """One JSON object on one line: `{"time": ..., "event": ..., ...fields}`."""
    record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), "event": event}
    record.update(fields)
    print(json.dumps(record, ensure_ascii=False, default=str), file=stream, flush=True)


class JsonProgress(LogProgress):
    """`--log-format json`: the same events as LogProgress, as JSON lines."""

    def notice(self, message: str) -> None:
        emit_json(self._stream, "notice", message=message)

    def warn(self, message: str) -> None:
        emit_json(self._stream, "warning", message=message)

    def _begin(self, run: RunStart) -> None:
        emit_json(
            self._stream,
            "start",
            command=run.command,
            campaign=run.campaign,
            spec=run.spec_path,
            input=run.input_path,
            rows=run.total_rows,
        )

    def _progress(self, done: int, per_s: float, counts: Mapping[str, int], pace: str) -> None:
        extra = {"pace": pace} if pace else {}
        emit_json(
            self._stream,
            "progress",
            done=done,
            total=self._total,
            per_s=round(per_s, 1),
            counts=dict(counts),
            **extra,
        )


def format_summary(summary: RunSummary) -> str:
    title = (
        "Dry run"
        if summary.dry_run
        else "Server dry run"
        if summary.server_dry_run
        else "Test send"
        if summary.test_send
        else "Retry"
        if summary.retry
        else "Run"
    )
    where = f" ({summary.shard})" if summary.shard else ""
    lines = [f"{title} of campaign {summary.campaign}{where}: {summary.rows} row(s)"]
    if summary.retry:
        lines.append(_retry_line(summary))
    if summary.server_dry_run:
        lines.append(
            'Every row went to Sent.dm with "sandbox": true: checked there, sent to nobody, charged nothing; '
            "`valid` rows are the ones it accepted"
        )
    if summary.test_send:
        lines.append(
            "The messages of the first valid rows went to the --test-to numbers, one each; nothing of the campaign "
            "was sent or marked as sent"
        )
    if summary.template_check:
        lines.append(f"Template check: {summary.template_check}")
    lines += [f"Note: {note}" for note in summary.input_notes]
    if summary.skipped_lines:
        lines.append(f"Skipped {summary.skipped_lines} blank or separator-only line(s) of the input (not rows)")
    if summary.skipped:
        lines.append(
            f"Resumed: {summary.skipped} row(s) already had an outcome from an earlier run and were not sent again"
        )
    if summary.recovered_in_flight and summary.recovered_resent:
        why = (
            "under their own Idempotency-Keys: the server answers a repeat instead of texting twice"
            if summary.api_version == "v3"
            else f"(send.retry_ambiguous; {summary.api_version} keeps no keys, so some may arrive twice)"
        )
        lines.append(
            f"{summary.recovered_in_flight} row(s) were in flight when an earlier run stopped: sent again {why}"
        )
    elif summary.recovered_in_flight:
        lines.append(
            f"{summary.recovered_in_flight} row(s) were in flight when an earlier run stopped: "
            "they may have been delivered (see result_error)"
        )
    # a dry run's `valid` rows are the ones a run would send now
    labels = {"valid": "would send"} if summary.dry_run else {}
    counts = {labels.get(status, status): n for status, n in summary.counts.items()}
    width = max(len(k) for k in counts)
    lines += [f"  {status:<{width}}  {n}" for status, n in counts.items() if n]
    if summary.counts.get("deferred") and not summary.dry_run:
        opens = f" The next window opens at {summary.next_window_opens}." if summary.next_window_opens else ""
        lines.append(
            f"Deferred: {summary.counts['deferred']} row(s) are outside their sending hours (send.window).{opens} "
            "Run again then (or use run --wait): rows already sent are not sent again"
        )
    if summary.aborted_reason:
        lines.append(f"ABORTED: {summary.aborted_reason}")
    if summary.interrupted_by:
        lines.append(f"INTERRUPTED by {summary.interrupted_by}: rows not yet sent are marked not_attempted")
    if summary.rate_slowdowns or summary.server_pauses:
        lines.append(
            f"Rate limiting: the server asked to wait {summary.server_pauses} time(s); "
            f"the sender halved its rate on 429 {summary.rate_slowdowns} time(s)"
        )
    if summary.top_errors:
        lines.append("Top errors:")
        lines += [f"  {n:>6}  {error}" for error, n in summary.top_errors]
    timing = f"Wall time {summary.wall_s:.2f} s"
    if summary.attempted:
        timing += f", {summary.messages_per_s:.1f} messages/s"
    if summary.latency_p50_ms is not None:
        timing += f", latency p50 {summary.latency_p50_ms:.1f} ms, p95 {summary.latency_p95_ms:.1f} ms"
    lines.append(timing)
    lines.append(f"Results: {summary.results_path}")
    if summary.guarded_cells:
        lines.append(
            f"Spreadsheet safety: {summary.guarded_cells} cell(s) a spreadsheet could run as a formula (= @ + - ...) "
            "were prefixed with ' (output.csv_formula_guard; reading the file back as input removes it)"
        )
    if summary.state_path:
        lines.append(f"State: {summary.state_path}")
    return "\n".join(lines)


def _retry_line(summary: RunSummary) -> str:
    line = f"{summary.attempted} row(s) resent" if summary.attempted else "0 rows to retry"
    if summary.retry_unknown_left:
        line += (
            f"; {summary.retry_unknown_left} `unknown` row(s) skipped (add `--include-unknown` if you have checked "
            "they were not delivered)"
        )
    if summary.retry_refused_left:
        line += (
            f"; {summary.retry_refused_left} row(s) the server refused skipped (add `--include-permanent` to send "
            "them again after fixing them)"
        )
    if summary.retry_delivery_kept:
        line += (
            f"; {summary.retry_delivery_kept} row(s) whose delivery failed for good (opted out, blocked, invalid "
            "parameters) not resent"
        )
    return line


def format_track(summary: TrackSummary) -> str:
    """The end-of-track text: what was learnt, the rows by delivery status, and what is still open."""
    lines = [f"Track: campaign {summary.campaign} ({summary.api_version}), {summary.rows} row(s)"]
    pending = summary.messages - summary.final
    lines.append(f"  messages         {summary.messages} ({summary.final} final, {pending} not final yet)")
    if summary.from_events:
        lines.append(f"  from webhooks    {summary.from_events} status(es)")
    if summary.rounds:
        lines.append(f"  status lookups   {summary.lookups} answered in {summary.rounds} round(s)")
    for reason, n in sorted(summary.lookup_errors.items(), key=lambda item: -item[1])[:5]:
        lines.append(f"    no status for {n}: {reason}")
    if summary.delivery:
        lines.append("Sent rows by delivery status:")
        for status, n in summary.delivery.items():
            lines.append(f"  {status or '(nothing known yet)':<20}  {n}")
    for note in summary.notes:
        lines.append(f"Note: {note}")
    if summary.timed_out:
        lines.append(f"--max-wait is up with {pending} message(s) not final: track again later")
    if summary.aborted_reason:
        lines.append(f"Aborted: {summary.aborted_reason}")
    if summary.interrupted_by:
        lines.append(f"Interrupted by {summary.interrupted_by}: what was learnt is kept; track again to go on")
    lines.append(f"Results: {summary.results_path}")
    lines.append(f"State: {summary.state_path}")
    return "\n".join(lines)
