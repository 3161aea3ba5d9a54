"""A fault-injecting HTTP/1.1 server for tests of the batch sender.

The real Sent.dm API, and the network in front of it, can answer late or
slowly, refuse with 429/503, reset the connection after it already queued the
message, close without answering, hang, or send garbage. :class:`FaultServer`
is a real server on 127.0.0.1 whose answer to each request is chosen by a
*script*, so a test can reproduce any of these on demand, and it counts per
``Idempotency-Key`` how many messages it accepted, so the test can then prove
"no duplicate sends"::

    script = sequence(Reply(503, headers={"Retry-After": "0"}), Fault.RESET_AFTER_READ)
    with FaultServer(script) as server:
        send_batch(base_url=server.url)
    assert server.duplicate_keys() == []

The server runs in a daemon thread with its own asyncio event loop and speaks
just enough HTTP/1.1 for httpx and raw-socket clients: keep-alive, pipelining,
``Content-Length`` request bodies. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import json
import random
import socket
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

__all__ = ["Fault", "FaultServer", "Reply", "Request", "Script", "chaos", "per_key", "sequence"]

# asyncio's StreamReader refuses a request head longer than this (answered 431).
_MAX_HEAD_BYTES = 64 * 1024
_READ_CHUNK = 64 * 1024
# The answer to send for Fault.MALFORMED: a status line without a numeric status.
_MALFORMED_ANSWER = b"HTTP/1.1 abc\r\n\r\n"


@dataclass(frozen=True)
class Reply:
    """Answer the request with an ordinary HTTP response, possibly late or slowly.

    ``body``: a dict is sent as JSON; ``None`` means ``{"messageId": "<uuid4>"}``
    for a 2xx and ``{"message": "error"}`` otherwise; ``b""`` means no body.
    ``delay_s`` waits before answering; ``drip_s`` sends the body one byte at a
    time with that pause between bytes. ``accepted`` overrides whether the
    message counts as accepted (default: the status is 2xx).
    """

    status: int = 200
    body: bytes | str | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drip_s: float = 0.0
    accepted: bool | None = None

    @property
    def counts_as_accepted(self) -> bool:
        """Whether the server counts this answer as "the message went out"."""
        return 200 <= self.status < 300 if self.accepted is None else self.accepted


class Fault(enum.Enum):
    """Misbehave instead of answering.

    "Accepted" faults model the dangerous case for duplicate sends: the API
    queued the message but the client never learns it.
    """

    # RST without answering; NOT accepted. The body is still read first, so the script can see it;
    # for a body that fits in the socket buffers the client cannot tell the difference.
    RESET_BEFORE_READ = "reset_before_read"
    RESET_AFTER_READ = "reset_after_read"  # accepted, then RST without answering
    CLOSE_AFTER_READ = "close_after_read"  # accepted, then a clean close (FIN) without answering
    HANG = "hang"  # accepted, never answered until the client hangs up or the server stops
    MALFORMED = "malformed"  # answered with bytes that are not HTTP, then closed; NOT accepted


@dataclass(frozen=True)
class Request:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    index: int  # 0-based order of arrival across the whole server
    connection: int  # 0-based id of the TCP connection it came on (proves keep-alive)

    @property
    def idempotency_key(self) -> str | None:
        """The ``Idempotency-Key`` header, if any."""
        return self.headers.get("idempotency-key")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


Script: TypeAlias = Callable[[Request], "Reply | Fault"]

_OK = Reply()


def sequence(*steps: Reply | Fault, then: Reply | Fault = _OK) -> Script:
    """The n-th request (counted by this script) gets ``steps[n]``; later ones get ``then``."""
    lock = threading.Lock()
    calls = 0

    def script(_request: Request) -> Reply | Fault:
        nonlocal calls
        with lock:
            n, calls = calls, calls + 1
        return steps[n] if n < len(steps) else then

    return script


def per_key(steps_by_attempt: Callable[[str, int], Reply | Fault]) -> Script:
    """Call ``steps_by_attempt(key, attempt)``: attempt is 0 the first time a key is seen.

    A request without an ``Idempotency-Key`` is treated as key ``""``.
    """
    lock = threading.Lock()
    seen: dict[str, int] = {}

    def script(request: Request) -> Reply | Fault:
        key = request.idempotency_key or ""
        with lock:
            attempt = seen.get(key, 0)
            seen[key] = attempt + 1
        return steps_by_attempt(key, attempt)

    return script


def chaos(rate: float, seed: int, faults: Sequence[Reply | Fault]) -> Script:
    """With probability ``rate`` answer a random one of ``faults``, otherwise ``Reply()``.

    Deterministic for a given seed and order of arrival.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, got {rate!r}")
    choices = tuple(faults)
    if rate > 0.0 and not choices:
        raise ValueError("faults must not be empty when rate > 0")
    lock = threading.Lock()
    rng = random.Random(seed)

    def script(_request: Request) -> Reply | Fault:
        with lock:
            if rng.random() < rate:
                return rng.choice(choices)
        return _OK

    return script


class FaultServer:
    """An HTTP/1.1 server on a real socket whose every answer is decided by ``script``.

    ``script`` may be replaced between requests. ``requests`` and
    ``accepted_by_key`` are filled on the server thread under a lock; read them
    once the client has finished (or through the locked methods).
    """

    def __init__(self, script: Script | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script: Script = script if script is not None else (lambda _request: _OK)
        self.requests: list[Request] = []
        self.accepted_by_key: dict[str, int] = {}  # a request without a key counts under ""
        # Exceptions raised by the script (answered 500): a test can assert this stays empty.
        self.script_errors: list[Exception] = []
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None
        # Only touched on the server loop.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connection_count = 0

    # results

    def accepted_total(self) -> int:
        """How many messages were accepted, over all keys."""
        with self._lock:
            return sum(self.accepted_by_key.values())

    def duplicate_keys(self) -> list[str]:
        """Keys accepted more than once (``""`` collects the requests without a key)."""
        with self._lock:
            return [key for key, count in self.accepted_by_key.items() if count > 1]

    # lifecycle

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:54321``; valid after ``start()``."""
        if self._url is None:
            raise RuntimeError("FaultServer is not listening; call start() first")
        return self._url

    def start(self) -> FaultServer:
        """Listen in a daemon thread; return once the socket is bound."""
        if self._thread is not None:
            raise RuntimeError("a FaultServer can only be started once")
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="fault-server", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def stop(self) -> None:
        """Close the listener and every connection (hung ones too), and join the thread."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None or stop_event is None:
            return
        # RuntimeError: the loop already ended (stopped twice, or crashed).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop_event.set)
        thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # re-raised by start() or stop() in the test's thread
            self._error = exc
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._on_connection, self._host, self._port, limit=_MAX_HEAD_BYTES)
        host, port = server.sockets[0].getsockname()[:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        ready.set()
        await self._stop_event.wait()
        server.close()
        # Abort instead of a graceful close: a hung or non-reading client would keep
        # a graceful close (which flushes first) waiting, and stop() must be prompt.
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # one connection

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        connection, self._connection_count = self._connection_count, self._connection_count + 1
        try:
            while await self._serve_one(reader, writer, connection):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request or mid-answer: nobody is left to answer
        except asyncio.CancelledError:
            # stop() cancelled us. Ending normally matters: asyncio.streams (3.11) calls
            # task.exception() on this task and would log the CancelledError as an error.
            pass
        finally:
            del self._connections[task]
            writer.close()  # no-op after a reset; otherwise flushes, then FIN

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int) -> bool:
        """Read one request and act on it; return whether to keep the connection open."""
        try:
            raw_head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # the client hung up between requests (or mid-head)
        except asyncio.LimitOverrunError:
            await _send(writer, 431, b"request head too large\n", [])
            return False
        try:
            method, path, version, headers = _parse_head(raw_head)
            length = _content_length(headers)
        except ValueError as exc:
            await _send(writer, 400, f"{exc}\n".encode(), [])
            return False
        # Read the body even for RESET_BEFORE_READ: the script may want to look at it.
        body = await reader.readexactly(length)
        with self._lock:
            request = Request(method, path, headers, body, len(self.requests), connection)
            self.requests.append(request)
        action = self._decide(request)
        if isinstance(action, Fault):
            await self._fault(action, request, reader, writer)
            return False
        return await self._reply(action, request, writer, keep_alive=_keep_alive(version, headers))

    def _decide(self, request: Request) -> Reply | Fault:
        try:
            return self.script(request)
        except Exception as exc:  # a broken script must fail visibly, not leave the client hanging
            with self._lock:
                self.script_errors.append(exc)
            return Reply(500, {"message": f"fault server script raised {exc!r}"}, accepted=False)

    def _accept(self, request: Request) -> None:
        key = request.idempotency_key or ""
        with self._lock:
            self.accepted_by_key[key] = self.accepted_by_key.get(key, 0) + 1

    async def _reply(self, reply: Reply, request: Request, writer: asyncio.StreamWriter, *, keep_alive: bool) -> bool:
        # Counted before any delay: a real API commits the message before it answers,
        # so a client that gives up on a slow answer has still sent it.
        if reply.counts_as_accepted:
            self._accept(request)
        if reply.delay_s > 0:
            await asyncio.sleep(reply.delay_s)
        body, content_type = _encode_body(reply)
        headers = [("Content-Type", content_type)] if content_type else []
        if _tokens(reply.headers, "connection") & {"close"}:
            keep_alive = False
        elif not keep_alive:
            headers.append(("Connection", "close"))
        head_only = request.method == "HEAD" or reply.status in (204, 304)
        await _send(writer, reply.status, body, headers + list(reply.headers.items()), head_only, reply.drip_s)
        return keep_alive

    async def _fault(
        self, fault: Fault, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # On return the caller closes the connection (a FIN unless already reset).
        if fault is Fault.RESET_BEFORE_READ:
            _reset(writer)
            return
        if fault is Fault.MALFORMED:
            writer.write(_MALFORMED_ANSWER)
            await writer.drain()
            return
        # The remaining faults lose the answer to a message that did go out.
        self._accept(request)
        if fault is Fault.RESET_AFTER_READ:
            _reset(writer)
        elif fault is Fault.HANG:
            # Swallow whatever else arrives until the client hangs up; stop() cancels this.
            while await reader.read(_READ_CHUNK):
                pass


# HTTP helpers


def _parse_head(raw: bytes) -> tuple[str, str, str, dict[str, str]]:
    request_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise ValueError(f"bad request line {request_line!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"bad header line {line!r}")
        name, value = name.lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return parts[0], parts[1], parts[2], headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise ValueError("only Content-Length request bodies are supported")
    raw = headers.get("content-length", "0")
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"bad Content-Length {raw!r}")
    return int(raw)


def _tokens(headers: dict[str, str], name: str) -> set[str]:
    """The comma-separated, lower-cased tokens of a header, looked up case-insensitively."""
    values = [value for key, value in headers.items() if key.lower() == name]
    return {token.strip().lower() for value in values for token in value.split(",")}


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = _tokens(headers, "connection")
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


def _encode_body(reply: Reply) -> tuple[bytes, str | None]:
    """The body bytes and their Content-Type (None for raw bytes)."""
    body = reply.body
    if body is None:
        ok = 200 <= reply.status < 300
        body = {"messageId": str(uuid.uuid4())} if ok else {"message": "error"}
    if isinstance(body, dict):
        return json.dumps(body).encode(), "application/json"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return body, None


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]],
    head_only: bool = False,
    drip_s: float = 0.0,
) -> None:
    """Write one response; headers given later replace earlier ones of the same name."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    fields = {} if status in (204, 304) else {"content-length": ("Content-Length", str(len(body)))}
    for name, value in headers:
        fields[name.lower()] = (name, value)
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields.values()) + "\r\n"
    if head_only:
        body = b""
    if drip_s <= 0:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        return
    writer.write(head.encode("latin-1"))
    await writer.drain()
    for i in range(len(body)):
        if i:
            await asyncio.sleep(drip_s)
        writer.write(body[i : i + 1])
        await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with an RST, as a crashing server or a middlebox would."""
    sock = writer.get_extra_info("socket")
    # SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
