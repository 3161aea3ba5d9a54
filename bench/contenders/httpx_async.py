"""Contender: a plain `httpx.AsyncClient` (as `pip install httpx` gives it) with an `asyncio.Semaphore`.

The client's pool is sized to the concurrency, so requests never queue inside httpx for a connection; the semaphore
is acquired before each task is created, so at most CONCURRENCY tasks exist at once.

    python bench/contenders/httpx_async.py BASE_URL CSV CONCURRENCY ROWS [--api v1|v3]
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
from common import Tally, encode, parse_args, read_bodies, report, spawn_bounded


async def send_all(url: str, headers: dict[str, str], bodies: list[bytes], concurrency: int, tally: Tally) -> None:
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # trust_env=False: no proxy from the environment may sit between us and the local mock
    async with httpx.AsyncClient(headers=headers, limits=pool, timeout=30, trust_env=False) as client:

        async def send(body: bytes) -> None:
            try:
                response = await client.post(url, content=body)
            except httpx.HTTPError as exc:
                tally.fail(type(exc).__name__)
            else:
                if response.is_success:
                    tally.ok()
                else:
                    tally.fail(f"HTTP {response.status_code}")

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
