"""`run --test-to`: the messages of the campaign's first valid rows sent to the team's own phones, one row per test
number, before the campaign goes out. Keys of their own, a results file of their own; the campaign's state and
results are never read or written, so nothing of the campaign counts as sent."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

import polars as pl

from pipeline import payload, validate
from pipeline.campaign.prepare import PreparedBatch, prepared_batches
from pipeline.errors import UsageError
from pipeline.send import SendJob
from pipeline.spec import CampaignSpec


@dataclass(frozen=True)
class TestSend:
    """The rows chosen for a test send: the input rows, their checked frame (key and test number), and the jobs."""

    __test__ = False  # not a pytest class, whatever its name

    batch: PreparedBatch
    jobs: list[SendJob]


def parse_test_numbers(text: str, *, default_region: str | None) -> list[str]:
    """The test numbers of `--test-to` ("+14155550123,+447700900123"), in E.164, each once, in the order given.
    A number that is not valid is a UsageError naming it (these are the team's own numbers, not recipients' data)."""
    from pipeline import phones  # only v3 campaigns load phonenumbers

    given = [part.strip() for part in text.split(",") if part.strip()]
    if not given:
        raise UsageError("--test-to needs at least one phone number, e.g. --test-to +14155550123")
    decided = phones.normalise_phones(pl.Series(given, dtype=pl.String), default_region=default_region)
    numbers: list[str] = []
    for written, e164, error in zip(given, decided[phones.E164], decided[phones.PHONE_ERROR], strict=True):
        if e164 is None:
            raise UsageError(f"--test-to: {written!r} is not a usable phone number: {error}")
        if e164 not in numbers:
            numbers.append(e164)
    return numbers


def choose_test_rows(spec: CampaignSpec, numbers: list[str], *, declared: payload.Declared = None) -> TestSend:
    """The first valid rows of the input, one per test number, each addressed to its test number. Their keys are
    new for every test send (a second test send after a template change must text again) and never a campaign
    row's key (so a test send can never make the server replay an answer to the real campaign, or the reverse)."""
    wanted = len(numbers)
    frames: list[pl.DataFrame] = []
    chosen: list[pl.DataFrame] = []
    taken = 0
    for batch in prepared_batches(spec, keys=True, declared=declared):
        rows = batch.payloads.head(wanted - taken)
        if rows.height:
            chosen.append(rows.select(payload.ROW, payload.BODY, payload.KEY))
            frames.append(batch.frame.filter(pl.col(payload.ROW).is_in(rows[payload.ROW].implode())))
            taken += rows.height
        if taken == wanted:
            break
    if not taken:
        raise UsageError(f"{spec.spec_path}: --test-to: the input has no valid row to take the message from")
    rows = pl.concat(chosen)
    nonce = secrets.token_hex(8)
    jobs: list[SendJob] = []
    keys: list[str] = []
    for (row, body, key), number in zip(rows.iter_rows(), numbers, strict=False):
        fields = json.loads(body)
        fields["to"] = [number]
        test_key = "test-" + hashlib.blake2b(f"{nonce}|{key}|{number}".encode(), digest_size=16).hexdigest()
        keys.append(test_key)
        jobs.append(SendJob(row=row, key=test_key, body=json.dumps(fields, ensure_ascii=False).encode()))
    checked = pl.DataFrame(
        {
            payload.ROW: rows[payload.ROW],
            validate.STATUS: pl.Series([None] * rows.height, dtype=pl.String),
            validate.ERROR: pl.Series([None] * rows.height, dtype=pl.String),
            payload.TO: pl.Series(numbers[: rows.height], dtype=pl.String),
            payload.KEY: pl.Series(keys, dtype=pl.String),
        }
    )
    empty = pl.DataFrame(schema={payload.ROW: pl.UInt32, payload.BODY: pl.String, payload.KEY: pl.String})
    return TestSend(PreparedBatch(frame=pl.concat(frames), checked=checked, payloads=empty), jobs)
