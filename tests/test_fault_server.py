"""Self-tests of the fault-injecting test server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fault_server import Fault, FaultServer, Reply, Request, chaos, per_key, sequence

PATH = "/v1/messages/contact"
TIMEOUT = httpx.Timeout(2.0)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def client(server: FaultServer) -> Iterator[httpx.Client]:
    # trust_env=False: no proxy from the environment may stand between us and 127.0.0.1.
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, trust_env=False) as c:
        yield c


def post(client: httpx.Client, key: str | None = "key-1", body: object = None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(PATH, json={"to": "+15550100"} if body is None else body, headers=headers)


def connect(server: FaultServer) -> socket.socket:
    url = urlsplit(server.url)
    assert url.hostname is not None
    assert url.port is not None
    return socket.create_connection((url.hostname, url.port), timeout=2.0)


def raw_request(body: bytes = b"{}", key: str = "k", extra: str = "") -> bytes:
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def hang_and_signal(arrived: threading.Event) -> Reply | Fault:
    arrived.set()
    return Fault.HANG


# Reply


def test_default_reply_is_200_with_a_message_id_and_the_request_is_recorded(
    server: FaultServer, client: httpx.Client
) -> None:
    response = post(client, body={"to": "+15550100", "n": 1})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    uuid.UUID(response.json()["messageId"])
    [request] = server.requests
    assert (request.method, request.path, request.index) == ("POST", PATH, 0)
    assert request.headers["idempotency-key"] == "key-1"
    assert request.idempotency_key == "key-1"
    assert request.json() == {"to": "+15550100", "n": 1}
    assert json.loads(request.body) == request.json()


def test_reply_status_headers_and_dict_body(server: FaultServer, client: httpx.Client) -> None:
    server.script = lambda _r: Reply(503, {"message": "busy"}, {"Retry-After": "1", "X-Extra": "yes"})

    response = post(client)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-extra"] == "yes"
    assert response.json() == {"message": "busy"}
    assert server.accepted_total() == 0


def test_error_status_gets_a_default_error_body(server: FaultServer, client: httpx.Client) -> None:
    server.script = lambda _r: Reply(429)

    response = post(client)

    assert (response.status_code, response.json()) == (429, {"message": "error"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"", b""), (b"\x00raw", b"\x00raw"), ("plain text", b"plain text")],
)
def test_bytes_str_and_empty_bodies(
    server: FaultServer, client: httpx.Client, body: bytes | str, expected: bytes
) -> None:
    server.script = lambda _r: Reply(200, body)

    response = post(client)

    assert response.content == expected
    assert response.headers["content-length"] == str(len(expected))


def test_a_reply_header_can_replace_the_content_type(server: FaultServer, client: httpx.Client) -> None:
    server.script = lambda _r: Reply(200, {"ok": True}, {"Content-Type": "text/html"})

    response = post(client)

    assert response.headers.get_list("content-type") == ["text/html"]


def test_delay_holds_the_answer_back(server: FaultServer, client: httpx.Client) -> None:
    server.script = lambda _r: Reply(delay_s=0.2)

    started = time.monotonic()
    response = post(client)

    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2


def test_drip_sends_the_body_one_byte_at_a_time(server: FaultServer, client: httpx.Client) -> None:
    body = b"abcdef"
    server.script = lambda _r: Reply(body=body, drip_s=0.04)

    started = time.monotonic()
    response = post(client)

    assert response.content == body
    assert time.monotonic() - started >= 0.04 * (len(body) - 1)


def test_a_drip_slower_than_the_read_timeout_times_out(server: FaultServer) -> None:
    server.script = lambda _r: Reply(body=b"ab", drip_s=1.0)
    with httpx.Client(base_url=server.url, timeout=0.1, trust_env=False) as slow, pytest.raises(httpx.ReadTimeout):
        post(slow)


# accepted counting


def test_accepted_is_counted_per_idempotency_key(server: FaultServer, client: httpx.Client) -> None:
    server.script = sequence(
        Reply(200),
        Reply(202),
        Reply(201),
        Reply(200),
        Reply(503),
        Reply(200, accepted=False),
        Reply(500, accepted=True),
    )

    for key in ("a", "a", "b", None, "c", "d", "e"):
        post(client, key=key)

    assert server.accepted_by_key == {"a": 2, "b": 1, "": 1, "e": 1}
    assert server.accepted_total() == 5
    assert server.duplicate_keys() == ["a"]
    assert [r.index for r in server.requests] == list(range(7))
    assert server.requests[3].idempotency_key is None


# faults


def test_reset_before_read_is_a_connection_error_and_not_accepted(server: FaultServer, client: httpx.Client) -> None:
    server.script = lambda _r: Fault.RESET_BEFORE_READ

    with pytest.raises((httpx.ReadError, httpx.WriteError)):
        post(client)

    assert server.accepted_total() == 0
    assert len(server.requests) == 1  # it was received, just never processed


@pytest.mark.parametrize(
    ("fault", "error"),
    [(Fault.RESET_AFTER_READ, httpx.ReadError), (Fault.CLOSE_AFTER_READ, httpx.RemoteProtocolError)],
)
def test_faults_after_read_are_accepted_but_unanswered(
    server: FaultServer, client: httpx.Client, fault: Fault, error: type[Exception]
) -> None:
    server.script = lambda _r: fault

    with pytest.raises(error):
        post(client)

    assert server.accepted_by_key == {"key-1": 1}


@pytest.mark.parametrize(
    ("fault", "reset"),
    [(Fault.RESET_BEFORE_READ, True), (Fault.RESET_AFTER_READ, True), (Fault.CLOSE_AFTER_READ, False)],
)
def test_resets_send_rst_and_close_sends_fin(server: FaultServer, fault: Fault, reset: bool) -> None:
    server.script = lambda _r: fault
    with connect(server) as sock:
        sock.sendall(raw_request())
        if reset:
            with pytest.raises(ConnectionResetError):
                sock.recv(1024)
        else:
            assert sock.recv(1024) == b""


def test_hang_times_the_client_out_and_stop_is_still_prompt() -> None:
    srv = FaultServer(lambda _r: Fault.HANG).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=0.3, trust_env=False) as client, pytest.raises(httpx.ReadTimeout):
            post(client)
        assert srv.accepted_total() == 1
    finally:
        started = time.monotonic()
        srv.stop()
    assert time.monotonic() - started < 1.0


def test_stop_closes_a_connection_that_is_still_hanging() -> None:
    arrived = threading.Event()
    srv = FaultServer(lambda _r: hang_and_signal(arrived)).start()
    with connect(srv) as sock:
        sock.sendall(raw_request())
        assert arrived.wait(2.0)

        started = time.monotonic()
        srv.stop()
        elapsed = time.monotonic() - started

        try:
            leftover = sock.recv(1024)
        except ConnectionResetError:
            leftover = b""
    assert leftover == b""  # closed without an answer
    assert elapsed < 1.0


def test_stop_unblocks_an_httpx_client_waiting_on_a_hang() -> None:
    arrived = threading.Event()
    outcome: list[BaseException | httpx.Response] = []
    srv = FaultServer(lambda _r: hang_and_signal(arrived)).start()

    def call() -> None:
        with httpx.Client(base_url=srv.url, timeout=5.0, trust_env=False) as client:
            try:
                outcome.append(post(client))
            except httpx.HTTPError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert arrived.wait(2.0)
    started = time.monotonic()
    srv.stop()
    caller.join(2.0)

    assert not caller.is_alive()
    assert time.monotonic() - started < 1.0
    assert isinstance(outcome[0], httpx.RemoteProtocolError | httpx.ReadError)


def test_malformed_answer_is_a_protocol_error_and_not_accepted(server: FaultServer, client: httpx.Client) -> None:
    server.script = lambda _r: Fault.MALFORMED

    with pytest.raises(httpx.RemoteProtocolError):
        post(client)

    assert server.accepted_total() == 0


def test_a_script_that_raises_answers_500_and_is_recorded(server: FaultServer, client: httpx.Client) -> None:
    def broken(_request: Request) -> Reply | Fault:
        raise KeyError("oops")

    server.script = broken

    response = post(client)

    assert response.status_code == 500
    assert "oops" in response.json()["message"]
    assert [type(e) for e in server.script_errors] == [KeyError]
    assert server.accepted_total() == 0


# script helpers


def test_sequence_then_default(server: FaultServer, client: httpx.Client) -> None:
    server.script = sequence(Reply(503), Fault.CLOSE_AFTER_READ, Reply(429), then=Reply(201))

    outcomes: list[int | str] = []
    for _ in range(5):
        try:
            outcomes.append(post(client).status_code)
        except httpx.RemoteProtocolError:
            outcomes.append("closed")

    assert outcomes == [503, "closed", 429, 201, 201]


def test_sequence_defaults_to_200_after_the_steps(server: FaultServer, client: httpx.Client) -> None:
    server.script = sequence(Reply(500))

    assert [post(client).status_code for _ in range(3)] == [500, 200, 200]


def test_per_key_first_attempt_fails_second_succeeds(server: FaultServer, client: httpx.Client) -> None:
    calls: list[tuple[str, int]] = []

    def steps(key: str, attempt: int) -> Reply | Fault:
        calls.append((key, attempt))
        return Reply(503) if attempt == 0 else Reply()

    server.script = per_key(steps)

    statuses = [post(client, key=key).status_code for key in ("a", "b", "a", "b", "a", None)]

    assert statuses == [503, 503, 200, 200, 200, 503]
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("", 0)]
    assert server.accepted_by_key == {"a": 2, "b": 1}
    assert server.duplicate_keys() == ["a"]


def fake_request(index: int) -> Request:
    return Request("POST", PATH, {}, b"{}", index, 0)


def pattern(seed: int, rate: float = 0.3, n: int = 200) -> list[Reply | Fault]:
    script = chaos(rate, seed, [Reply(503), Fault.RESET_AFTER_READ])
    return [script(fake_request(i)) for i in range(n)]


def test_chaos_is_deterministic_per_seed() -> None:
    first = pattern(seed=7)

    assert first == pattern(seed=7)
    assert first != pattern(seed=8)
    faults = sum(step != Reply() for step in first)
    assert 30 < faults < 90  # about rate * n
    assert Reply(503) in first
    assert Fault.RESET_AFTER_READ in first


def test_chaos_extremes_and_validation() -> None:
    assert all(step == Reply() for step in pattern(seed=1, rate=0.0))
    assert Reply() not in pattern(seed=1, rate=1.0)
    with pytest.raises(ValueError, match="rate"):
        chaos(1.5, 0, [Fault.HANG])
    with pytest.raises(ValueError, match="faults"):
        chaos(0.5, 0, [])


def test_chaos_through_the_server(server: FaultServer, client: httpx.Client) -> None:
    twin = chaos(0.5, 3, [Reply(503), Reply(429)])
    expected = [step.status for i in range(10) if isinstance(step := twin(fake_request(i)), Reply)]
    assert len(set(expected)) > 1  # the seed gives a mix, so the comparison means something
    server.script = chaos(0.5, 3, [Reply(503), Reply(429)])

    assert [post(client, key=str(i)).status_code for i in range(10)] == expected


# HTTP mechanics


def test_httpx_reuses_one_keep_alive_connection(server: FaultServer, client: httpx.Client) -> None:
    for i in range(4):
        assert post(client, key=str(i)).status_code == 200

    assert {r.connection for r in server.requests} == {0}
    assert [r.index for r in server.requests] == [0, 1, 2, 3]


def test_keep_alive_on_a_raw_socket(server: FaultServer) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        for i in range(3):
            sock.sendall(raw_request(key=str(i)))
            status, headers, _ = read_response(stream)
            assert status == 200
            assert "connection" not in headers
    assert [r.connection for r in server.requests] == [0, 0, 0]


def test_a_request_split_across_many_reads(server: FaultServer) -> None:
    data = raw_request(b'{"to": "+15550100"}')
    with connect(server) as sock:
        sock.settimeout(0.05)
        for piece in (data[:7], data[7:60], data[60:-5]):
            sock.sendall(piece)
            # Nothing may be answered before the request is complete (this also spaces the reads).
            with pytest.raises(TimeoutError):
                sock.recv(1)
        sock.settimeout(2.0)
        sock.sendall(data[-5:])
        with sock.makefile("rb") as stream:
            status, _, _ = read_response(stream)

    assert status == 200
    assert server.requests[0].json() == {"to": "+15550100"}


def test_pipelined_requests_in_one_write(server: FaultServer) -> None:
    server.script = lambda r: Reply(200, {"key": r.idempotency_key})
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw_request(key="first") + raw_request(key="second") + raw_request(key="third"))
        answers = [json.loads(read_response(stream)[2]) for _ in range(3)]

    assert answers == [{"key": "first"}, {"key": "second"}, {"key": "third"}]
    assert [(r.index, r.connection) for r in server.requests] == [(0, 0), (1, 0), (2, 0)]


def test_connection_close_is_honoured(server: FaultServer) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw_request(extra="Connection: close\r\n"))
        status, headers, _ = read_response(stream)
        assert (status, headers["connection"]) == (200, "close")
        assert stream.read() == b""  # the server closed its side


def test_a_reply_can_close_the_connection(server: FaultServer) -> None:
    server.script = lambda _r: Reply(headers={"Connection": "close"})
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw_request())
        assert read_response(stream)[0] == 200
        assert stream.read() == b""


def test_a_bad_request_line_is_answered_400(server: FaultServer) -> None:
    with connect(server) as sock, sock.makefile("rb") as stream:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert read_response(stream)[0] == 400
        assert stream.read() == b""
    assert server.requests == []


def test_stop_is_idempotent_and_url_needs_start() -> None:
    srv = FaultServer()
    with pytest.raises(RuntimeError):
        _ = srv.url
    srv.stop()  # never started: nothing to do
    srv.start()
    assert srv.url.startswith("http://127.0.0.1:")
    srv.stop()
    srv.stop()
