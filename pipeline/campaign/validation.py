"""`validate_campaign`: every row checked, nothing sent; the report `validate` prints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import payload, results, source, validate
from pipeline.campaign.endpoint import api_endpoint, checked_templates
from pipeline.campaign.guards import Guards
from pipeline.campaign.outcomes import empty_outcomes, final_outcomes
from pipeline.campaign.prepare import input_files, prepared_batches
from pipeline.outputs import Kind, Output, check_outputs
from pipeline.spec import CampaignSpec


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
    skipped_lines: int = 0  # blank and separator-only lines of the input (not rows)
    notes: list[str] = field(default_factory=list)  # about the input, e.g. unnamed columns left out
    template_check: str | None = None  # v3: what the template check found, or why it was not made
    warnings: list[str] = field(default_factory=list)  # e.g. mapped variables a template does not declare
    suppressed: int = 0  # valid rows whose recipient is on a suppression list (`suppress`)


class _ReasonTally:
    """Invalid-row reasons over all batches: counts and the first few example rows of each."""

    def __init__(self, examples: int = 5) -> None:
        self.examples = examples
        self.rows: dict[str, int] = {}
        self.example_rows: dict[str, list[int]] = {}

    def add(self, checked: pl.DataFrame) -> None:
        for reason, rows, example_rows in validate.reason_counts(checked, examples=self.examples).iter_rows():
            self.rows[reason] = self.rows.get(reason, 0) + rows
            kept = self.example_rows.setdefault(reason, [])
            kept.extend(example_rows[: self.examples - len(kept)])

    def report(self) -> list[ReasonCount]:
        ordered = sorted(self.rows.items(), key=lambda item: (-item[1], item[0]))
        return [ReasonCount(reason, n, self.example_rows[reason]) for reason, n in ordered]


def validate_campaign(spec: CampaignSpec, *, output: Path | None = None, offline: bool = False) -> ValidationReport:
    """Check every row, sending nothing; with `output`, write each row's outcome in the results format (rows that
    would be sent are `valid`). Only the example payload is built: a body is made of checked fields and cannot
    fail. On v3 the templates are checked with the API too (a GET each, nothing sent) when the credentials are
    there, unless `offline`."""
    if output is not None:
        check_outputs(input_files(spec), [Output("--output", output, Kind.RESULTS)])
    # suppression lists are read first: one that cannot be read is an error here too; sending hours are `plan`'s
    # business (a valid row is valid at any hour), but a zone that does not exist makes a row invalid
    guards = Guards.of(spec, defers=False)
    template_check, declared, warnings = _check_templates(spec, offline=offline)
    if guards is not None:
        warnings = [*warnings, *guards.notes()]
    writer = results.ResultsWriter(output, csv=results.CsvOptions.of(spec)) if output is not None else None
    rows = valid = invalid = duplicates = suppressed = 0
    reasons = _ReasonTally()
    example: dict[str, Any] | None = None
    try:
        opened: list[source.ContactSource] = []
        for batch in prepared_batches(spec, keys=False, opened=opened, declared=declared, bodies=1, guards=guards):
            rows += batch.frame.height
            valid += batch.payloads.height
            statuses = batch.checked[validate.STATUS]
            invalid += int((statuses == validate.INVALID).sum())
            duplicates += int((statuses == validate.DUPLICATE).sum())
            suppressed += int((statuses == validate.SUPPRESSED).sum())
            reasons.add(batch.checked)
            if example is None and batch.payloads.height:
                example = json.loads(batch.payloads[payload.BODY][0])
            if writer is not None:
                writer.write(results.assemble_results(batch.frame, final_outcomes(batch, empty_outcomes(), None)))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    contacts = opened[0]
    return ValidationReport(
        rows,
        valid,
        invalid,
        duplicates,
        reasons.report(),
        example,
        contacts.skipped_blank_lines,
        list(contacts.notes),
        template_check,
        warnings,
        suppressed,
    )


def _check_templates(spec: CampaignSpec, *, offline: bool) -> tuple[str | None, payload.Declared, list[str]]:
    """(what to report, each template's variables when checked, warnings)."""
    if spec.api.version != "v3":
        return None, None, []
    if offline:
        return "not made (--offline): templates are checked when the campaign runs", None, []
    if spec.api.missing_credentials():
        return "not made: api.api_key is not set (the check reads the templates with it)", None, []
    with api_endpoint(spec) as base_url:
        check = checked_templates(spec, base_url)
    assert check is not None
    return check.describe(), check.declared, check.warnings


# --- run ---------------------------------------------------------------------------------------------------------
