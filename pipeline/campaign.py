"""The campaign as library functions: `prepare_campaign` (read, validate, build payloads) and `validate_campaign`.
They wire the stages together and return data; they never print. The CLI decides what to show and which exit code
to use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import payload, results, source, validate
from pipeline.spec import CampaignSpec

NOT_ATTEMPTED = "not_attempted"


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


def prepare_campaign(spec: CampaignSpec) -> PreparedCampaign:
    """Read and validate the input and build every payload. Raises InputError for an unusable file."""
    frame = source.read_contacts(spec.input, spec.input_format, required=spec.message.columns())
    fields = payload.message_fields(frame, spec.message)
    checked = validate.check_rows(fields, spec.message)
    to_send = checked.filter(pl.col(validate.STATUS).is_null())
    payloads = payload.encode_payloads(to_send, spec.message, campaign=spec.name)
    return PreparedCampaign(spec=spec, frame=frame, checked=checked, payloads=payloads)


def validate_campaign(spec: CampaignSpec) -> tuple[ValidationReport, PreparedCampaign]:
    prepared = prepare_campaign(spec)
    reasons = [
        ReasonCount(reason=r["reason"], rows=r["rows"], example_rows=list(r["example_rows"]))
        for r in validate.reason_counts(prepared.checked).iter_rows(named=True)
    ]
    example = json.loads(prepared.payloads[payload.BODY][0]) if prepared.payloads.height else None
    report = ValidationReport(
        rows=prepared.rows,
        valid=prepared.payloads.height,
        invalid=prepared.count(validate.INVALID),
        duplicates=prepared.count(validate.DUPLICATE),
        reasons=reasons,
        example_payload=example,
    )
    return report, prepared


def validation_outcomes(prepared: PreparedCampaign) -> pl.DataFrame:
    """Per-row outcome of validation alone, in the results format: rows that would be sent are `not_attempted`."""
    return prepared.checked.select(
        pl.col(payload.ROW),
        pl.col(validate.STATUS).fill_null(NOT_ATTEMPTED),
        pl.col(validate.ERROR),
        pl.lit(0).alias("result_attempts"),
    )


def write_validation_results(prepared: PreparedCampaign, path: Path) -> None:
    table = results.assemble_results(prepared.frame, validation_outcomes(prepared))
    results.write_results(table, Path(path))
