"""`plan_campaign`: what a run would do, before it runs and without sending - rows, checks, suppressed and deferred
rows (with when each time zone's window opens), messages, requests and how long they take at the configured rate
and at Sent.dm's plan limits."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from pipeline import objects, payload, validate
from pipeline.campaign.guards import CLOSES_AT, DEFERRED_REASON, OPENS_AT, ZONES, Guards, utc_text
from pipeline.campaign.options import RunOptions
from pipeline.campaign.outcomes import empty_outcomes, select_rows
from pipeline.campaign.prepare import prepared_batches
from pipeline.campaign.run import state_path
from pipeline.outcome import SENT, UNKNOWN
from pipeline.spec import CampaignSpec
from pipeline.state import earlier_state

# Sent.dm's documented request limits per plan (requests a minute, per account)
PLAN_LIMITS = {"Starter": 60.0, "Growth": 300.0}
_SHOWN_ZONE_SETS = 20  # the plan lists the zone sets with the most rows; the rest are summed up


@dataclass(frozen=True)
class ZonePlan:
    """The rows to send of one set of time zones, and their window as of the plan's moment."""

    zones: list[str]
    rows: int
    open_now: bool
    opens_at: str | None  # ISO 8601 UTC; None when open now (or when it never opens within the horizon)
    closes_at: str | None  # when the open spell (now, or at opens_at) ends
    reason: str | None  # why the rows wait: "window opens ... (09:00 America/New_York)"


@dataclass(frozen=True)
class CampaignPlan:
    campaign: str
    input: str
    api_version: str
    now: str  # the moment the plan was made for (ISO 8601, UTC)
    rows: int
    valid: int  # rows that pass every check (first occurrences, not suppressed)
    invalid: int
    duplicates: int
    suppressed: int
    already_done: int  # valid rows an earlier run already settled: not sent again
    messages: int  # messages a run would send: now, or once their window opens
    send_now: int
    deferred_now: int
    requests: int  # with send.batch_recipients, numbers share requests
    batch_recipients: int
    rate_per_s: float | None  # send.rate; None: no client-side limit
    seconds_at_rate: float | None
    seconds_at_plan_limits: dict[str, float]  # Starter 60/min, Growth 300/min
    max_messages: int | None
    window: str | None  # "09:00-20:00 mon-sat", recipient-local
    zones: list[ZonePlan] = field(default_factory=list)
    more_zone_sets: int = 0  # zone sets not listed (the fewest rows)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_campaign(spec: CampaignSpec, *, now: datetime | None = None, max_messages: int | None = None) -> CampaignPlan:
    """One pass over the input, as a run would make it, sending nothing and taking no lock; an existing state is
    read to leave out what earlier runs settled."""
    moment = now or datetime.now(UTC)
    guards = Guards.of(spec, moment)
    options = RunOptions()
    counts: Counter[str] = Counter()
    zones: dict[str, list[Any]] = {}  # zone key -> [rows, opens_at, closes_at, reason]
    requests = _Requests(spec)
    rows = done = 0
    with earlier_state(state_path(spec), spec.name) as store:
        broadcasts = spec.send.batch_recipients > 1
        for batch in prepared_batches(spec, keys=store is not None, bodies=None if broadcasts else 0, guards=guards):
            rows += batch.frame.height
            statuses = batch.checked[validate.STATUS].drop_nulls().value_counts()
            counts.update(dict(statuses.iter_rows()))
            # suppressed rows' keys too: one an earlier run sent before its person was listed counts as done
            keys = batch.checked[payload.KEY].drop_nulls().to_list()
            recorded = store.lookup(keys) if store is not None else empty_outcomes()
            chosen, selected = select_rows(batch.payloads, recorded, options)
            earlier = recorded.select(payload.KEY, pl.col("result_status").alias("earlier"))
            reached = batch.checked.join(earlier, on=payload.KEY, how="inner").filter(
                (pl.col(validate.STATUS) == validate.SUPPRESSED) & pl.col("earlier").is_in([SENT, UNKNOWN])
            )
            counts[validate.SUPPRESSED] -= reached.height
            done += selected.skipped + reached.height
            counts["now"] += chosen.height
            counts["later"] += selected.deferred
            if broadcasts:
                requests.add(chosen)
                if selected.waiting is not None:
                    requests.add(selected.waiting)
            if guards is not None and guards.hours:
                _add_zones(zones, batch.checked, recorded)
    if not broadcasts:
        requests.count = counts["now"] + counts["later"]
    return _plan(spec, moment, rows, counts, done, requests.total(), zones, max_messages)


class _Requests:
    """How many requests the rows to send make: one each, or (broadcasts) one per group of up to N numbers with the
    same message - across the whole input when every part of the message is a literal, else within each block.
    Rows waiting for their window (`window_opens_at`) go out when it opens, with the rows that open then."""

    def __init__(self, spec: CampaignSpec) -> None:
        from pipeline.campaign.broadcast import Broadcasts

        self.size = spec.send.batch_recipients
        self.across_blocks = Broadcasts(spec).across_blocks
        self.count = 0
        self.open: Counter[tuple[str, str | None]] = Counter()

    def add(self, rows: pl.DataFrame) -> None:
        from pipeline.api.v3 import recipient_and_rest

        _, rest = recipient_and_rest(pl.col(payload.BODY))
        opens = pl.col(OPENS_AT).cast(pl.String) if OPENS_AT in rows.columns else pl.lit(None, dtype=pl.String)
        groups = rows.group_by(rest.alias("message"), opens.alias("opens")).len()
        for message, opening, n in groups.iter_rows():
            if self.across_blocks:
                self.open[message, opening] += n
            else:
                self.count += math.ceil(n / self.size)

    def total(self) -> int:
        return self.count + sum(math.ceil(n / self.size) for n in self.open.values())


def _add_zones(zones: dict[str, list[Any]], checked: pl.DataFrame, recorded: pl.DataFrame) -> None:
    to_send = checked.filter(pl.col(validate.STATUS).is_null())
    done = recorded.filter(pl.col("result_status").is_not_null())[payload.KEY]
    if done.len():  # rows an earlier run settled are not to send
        to_send = to_send.filter(~pl.col(payload.KEY).is_in(done.implode()))
    grouped = to_send.group_by(pl.col(ZONES).list.join("|").fill_null("").alias("key")).agg(
        pl.len(), pl.col(OPENS_AT).first(), pl.col(CLOSES_AT).first(), pl.col(DEFERRED_REASON).first()
    )
    for key, n, opens_at, closes_at, reason in grouped.iter_rows():
        entry = zones.setdefault(key, [0, opens_at, closes_at, reason])
        entry[0] += n


def _plan(
    spec: CampaignSpec,
    now: datetime,
    rows: int,
    counts: Counter[str],
    done: int,
    requests: int,
    zones: dict[str, list[Any]],
    max_messages: int | None,
) -> CampaignPlan:
    messages = counts["now"] + counts["later"]
    rate = spec.send.rate_per_s
    listed = sorted(zones.items(), key=lambda item: (-item[1][0], item[0]))
    zone_plans = [
        ZonePlan(
            zones=key.split("|") if key else [],
            rows=n,
            open_now=reason is None,
            opens_at=utc_text(opens_at),
            closes_at=utc_text(closes_at),
            reason=reason,
        )
        for key, (n, opens_at, closes_at, reason) in listed[:_SHOWN_ZONE_SETS]
    ]
    window = spec.send.window
    cap = max_messages if max_messages is not None else spec.send.max_messages
    plan = CampaignPlan(
        campaign=spec.name,
        input=objects.display(spec.input.path),
        api_version=spec.api.version,
        now=utc_text(now) or "",
        rows=rows,
        valid=rows - counts[validate.INVALID] - counts[validate.DUPLICATE] - counts[validate.SUPPRESSED],
        invalid=counts[validate.INVALID],
        duplicates=counts[validate.DUPLICATE],
        suppressed=counts[validate.SUPPRESSED],
        already_done=done,
        messages=messages,
        send_now=counts["now"],
        deferred_now=counts["later"],
        requests=requests,
        batch_recipients=spec.send.batch_recipients,
        rate_per_s=rate,
        seconds_at_rate=round(requests / rate, 1) if rate else None,
        seconds_at_plan_limits={name: round(requests / (per_min / 60), 1) for name, per_min in PLAN_LIMITS.items()},
        max_messages=cap,
        window=window.describe() if window is not None else None,
        zones=zone_plans,
        more_zone_sets=max(len(listed) - _SHOWN_ZONE_SETS, 0),
    )
    plan.warnings.extend(_warnings(plan, now, rate, zones))
    return plan


def _warnings(plan: CampaignPlan, now: datetime, rate: float | None, zones: dict[str, list[Any]]) -> list[str]:
    found: list[str] = []
    if plan.max_messages is not None and plan.messages > plan.max_messages:
        found.append(
            f"{plan.messages:,} messages is more than the cap ({plan.max_messages:,}): a run would refuse to start "
            f"(raise it for one run with --max-messages {plan.messages})"
        )
    open_now = [(n, closes_at) for n, _, closes_at, reason in zones.values() if reason is None and n]
    if not open_now or plan.send_now == 0:
        return found
    per_s = rate or PLAN_LIMITS["Starter"] / 60
    share = plan.requests / plan.messages if plan.messages else 1.0
    needed_s = plan.send_now * share / per_s
    # rows go out in input order, so each zone's rows are spread over the whole send: the share of them still
    # waiting when their window closes is the share of the send left at that moment
    late = 0.0
    first: datetime | None = None
    for n, closes_at in open_now:
        if closes_at is None:
            continue
        left_s = max((closes_at - now).total_seconds(), 0.0)
        if left_s < needed_s:
            late += n * (1 - left_s / needed_s)
            first = closes_at if first is None else min(first, closes_at)
    if first is not None and round(late):
        at = f"send.rate ({rate:g}/s)" if rate else "Sent.dm's Starter limit (60 requests/min: no send.rate)"
        found.append(
            f"at {at} the {plan.send_now:,} messages whose window is open now take about {_duration(needed_s)}; "
            f"windows close before then (the first at {utc_text(first)}), so about {round(late):,} of them will wait "
            "for their next window (a rerun, or run --wait, sends them)"
        )
    return found


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(plan: CampaignPlan) -> str:
    """The plan as text, for people."""
    width = len(f"{plan.rows:,}")
    line = f"{{:<20}}{{:>{width}}}"
    lines = [
        f"Plan for campaign {plan.campaign} ({plan.api_version}): {plan.input}, as of {plan.now}",
        line.format("  rows", f"{plan.rows:,}"),
        line.format("  valid", f"{plan.valid:,}"),
        line.format("  invalid", f"{plan.invalid:,}"),
        line.format("  duplicates", f"{plan.duplicates:,}"),
        line.format("  suppressed", f"{plan.suppressed:,}"),
    ]
    if plan.already_done:
        lines.append(line.format("  already sent", f"{plan.already_done:,}") + "  (earlier runs; not sent again)")
    lines.append(line.format("  messages to send", f"{plan.messages:,}"))
    if plan.window is not None:
        lines.append(line.format("    now", f"{plan.send_now:,}") + f"  (inside send.window {plan.window})")
        lines.append(line.format("    deferred now", f"{plan.deferred_now:,}") + "  (sent once their window opens)")
    batching = f"  (send.batch_recipients {plan.batch_recipients})" if plan.batch_recipients > 1 else ""
    lines.append(line.format("  requests", f"{plan.requests:,}") + batching)
    if plan.max_messages is not None:
        within = "within it" if plan.messages <= plan.max_messages else "EXCEEDED: a run refuses to start"
        lines.append(f"  cap: {plan.max_messages:,} messages ({within})")
    if plan.rate_per_s is not None and plan.seconds_at_rate is not None:
        lines.append(f"Time at send.rate ({plan.rate_per_s:g}/s): {_duration(plan.seconds_at_rate)}")
    else:
        lines.append("Time: send.rate is not set (no client-side limit); Sent.dm's plan limits apply")
    limits = ", ".join(
        f"{name} ({PLAN_LIMITS[name]:g} requests/min) {_duration(s)}" for name, s in plan.seconds_at_plan_limits.items()
    )
    lines.append(f"  at Sent.dm's plan limits: {limits}")
    if plan.zones:
        lines.append("Windows by time zone (rows to send):")
        for zone in plan.zones:
            names = ", ".join(zone.zones) if zone.zones else "(zone unknown)"
            when = "open now" if zone.open_now else zone.reason or "never opens"
            lines.append(f"  {zone.rows:>{width},}  {names}: {when}")
        if plan.more_zone_sets:
            lines.append(f"  ... and {plan.more_zone_sets} more zone set(s)")
    lines.extend(f"warning: {w}" for w in plan.warnings)
    return "\n".join(lines)
