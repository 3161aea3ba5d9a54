"""Contender: the official Sent.dm Python SDK (`pip install sentdm`, module `sent_dm`), as a user would drive it:
its `AsyncSent` client with default settings, the SDK's generic `post()` for the v1 endpoint (the SDK's typed
resources cover v3 only), and an `asyncio.Semaphore` for the concurrency.

The semaphore is acquired before each task is created, so at most CONCURRENCY tasks exist at once and memory stays
flat however many rows there are. The SDK adds `x-api-key` itself; `x-sender-id` goes in as a per-request header.

    python bench/contenders/sdk_async.py BASE_URL CSV CONCURRENCY ROWS
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
import sent_dm
from common import API_KEY, MESSAGES_PATH, SENDER_ID, Tally, parse_args, read_bodies, report, spawn_bounded


async def send_all(base_url: str, bodies: list[dict[str, Any]], concurrency: int, tally: Tally) -> None:
    options: sent_dm.RequestOptions = {"headers": {"x-sender-id": SENDER_ID}}
    async with sent_dm.AsyncSent(api_key=API_KEY, base_url=base_url) as client:

        async def send(body: dict[str, Any]) -> None:
            try:
                # cast_to=httpx.Response: the SDK's documented way to call an endpoint it has no method for;
                # it raises APIStatusError for any non-2xx answer (after its own retries)
                await client.post(MESSAGES_PATH, cast_to=httpx.Response, body=body, options=options)
            except sent_dm.APIStatusError as exc:
                tally.fail(f"HTTP {exc.status_code}")
            except sent_dm.APIError as exc:
                tally.fail(type(exc).__name__)
            else:
                tally.ok()

        await spawn_bounded(bodies, concurrency, send)


def main() -> int:
    job = parse_args(__doc__ or "")
    bodies = read_bodies(job)
    tally = Tally()
    started = time.perf_counter()
    asyncio.run(send_all(job.base_url, bodies, job.concurrency, tally))
    return report(job, tally, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
