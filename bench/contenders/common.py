"""What every contender shares, so that they differ only in how they send: the command line, reading the CSV, the
request body and headers, and the one-line JSON report that `bench/compare.py` reads back.

Every contender is run as `python bench/contenders/NAME.py BASE_URL CSV CONCURRENCY ROWS [--api v1|v3]`: it sends
the first ROWS rows of CSV with at most CONCURRENCY requests in flight, prints one JSON line (`{"sent": ...,
"failed": ..., "send_s": ..., "first_error": ...}`) and exits 0 only if every request got a 2xx.

- v1 (the default): `POST BASE_URL/v1/messages/contact`, headers `x-sender-id` + `x-api-key`, body `{contactId,
  templateId, messageBody, webhookUrl}` from `contact_id,first_name,order_id`.
- v3: `POST BASE_URL/v3/messages`, header `x-api-key`, body `{"to": [E.164], "template": {"id", "parameters"},
  "channel": ["sms"]}` - the product's body for the benchmark's v3 spec - from `phone,first_name,order_id,carrier`.
  The numbers are written as people keep them, so each script does what a user's would: `phonenumbers.parse(text,
  "US")`, `is_valid_number`, `format_number(E164)` per row, before sending (a row that is not valid is not sent and
  counts as failed). That work is in each contender's CPU time, as the product's bulk normalisation is in its own.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

MESSAGES_PATH = "/v1/messages/contact"
V3_MESSAGES_PATH = "/v3/messages"
# The same template and webhook the product's benchmark spec uses, so every contender sends the same bytes.
TEMPLATE_ID = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"
WEBHOOK_URL = "https://example.com/webhook/message-status"
SENDER_ID = os.environ.get("SENT_DM_SENDER_ID", "0b6f5a1e-4c3d-4e2f-9a8b-7c6d5e4f3a2b")
API_KEY = os.environ.get("SENT_DM_API_KEY", "bench-key")
HEADERS = {"x-sender-id": SENDER_ID, "x-api-key": API_KEY, "Content-Type": "application/json"}
V3_HEADERS = {"x-api-key": API_KEY, "Content-Type": "application/json"}
DEFAULT_REGION = "US"  # the region of numbers written without +country code, as in the benchmark's v3 spec


@dataclass(frozen=True)
class Job:
    base_url: str
    csv_path: str
    concurrency: int
    rows: int
    api: str = "v1"

    @property
    def path(self) -> str:
        return V3_MESSAGES_PATH if self.api == "v3" else MESSAGES_PATH

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.path

    @property
    def headers(self) -> dict[str, str]:
        return V3_HEADERS if self.api == "v3" else HEADERS


@dataclass
class Tally:
    """Counts of answers; `first_error` keeps one example so a failure says what went wrong."""

    sent: int = 0
    failed: int = 0
    first_error: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    def ok(self) -> None:
        self.sent += 1

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.statuses[reason] = self.statuses.get(reason, 0) + 1
        if self.first_error is None:
            self.first_error = reason


def parse_args(description: str) -> Job:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8080 (the API's path is appended)")
    parser.add_argument(
        "csv_path", help="v1: contact_id, first_name, order_id; v3: phone, first_name, order_id, carrier"
    )
    parser.add_argument("concurrency", type=int, help="requests in flight at once")
    parser.add_argument("rows", type=int, help="send the first ROWS rows")
    parser.add_argument("--api", choices=["v1", "v3"], default="v1", help="the API generation to send to")
    args = parser.parse_args()
    return Job(args.base_url, args.csv_path, max(1, args.concurrency), args.rows, args.api)


def read_bodies(job: Job) -> list[dict[str, Any]]:
    """The request body of each of the first `job.rows` rows (a dict for json=): v1 as the seed example builds it,
    v3 with the number in E.164 (rows whose number is not valid are left out)."""
    if job.api == "v3":
        return read_v3_bodies(job)
    bodies: list[dict[str, Any]] = []
    with open(job.csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if len(bodies) >= job.rows:
                break
            bodies.append(
                {
                    "contactId": row["contact_id"],
                    "templateId": TEMPLATE_ID,
                    "messageBody": {"name": row["first_name"], "order_id": row["order_id"]},
                    "webhookUrl": WEBHOOK_URL,
                }
            )
    return bodies


def read_v3_bodies(job: Job) -> list[dict[str, Any]]:
    import phonenumbers

    phonenumbers.enable_pattern_cache()  # as the product's own fallback does: many countries' patterns stay compiled
    bodies: list[dict[str, Any]] = []
    with open(job.csv_path, newline="", encoding="utf-8") as handle:
        for n, row in enumerate(csv.DictReader(handle)):
            if n >= job.rows:
                break
            try:
                number = phonenumbers.parse(row["phone"], DEFAULT_REGION)
            except phonenumbers.NumberParseException:
                continue
            if not phonenumbers.is_valid_number(number):
                continue
            parameters = {"name": row["first_name"], "order_id": row["order_id"], "carrier": row["carrier"]}
            bodies.append(
                {
                    "to": [phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)],
                    "template": {"id": TEMPLATE_ID, "parameters": parameters},
                    "channel": ["sms"],
                }
            )
    return bodies


def encode(bodies: list[dict[str, Any]]) -> list[bytes]:
    """Bodies as JSON bytes, for the clients that take raw content; compact, as the product sends them."""
    return [json.dumps(body, separators=(",", ":")).encode() for body in bodies]


def report(job: Job, tally: Tally, send_s: float) -> int:
    """Print the one-line JSON report and return the exit code: 0 only if every row was sent with a 2xx."""
    complete = tally.sent == job.rows and tally.failed == 0
    print(
        json.dumps(
            {
                "sent": tally.sent,
                "failed": tally.failed,
                "send_s": round(send_s, 4),
                "first_error": tally.first_error,
                "errors": tally.statuses,
            }
        ),
        flush=True,
    )
    if not complete and tally.first_error is None:
        print(f"only {tally.sent} of {job.rows} rows were read or sent", file=sys.stderr)
    return 0 if complete else 1


async def spawn_bounded(items: list[Any], concurrency: int, send: Callable[[Any], Awaitable[None]]) -> None:
    """One task per item, each started only once the semaphore has room - what a user writes around an async
    client - so at most `concurrency` tasks exist at once and memory stays flat however many rows there are."""
    limit = asyncio.Semaphore(concurrency)

    async def guarded(item: Any) -> None:
        try:
            await send(item)
        finally:
            limit.release()

    tasks: set[asyncio.Task[None]] = set()
    for item in items:
        await limit.acquire()
        task = asyncio.create_task(guarded(item))
        tasks.add(task)  # keep a reference: the loop holds tasks only weakly
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
