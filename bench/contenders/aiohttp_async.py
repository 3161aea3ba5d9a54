"""Contender: `aiohttp.ClientSession` with an `asyncio.Semaphore`.

The connector's limit equals the concurrency (one connection per request in flight, reused with keep-alive); the
semaphore is acquired before each task is created, so at most CONCURRENCY tasks exist at once.

    python bench/contenders/aiohttp_async.py BASE_URL CSV CONCURRENCY ROWS [--api v1|v3]
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
from common import Tally, encode, parse_args, read_bodies, report, spawn_bounded


async def send_all(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, tally: Tally) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:

        async def send(body: bytes) -> None:
            try:
                async with session.post(url, data=body) as response:
                    await response.read()  # read the answer so the connection goes back to the pool
                    if 200 <= response.status < 300:
                        tally.ok()
                    else:
                        tally.fail(f"HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.fail(type(exc).__name__)

        await spawn_bounded(bodies, concurrency, send)


def main() -> int:
    job = parse_args(__doc__ or "")
    bodies = encode(read_bodies(job))
    tally = Tally()
    started = time.perf_counter()
    asyncio.run(send_all(job.url, job.headers, bodies, job.concurrency, tally))
    return report(job, tally, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
