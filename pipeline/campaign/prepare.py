"""Reading, checking and building payloads, batch by batch: what is known about each row before the first
request."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import api, payload, source, validate
from pipeline.campaign.guards import CLOSES_AT, DEFERRED_REASON, OPENS_AT, ZONES, Guards
from pipeline.shard import Shard
from pipeline.spec import CampaignSpec


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
class PreparedBatch:
    """One batch of input rows, checked, with the payloads of the rows to send."""

    frame: pl.DataFrame  # the input rows as read, with `result_row`
    # result_row, result_status (invalid/duplicate/suppressed/null), result_error, idempotency_key (rows to send and
    # suppressed rows)[, to]; with a window, window_reason (null while open), window_opens_at and window_closes_at
    # for the rows to send
    checked: pl.DataFrame
    # result_row, payload (JSON text), idempotency_key[, window_reason, window_opens_at] - rows to send, in input
    # order (deferred ones too: a row an earlier run sent is known by its key)
    payloads: pl.DataFrame


def prepared_batches(
    spec: CampaignSpec,
    shard: Shard | None = None,
    *,
    keys: bool = True,
    opened: list[source.ContactSource] | None = None,
    declared: payload.Declared = None,
    rehearsal: bool = False,
    bodies: int | None = None,
    guards: Guards | None = None,
) -> Iterator[PreparedBatch]:
    """Read, validate and build payloads batch by batch (only the rows of `shard`, if given). Duplicates are found
    across the whole input. Idempotency keys, the costliest part, are derived only for the rows to send, and only
    when `keys` (validation alone does not need them). `declared` limits each template's parameters to its own
    variables; `rehearsal` builds the bodies and keys of a server-side dry run. `bodies`: build the JSON bodies
    of only the first this many rows to send (the others' are null; None: every row's), for passes that send
    nothing. `guards`: suppression lists and sending hours, as of their moment. Raises InputError for an
    unusable file."""
    generation = api.generation(spec.api.version)
    contacts = source.open_contacts(spec.input, spec.input_format, required=spec.input_columns())
    if opened is not None:  # the caller reads the skipped-line count and the notes after the pass
        opened.append(contacts)
    seen = validate.SeenKeys()
    for frame, decided in _blocks_with_numbers(contacts, spec, zones=guards is not None and guards.hours):
        fields = payload.message_fields(frame, spec.message, generation, numbers=decided)
        if shard is not None:  # the shard follows from the key, so every row needs one
            fields = fields.with_columns(payload.idempotency_keys(fields[payload.CONTENT], campaign=spec.name))
            mine = fields.select(shard.selects(pl.col(payload.KEY))).to_series()
            frame, fields = frame.filter(mine), fields.filter(mine)
        if guards is not None:
            fields = guards.zones(fields, frame, decided)
        checked = validate.check_rows(fields, spec.message, generation, guards.reasons() if guards else None)
        if guards is not None:
            checked = guards.defer(seen.mark_duplicates(guards.suppress(checked)))
        else:
            checked = seen.mark_duplicates(checked)
        to_send = checked.filter(pl.col(validate.STATUS).is_null())
        built = to_send.height if bodies is None else min(bodies, to_send.height)
        payloads = _payloads(to_send, built, spec, generation, keys=keys, declared=declared, rehearsal=rehearsal)
        if bodies is not None:
            bodies -= built
        if rehearsal and keys:
            payloads = payloads.with_columns(payload.rehearsal_keys(pl.col(payload.KEY)))
        numbers = [payload.TO] if payload.TO in checked.columns else []
        timing = [ZONES, DEFERRED_REASON, OPENS_AT, CLOSES_AT] if DEFERRED_REASON in checked.columns else []
        if timing:
            payloads = payloads.with_columns(to_send[DEFERRED_REASON], to_send[OPENS_AT])
        known = payloads.select(payload.ROW, payload.KEY)
        suppressed = checked.filter(pl.col(validate.STATUS) == validate.SUPPRESSED)
        if keys and not rehearsal and suppressed.height:
            # a row an earlier run sent before its person was listed is known by its key: its results say it was sent
            suppressed_keys = payload.idempotency_keys(suppressed[payload.CONTENT], campaign=spec.name)
            known = pl.concat([known, suppressed.select(payload.ROW).with_columns(suppressed_keys)])
        yield PreparedBatch(
            frame=frame,
            checked=checked.select(payload.ROW, validate.STATUS, validate.ERROR, *numbers, *timing).join(
                known, on=payload.ROW, how="left", maintain_order="left"
            ),
            payloads=payloads.drop(numbers),
        )


def _payloads(
    to_send: pl.DataFrame,
    built: int,
    spec: CampaignSpec,
    generation: api.Generation,
    *,
    keys: bool,
    declared: payload.Declared,
    rehearsal: bool,
) -> pl.DataFrame:
    """The payloads of `to_send`, with JSON bodies for its first `built` rows only."""

    def encode(rows: pl.DataFrame, with_bodies: bool) -> pl.DataFrame:
        return payload.encode_payloads(
            rows,
            spec.message,
            generation,
            campaign=spec.name,
            keys=keys,
            declared=declared,
            rehearsal=rehearsal,
            with_bodies=with_bodies,
        )

    if built >= to_send.height:
        return encode(to_send, True)
    if built == 0:
        return encode(to_send, False)
    return pl.concat([encode(to_send.head(built), True), encode(to_send.slice(built), False)])


# Phone numbers (v3) are decided this many rows at a time, not block by block: each call of phones.py costs about
# 0.25 s whatever its size (its patterns compiled again, many small queries), which at one call per 2 MiB block was
# three quarters of `validate`'s time. Its working memory grows with the span (measured on 1M rows: 120,000 rows
# 239 MB peak, 250,000 rows 335 MB, 500,000 rows 429 MB; 10.7, 8.6 and 9.4 s): this span keeps the peak near v1's.
_NUMBERS_SPAN_ROWS = 120_000


def _blocks_with_numbers(
    contacts: source.ContactSource, spec: CampaignSpec, *, zones: bool = False
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame | None]]:
    """The input's blocks, each with its phone numbers decided (`e164`, `phone_error`, and with `zones` their time
    zones, `time_zones`) when the message reads them from a column; the first block alone, so that the first
    request is not held back."""
    to = spec.message.to
    if spec.api.version != "v3" or to is None or to.column is None:
        for frame in contacts.batches():
            yield frame, None
        return
    from pipeline import phones  # see api/v3.py: only v3 campaigns load phonenumbers

    column = to.column
    blocks = contacts.batches()
    stopping = threading.Event()

    def next_group(span: int, turn: threading.Event, done: threading.Event) -> Span:
        """Reads the next span once the span before it is read (`turn`), then decides its numbers."""
        group: list[pl.DataFrame] = []
        try:
            turn.wait()
            rows = 0
            for frame in blocks if not stopping.is_set() else ():
                group.append(frame)
                rows += frame.height
                if rows >= span:
                    break
        finally:
            done.set()
        if not group:
            return group, None
        texts = pl.concat(
            [payload.as_text(frame.select(column), [column], rule=spec.message.value_text)[column] for frame in group]
        )
        decided = phones.normalise_phones(texts, default_region=spec.message.default_region)
        if zones:  # the numbers' zones cost a fixed part per call too: once per span, on this thread
            from pipeline import window

            found = window.zones_for_numbers(decided[phones.E164], default_timezone=spec.send.default_timezone)
            decided = decided.with_columns(found.alias(ZONES))
        return group, decided

    # The next spans are read, in turn, and their numbers decided on threads of their own while this one's rows
    # are checked: polars lets go of the GIL, so the threads keep both cores busy, and deciding one span's numbers
    # takes longer than checking its rows. A broken line is still reported only when its span's turn comes
    # (`result()` raises it then).
    with ThreadPoolExecutor(_SPANS_AHEAD, thread_name_prefix="phones") as ahead:
        read = threading.Event()
        read.set()
        coming: deque[Future[Span]] = deque()

        def submit(span: int) -> None:
            nonlocal read
            turn, read = read, threading.Event()
            coming.append(ahead.submit(next_group, span, turn, read))

        submit(1)  # the first span is one block
        try:
            while True:
                while len(coming) < _SPANS_AHEAD:
                    submit(_NUMBERS_SPAN_ROWS)
                group, decided = coming.popleft().result()
                if decided is None:
                    return
                offset = 0
                for frame in group:
                    yield frame, decided.slice(offset, frame.height)
                    offset += frame.height
        finally:
            stopping.set()
            read.set()
            for future in coming:
                future.cancel()


Span = tuple[list[pl.DataFrame], "pl.DataFrame | None"]
# spans read and decided ahead, each on a thread of its own: two keep two cores busy
_SPANS_AHEAD = 2


def prepare_campaign(spec: CampaignSpec, shard: Shard | None = None) -> PreparedCampaign:
    """The whole input prepared in memory at once: for tests and small tools; campaigns stream batches."""
    batches = list(prepared_batches(spec, shard))
    return PreparedCampaign(
        spec=spec,
        frame=pl.concat([b.frame for b in batches]),
        checked=pl.concat([b.checked for b in batches]),
        payloads=pl.concat([b.payloads for b in batches]),
    )


def input_files(spec: CampaignSpec) -> list[tuple[str, Path]]:
    """The files a command reads: no output may be one of them."""
    lists = [(f"suppress[{i}]", entry.path) for i, entry in enumerate(spec.suppress)]
    return [("input.path", spec.input.path), ("the job spec", spec.spec_path), *lists]
