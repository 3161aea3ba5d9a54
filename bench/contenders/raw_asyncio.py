"""Contender: a minimal hand-written HTTP/1.1 client on plain asyncio - the practical ceiling for Python here.

A fixed number of keep-alive connections (CONCURRENCY of them, fewer if there are fewer rows), each driven by one
coroutine that takes the next row from a shared iterator, writes pre-built request bytes and waits for the answer.
Response parsing is the least that is still correct for this server: the status code, Content-Length, and the body
skipped. No chunked encoding, no redirects, no TLS, no retries: everything a real client needs is missing, which is
the point - it shows how much of a real client's cost is the client.

    python bench/contenders/raw_asyncio.py BASE_URL CSV CONCURRENCY ROWS [--api v1|v3]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from common import Job, Tally, encode, parse_args, read_bodies, report


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("server closed the connection"))

    def request(self, data: bytes) -> asyncio.Future[int]:
        """Write one request; the future resolves to the answer's status code."""
        if self.transport is None:
            raise ConnectionResetError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ValueError("answer without Content-Length"))
            return
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self.buffer) < total:
            return  # the body is still on its way
        status = int(head[9:12])  # "http/1.1 200 ok"
        del self.buffer[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


def build_requests(job: Job, bodies: list[bytes]) -> list[bytes]:
    """Complete request bytes for every body: the fixed head is built once, only Content-Length varies."""
    url = urlsplit(job.base_url)
    host = url.netloc
    lines = [f"POST {job.path} HTTP/1.1", f"Host: {host}", "User-Agent: raw-asyncio-bench"]
    lines += [f"{name}: {value}" for name, value in job.headers.items()]
    head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()
    return [head + str(len(body)).encode() + b"\r\n\r\n" + body for body in bodies]


async def worker(host: str, port: int, requests: Iterator[bytes], tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Connection, host, port)
    try:
        # the iterator is shared by all workers; in one thread `next()` hands each request to exactly one of them
        for data in requests:
            try:
                status = await conn.request(data)
            except (OSError, ValueError) as exc:
                tally.fail(type(exc).__name__)
                _, conn = await loop.create_connection(Connection, host, port)
                continue
            if 200 <= status < 300:
                tally.ok()
            else:
                tally.fail(f"HTTP {status}")
    finally:
        if conn.transport is not None:
            conn.transport.close()


async def send_all(base_url: str, requests: list[bytes], concurrency: int, tally: Tally) -> None:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    shared = iter(requests)
    workers = min(concurrency, len(requests))
    await asyncio.gather(*(worker(host, port, shared, tally) for _ in range(workers)))


def main() -> int:
    job = parse_args(__doc__ or "")
    requests = build_requests(job, encode(read_bodies(job)))
    tally = Tally()
    started = time.perf_counter()
    asyncio.run(send_all(job.base_url, requests, job.concurrency, tally))
    return report(job, tally, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
