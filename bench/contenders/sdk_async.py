"""Contender: the official Sent.dm Python SDK (`pip install sentdm`, module `sent_dm`), as a user would drive it:
its `AsyncSent` client with default settings and an `asyncio.Semaphore` for the concurrency.

The SDK is generated for v3: on v3 each row is its typed `client.messages.send(to=..., template=..., channel=...)`,
which also parses the answer into its response model. The v1 endpoint has no method of its own, so there each row
is the SDK's generic `post()`, which the SDK documents for endpoints it has no method for; `x-sender-id` goes in as
a per-request header. The SDK adds `x-api-key` itself.

The semaphore is acquired before each task is created, so at most CONCURRENCY tasks exist at once and memory stays
flat however many rows there are.

    python bench/contenders/sdk_async.py BASE_URL CSV CONCURRENCY ROWS [--api v1|v3]
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
import sent_dm
from common import API_KEY, MESSAGES_PATH, SENDER_ID, Tally, parse_args, read_bodies, report, spawn_bounded


async def send_all(base_url: str, api: str, bodies: list[dict[str, Any]], concurrency: int, tally: Tally) -> None:
    options: sent_dm.RequestOptions = {"headers": {"x-sender-id": SENDER_ID}}
    async with sent_dm.AsyncSent(api_key=API_KEY, base_url=base_url) as client:

        async def send(body: dict[str, Any]) -> None:
            try:
                # both raise APIStatusError for any non-2xx answer (after the SDK's own retries)
                if api == "v3":
                    await client.messages.send(to=body["to"], template=body["template"], channel=body["channel"])
                else:
                    # cast_to=httpx.Response: the SDK's documented way to call an endpoint it has no method for
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
    asyncio.run(send_all(job.base_url, job.api, bodies, job.concurrency, tally))
    return report(job, tally, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
