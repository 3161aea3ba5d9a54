"""Tests of FastHTTPTransport over real sockets on 127.0.0.1, used through `httpx.AsyncClient` as the product uses it.

Three servers play the other side: the embedded sandbox (the real endpoint's contract), the fault server (scripted
misbehaviour, per-connection ids that show keep-alive) and `RawServer` below, a bare socket server for the answers
neither of the others can give (chunked bodies, bodies delimited by close, silent idle closes, echoing the request).

Run as a script (`python -m tests.test_transport`) it measures CPU per request against the default httpx transport.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from anyio.abc import TaskStatus

from pipeline.sandbox import SandboxServer
from pipeline.transport import FastHTTPTransport, _Connection
from tests.fault_server import Fault, FaultServer, Reply, Request, sequence

pytestmark = pytest.mark.anyio

PATH = "/v1/messages/contact"
SENDER = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
API_KEY = "sk-test-transport"
PAYLOAD = {
    "contactId": "00000000-0000-4000-8000-000000000001",
    "templateId": "7ba7b820-9dad-11d1-80b4-00c04fd430c8",
    "messageBody": {"k": "v"},
}
BODY = json.dumps(PAYLOAD).encode()
API_HEADERS = {"x-api-key": API_KEY, "x-sender-id": SENDER, "Content-Type": "application/json"}
AMBIGUOUS = (httpx.ReadError, httpx.RemoteProtocolError)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the product runs anyio on asyncio; the transport is asyncio-only


def client_for(base_url: str, *, max_connections: int = 4, **transport_args: Any) -> httpx.AsyncClient:
    transport = FastHTTPTransport(max_connections=max_connections, **transport_args)
    return httpx.AsyncClient(transport=transport, base_url=base_url, headers=API_HEADERS, trust_env=False)


async def post(client: httpx.AsyncClient, key: str = "key-1", content: bytes = BODY) -> httpx.Response:
    return await client.post(PATH, content=content, headers={"Idempotency-Key": key})


# A bare socket server


def read_request(sock: socket.socket) -> bytes:
    """One whole request (head and Content-Length body) from a client that sends one at a time; b"" at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class RawServer:
    """Runs `handler(sock, n)` on its own thread for the n-th accepted connection (n from 0).

    The socket is closed when the handler returns; an exception in a handler fails the test at exit.
    """

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self._handler = handler
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.errors: list[BaseException] = []
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> RawServer:
        self._acceptor.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopping = True
        socket.create_connection(("127.0.0.1", self.port)).close()  # wakes accept()
        self._acceptor.join()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.errors and exc is None:
            raise self.errors[0]

    def _accept_loop(self) -> None:
        while True:
            sock, _ = self._listener.accept()
            if self._stopping:
                sock.close()
                return
            thread = threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True)
            self.connections += 1
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, n: int) -> None:
        try:
            with sock:
                self._handler(sock, n)
        except OSError:
            pass  # the client went away; what it saw is what the test checks
        except BaseException as exc:
            self.errors.append(exc)


def serve_each(answer: bytes) -> Callable[[socket.socket, int], None]:
    """A handler that answers every request on the connection with `answer`."""

    def handler(sock: socket.socket, _n: int) -> None:
        while read_request(sock):
            sock.sendall(answer)

    return handler


# Ordinary answers


async def test_a_json_200_from_the_sandbox_arrives_whole() -> None:
    with SandboxServer(record_bodies=True) as sandbox:
        async with client_for(sandbox.url) as client:
            responses = [await post(client, key=f"k{i}") for i in range(3)]

    for response in responses:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json()["messageId"]
        assert response.extensions["http_version"] == b"HTTP/1.1"
        assert response.reason_phrase == "OK"
    assert sandbox.accepted_bodies == [PAYLOAD] * 3


async def test_a_204_has_an_empty_body_and_the_connection_is_reused() -> None:
    with SandboxServer(empty_success=True) as sandbox:
        async with client_for(sandbox.url) as client:
            first = await post(client, key="a")
            second = await post(client, key="b")

    assert (first.status_code, first.content) == (204, b"")
    assert (second.status_code, second.content) == (204, b"")


async def test_a_chunked_body_is_reassembled_and_the_connection_reused() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: dropped\r\n\r\n"
    )
    with RawServer(serve_each(answer)) as server:
        async with client_for(server.url) as client:
            first = await post(client)
            second = await post(client)

    assert first.content == second.content == b"hello 0123456789"
    assert first.headers["transfer-encoding"] == "chunked"
    assert server.connections == 1


async def test_a_body_delimited_by_close_is_read_to_the_end_and_the_connection_not_reused() -> None:
    def handler(sock: socket.socket, _n: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 100_000)
        # returning closes the socket: that is the end of the body

    with RawServer(handler) as server:
        async with client_for(server.url) as client:
            first = await post(client)
            second = await post(client)

    assert first.content == second.content == b"x" * 100_000
    assert server.connections == 2


async def test_an_interim_100_continue_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    with RawServer(serve_each(answer)) as server:
        async with client_for(server.url) as client:
            response = await post(client)

    assert (response.status_code, response.content) == (201, b"ok")


async def test_a_head_request_reads_no_body_and_keeps_the_connection() -> None:
    with FaultServer() as server:
        async with client_for(server.url) as client:
            head = await client.head(PATH)
            after = await post(client)

    assert head.status_code == 200
    assert int(head.headers["content-length"]) > 0
    assert head.content == b""
    assert after.status_code == 200
    assert [r.connection for r in server.requests] == [0, 0]


async def test_duplicate_response_headers_are_kept() -> None:
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n"
    with RawServer(serve_each(answer)) as server:
        async with client_for(server.url) as client:
            response = await post(client)

    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


async def test_a_100_kb_body_goes_both_ways() -> None:
    payload = bytes(range(256)) * 400  # 102,400 bytes
    with FaultServer(lambda request: Reply(200, body=request.body)) as server:
        async with client_for(server.url) as client:
            response = await post(client, content=payload)

    assert response.content == payload
    assert server.requests[0].body == payload


async def test_a_dripped_body_is_read_byte_by_byte() -> None:
    with FaultServer(sequence(Reply(200, body=b"0123456789", drip_s=0.001))) as server:
        async with client_for(server.url) as client:
            response = await post(client)

    assert response.content == b"0123456789"


# What goes out


async def test_the_headers_arrive_as_sent() -> None:
    with FaultServer() as server:
        async with client_for(server.url) as client:
            await post(client, key="idem-1")

    headers = server.requests[0].headers
    assert headers["x-api-key"] == API_KEY
    assert headers["x-sender-id"] == SENDER
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == "idem-1"
    assert headers["content-length"] == str(len(BODY))
    assert headers["host"] == server.url.removeprefix("http://")
    assert server.requests[0].body == BODY


async def test_the_request_head_is_exactly_httpx_headers_in_order_and_nothing_else() -> None:
    def echo_head(sock: socket.socket, _n: int) -> None:
        while request := read_request(sock):
            head = request.partition(b"\r\n\r\n")[0]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))

    sent: list[httpx.Request] = []

    async def remember(request: httpx.Request) -> None:
        sent.append(request)

    with RawServer(echo_head) as server:
        async with client_for(server.url) as client:
            client.event_hooks["request"] = [remember]
            response = await client.post(PATH + "?a=1&b=%20", content=BODY, headers={"Idempotency-Key": "k"})

    expected = [b"POST /v1/messages/contact?a=1&b=%20 HTTP/1.1"]
    expected += [name + b": " + value for name, value in sent[0].headers.raw]
    assert response.content.split(b"\r\n") == expected


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    with FaultServer() as server:
        async with client_for(server.url) as client:
            with pytest.raises(httpx.LocalProtocolError):
                await client.post(PATH, content=BODY, headers={"X-Evil": "a\r\nX-Injected: 1"})
            after = await post(client)

    assert after.status_code == 200
    assert len(server.requests) == 1
    assert "x-injected" not in server.requests[0].headers


# Pool


async def test_keep_alive_connections_are_reused() -> None:
    with FaultServer() as server:
        async with client_for(server.url) as client:
            for i in range(5):
                assert (await post(client, key=f"k{i}")).status_code == 200

    assert [r.connection for r in server.requests] == [0] * 5


async def test_max_connections_holds_under_concurrency() -> None:
    statuses: list[int] = []
    with FaultServer(lambda _request: Reply(200, delay_s=0.01)) as server:
        async with client_for(server.url, max_connections=4) as client:

            async def one(i: int) -> None:
                statuses.append((await post(client, key=f"k{i}")).status_code)

            async with anyio.create_task_group() as group:
                for i in range(50):
                    group.start_soon(one, i)

    assert statuses == [200] * 50
    assert len(server.requests) == 50
    assert len({r.connection for r in server.requests}) == 4


async def test_a_connection_closed_with_connection_close_is_replaced() -> None:
    with FaultServer(sequence(Reply(headers={"Connection": "close"}))) as server:
        async with client_for(server.url) as client:
            first = await post(client, key="a")
            second = await post(client, key="b")

    assert (first.status_code, second.status_code) == (200, 200)
    assert [r.connection for r in server.requests] == [0, 1]


async def test_a_request_that_asks_to_close_does_not_return_its_connection_to_the_pool() -> None:
    with FaultServer() as server:
        async with client_for(server.url) as client:
            first = await client.post(PATH, content=BODY, headers={"Connection": "close"})
            second = await post(client)

    assert (first.status_code, second.status_code) == (200, 200)
    assert [r.connection for r in server.requests] == [0, 1]


@pytest.mark.parametrize("loop_saw_it", [True, False], ids=["eof-seen-by-the-loop", "eof-still-in-the-socket"])
async def test_a_connection_the_server_closed_silently_while_idle_is_replaced(loop_saw_it: bool) -> None:
    # No "Connection: close": the server just closes after answering, as an idle timeout would. Waiting for that
    # in a thread lets the event loop see the EOF; blocking the loop instead leaves the EOF unread in the socket
    # until the next request looks (the MSG_PEEK check).
    closed = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def handler(sock: socket.socket, n: int) -> None:
        if n == 0:
            read_request(sock)
            sock.sendall(answer)
            sock.close()
            closed.set()
            return
        serve_each(answer)(sock, n)

    with RawServer(handler) as server:
        async with client_for(server.url) as client:
            first = await post(client)
            if loop_saw_it:
                await anyio.to_thread.run_sync(closed.wait)
            else:
                closed.wait()  # deliberately blocks the event loop
            second = await post(client)

    assert (first.content, second.content) == (b"ok", b"ok")
    assert server.connections == 2


async def test_aclose_closes_the_idle_connections() -> None:
    saw_eof = threading.Event()

    def handler(sock: socket.socket, _n: int) -> None:
        serve_each(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")(sock, _n)
        saw_eof.set()  # read_request returned b"": the client closed

    with RawServer(handler) as server:
        client = client_for(server.url)
        await post(client)
        await client.aclose()
        assert await anyio.to_thread.run_sync(saw_eof.wait, 5.0)


# https


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (cert, key), made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def tls_handler(certificate: tuple[Path, Path], handler: Callable[[socket.socket, int], None]) -> Callable[..., None]:
    """Wrap a RawServer handler so that it speaks TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def serve(sock: socket.socket, n: int) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            handler(tls, n)

    return serve


def tls_client(url: str, certificate: tuple[Path, Path]) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    return client_for(url.replace("http://", "https://"), ssl_context=context)


async def test_https_round_trips_reuse_one_connection(certificate: tuple[Path, Path]) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    with RawServer(tls_handler(certificate, serve_each(answer))) as server:
        async with tls_client(server.url, certificate) as client:
            responses = [await post(client, key=f"k{i}") for i in range(3)]

    assert [r.content for r in responses] == [b"ok"] * 3
    assert server.connections == 1


@pytest.mark.parametrize("loop_saw_it", [True, False], ids=["eof-seen-by-the-loop", "eof-still-in-the-socket"])
async def test_an_https_connection_closed_while_idle_is_replaced(
    certificate: tuple[Path, Path], loop_saw_it: bool
) -> None:
    closed = threading.Event()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def handler(sock: socket.socket, n: int) -> None:
        if n == 0:
            read_request(sock)
            sock.sendall(answer)
            sock.close()
            closed.set()
            return
        serve_each(answer)(sock, n)

    with RawServer(tls_handler(certificate, handler)) as server:
        async with tls_client(server.url, certificate) as client:
            first = await post(client)
            if loop_saw_it:
                await anyio.to_thread.run_sync(closed.wait)
            else:
                closed.wait()  # deliberately blocks the event loop
            second = await post(client)

    assert (first.content, second.content) == (b"ok", b"ok")
    assert server.connections == 2


async def test_an_https_certificate_for_another_name_is_a_connect_error(certificate: tuple[Path, Path]) -> None:
    with RawServer(tls_handler(certificate, serve_each(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))) as server:
        # "localhost" reaches the same server, but the certificate only names 127.0.0.1
        url = server.url.replace("127.0.0.1", "localhost")
        async with tls_client(url, certificate) as client:
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
                await post(client)


# Errors before the request is sent: ConnectError / ConnectTimeout / WriteError


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # the port is free now: nothing listens there
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(httpx.ConnectError):
            await post(client)


async def test_a_connect_that_gets_no_answer_is_a_connect_timeout() -> None:
    # A listener with a full accept queue drops new SYNs: the connect neither succeeds nor fails.
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # fills the queue
            async with client_for(f"http://127.0.0.1:{port}", connect_timeout_s=0.2) as client:
                with pytest.raises(httpx.ConnectTimeout):
                    await post(client)


async def test_a_failed_tls_handshake_is_a_connect_error() -> None:
    # A plain-HTTP server answers the ClientHello with an HTTP error: not TLS, so the handshake fails.
    def handler(sock: socket.socket, _n: int) -> None:
        sock.recv(65536)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with RawServer(handler) as server:
        async with client_for(server.url.replace("http://", "https://")) as client:
            with pytest.raises(httpx.ConnectError):
                await post(client)


async def test_a_tls_handshake_that_stalls_is_a_connect_timeout() -> None:
    # The fault server waits for an HTTP head that a ClientHello never completes.
    with FaultServer() as server:
        async with client_for(server.url.replace("http://", "https://"), connect_timeout_s=0.2) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await post(client)

    assert server.requests == []


async def test_a_reset_before_the_whole_request_is_written_is_a_write_error() -> None:
    # The server takes the head, then resets without reading the body: most of the 16 MB never leave the client.
    def handler(sock: socket.socket, _n: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        reset(sock)

    with RawServer(handler) as server:
        async with client_for(server.url) as client:
            with pytest.raises(httpx.WriteError):
                await post(client, content=b"x" * (16 * 1024 * 1024))


# Errors after the request was sent: ReadError / RemoteProtocolError (ambiguous)


@pytest.mark.parametrize(
    "fault", [Fault.RESET_AFTER_READ, Fault.CLOSE_AFTER_READ, Fault.MALFORMED, Fault.RESET_BEFORE_READ]
)
@pytest.mark.parametrize("reused", [False, True], ids=["new-connection", "reused-connection"])
async def test_a_lost_or_garbled_answer_is_ambiguous_and_does_not_poison_the_pool(fault: Fault, reused: bool) -> None:
    steps = (Reply(), fault) if reused else (fault,)
    with FaultServer(sequence(*steps)) as server:
        async with client_for(server.url, max_connections=1) as client:
            if reused:
                assert (await post(client, key="warm-up")).status_code == 200
            with pytest.raises(AMBIGUOUS):
                await post(client, key="lost")
            after = await post(client, key="after")

    assert after.status_code == 200
    connections = [r.connection for r in server.requests]
    assert connections == ([0, 0, 1] if reused else [0, 1])


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("eof mid-body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        ("eof mid-head", b"HTTP/1.1 200 OK\r\nContent-Le"),
        ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunk without CRLF", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"),
        ("folded header", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\nContent-Length: 0\r\n\r\n"),
        ("conflicting lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
        ("not http", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ],
)
async def test_a_malformed_or_truncated_answer_is_a_protocol_error(name: str, answer: bytes) -> None:
    def handler(sock: socket.socket, _n: int) -> None:
        read_request(sock)
        sock.sendall(answer)

    with RawServer(handler) as server:
        async with client_for(server.url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await post(client)


async def test_a_reset_mid_body_is_a_read_error() -> None:
    def handler(sock: socket.socket, _n: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        reset(sock)

    with RawServer(handler) as server:
        async with client_for(server.url) as client:
            with pytest.raises(AMBIGUOUS):
                await post(client)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, headers={"X-Big": "a" * 70_000}),
        Reply(200, body=b"", headers={"Content-Length": str(11 * 1024 * 1024)}),
    ],
    ids=["head-over-64k", "body-over-10m"],
)
async def test_an_oversized_answer_is_refused(reply: Reply) -> None:
    with FaultServer(sequence(reply)) as server:
        async with client_for(server.url) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await post(client)


# Cancellation


async def test_a_hung_request_times_out_and_the_pool_is_not_poisoned() -> None:
    with FaultServer(sequence(Fault.HANG)) as server:
        async with client_for(server.url, max_connections=1) as client:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.3):
                    await post(client, key="hung")
            after = await post(client, key="after")

    assert after.status_code == 200
    assert [r.connection for r in server.requests] == [0, 1]


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool() -> None:
    arrived = threading.Event()

    def script(request: Request) -> Reply | Fault:
        if request.idempotency_key == "cancelled":
            arrived.set()
            return Fault.HANG
        return Reply()

    with FaultServer(script) as server:
        async with client_for(server.url, max_connections=1) as client:
            assert (await post(client, key="first")).status_code == 200
            async with anyio.create_task_group() as group:

                async def doomed(*, task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED) -> None:
                    with anyio.CancelScope() as scope:
                        task_status.started(scope)
                        await post(client, key="cancelled")

                scope = await group.start(doomed)
                await anyio.to_thread.run_sync(arrived.wait)
                scope.cancel()
            after = await post(client, key="after")

    assert after.status_code == 200
    # "first" and "cancelled" shared connection 0; after the cancel it was dropped, not handed back.
    assert [r.connection for r in server.requests] == [0, 0, 1]


async def test_cancelling_requests_that_wait_for_a_slot_keeps_the_pool_consistent() -> None:
    arrived = threading.Event()

    def script(request: Request) -> Reply | Fault:
        if request.idempotency_key == "holder":
            arrived.set()
            return Fault.HANG
        return Reply()

    with FaultServer(script) as server:
        async with client_for(server.url, max_connections=1) as client:
            scopes: list[anyio.CancelScope] = []

            async def cancellable(key: str) -> None:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await post(client, key=key)

            async with anyio.create_task_group() as group:
                group.start_soon(cancellable, "holder")
                await anyio.to_thread.run_sync(arrived.wait)
                for key in ("waiter-1", "waiter-2", "waiter-3"):
                    group.start_soon(cancellable, key)
                await anyio.wait_all_tasks_blocked()  # the three are queued for the only slot
                for scope in scopes[1:3]:
                    scope.cancel()
                await anyio.wait_all_tasks_blocked()
                scopes[0].cancel()  # the holder goes away: waiter-3 gets the slot
            statuses = []
            async with anyio.create_task_group() as group:

                async def one(key: str) -> None:
                    statuses.append((await post(client, key=key)).status_code)

                for key in ("after-1", "after-2"):
                    group.start_soon(one, key)

    assert statuses == [200, 200]
    keys = [r.idempotency_key for r in server.requests]
    # waiter-1 and waiter-2 were cancelled in the queue and never sent; waiter-3 inherited the holder's slot
    assert keys[:2] == ["holder", "waiter-3"]
    assert sorted(keys[2:]) == ["after-1", "after-2"]


# Parsing a response that arrives in pieces


class _FakeTransport(asyncio.Transport):
    """Just enough of a socket transport to drive a _Connection by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


SPLIT_RESPONSES = {
    "content-length": (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nT: 1\r\n\r\n",
        b"hello",
    ),
    "interim": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
}


@pytest.mark.parametrize("kind", list(SPLIT_RESPONSES))
async def test_a_response_split_at_any_byte_is_parsed_the_same(kind: str) -> None:
    # Over loopback a small answer nearly always arrives in one piece; feed the reader by hand to try every cut.
    answer, body = SPLIT_RESPONSES[kind]
    loop = asyncio.get_running_loop()
    for cut in range(1, len(answer)):
        conn = _Connection((b"http", b"test", 80), None, loop)  # type: ignore[arg-type]  # no socket: never pooled
        conn.connection_made(_FakeTransport())
        exchange = asyncio.ensure_future(conn.exchange(b"GET / HTTP/1.1\r\n\r\n", b"", head_request=False, close=False))
        await anyio.lowlevel.checkpoint()  # the exchange writes and waits for the answer
        conn.data_received(answer[:cut])
        await anyio.lowlevel.checkpoint()
        conn.data_received(answer[cut:])
        response = await exchange
        assert (response.status, response.body, response.reusable) == (200, body, True), cut


# Measurement (not a test): python -m tests.test_transport [requests] [concurrency]

_SANDBOX_PROCESS = (
    "import sys\n"
    "from pipeline.sandbox import SandboxServer\n"
    "server = SandboxServer().start()\n"
    "print(server.url, flush=True)\n"
    "sys.stdin.read()\n"
    "server.stop()\n"
)


async def _measure(url: str, transport: httpx.AsyncBaseTransport | None, total: int, concurrency: int) -> tuple:
    import resource
    import time

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        transport=transport, base_url=url, headers=API_HEADERS, limits=limits, trust_env=False
    ) as client:
        for i in range(concurrency):  # warm up: open the connections before measuring
            await post(client, key=f"warm-{i}")
        remaining = iter(range(total))

        async def worker() -> None:
            for i in remaining:
                response = await post(client, key=f"k{i}")
                assert response.status_code == 200, response.status_code

        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(concurrency):
                group.start_soon(worker)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    user = (after.ru_utime - before.ru_utime) / total * 1e6
    system = (after.ru_stime - before.ru_stime) / total * 1e6
    return user + system, user, system, total / wall


def _main(argv: list[str]) -> None:
    total = int(argv[0]) if argv else 5000
    concurrency = int(argv[1]) if len(argv) > 1 else 64
    # The sandbox runs in its own process so that its CPU is not counted as the client's.
    server = subprocess.Popen(
        [sys.executable, "-c", _SANDBOX_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        print(f"{total} POSTs to the sandbox at concurrency {concurrency}; client CPU (user+system) per request")
        for name in ("FastHTTPTransport", "httpx default", "FastHTTPTransport", "httpx default"):
            transport = FastHTTPTransport(max_connections=concurrency) if name == "FastHTTPTransport" else None
            cpu, user, system, rate = anyio.run(_measure, url, transport, total, concurrency)
            print(f"  {name:18s} {cpu:7.1f} us/request (user {user:6.1f}, system {system:5.1f})  {rate:6.0f} req/s")
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait()


if __name__ == "__main__":
    _main(sys.argv[1:])
