"""A lean HTTP/1.1 transport for httpx: keep-alive pool, asyncio protocol, exact "was it written?" errors.

This module owns how one request travels over the network: the connection pool, writing the request bytes, and
reading and framing the response. `httpx.AsyncClient` stays the client API (headers, URLs, timeouts around it);
`FastHTTPTransport` replaces httpcore under it because httpcore costs 1-1.5 ms of CPU per request and its pool
bookkeeping grows with the square of the open connections (see the performance notes). This one costs a few tens of
microseconds per request on loopback.

Scope: HTTP/1.1 only (``http`` and ``https``), no proxies, no HTTP/2, no pipelining, asyncio event loop only (the
product runs it inside ``anyio.run`` on the asyncio backend). Request bodies are sent with a ``Content-Length``; a
streaming body is read into memory first. The only time limit the transport applies itself is the connect timeout;
read and write time limits come from the caller's overall deadline (``anyio.fail_after``), which cancels the request.
httpx's per-request ``timeout`` extension is ignored.

Error mapping - the contract the retry logic depends on. The question each error answers is "can the server have
acted on this request?":

=====================================================  ===============================  ==========================
what happened                                          raised                           could the server have it?
=====================================================  ===============================  ==========================
connect refused / DNS failure / TLS handshake failure  ``httpx.ConnectError``           no - safe to retry
connect (incl. TLS handshake) took longer than
``connect_timeout_s``                                  ``httpx.ConnectTimeout``         no - safe to retry
the transport was closed while waiting for a slot      ``httpx.ConnectError``           no - safe to retry
connection lost before every request byte was handed
to the kernel (including a reused keep-alive
connection that turned out dead when written to)       ``httpx.WriteError``             no - safe to retry
connection reset after the request was written         ``httpx.ReadError``              MAYBE (ambiguous)
connection closed (EOF) before a complete response,
malformed status line / headers / chunking, a head
over 64 KiB or a body over 10 MiB                      ``httpx.RemoteProtocolError``    MAYBE (ambiguous)
a request header containing CR or LF, or a
``Content-Length`` that does not match the body        ``httpx.LocalProtocolError``     no (nothing was sent)
cancellation (the caller's deadline) at any point      ``CancelledError`` (anyio turns  MAYBE once a connection
                                                       it into ``TimeoutError``)        was handed out
=====================================================  ===============================  ==========================

Waiting for a free connection slot is not time-limited here; the caller's deadline cancels it. The error behind a
``ConnectError`` (``ssl.SSLCertVerificationError``, ``socket.gaierror``...) is kept as its ``__cause__``: the
classification (outcome.py) reads it to tell a failure every request would share from a passing one.

"Handed to the kernel" is what the transport can know for certain: if some request bytes never left the process,
the server cannot have the complete request. On plain TCP this is exact (the socket transport reports when its
buffer is empty). Over TLS it is exact in the common case - a request that the kernel accepts in one send, or a send
that fails at once; when the kernel cannot take the whole request immediately and the connection later dies, the
transport cannot tell how much went out and reports ``ReadError`` (ambiguous), never ``WriteError``. Errors only ever
err towards "ambiguous": a message is never reported as "certainly not sent" when it might have been.

Reused connections: a pooled keep-alive connection that the server closed while it sat idle (EOF or data already
seen by the event loop, or an EOF/data already waiting in the socket, checked with a non-blocking ``MSG_PEEK``) is
closed and replaced by a new connection before anything is written - no error. If the server's close only shows up
after the request was written (it was still in flight on the network), that is ``RemoteProtocolError``/``ReadError``
like any other lost answer: the transport never resends a request by itself.

A connection goes back to the pool only after a complete response was read and neither side asked to close it; on
any error or cancellation during a request the connection is aborted and dropped, never reused half-read.

Responses are read whole (Content-Length, chunked, or until close; 1xx interim answers skipped; no body for HEAD,
204 and 304) and returned as ``httpx.Response(content=...)`` with the headers as received, duplicates kept, and
``extensions["http_version"]`` as the server's status line gave it. httpx itself adds a ``Content-Length`` header to
such a response when the body was chunked or delimited by close.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from typing import Any, cast

import httpx

__all__ = ["MAX_BODY_BYTES", "MAX_HEAD_BYTES", "FastHTTPTransport"]

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 10 * 1024 * 1024
# A chunk-size line is a few hex digits plus optional extensions; anything longer is garbage, not a slow server.
_MAX_CHUNK_LINE_BYTES = 4 * 1024
# Bodies at least this big are written in a second call instead of being copied once more into the head's buffer.
_JOIN_BODY_BELOW = 64 * 1024
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NO_BODY_STATUSES = frozenset({204, 304})
_HTTP_11 = b"HTTP/1.1"
_HTTP_10 = b"HTTP/1.0"

PoolKey = tuple[bytes, bytes, int]  # (scheme, host, port)


class _Response:
    """What one exchange produced; plain attributes, built once per request."""

    __slots__ = ("body", "headers", "reason", "reusable", "status", "version")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        reusable: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.body = body
        self.reusable = reusable


class _Head:
    """A parsed response head and the framing facts the body reader needs."""

    __slots__ = ("chunked", "close", "content_length", "headers", "reason", "status", "version")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.version = _HTTP_11
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.chunked = False
        # True when the connection cannot carry another request: "Connection: close", HTTP/1.0 without keep-alive,
        # or a framing (unknown transfer coding, Transfer-Encoding plus Content-Length) that leaves its end in doubt.
        self.close = False


def _parse_head(head: bytes) -> _Head:
    """Parse a status line and header lines (``head`` excludes the final blank line)."""
    lines = head.split(b"\r\n")
    # Every LF and CR must belong to a CRLF line break: a bare one could be read as a line break by someone else.
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise httpx.RemoteProtocolError("malformed response head: bare CR or LF")
    result = _Head()
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (_HTTP_11, _HTTP_10) or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
    result.status = int(code)
    result.reason = reason
    result.version = _HTTP_11 if version == _HTTP_11 else _HTTP_10
    keep_alive_asked = False
    transfer_codings: list[bytes] = []
    headers = result.headers
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # An empty name, whitespace around the name, or a continuation line (obsolete folding) are all refused:
        # RFC 9112 says a client must not guess at them.
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            length = _parse_content_length(value)
            if result.content_length is not None and result.content_length != length:
                raise httpx.RemoteProtocolError("conflicting Content-Length headers")
            result.content_length = length
        elif lower == b"transfer-encoding":
            transfer_codings.extend(token.strip().lower() for token in value.split(b","))
        elif lower == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"close" in tokens:
                result.close = True
            if b"keep-alive" in tokens:
                keep_alive_asked = True
    if result.version == _HTTP_10 and not keep_alive_asked:
        result.close = True
    if transfer_codings:
        # Transfer-Encoding overrides Content-Length (RFC 9112 6.3); a message that carries both may be an attempt
        # at smuggling, so the connection is not reused after it. A coding other than a final "chunked" means the
        # body runs until the server closes.
        if result.content_length is not None:
            result.close = True
            result.content_length = None
        if transfer_codings[-1] == b"chunked":
            result.chunked = True
        else:
            result.close = True
    return result


def _parse_content_length(value: bytes) -> int:
    # Some servers repeat the value as a list ("12, 12"); equal repeats are harmless, different ones are not.
    if b"," in value:
        values = {item.strip() for item in value.split(b",")}
        if len(values) != 1:
            raise httpx.RemoteProtocolError(f"conflicting Content-Length values {value[:100]!r}")
        value = values.pop()
    if not value.isdigit() or len(value) > 18:
        raise httpx.RemoteProtocolError(f"malformed Content-Length {value[:100]!r}")
    return int(value)


def _serialize(request: httpx.Request, body: bytes) -> tuple[bytes, bool]:
    """The request line and headers, ready to write, and whether the request asked to close the connection."""
    url = request.url
    parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    has_host = False
    declared_length: bytes | None = None
    close = False
    lines = 0
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"host":
            has_host = True
        elif lower == b"content-length":
            declared_length = value
        elif lower == b"transfer-encoding":
            # The body is always sent whole with a Content-Length (a streamed body was read into memory first),
            # so a chunked coding httpx chose for a stream does not apply.
            continue
        elif lower == b"connection" and b"close" in value.lower():
            close = True
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    if not has_host:
        parts[4:4] = (b"Host: ", url.netloc, b"\r\n")
        lines += 1
    length = b"%d" % len(body)
    if declared_length is None:
        if body or request.method in ("POST", "PUT", "PATCH"):
            parts += (b"Content-Length: ", length, b"\r\n")
            lines += 1
    elif declared_length.strip() != length:
        raise httpx.LocalProtocolError(
            f"Content-Length header says {declared_length!r} but the body has {len(body)} bytes"
        )
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Request line + header lines + the blank line: any other CR or LF came from a header or the target and would
    # let a value inject headers of its own.
    if head.count(b"\n") != lines + 2 or head.count(b"\r") != lines + 2:
        raise httpx.LocalProtocolError("a request header or the request target contains CR or LF")
    return head, close


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: buffers what arrives and runs one request/response exchange at a time.

    Parsing happens in the requesting coroutine, not in the callbacks: the callbacks only append bytes and wake the
    one waiter, which keeps them trivial and lets the reader be written as straight-line code.
    """

    __slots__ = (
        "at_eof",
        "buffer",
        "busy",
        "key",
        "loop",
        "lost",
        "lost_exc",
        "raw",
        "sock",
        "tls",
        "transport",
        "waiter",
        "write_paused",
    )

    def __init__(self, key: PoolKey, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.sock = sock  # kept to peek for an EOF that arrived while the connection sat idle
        self.loop = loop
        self.tls = False
        # `raw` is the socket transport; `transport` is what requests are written to (the same object for plain
        # TCP, the TLS layer on top of it for https).
        self.raw: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.busy = False
        self.at_eof = False  # no more bytes will arrive (EOF seen or connection lost)
        self.lost = False
        self.lost_exc: Exception | None = None
        self.write_paused = False

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        self.raw = raw
        self.transport = raw
        # With a high-water mark of 0 the transport calls pause_writing() whenever a write leaves bytes in its
        # buffer and resume_writing() once the buffer is empty again: exactly "everything reached the kernel".
        # (Replaced by the TLS layer's own limits for https, see _open.)
        raw.set_write_buffer_limits(high=0)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for (an idle keep-alive connection): the connection's state is unknown.
            if self.transport is not None:
                self.transport.abort()
            return
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake()
        return False  # let the transport close itself: we never half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.at_eof = True
        self.lost = True
        self.lost_exc = exc
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        """Sleep until the next callback (data, EOF, loss, drained write buffer)."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        await waiter

    # state

    def usable(self) -> bool:
        """Whether an idle connection can carry a request: still open and nothing arrived while idle."""
        raw = self.raw
        if raw is None or self.at_eof or raw.is_closing():
            return False
        try:
            # A FIN (b"") or stray data can sit in the socket before the event loop has polled it; peeking catches
            # a server's idle-timeout close without waiting for the loop. A TLS close_notify shows up as data.
            self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True  # nothing to read: the expected state of an idle connection
        except OSError:
            return False
        return False

    def close(self) -> None:
        """Close after a complete exchange (flushes, then FIN / TLS close_notify)."""
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()

    def abort(self) -> None:
        """Drop the connection at once, discarding anything buffered."""
        if self.transport is not None:
            self.transport.abort()
        else:
            self.sock.close()

    # one request

    async def exchange(self, head: bytes, body: bytes, *, head_request: bool, close: bool) -> _Response:
        """Write one request and read its response. The caller aborts the connection if this raises."""
        self.busy = True
        await self._send(head, body)
        # From here on the server may have the complete request: every failure is ambiguous.
        response = await self._receive(head_request)
        self.busy = False
        if close or self.at_eof or self.buffer:
            # Asked to close, already closed, or bytes beyond the response: not safe to reuse.
            response.reusable = False
        return response

    async def _send(self, head: bytes, body: bytes) -> None:
        transport = self.transport
        raw = self.raw
        assert transport is not None
        assert raw is not None
        try:
            if len(body) < _JOIN_BODY_BELOW:
                transport.write(head + body if body else head)
            else:
                transport.write(head)
                transport.write(body)
        except (OSError, RuntimeError) as exc:
            raise httpx.WriteError(f"could not send the request: {exc}") from exc
        # A send that failed inside write() closes the socket transport at once (and empties its buffer), so
        # checking right after the call is what tells "failed" apart from "all handed over".
        if raw.is_closing() or self.lost:
            raise httpx.WriteError("the connection was closed while the request was being sent")
        if not self.tls:
            # Plain TCP: exact - wait for resume_writing() (buffer empty) or the loss of the connection.
            while self.write_paused:
                if self.lost:
                    raise httpx.WriteError(
                        f"the connection was lost before the whole request was sent: {self.lost_exc or 'closed'}"
                    )
                await self._wait()
            return
        # TLS: the TLS layer and the socket transport each buffer; neither reports when the socket's buffer drains.
        while transport.get_write_buffer_size() or raw.get_write_buffer_size():
            if self.lost:
                # Some bytes may have reached the kernel before the loss: ambiguous, by the contract above.
                raise httpx.ReadError(
                    f"TLS connection lost while the request was partly sent: {self.lost_exc or 'closed'}"
                )
            await self._wait()

    def _closed_error(self, what: str) -> httpx.TransportError:
        exc = self.lost_exc
        if exc is not None:
            return httpx.ReadError(f"connection lost {what}: {exc}")
        return httpx.RemoteProtocolError(f"server closed the connection {what}")

    async def _more(self, what: str) -> None:
        """Wait for more bytes; raise if none can come."""
        if self.at_eof:
            raise self._closed_error(what)
        await self._wait()

    async def _receive(self, head_request: bool) -> _Response:
        buffer = self.buffer
        while True:
            # The head: everything up to the first blank line.
            searched = 0
            while True:
                end = buffer.find(b"\r\n\r\n", searched)
                if end >= 0:
                    break
                if len(buffer) > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                searched = max(0, len(buffer) - 3)
                await self._more("before sending a response" if not buffer else "in the middle of the response head")
            if end > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
            head = _parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if head.status >= 200:
                break
            if head.status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            # 100 Continue and other interim answers precede the real one: skip them.

        status = head.status
        if head_request or status in _NO_BODY_STATUSES:
            body = b""
        elif head.chunked:
            body = await self._read_chunked()
        elif head.content_length is not None:
            body = await self._read_length(head.content_length)
        else:
            # Neither Content-Length nor chunked: the body is whatever arrives until the server closes.
            body = await self._read_until_close()
            head.close = True
        return _Response(status, head.reason, head.version, head.headers, body, not head.close)

    async def _read_length(self, length: int) -> bytes:
        if length > MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError(f"response body of {length} bytes is over the {MAX_BODY_BYTES} limit")
        buffer = self.buffer
        while len(buffer) < length:
            await self._more("in the middle of the response body")
        if len(buffer) == length:
            body = bytes(buffer)
            buffer.clear()
        else:
            body = bytes(buffer[:length])
            del buffer[:length]
        return body

    async def _read_until_close(self) -> bytes:
        buffer = self.buffer
        while not self.at_eof:
            if len(buffer) > MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError(f"response body over the {MAX_BODY_BYTES} byte limit")
            await self._wait()
        if self.lost_exc is not None:
            # A reset, not a clean close: the body may be cut short.
            raise httpx.ReadError(f"connection lost while reading a response body delimited by close: {self.lost_exc}")
        if len(buffer) > MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError(f"response body over the {MAX_BODY_BYTES} byte limit")
        body = bytes(buffer)
        buffer.clear()
        return body

    async def _read_line(self, start: int, limit: int, what: str) -> int:
        """Index of the CRLF ending the line that starts at ``start``, waiting for it if needed."""
        buffer = self.buffer
        searched = start
        while True:
            eol = buffer.find(b"\r\n", searched)
            if eol >= 0:
                if eol - start > limit:
                    break
                return eol
            if len(buffer) - start > limit:
                break
            searched = max(start, len(buffer) - 1)
            await self._more(what)
        raise httpx.RemoteProtocolError(f"{what}: line longer than {limit} bytes")

    async def _read_chunked(self) -> bytes:
        buffer = self.buffer
        chunks: list[bytes] = []
        total = 0
        pos = 0  # parse position in the buffer; consumed bytes are dropped once at the end
        while True:
            eol = await self._read_line(pos, _MAX_CHUNK_LINE_BYTES, "in the middle of a chunk size line")
            size_field = bytes(buffer[pos:eol]).split(b";", 1)[0].strip(b" \t")
            # int(x, 16) would also take "0x", "_" and signs: insist on hex digits only.
            if not size_field or len(size_field) > 16 or size_field.strip(_HEX_DIGITS):
                raise httpx.RemoteProtocolError(f"malformed chunk size {bytes(buffer[pos:eol])[:100]!r}")
            size = int(size_field, 16)
            pos = eol + 2
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError(f"chunked response body over the {MAX_BODY_BYTES} byte limit")
            while len(buffer) < pos + size + 2:
                await self._more("in the middle of a chunk")
            if buffer[pos + size : pos + size + 2] != b"\r\n":
                raise httpx.RemoteProtocolError("chunk data not followed by CRLF")
            chunks.append(bytes(buffer[pos : pos + size]))
            pos += size + 2
        # Trailer fields (rarely sent) end with a blank line; they are read and dropped.
        trailer_start = pos
        while True:
            eol = await self._read_line(pos, MAX_HEAD_BYTES, "in the middle of the chunked trailer")
            if eol == pos:
                pos += 2
                break
            pos = eol + 2
            if pos - trailer_start > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(f"chunked trailer larger than {MAX_HEAD_BYTES} bytes")
        del buffer[:pos]
        return b"".join(chunks)


class _Pool:
    """Connections by (scheme, host, port), at most `max_connections` open in total.

    Idle connections are kept per key, most recently used first out (LIFO): the warmest connection is the least
    likely to have hit a server's idle timeout. Requests that find no idle connection and no free slot wait in one
    FIFO queue; a finished connection, or the slot of a closed one, is handed straight to the first waiter, so every
    operation is O(1) and nobody scans the open connections.
    """

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.total = 0  # open connections plus connections being opened
        self.idle: dict[PoolKey, list[_Connection]] = {}
        self.idle_count = 0
        # A waiter's future gets a connection for its key, or None: "a slot is yours, open a connection".
        # Cancelled waiters stay in the deque and are skipped when popped (removing them would be O(n)).
        self.waiters: collections.deque[tuple[PoolKey, asyncio.Future[_Connection | None]]] = collections.deque()
        self.connections: set[_Connection] = set()  # every open connection, for aclose()
        self.closed = False

    def pop_idle(self, key: PoolKey) -> _Connection | None:
        """The most recently used idle connection for `key` (not yet checked), or None."""
        idle = self.idle.get(key)
        if not idle:
            return None
        self.idle_count -= 1
        return idle.pop()

    def forget(self, conn: _Connection) -> None:
        """Abort a connection whose slot the caller keeps (to open a replacement in it)."""
        conn.abort()
        self.connections.discard(conn)

    def claim_slot(self) -> bool:
        """Take a free slot, closing an idle connection of another host if that is what it takes."""
        # While a slot is free nobody waits (a freed slot goes to a waiter first), so taking it is fair.
        if self.total < self.max_connections:
            self.total += 1
            return True
        if self.idle_count:
            for idle in self.idle.values():
                if idle:
                    victim = idle.pop(0)  # the least recently used
                    self.idle_count -= 1
                    self.forget(victim)
                    return True  # its slot becomes ours: the total is unchanged
        return False

    def release(self, conn: _Connection) -> None:
        """A connection that finished a clean exchange: hand it to a waiter or keep it idle."""
        if self.closed:
            self.discard(conn)
            return
        waiters = self.waiters
        while waiters:
            key, future = waiters.popleft()
            if future.done():
                continue  # cancelled while waiting
            if key == conn.key:
                future.set_result(conn)
            else:
                # Wrong host: close it and pass its slot on.
                self.forget(conn)
                future.set_result(None)
            return
        self.idle.setdefault(conn.key, []).append(conn)
        self.idle_count += 1

    def discard(self, conn: _Connection, *, graceful: bool = False) -> None:
        """Drop a connection (aborted unless `graceful`) and free its slot."""
        if graceful:
            conn.close()
        else:
            conn.abort()
        self.connections.discard(conn)
        self.free_slot()

    def free_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            _key, future = waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot moves to the waiter: total is unchanged
                return
        self.total -= 1

    def give_back(self, conn: _Connection | None) -> None:
        """Return what a cancelled waiter had already been handed."""
        if conn is None:
            self.free_slot()
        elif conn.usable():
            self.release(conn)
        else:
            self.discard(conn)


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 transport for `httpx.AsyncClient` with a bounded keep-alive pool (see the module docstring)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be positive, got {connect_timeout_s!r}")
        self._pool = _Pool(max_connections)
        self._connect_timeout_s = connect_timeout_s
        # Built on first https use: loading the CA bundle costs milliseconds that plain-http users never need.
        self._ssl_context = ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = self._pool
        if pool.closed:
            raise RuntimeError("FastHTTPTransport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}: use http or https")
        port = url.port
        key = (scheme, url.raw_host, port if port is not None else _DEFAULT_PORTS[scheme])
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        head, close = _serialize(request, body)

        conn = await self._acquire(key)
        try:
            response = await conn.exchange(head, body, head_request=request.method == "HEAD", close=close)
        except BaseException:
            # An error or a cancellation mid-exchange leaves the connection in an unknown state: never reuse it.
            pool.discard(conn)
            raise
        if response.reusable:
            pool.release(conn)
        else:
            pool.discard(conn, graceful=True)
        return httpx.Response(
            response.status,
            headers=response.headers,
            content=response.body,
            request=request,
            extensions={"http_version": response.version, "reason_phrase": response.reason},
        )

    async def aclose(self) -> None:
        pool = self._pool
        pool.closed = True
        connections = list(pool.connections)
        for conn in connections:
            conn.abort()
        pool.connections.clear()
        pool.idle.clear()
        pool.idle_count = 0
        while pool.waiters:
            _key, future = pool.waiters.popleft()
            if not future.done():
                future.set_exception(httpx.ConnectError("the transport was closed before a connection was free"))
        if connections:
            # abort() closes the sockets from a loop callback; one turn of the loop runs it, so a caller that ends
            # its event loop right after aclose() leaves no unclosed sockets behind.
            await asyncio.sleep(0)

    # pool

    async def _acquire(self, key: PoolKey) -> _Connection:
        """An open connection for `key`: an idle one, a new one, or - with all slots busy - the next one freed."""
        pool = self._pool
        conn = pool.pop_idle(key)
        if conn is not None:
            if conn.usable():
                return conn
            # The server closed it while it sat idle: replace it, in its slot, before anything is written.
            pool.forget(conn)
            return await self._open_in_slot(key)
        if pool.claim_slot():
            return await self._open_in_slot(key)
        future: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append((key, future))
        try:
            handed = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Handed a connection or a slot just as we were cancelled: pass it on rather than leak it.
                pool.give_back(future.result())
            raise
        if handed is None:
            return await self._open_in_slot(key)
        if handed.usable():
            return handed
        # It died between being handed over and our turn to run; keep its slot for a fresh connection.
        pool.forget(handed)
        return await self._open_in_slot(key)

    async def _open_in_slot(self, key: PoolKey) -> _Connection:
        """Open a connection in a slot the caller already holds; the slot is freed if that fails."""
        pool = self._pool
        try:
            conn = await self._open(key)
        except BaseException:
            pool.free_slot()
            raise
        if pool.closed:
            conn.abort()
            raise httpx.ConnectError("the transport was closed while connecting")
        pool.connections.add(conn)
        return conn

    async def _open(self, key: PoolKey) -> _Connection:
        scheme, raw_host, port = key
        host = raw_host.decode("ascii")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                sock = await _connect_socket(loop, host, port)
                conn = _Connection(key, sock, loop)
                try:
                    await loop.create_connection(lambda: conn, sock=sock)
                    if scheme == b"https":
                        await self._start_tls(loop, conn, host)
                except BaseException:
                    conn.abort()
                    sock.close()
                    raise
        except TimeoutError as exc:  # asyncio.timeout's own expiry, or the OS giving up (ETIMEDOUT)
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} took too long") from exc
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError) - nothing was sent
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        return conn

    async def _start_tls(self, loop: asyncio.AbstractEventLoop, conn: _Connection, host: str) -> None:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        raw = conn.raw
        assert raw is not None
        # The socket transport now feeds the TLS layer, which must be free to buffer as it likes; our protocol
        # sits on top and keeps `raw` to see whether encrypted bytes are still waiting for the kernel.
        raw.set_write_buffer_limits()
        tls = await loop.start_tls(raw, conn, self._ssl_context, server_hostname=host)
        if tls is None:  # only for a transport that is already closing
            raise ConnectionResetError("connection closed during the TLS handshake")
        conn.transport = tls
        conn.tls = True


async def _connect_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking socket; the addresses of `host` are tried in order."""
    addresses: list[tuple[int, tuple[Any, ...]]] = []
    for literal_family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(literal_family, host)
        except OSError:
            continue
        addresses.append((literal_family, (host, port)))  # a literal address: no resolver round trip via a thread
        break
    if not addresses:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [(family, address) for family, _type, _proto, _name, address in infos]
    last_error: OSError | None = None
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last_error if last_error is not None else OSError(f"no address found for {host!r}")
