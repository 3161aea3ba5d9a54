"""The sandbox's HTTP machinery: a small HTTP/1.1 server written directly on ``asyncio``.

It frames requests (strictly: malformed heads, conflicting lengths and chunked bodies are refused), hands each one
to the route of its API generation (``v1``, ``v2``, ``v3``), and writes the answers in order, after the configured
latency, fast enough to be the target of load benchmarks. It is used by ``run`` when a job says
``api.base_url: sandbox``, by ``python -m pipeline sandbox`` through :func:`serve_forever`, and by tests through
:class:`SandboxServer`, which runs the server in a daemon thread.

It never logs or prints, and never puts the ``x-api-key`` value in a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pipeline.sandbox import v1, v2, v3
from pipeline.sandbox.exchange import Request, Response, Route, plain_error
from pipeline.sandbox.lifecycle import DeliveryOptions
from pipeline.sandbox.registry import RegistryError
from pipeline.sandbox.state import SandboxState
from pipeline.sandbox.webhook_posts import WebhookTarget

__all__ = [
    "ENDPOINTS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MESSAGES_PATH",
    "SandboxServer",
    "serve_forever",
]

MESSAGES_PATH = v1.PATH
# (generation, method, path) of every endpoint, for whoever announces the sandbox
ENDPOINTS = (
    ("v1", "POST", v1.PATH),
    ("v2", "POST", v2.PATH),
    ("v3", "POST", v3.MESSAGES_PATH),
    ("v3", "GET", v3.MESSAGES_PATH + "/{id}"),
    ("v3", "GET", v3.TEMPLATES_PATH + "/{id}"),
)
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024

# Past this many unparsed bytes a connection that cannot make progress (a
# delayed answer pending, or a client not reading its answers) stops being read.
_MAX_BUFFERED = MAX_HEADER_BYTES + MAX_BODY_BYTES
_SHUTDOWN_GRACE_S = 1.0
# accepted messages reach the registry file in batches, this often (and when the server stops)
_REGISTRY_COMMIT_S = 0.2
# when the server stops, webhooks still due are given until the last is due plus this long to be delivered
WEBHOOK_GRACE_S = 2.0
# After a "Connection: close" answer we keep reading (and discarding) for a while:
# closing a socket with unread input makes the kernel send RST, which can destroy
# the answer before the client reads it (the "lingering close" of RFC 9112 9.6).
_LINGER_S = 2.0

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
_ROUTERS: tuple[Callable[[str], Route | None], ...] = (v1.route, v2.route, v3.route)

_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _BadRequest(Exception):
    """A request whose framing is broken; it is answered and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RequestHead:
    """Request line and headers of one request, plus what they imply for framing."""

    __slots__ = ("content_length", "expect_continue", "headers", "http10", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        content_length: int,
        keep_alive: bool,
        http10: bool,
        expect_continue: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.http10 = http10
        self.expect_continue = expect_continue


def _parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if _TOKEN_RE.fullmatch(method) is None or not target or "\n" in target or _VERSION_RE.fullmatch(version) is None:
        raise _BadRequest(400, "malformed request line")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    return method, target, version


def _parse_header_lines(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        # The token check also rejects obsolete line folding and "Name :" forms.
        if not sep or _TOKEN_RE.fullmatch(name) is None or "\r" in value or "\n" in value:
            raise _BadRequest(400, "malformed header line")
        name = name.lower()
        value = value.strip(" \t")
        previous = headers.get(name)
        if previous is None:
            headers[name] = value
        elif name == "content-length":
            # Differing lengths are a request-smuggling vector: refuse outright.
            if previous != value:
                raise _BadRequest(400, "conflicting Content-Length headers")
        else:
            headers[name] = f"{previous}, {value}"
    return headers


def _content_length(method: str, headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    text = headers.get("content-length")
    if text is None:
        if method == "POST":
            raise _BadRequest(411, "Content-Length header is required")
        return 0
    if not (text.isascii() and text.isdigit()):
        raise _BadRequest(400, "invalid Content-Length header")
    length = int(text)
    if length > MAX_BODY_BYTES:
        raise _BadRequest(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
    return length


def _parse_head(text: str) -> _RequestHead:
    """Parse a request head (without its final blank line); raise _BadRequest."""
    lines = text.split("\r\n")
    method, target, version = _parse_request_line(lines[0])
    headers = _parse_header_lines(lines[1:])
    http10 = version == "HTTP/1.0"
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    path, _, query = target.partition("?")
    return _RequestHead(
        method=method,
        path=path,
        query=query,
        headers=headers,
        content_length=_content_length(method, headers),
        keep_alive="keep-alive" in tokens if http10 else "close" not in tokens,
        http10=http10,
        expect_continue=not http10 and headers.get("expect", "").lower() == "100-continue",
    )


class _DateHeader:
    """The Date header value, formatted once per second: per response is measurable under load."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._value = now, email.utils.formatdate(now, usegmt=True)
        return self._value


_http_date = _DateHeader()


@functools.lru_cache(maxsize=64)
def _as_in_json(text: str) -> bytes:
    """``text`` as it appears inside a JSON string; cached, as a sandbox sees the same few keys on every request."""
    return json.dumps(text)[1:-1].encode()


class _Engine:
    """The state every connection shares, the open connections, and the dispatch of a request to its route."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.connections: set[_HttpProtocol] = set()
        self.idle: asyncio.Event | None = None

    def handle(self, head: _RequestHead, raw_body: bytes) -> Response:
        """Answer one well-framed request; the route updates the counters."""
        request = Request(head.method, head.path, head.query, head.headers, raw_body)
        response = self._route(request)
        api_key = head.headers.get("x-api-key")
        if api_key:
            # Error messages quote paths and body keys, and v3 message bodies quote template parameters; whatever a
            # client put there, the key itself must never be sent back (as it would appear in our JSON).
            quoted = _as_in_json(api_key)
            if quoted in response.body:
                response.body = response.body.replace(quoted, b"[redacted]")
        return response

    def _route(self, request: Request) -> Response:
        for router in _ROUTERS:
            route = router(request.path)
            if route is None:
                continue
            if request.method not in route.methods:
                allowed = ", ".join(route.methods)
                return plain_error(
                    405, f"{request.method} is not allowed on {request.path}", headers=(("Allow", allowed),)
                )
            return route.answer(request, self.state)
        return plain_error(404, f"no route for {request.method} {request.path}")

    def connection_opened(self, conn: _HttpProtocol) -> None:
        self.connections.add(conn)

    def connection_closed(self, conn: _HttpProtocol) -> None:
        self.connections.discard(conn)
        if not self.connections and self.idle is not None:
            self.idle.set()

    async def close_connections(self) -> None:
        """Close every connection, letting queued answers flush for a short grace."""
        if not self.connections:
            return
        self.idle = asyncio.Event()
        for conn in list(self.connections):
            conn.close()
        try:
            await asyncio.wait_for(self.idle.wait(), _SHUTDOWN_GRACE_S)
        except TimeoutError:
            # A client that never reads keeps close() waiting on its buffer forever.
            for conn in list(self.connections):
                conn.abort()
            await asyncio.sleep(0)  # let connection_lost callbacks release the sockets


class _HttpProtocol(asyncio.Protocol):
    """One client connection: incremental HTTP/1.1 parsing, in-order answers."""

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._scan_from = 0
        self._head: _RequestHead | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_paused = False
        self._reading_paused = False
        self._closing = False
        self._eof = False
        self._linger: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._engine.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._engine.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        self._drain()

    def eof_received(self) -> bool:
        if self._closing:
            return False  # lingering after our last answer: the client is done too
        # Keep our half open so a delayed answer to the last request still goes out.
        self._eof = True
        self._drain()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drain()

    # shutdown hooks used by the engine

    def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def _close_after_answer(self) -> None:
        """Half-close after the last answer and linger, reading, until the client closes."""
        transport = self._transport
        if transport is None or not transport.can_write_eof():
            self.close()
            return
        self._closing = True
        transport.write_eof()
        if self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False
        self._linger = asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    # request handling

    def _drain(self) -> None:
        """Answer every complete buffered request, in order, as far as allowed."""
        while not (self._closing or self._write_paused or self._task is not None):
            head = self._head if self._head is not None else self._read_head()
            if head is None:
                break
            if len(self._buf) < head.content_length:
                break
            body = bytes(self._buf[: head.content_length])
            del self._buf[: head.content_length]
            self._head = None
            self._engine.state.note_request(head.headers)
            # The request takes effect now and only its answer waits out the latency, as on a real server that acts
            # and then is slow to reply: a repeat of its Idempotency-Key in the meantime finds it in flight.
            response = self._engine.handle(head, body)
            if self._engine.state.latency_s > 0.0:
                self._task = asyncio.get_running_loop().create_task(self._answer_later(head, response))
            else:
                self._answer(head, response)
        if self._closing:
            return
        if self._eof and self._task is None and not self._write_paused:
            self.close()
            return
        self._update_reading()

    def _read_head(self) -> _RequestHead | None:
        buf = self._buf
        # Stray CRLFs between requests are allowed (RFC 9112 section 2.2).
        while buf.startswith(b"\r\n"):
            del buf[:2]
            self._scan_from = 0
        end = buf.find(b"\r\n\r\n", self._scan_from)
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self._fail(431, f"request head exceeds {MAX_HEADER_BYTES} bytes")
            else:
                # Resume the search where it stopped so slow headers stay linear.
                self._scan_from = max(0, len(buf) - 3)
            return None
        self._scan_from = 0
        if end > MAX_HEADER_BYTES:
            self._fail(431, f"request head exceeds {MAX_HEADER_BYTES} bytes")
            return None
        text = buf[:end].decode("latin-1")
        del buf[: end + 4]
        try:
            head = _parse_head(text)
        except _BadRequest as exc:
            self._fail(exc.status, exc.message)
            return None
        if head.expect_continue and len(buf) < head.content_length and self._transport is not None:
            self._transport.write(_CONTINUE)
        self._head = head
        return head

    async def _answer_later(self, head: _RequestHead, response: Response) -> None:
        await asyncio.sleep(self._engine.state.latency_s)
        self._task = None
        if self._closing:
            return
        self._answer(head, response)
        self._drain()

    def _answer(self, head: _RequestHead, response: Response) -> None:
        self._send(response, keep_alive=head.keep_alive, http10=head.http10, head_only=head.method == "HEAD")

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we cannot frame, then drop the connection."""
        self._engine.state.note_request(None)
        self._send(plain_error(status, message), keep_alive=False, http10=False, head_only=False)

    def _send(self, response: Response, *, keep_alive: bool, http10: bool, head_only: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        status = response.status
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Date: {_http_date()}"]
        # RFC 9110 forbids Content-Length on 204; every other answer carries one.
        if status != 204:
            lines.append(f"Content-Length: {len(response.body)}")
        if response.body:
            lines.append("Content-Type: application/json")
        for name, value in response.headers:
            lines.append(f"{name}: {value}")
        if not keep_alive:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport.write(data if head_only else data + response.body)
        if not keep_alive:
            self._close_after_answer()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        want_pause = len(self._buf) > _MAX_BUFFERED
        if want_pause and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False


def _url_for(sockname: Any) -> str:
    host, port = str(sockname[0]), int(sockname[1])
    # A wildcard bind is reachable on loopback; give callers an address they can dial.
    if host == "0.0.0.0":  # noqa: S104 - a comparison, not a bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class SandboxServer:
    """The fake Sent.dm API (v1, v2 and v3 at once) on a real socket.

    ``start()`` runs it in a daemon thread with its own event loop (tests,
    benchmarks, ``run``); ``serve_forever()`` runs it in the calling thread.
    Counters are mutated only on the server loop, so reading them from another
    thread is safe; the dict/list properties return copies.

    Options: ``latency_ms`` delays every answer; ``failure_rate`` of valid sends
    meet an injected 503/500/429 (``seed`` makes the sequence repeatable);
    ``api_key``/``sender_id`` are the only credentials accepted when given;
    ``empty_success`` None lets v1 answer 200 JSON and v2 204, True or False
    makes both 204 or both JSON; ``record_bodies`` keeps accepted bodies and
    the last headers; ``count_keys`` keeps the per-key and per-number counts.
    v3 only: ``templates`` replaces the default templates (dicts with ``id``,
    ``name``, ``status``, ``variables``, ``channels``); ``rate_limit_per_min``
    refuses requests over it with 429; ``clock`` (Unix seconds, default
    ``time.time``) is what idempotency keys age and rate windows turn on.
    v3 delivery: ``delivery`` says how accepted messages fare (default: about a second each, 5% failing, on
    ``seed``); ``messages_path`` is the SQLite file that keeps them for ``GET /v3/messages/{id}`` (None: in
    memory); ``webhooks`` is where their status changes are posted, signed (None: nowhere). ``stop()`` waits for due
    webhooks at most until the last is due plus ``WEBHOOK_GRACE_S``; ``webhook_counts()`` says how that went.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        failure_rate: float = 0.0,
        seed: int | None = None,
        api_key: str | None = None,
        sender_id: str | None = None,
        empty_success: bool | None = None,
        record_bodies: bool = False,
        count_keys: bool = True,
        templates: Sequence[Mapping[str, Any]] | None = None,
        rate_limit_per_min: int | None = None,
        clock: Callable[[], float] | None = None,
        delivery: DeliveryOptions | None = None,
        messages_path: Path | None = None,
        webhooks: WebhookTarget | None = None,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError("host must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int between 0 and 65535, got {port!r}")
        self._host = host
        self._port = port
        self._state = SandboxState(
            latency_ms=latency_ms,
            failure_rate=failure_rate,
            seed=seed,
            api_key=api_key,
            sender_id=sender_id,
            empty_success=empty_success,
            record_bodies=record_bodies,
            count_keys=count_keys,
            templates=templates,
            rate_limit_per_min=rate_limit_per_min,
            clock=clock,
            delivery=delivery,
            messages_path=messages_path,
            webhooks=webhooks,
        )
        self._engine = _Engine(self._state)
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._finished = threading.Event()
        self._startup_error: BaseException | None = None
        self._url: str | None = None
        self._registry_error: str | None = None

    # lifecycle

    @property
    def url(self) -> str:
        """Base URL such as ``http://127.0.0.1:54321`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("SandboxServer is not listening yet; call start() first")
        return self._url

    def start(self) -> SandboxServer:
        """Start listening in a daemon thread; return once the socket is bound."""
        self._claim()
        ready = threading.Event()
        thread = threading.Thread(target=self._thread_main, args=(ready,), name="sentdm-sandbox", daemon=True)
        self._thread = thread
        thread.start()
        ready.wait()
        if self._startup_error is not None:
            thread.join()
            raise self._startup_error
        return self

    def serve_forever(self, on_ready: Callable[[str], None]) -> None:
        """Serve in the calling thread until SIGINT/SIGTERM or ``stop()``."""
        self._claim()
        self._run_loop(on_ready, install_signal_handlers=True)

    def stop(self) -> None:
        """Close the listener and all connections and wait for the loop to end."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
            loop, stop_event = self._loop, self._stop_event
        thread = self._thread
        if thread is threading.current_thread():
            raise RuntimeError("stop() cannot be called from the server's own thread")
        if loop is not None and stop_event is not None:
            # RuntimeError: the loop already closed on its own; nothing is left to stop.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        if thread is not None:
            thread.join()
        else:
            self._finished.wait()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _claim(self) -> None:
        with self._lock:
            if self._started:
                raise RuntimeError("a SandboxServer can only be started once")
            self._started = True

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            self._run_loop(lambda _url: ready.set(), install_signal_handlers=False)
        except Exception as exc:
            if ready.is_set():
                raise
            self._startup_error = exc  # re-raised by start() in the caller's thread
        finally:
            ready.set()

    def _run_loop(self, on_listening: Callable[[str], None], *, install_signal_handlers: bool) -> None:
        loop = asyncio.new_event_loop()
        stop_event = asyncio.Event()
        with self._lock:
            self._loop, self._stop_event = loop, stop_event
            if self._stopped:
                stop_event.set()  # stop() won the race before there was a loop to wake
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, stop_event.set)
                except (NotImplementedError, RuntimeError, ValueError):
                    continue  # not the main thread, or no signal support: stop() still works
                installed.append(sig)
        try:
            task = loop.create_task(self._serve(stop_event, on_listening))
            try:
                loop.run_until_complete(task)
            except KeyboardInterrupt:
                # Reached only without our SIGINT handler: shut down the same way.
                stop_event.set()
                loop.run_until_complete(task)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._finished.set()

    async def _serve(self, stop_event: asyncio.Event, on_listening: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        engine = self._engine
        server = await loop.create_server(lambda: _HttpProtocol(engine), self._host, self._port, backlog=1024)
        committer = loop.create_task(self._commit_registry())
        try:
            self._url = _url_for(server.sockets[0].getsockname())
            on_listening(self._url)
            await stop_event.wait()
        finally:
            server.close()
            await engine.close_connections()
            await server.wait_closed()
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            self._close_registry()
            if self._state.poster is not None:
                await self._state.poster.finish(grace_s=WEBHOOK_GRACE_S)

    async def _commit_registry(self) -> None:
        registry = self._state.registry
        while True:
            await asyncio.sleep(_REGISTRY_COMMIT_S)
            try:
                registry.commit()
            except RegistryError as exc:
                self._registry_error = str(exc)

    def _close_registry(self) -> None:
        try:
            self._state.registry.close()
        except RegistryError as exc:
            self._registry_error = str(exc)

    # counters

    @property
    def requests_total(self) -> int:
        """Every request answered, valid or not (interim 100 Continue excluded)."""
        return self._state.requests_total

    @property
    def accepted_total(self) -> int:
        """Valid requests answered with 2xx (injected failures excluded)."""
        return self._state.accepted_total

    @property
    def injected_total(self) -> int:
        """Valid requests answered with an injected 500/503/429."""
        return self._state.injected_total

    @property
    def accepted_by_key(self) -> dict[str, int]:
        """Acceptances per Idempotency-Key; requests without one count under ""."""
        return dict(self._state.accepted_by_key)

    @property
    def accepted_by_number(self) -> dict[str, int]:
        """v3 messages accepted per phone number (one per channel); empty unless ``count_keys``."""
        return dict(self._state.accepted_by_number)

    @property
    def accepted_bodies(self) -> list[dict[str, Any]]:
        """Accepted JSON bodies in order; always empty unless ``record_bodies``."""
        return list(self._state.accepted_bodies)

    @property
    def last_headers(self) -> dict[str, str] | None:
        """Lower-cased headers of the last request; None unless ``record_bodies``."""
        headers = self._state.last_headers
        return None if headers is None else dict(headers)

    @property
    def registry_error(self) -> str | None:
        """Why the message registry could not be written, if it could not (its file is named, no message)."""
        return self._registry_error

    def webhook_counts(self) -> tuple[int, int, int] | None:
        """(status changes scheduled, delivered, given up on) of the webhooks; None when none are configured.
        Final once ``stop()`` returned."""
        poster = self._state.poster
        return None if poster is None else (poster.scheduled, poster.delivered, poster.undelivered)

    def stats(self) -> dict[str, int]:
        """Headline counters; ``duplicate_keys`` ignores requests without a key."""
        state = self._state
        return {
            "requests_total": state.requests_total,
            "accepted_total": state.accepted_total,
            "duplicate_keys": state.duplicate_keys,
        }


def serve_forever(*, host: str, port: int, on_ready: Callable[[str], None], **options: Any) -> SandboxServer:
    """Run a sandbox in the current thread until SIGINT/SIGTERM, then shut down.

    ``options`` are :class:`SandboxServer` keyword arguments; ``on_ready`` gets
    the base URL once the socket is listening. Call it from the main thread:
    signal handlers cannot be installed anywhere else. Returns the stopped server, for its counters.
    """
    server = SandboxServer(host=host, port=port, **options)
    server.serve_forever(on_ready)
    return server
