"""Send caps (`send.max_messages`, `run --max-messages`): a run that would send more messages than the cap refuses
to start - the guard against the wrong input file."""

from __future__ import annotations

from pipeline import payload
from pipeline.campaign.guards import Guards
from pipeline.campaign.options import RunOptions
from pipeline.campaign.outcomes import delivery_of, empty_outcomes, select_rows
from pipeline.campaign.prepare import prepared_batches
from pipeline.errors import UsageError
from pipeline.spec import CampaignSpec
from pipeline.state import StateStore


def check_cap(spec: CampaignSpec, options: RunOptions, store: StateStore | None, guards: Guards | None) -> None:
    """send.max_messages (or --max-messages): a run that would send more messages than the cap refuses to start -
    the guard against the wrong input file. Counted are the rows this run would send now or once their sending hours
    open (valid, not duplicates, not suppressed, without an outcome from an earlier run; at most --limit): one pass
    over the input before anything is sent."""
    cap = options.max_messages if options.max_messages is not None else spec.send.max_messages
    if cap is None:
        return
    count = 0
    resending = options.retry is not None and options.retry.delivery_failed
    for batch in prepared_batches(spec, options.shard, keys=store is not None, bodies=0, guards=guards):
        recorded = store.lookup(batch.payloads[payload.KEY].to_list()) if store is not None else empty_outcomes()
        chosen, selected = select_rows(
            batch.payloads, recorded, options, delivery_of(store, recorded) if resending else None
        )
        count += chosen.height + selected.deferred
    if options.limit is not None:  # --limit: a smoke test sends at most that many
        count = min(count, options.limit)
    if count > cap:
        where = "--max-messages" if options.max_messages is not None else "send.max_messages"
        raise UsageError(
            f"{spec.spec_path}: this run would send {count:,} messages, more than {where} ({cap:,}); nothing was "
            f"sent. Hint: check input.path ({spec.input.path}) is the file you meant; if it is, raise the cap for "
            f"this run with --max-messages {count}"
        )
