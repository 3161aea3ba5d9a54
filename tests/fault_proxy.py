"""A fault layer in front of a SandboxServer: a real HTTP/1.1 proxy on 127.0.0.1.

Each request a client sends is forwarded to the sandbox, which acts on it as the real API would (counts the message,
keeps its Idempotency-Key). A *fate* chosen per request then decides what the client gets:

- ``Fate.PASS``: the sandbox's answer, byte for byte;
- ``Fate.RESET_AFTER_ANSWER``: the sandbox answered - the message went out - but the client gets an RST instead;
- ``Fate.RESET_IN_FLIGHT``: the client gets an RST as soon as the sandbox has counted the request, before its answer
  (with the sandbox's ``latency_ms``, its key is then still in flight there).

Every exchange is recorded (``exchanges``) with the sandbox's status and whether it was a replay
(``Idempotent-Replayed: true``), so a test can prove what really happened on the wire::

    with SandboxServer() as sandbox, FaultProxy(sandbox, drop_after_answer(0.1, seed=3)) as proxy:
        run(base_url=proxy.url)
    assert proxy.dropped() and all(n == 1 for n in sandbox.accepted_by_number.values())
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from pipeline.sandbox import SandboxServer
from tests.fault_server import Request, _content_length, _parse_head, _reset

__all__ = ["Exchange", "Fate", "FaultProxy", "drop_after_answer"]

_MAX_HEAD_BYTES = 64 * 1024
# RESET_IN_FLIGHT waits at most this long for the sandbox to count the request (it takes microseconds)
_ARRIVAL_TIMEOUT_S = 5.0


class Fate(enum.Enum):
    PASS = "pass"
    RESET_AFTER_ANSWER = "reset_after_answer"
    RESET_IN_FLIGHT = "reset_in_flight"


@dataclass(frozen=True)
class Exchange:
    """One request as forwarded, and what became of it."""

    index: int  # 0-based order of arrival at the proxy (exchanges are recorded when they end)
    method: str
    path: str
    key: str | None  # the Idempotency-Key header
    fate: Fate
    status: int | None  # the sandbox's answer (None when the client was reset before it came)
    replayed: bool  # the sandbox answered with `Idempotent-Replayed: true`
    error_code: str | None  # the v3 error code, when the answer names one (e.g. CONFLICT_001)


FateScript = Callable[[Request], Fate]


def drop_after_answer(rate: float, *, seed: int) -> FateScript:
    """RESET_AFTER_ANSWER for about `rate` of the message sends (POST), PASS for the rest and for every other request.

    The choice depends only on the request's key and how many times that key was seen (and the seed), not on the
    order in which concurrent requests arrive: the same campaign meets the same faults every time."""
    lock = threading.Lock()
    seen: dict[str, int] = {}

    def fate(request: Request) -> Fate:
        if request.method != "POST":
            return Fate.PASS
        key = request.idempotency_key or ""
        with lock:
            attempt = seen.get(key, 0)
            seen[key] = attempt + 1
        drop = random.Random(f"{seed}:{key}:{attempt}").random() < rate
        return Fate.RESET_AFTER_ANSWER if drop else Fate.PASS

    return fate


class FaultProxy:
    """Listens on 127.0.0.1 in a daemon thread; forwards to `sandbox`; `fate` may be replaced between requests."""

    def __init__(self, sandbox: SandboxServer, fate: FateScript | None = None) -> None:
        upstream = urlsplit(sandbox.url)
        assert upstream.hostname is not None
        assert upstream.port is not None
        self._upstream = (upstream.hostname, upstream.port)
        self._sandbox = sandbox
        self.fate: FateScript = fate if fate is not None else (lambda _request: Fate.PASS)
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self.arrivals = 0  # requests received from clients so far
        self._forwarded = 0  # requests written to the sandbox; only touched on the proxy's loop
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    # what happened

    def recorded(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def dropped(self) -> list[Exchange]:
        return [e for e in self.recorded() if e.fate is not Fate.PASS]

    @property
    def open_connections(self) -> int:
        """Client connections not yet closed (a killed client's are closed once the proxy has read all it sent)."""
        return len(self._tasks)

    def sends_for(self, key: str) -> list[Exchange]:
        """The message sends (POST) that carried `key`, in order."""
        return [e for e in self.recorded() if e.method == "POST" and e.key == key]

    # lifecycle

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("FaultProxy is not listening; call start() first")
        return self._url

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is None or stop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # re-raised in the test's thread by start() or stop()
            self._error = exc
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._on_client, "127.0.0.1", 0, limit=_MAX_HEAD_BYTES)
        host, port = server.sockets[0].getsockname()[:2]
        self._url = f"http://{host}:{port}"
        ready.set()
        await self._stop.wait()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    # one client connection, with its own connection to the sandbox

    async def _on_client(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    raw_head = await client_in.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client hung up between requests
                method, path, _version, headers = _parse_head(raw_head)
                body = await client_in.readexactly(_content_length(headers))
                with self._lock:
                    request = Request(method, path, headers, body, index=self.arrivals, connection=0)
                    self.arrivals += 1
                fate = self.fate(request)
                if upstream is None:
                    upstream = await asyncio.open_connection(*self._upstream)
                sandbox_in, sandbox_out = upstream
                sandbox_out.write(raw_head + body)
                await sandbox_out.drain()
                self._forwarded += 1
                if fate is Fate.RESET_IN_FLIGHT:
                    await self._until_counted(self._forwarded)
                    self._record(request, fate)
                    _reset(client_out)
                    return
                answer_head, answer_body = await _read_answer(sandbox_in, head_only=method == "HEAD")
                self._record(request, fate, answer_head, answer_body)
                if fate is Fate.RESET_AFTER_ANSWER:
                    _reset(client_out)
                    return
                client_out.write(answer_head + answer_body)
                await client_out.drain()
                if b"\r\nconnection: close" in answer_head.lower():
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # either side went away, or the proxy is stopping
        finally:
            self._tasks.discard(task)
            if upstream is not None:
                upstream[1].close()
            client_out.close()

    async def _until_counted(self, requests: int) -> None:
        """Until the sandbox has counted `requests` requests: every one forwarded so far (exact when the client sends
        one request at a time; the proxy is the sandbox's only client)."""
        deadline = time.monotonic() + _ARRIVAL_TIMEOUT_S
        while self._sandbox.requests_total < requests:
            if time.monotonic() > deadline:
                raise AssertionError(f"the sandbox never counted request {requests}")
            await asyncio.sleep(0.001)

    def _record(self, request: Request, fate: Fate, head: bytes = b"", body: bytes = b"") -> None:
        status = int(head.split(b" ", 2)[1]) if head else None
        code = None
        if status is not None and status >= 400:
            with contextlib.suppress(ValueError):
                error = json.loads(body).get("error")
                code = error.get("code") if isinstance(error, dict) else None
        exchange = Exchange(
            request.index,
            request.method,
            request.path,
            request.idempotency_key,
            fate,
            status,
            replayed=b"\r\nidempotent-replayed: true" in head.lower(),
            error_code=code,
        )
        with self._lock:
            self.exchanges.append(exchange)


async def _read_answer(reader: asyncio.StreamReader, *, head_only: bool) -> tuple[bytes, bytes]:
    """One response from the sandbox, which always frames a body with Content-Length (none on 204)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = b"" if head_only else await reader.readexactly(length)
    return head, body
