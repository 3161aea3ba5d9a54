"""What a caller chooses for a run (`RunOptions`, `RetrySelection`) and where it shows progress (`ProgressSink`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx

from pipeline.outcome import FAILED
from pipeline.shard import Shard


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
    # rows sent (acknowledged) whose delivery then FAILED for a reason worth another attempt (campaign/delivery.py):
    # each goes again under a new Idempotency-Key, its key plus the attempt; `statuses` is not used then
    delivery_failed: bool = False


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    # v3: every row goes to the server with "sandbox": true - checked there, sent to nobody - under keys of its own;
    # results in NAME.server-dry-run.EXT, the campaign's state untouched
    server_dry_run: bool = False
    # v3: the messages of the first valid rows, one per number, sent to these phone numbers instead (the team's
    # phones, as written: checked before anything is read); results in NAME.test-send.EXT, the campaign's state
    # untouched
    test_to: tuple[str, ...] = ()
    limit: int | None = None
    retry: RetrySelection | None = None  # None: a normal run, which sends only rows with no outcome yet
    shard: Shard | None = None  # only this shard's rows, with its own results file and state
    rate: str | None = None  # overrides send.rate for this process (after a shard took its share)
    transport: httpx.AsyncBaseTransport | None = None  # tests inject one; None = a real network client
    progress_interval_s: float = 0.2
    handle_signals: bool = True
    summary_json: Path | None = None  # written by the caller; checked here with the other outputs before any reading
    # send.window: keep running, holding the lock, and send each deferred row when its window opens
    wait: bool = False
    max_messages: int | None = None  # overrides send.max_messages for this run
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # "now" for sending hours; tests move it
    # how `wait` sleeps (seconds) until the next window opens; None: a sleep that a signal ends; tests pass one
    # that moves their clock
    sleep: Callable[[float], object] | None = None
