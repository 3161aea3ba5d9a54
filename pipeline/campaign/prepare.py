"""Reading, checking and building payloads, batch by batch: what is known about each row before the first
request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import payload, source, validate
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


def input_files(spec: CampaignSpec) -> list[tuple[str, Path]]:
    return [("input.path", spec.input.path), ("the job spec", spec.spec_path)]
