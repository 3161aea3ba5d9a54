"""`track_campaign`: learn what became of the campaign's messages - from the webhook store (`--events`) and from
the status lookup (`--poll`, v3 `GET /v3/messages/{id}`) - record it in the campaign's state, and rewrite the
results file with the delivery columns.

Every fact goes into the state as it is learnt (campaign/delivery.py reads them back into rows), a status never
moves backwards (the webhook receiver's ranks), and polling asks only for messages without a final status yet (and,
once per call, for FAILED messages whose reason no event gave), so an interrupted `track --poll` resumes where it
stopped. Lookups go through the sender's machinery (send.py): the
spec's concurrency and rate, Retry-After, backoff, the circuit breaker, and a stop on an authentication failure.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from pipeline import api
from pipeline.campaign.delivery import (
    FINAL,
    facts_from_events,
    failed_without_reason,
    message_ids,
    rank_of,
    unsettled_messages,
)
from pipeline.campaign.endpoint import api_endpoint
from pipeline.campaign.guards import Guards
from pipeline.campaign.options import RunOptions
from pipeline.campaign.outcomes import write_results
from pipeline.campaign.prepare import input_files
from pipeline.campaign.run import shard_spec, state_path
from pipeline.campaign.sending import _watch_signals
from pipeline.campaign.waiting import signals_end_the_wait
from pipeline.errors import OutputError, UsageError
from pipeline.limits import Pacer
from pipeline.outcome import Verdict
from pipeline.outputs import Kind, Output, check_outputs
from pipeline.send import RunControl, SenderConfig, SendJob, SendOutcome, send_all
from pipeline.shard import Shard
from pipeline.spec import CampaignSpec
from pipeline.state import DeliveryFact, StateStore, open_state, shard_counts, state_exists
from pipeline.state_location import PostgresState

NOT_SENT = "not sent yet: run the campaign to send it"


@dataclass(frozen=True)
class TrackOptions:
    events: Path | None = None  # the webhook receiver's store
    shard: Shard | None = None  # one shard of a sharded campaign (its state and results file)
    poll: bool = False  # v3: ask GET /v3/messages/{id} for every message without a final status
    until_final: bool = False  # poll in rounds until every message is final or max_wait_s is up
    max_wait_s: float = 7200.0
    round_pause_s: float = 60.0  # between rounds of --until-final (shorter when less time is left)
    commit_every: int = 100  # poll answers recorded per state transaction (and at least every commit_interval_s)
    commit_interval_s: float = 0.5
    transport: httpx.AsyncBaseTransport | None = None  # tests inject one; None = a real network client
    handle_signals: bool = True
    # told at the start of each polling round: (round, messages to ask for); the CLI prints it (a long --until-final
    # shows it is alive)
    on_round: Callable[[int, int], None] | None = None
    clock: Callable[[], float] = time.monotonic  # --max-wait counts on it; tests move it
    # the pause between rounds; None: a sleep that SIGINT/SIGTERM end; tests pass one that moves their clock
    sleep: Callable[[float], object] | None = None


@dataclass(frozen=True)
class TrackSummary:
    campaign: str
    api_version: str
    rows: int
    messages: int  # message ids the campaign's sent rows have
    final: int  # of them, with a final status (DELIVERED, READ, FAILED)
    from_events: int  # statuses read from the webhook store (--events)
    lookups: int  # status lookups answered (--poll), every round together
    rounds: int  # polling rounds made
    lookup_errors: dict[str, int]  # lookups that got no status, by reason (404: the server does not know the id)
    delivery: dict[str, int]  # sent rows by result_delivery_status ("" while nothing is known)
    results_path: str
    state_path: str
    aborted_reason: str | None
    interrupted_by: str | None
    timed_out: bool  # --until-final: --max-wait was up before every message was final
    notes: list[str] = field(default_factory=list)

    @property
    def all_final(self) -> bool:
        return self.final == self.messages

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "all_final": self.all_final}


def track_campaign(spec: CampaignSpec, options: TrackOptions) -> TrackSummary:
    """Merge what the webhook store and/or the status lookup say of the campaign's messages into its state, then
    rewrite the results file with the delivery columns. Takes the campaign's lock: not while it is running."""
    _check(spec, options)
    if options.shard is not None:
        spec = shard_spec(spec, options.shard)  # the shard's own state and results file (and 1/N of the rate)
    else:
        counts = shard_counts(state_path(spec), spec.name) - {1}
        if counts:
            count = min(counts)
            raise UsageError(
                f"{spec.spec_path}: campaign {spec.name!r} was sent in {count} shards: each has its own state and "
                f"results. Hint: track each shard with --shard I/{count} (I from 0 to {count - 1}), then "
                "`python -m pipeline merge` combines their results, delivery columns included."
            )
    location = state_path(spec)
    if not state_exists(location, spec.name):
        raise UsageError(
            f"{spec.spec_path}: campaign {spec.name!r} has no state at {location}: nothing was sent yet, so there is "
            "nothing to track. Hint: run the campaign first."
        )
    outputs = [Output("output.results", spec.output.results, Kind.RESULTS)]
    if not isinstance(location, PostgresState):
        outputs.append(Output("output.state", location, Kind.STATE))
    check_outputs(input_files(spec), outputs)
    notes: list[str] = []
    control = RunControl()
    lookups, rounds, from_events = 0, 0, 0
    errors: dict[str, int] = {}
    timed_out = False
    with open_state(location, spec.name) as store:
        messages = store.sent_messages()
        ids = message_ids(messages)
        if options.events is not None:
            facts = facts_from_events(options.events, ids)
            _record(store, facts)
            from_events = len(facts)
            if not facts and ids:
                notes.append(
                    f"the webhook store {options.events} has no event for any of this campaign's {len(ids)} message(s)"
                )
        if options.poll:
            deadline = options.clock() + options.max_wait_s
            asked_why: set[str] = set()  # FAILED messages looked up for their reason: once each
            with api_endpoint(spec) as base_url:
                while True:
                    known = store.delivery_facts(ids)
                    why = [message for message in failed_without_reason(known) if message not in asked_why]
                    asked_why.update(why)
                    waiting = unsettled_messages(messages, known) + why
                    if not waiting:
                        break
                    rounds += 1
                    if options.on_round is not None:
                        options.on_round(rounds, len(waiting))
                    answered = _poll(spec, base_url, waiting, store, control, options, errors)
                    lookups += answered
                    if control.stopping or not options.until_final:
                        break
                    if not unsettled_messages(messages, store.delivery_facts(ids)):
                        break
                    left_s = deadline - options.clock()
                    if left_s <= 0:
                        timed_out = True
                        break
                    # a signal ends the pause at once, as the run's interrupt: the results file is still written
                    with signals_end_the_wait(control, enabled=options.handle_signals) as woken:
                        (options.sleep or woken.wait)(min(options.round_pause_s, left_s))
                    if control.stopping:
                        break
        store.mark_tracked()
        final = len(ids) - len(unsettled_messages(messages, store.delivery_facts(ids)))
        guards = Guards.of(spec, datetime.now(UTC))
        totals = write_results(
            spec,
            RunOptions(shard=options.shard),
            spec.output.results,
            store,
            NOT_SENT,
            after_sending=False,
            guards=guards,
        )
    interrupted = signal.Signals(control.interrupt_signal).name if control.interrupt_signal is not None else None
    return TrackSummary(
        campaign=spec.name,
        api_version=spec.api.version,
        rows=totals.rows,
        messages=len(ids),
        final=final,
        from_events=from_events,
        lookups=lookups,
        rounds=rounds,
        lookup_errors=errors,
        delivery=dict(sorted(totals.delivery.items())),
        results_path=str(spec.output.results),
        state_path=str(location),
        aborted_reason=control.abort_reason,
        interrupted_by=interrupted,
        timed_out=timed_out,
        notes=notes,
    )


def _check(spec: CampaignSpec, options: TrackOptions) -> None:
    if options.until_final and not options.poll:
        raise UsageError("--until-final keeps polling: it goes with --poll")
    if options.events is None and not options.poll:
        raise UsageError(
            "track needs a source: --events FILE (the webhook receiver's store) and/or --poll (v3: ask Sent.dm)"
        )
    if options.max_wait_s <= 0:
        raise UsageError("--max-wait must be a positive duration, e.g. 2h or 30m")
    if options.poll and api.generation(spec.api.version).status_path("x") is None:
        raise UsageError(
            f"{spec.spec_path}: --poll needs api.version v3: Sent.dm's {spec.api.version} has no message status "
            "lookup, so delivery can only be learnt from webhooks. Hint: track with --events FILE, the store of "
            "`python -m pipeline webhooks`, if Sent.dm posts this account's status webhooks to it."
        )
    if options.poll:
        missing = spec.api.missing_credentials()
        if missing:
            raise UsageError(f"{spec.spec_path}: api.{missing[0]} is required to ask Sent.dm for message statuses")
    if options.events is not None and not options.events.is_file():
        raise UsageError(
            f"--events {options.events}: no webhook store there. Hint: give the --store file of "
            "`python -m pipeline webhooks`."
        )


def _record(store: StateStore, facts: list[DeliveryFact]) -> None:
    try:
        store.record_deliveries(facts)
    except store.write_errors as exc:
        raise OutputError(
            f"cannot write the campaign state {store.location}: {exc}. Hint: make the state writable again (free "
            "disk space; for a PostgreSQL state, check the database is up) and track again: what was learnt is kept."
        ) from None


def _poll(
    spec: CampaignSpec,
    base_url: str,
    waiting: list[str],
    store: StateStore,
    control: RunControl,
    options: TrackOptions,
    errors: dict[str, int],
) -> int:
    """One round: look every message of `waiting` up, recording each status as it comes. Returns how many answered."""
    generation = api.generation(spec.api.version)
    sender_id, api_key = spec.api.credentials()
    send = spec.send
    config = SenderConfig(
        base_url=base_url,
        sender_id=sender_id,
        api_key=api_key,
        generation=generation,
        profile_id=spec.api.profile_id or "",
        timeout_s=spec.api.timeout_s,
        concurrency=send.concurrency,
        max_attempts=send.max_attempts,
        max_retry_s=send.max_retry_s,
        retry_ambiguous=True,  # a lookup changes nothing: asking again is always safe
        backoff_base_s=send.backoff_s,
        ca_bundle=str(spec.api.ca_bundle) if spec.api.ca_bundle is not None else None,
    )
    rate = send.rate_per_s
    pacer = Pacer(rate_per_s=rate, burst=send.burst or max(1, int(rate or 1)))
    jobs = (SendJob(row=0, key=m, body=b"", lookup=generation.status_path(m)) for m in waiting)
    learnt: list[DeliveryFact] = []
    answered = 0
    write_error: list[OutputError] = []

    def flush() -> None:
        if learnt and not write_error:
            batch = list(learnt)
            learnt.clear()
            try:
                _record(store, batch)
            except OutputError as exc:
                write_error.append(exc)
                control.abort(str(exc))

    def on_outcome(outcome: SendOutcome) -> None:
        nonlocal answered
        found = outcome.found
        if outcome.verdict is Verdict.SENT and found is not None:
            answered += 1
            status = found.status
            learnt.append((outcome.key, status, rank_of(status), found.error, found.at, found.channel, "poll"))
            if len(learnt) >= options.commit_every:
                flush()
        else:
            # grouped by reason: the message's own id, if the answer echoes it, would make each reason unique
            reason = (outcome.error or "no answer").replace(outcome.key, "{id}")
            errors[reason] = errors.get(reason, 0) + 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            if options.handle_signals and threading.current_thread() is threading.main_thread():
                group.start_soon(_watch_signals, control, group.cancel_scope, config.timeout_s, None)

            async def commit_now_and_then() -> None:
                while True:
                    await anyio.sleep(options.commit_interval_s)
                    flush()

            group.start_soon(commit_now_and_then)
            await send_all(
                jobs, config, on_outcome=on_outcome, control=control, pacer=pacer, transport=options.transport
            )
            group.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        flush()
    if write_error:
        raise write_error[0]
    return answered


__all__ = ["FINAL", "TrackOptions", "TrackSummary", "track_campaign"]
