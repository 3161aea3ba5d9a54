"""Behaviour of the embedded fake Sent.dm server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.sandbox import MAX_BODY_BYTES, MAX_HEADER_BYTES, MESSAGES_PATH, SandboxServer

SENDER = "00000000-0000-4000-8000-000000000000"
CONTACT = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
TEMPLATE = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
API_KEY = "sk-test-7f3a9c"
REPO_ROOT = Path(__file__).resolve().parents[1]


def valid_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contactId": CONTACT, "templateId": TEMPLATE, "messageBody": {"name": "Ada"}}
    body.update(changes)
    return body


def auth_headers(**extra: str) -> dict[str, str]:
    return {"x-api-key": API_KEY, "x-sender-id": SENDER, **extra}


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(record_bodies=True) as running:
        yield running


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def send(http: httpx.Client, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(MESSAGES_PATH, json=valid_body() if body is None else body, headers=headers or auth_headers())


# --- raw-socket helpers, for framing that an HTTP client would hide ---------------------------------------------


def raw_post(body: dict[str, Any] | None = None, *, extra_headers: str = "", path: str = MESSAGES_PATH) -> bytes:
    payload = json.dumps(valid_body() if body is None else body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: sandbox\r\nx-api-key: {API_KEY}\r\nx-sender-id: {SENDER}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + payload


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def read_response(stream: Any) -> RawResponse:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, body)


@pytest.fixture
def raw_conn(server: SandboxServer) -> Iterator[tuple[socket.socket, Any]]:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with sock.makefile("rb") as stream:
            yield sock, stream


# --- success ------------------------------------------------------------------------------------------------------


def test_valid_request_is_200_with_uuid4_message_id(server: SandboxServer, client: httpx.Client) -> None:
    response = send(client)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert payload["status"] == "queued"
    assert payload["channel"] == "sms"
    assert uuid.UUID(payload["messageId"]).version == 4
    assert server.accepted_total == 1
    assert server.accepted_bodies == [valid_body()]


def test_each_accepted_message_gets_a_distinct_message_id(client: httpx.Client) -> None:
    ids = {send(client).json()["messageId"] for _ in range(5)}
    assert len(ids) == 5


def test_empty_success_answers_204_with_empty_body() -> None:
    with SandboxServer(empty_success=True) as server, httpx.Client(base_url=server.url) as http:
        response = send(http)

        assert response.status_code == 204
        assert response.content == b""
        assert server.accepted_total == 1


def test_content_type_parameters_are_accepted(client: httpx.Client) -> None:
    response = client.post(
        MESSAGES_PATH,
        content=json.dumps(valid_body()),
        headers=auth_headers(**{"content-type": "application/json; charset=utf-8"}),
    )
    assert response.status_code == 200


def test_header_names_are_case_insensitive(client: httpx.Client) -> None:
    response = send(client, headers={"X-API-KEY": API_KEY, "X-Sender-Id": SENDER})
    assert response.status_code == 200


def test_query_string_is_ignored(client: httpx.Client) -> None:
    response = client.post(f"{MESSAGES_PATH}?trace=1", json=valid_body(), headers=auth_headers())
    assert response.status_code == 200


def test_https_webhook_url_is_accepted(server: SandboxServer, client: httpx.Client) -> None:
    body = valid_body(webhookUrl="https://hooks.example.com/sent?x=1")
    assert send(client, body).status_code == 200
    assert server.accepted_bodies == [body]


def test_last_headers_are_recorded_lower_cased(server: SandboxServer, client: httpx.Client) -> None:
    send(client, headers=auth_headers(**{"Idempotency-Key": "k-1"}))

    assert server.last_headers is not None
    assert server.last_headers["idempotency-key"] == "k-1"
    assert server.last_headers["x-sender-id"] == SENDER


def test_bodies_and_headers_are_not_recorded_by_default() -> None:
    with SandboxServer() as server, httpx.Client(base_url=server.url) as http:
        send(http)

        assert server.accepted_bodies == []
        assert server.last_headers is None


# --- authentication -----------------------------------------------------------------------------------------------


def test_missing_api_key_is_401_auth_001(client: httpx.Client) -> None:
    response = send(client, headers={"x-sender-id": SENDER})

    assert response.status_code == 401
    assert response.json() == {"statusCode": 401, "code": "AUTH-001", "message": "x-api-key header is missing"}


def test_empty_api_key_is_401_auth_001(client: httpx.Client) -> None:
    response = send(client, headers={"x-api-key": "", "x-sender-id": SENDER})

    assert response.status_code == 401
    assert response.json()["code"] == "AUTH-001"


def test_missing_sender_id_is_401_auth_002(client: httpx.Client) -> None:
    response = send(client, headers={"x-api-key": API_KEY})

    assert response.status_code == 401
    assert response.json()["code"] == "AUTH-002"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "sk-someone-else", "x-sender-id": SENDER},
        {"x-api-key": API_KEY, "x-sender-id": CONTACT},
    ],
    ids=["wrong-api-key", "wrong-sender-id"],
)
def test_credentials_other_than_configured_are_401_auth_003(headers: dict[str, str]) -> None:
    with SandboxServer(api_key=API_KEY, sender_id=SENDER) as server, httpx.Client(base_url=server.url) as http:
        response = send(http, headers=headers)

        assert response.status_code == 401
        assert response.json() == {"statusCode": 401, "code": "AUTH-003", "message": "invalid credentials"}
        assert server.accepted_total == 0


def test_configured_credentials_are_accepted() -> None:
    with SandboxServer(api_key=API_KEY, sender_id=SENDER) as server, httpx.Client(base_url=server.url) as http:
        assert send(http).status_code == 200


def test_non_guid_sender_id_is_400_val_002(client: httpx.Client) -> None:
    response = send(client, headers={"x-api-key": API_KEY, "x-sender-id": "sender-42"})

    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "VAL-002"
    assert "x-sender-id" in payload["errors"]


# --- content type and body ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(client: httpx.Client, content_type: str | None) -> None:
    headers = auth_headers() if content_type is None else auth_headers(**{"content-type": content_type})
    response = client.post(MESSAGES_PATH, content=json.dumps(valid_body()), headers=headers)

    assert response.status_code == 415
    assert response.json()["statusCode"] == 415


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe{}"], ids=["broken", "empty", "not-utf8"])
def test_non_json_body_is_400_with_body_error(client: httpx.Client, raw: bytes) -> None:
    response = client.post(MESSAGES_PATH, content=raw, headers=auth_headers(**{"content-type": "application/json"}))

    assert response.status_code == 400
    payload = response.json()
    assert payload["statusCode"] == 400
    assert list(payload["errors"]) == ["body"]


@pytest.mark.parametrize("body", [[valid_body()], "text", 42, None], ids=["array", "string", "number", "null"])
def test_json_body_that_is_not_an_object_is_400(client: httpx.Client, body: Any) -> None:
    response = client.post(
        MESSAGES_PATH, content=json.dumps(body), headers=auth_headers(**{"content-type": "application/json"})
    )

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["body"]


def without(field: str) -> dict[str, Any]:
    body = valid_body()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (without("contactId"), "contactId", "VAL-001"),
        (without("templateId"), "templateId", "VAL-001"),
        (valid_body(contactId="not-a-guid"), "contactId", "VAL-002"),
        (valid_body(templateId="6ba7b811-9dad-11d1-80b4"), "templateId", "VAL-002"),
        (valid_body(contactId=12345), "contactId", "VAL-002"),
        (valid_body(contactId=CONTACT + "\n"), "contactId", "VAL-002"),
        (without("messageBody"), "messageBody", "VAL-003"),
        (valid_body(messageBody={}), "messageBody", "VAL-003"),
        (valid_body(messageBody=["Ada"]), "messageBody", "VAL-003"),
        (valid_body(messageBody={"name": "Ada", "age": 36}), "messageBody", None),
        (valid_body(messageBody={"name": None}), "messageBody", None),
        (valid_body(channel="sms"), "channel", None),
        (valid_body(webhookUrl="/relative/path"), "webhookUrl", None),
        (valid_body(webhookUrl="ftp://hooks.example.com/x"), "webhookUrl", None),
        (valid_body(webhookUrl="https://"), "webhookUrl", None),
        (valid_body(webhookUrl=7), "webhookUrl", None),
        (valid_body(webhookUrl=None), "webhookUrl", None),
    ],
    ids=[
        "missing-contactId",
        "missing-templateId",
        "contactId-not-guid",
        "templateId-truncated-guid",
        "contactId-number",
        "contactId-trailing-newline",
        "missing-messageBody",
        "empty-messageBody",
        "messageBody-not-object",
        "messageBody-number-value",
        "messageBody-null-value",
        "unknown-key",
        "webhookUrl-relative",
        "webhookUrl-ftp",
        "webhookUrl-no-host",
        "webhookUrl-number",
        "webhookUrl-null",
    ],
)
def test_invalid_body_is_400_naming_the_field(
    server: SandboxServer, client: httpx.Client, body: dict[str, Any], field: str, code: str | None
) -> None:
    response = send(client, body)

    assert response.status_code == 400
    payload = response.json()
    assert payload["statusCode"] == 400
    assert field in payload["errors"]
    assert isinstance(payload["message"], str)
    if code is not None:
        assert payload["code"] == code
    assert server.accepted_total == 0


def test_every_body_problem_is_listed(client: httpx.Client) -> None:
    payload = send(client, {"templateId": "x", "messageBody": {}, "extra": 1}).json()

    assert payload["code"] == "VAL-001"
    assert set(payload["errors"]) == {"contactId", "templateId", "messageBody", "extra"}


# --- routing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v2/messages", "/", "/v1/messages/contact/extra"])
def test_unknown_path_is_404_json(client: httpx.Client, path: str) -> None:
    response = client.post(path, json=valid_body(), headers=auth_headers())

    assert response.status_code == 404
    assert response.json()["statusCode"] == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_method_on_messages_path_is_405(client: httpx.Client, method: str) -> None:
    response = client.request(method, MESSAGES_PATH, headers=auth_headers())

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["statusCode"] == 405


def test_head_request_gets_headers_without_body_and_connection_stays_usable(client: httpx.Client) -> None:
    head = client.head(MESSAGES_PATH)
    after = send(client)

    assert head.status_code == 405
    assert head.content == b""
    assert after.status_code == 200


# --- connection handling ------------------------------------------------------------------------------------------


def test_keep_alive_answers_several_requests_on_one_connection(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    statuses = []
    for _ in range(5):
        sock.sendall(raw_post())
        statuses.append(read_response(stream).status)

    assert statuses == [200] * 5


def test_connection_close_from_client_is_honoured(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(raw_post(extra_headers="Connection: close\r\n"))
    response = read_response(stream)

    assert response.status == 200
    assert response.headers["connection"] == "close"
    assert stream.read() == b""  # the server closed its side


def test_http_10_without_keep_alive_is_closed_after_the_answer(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(raw_post().replace(b"HTTP/1.1", b"HTTP/1.0", 1))

    assert read_response(stream).status == 200
    assert stream.read() == b""


def test_request_split_across_two_writes_is_answered(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    data = raw_post()
    middle_of_headers = data.index(b"x-sender-id") + 5
    sock.sendall(data[:middle_of_headers])
    sock.sendall(data[middle_of_headers:])

    assert read_response(stream).status == 200


def test_request_sent_byte_by_byte_is_answered(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    for byte in raw_post():
        sock.send(bytes([byte]))

    assert read_response(stream).status == 200


def test_body_sent_after_100_continue_is_answered(raw_conn: tuple[socket.socket, Any]) -> None:
    # Waiting for the interim answer guarantees the server saw the head before any body byte.
    sock, stream = raw_conn
    data = raw_post(extra_headers="Expect: 100-continue\r\n")
    head_end = data.index(b"\r\n\r\n") + 4
    sock.sendall(data[:head_end])
    assert stream.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert stream.readline() == b"\r\n"
    sock.sendall(data[head_end:])

    assert read_response(stream).status == 200


def test_two_pipelined_requests_in_one_write_are_both_answered_in_order(
    server: SandboxServer, raw_conn: tuple[socket.socket, Any]
) -> None:
    sock, stream = raw_conn
    sock.sendall(raw_post(valid_body(contactId="bad")) + raw_post(extra_headers="Idempotency-Key: second\r\n"))

    first, second = read_response(stream), read_response(stream)
    assert (first.status, second.status) == (400, 200)
    assert server.accepted_by_key == {"second": 1}


def test_pipelined_requests_with_latency_are_answered_in_order() -> None:
    with SandboxServer(latency_ms=5) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock, sock.makefile("rb") as stream:
            sock.sendall(raw_post() + raw_post(path="/nope") + raw_post())
            statuses = [read_response(stream).status for _ in range(3)]

    assert statuses == [200, 404, 200]


def test_malformed_request_line_is_400_and_closes(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")

    assert read_response(stream).status == 400
    assert stream.read() == b""


def test_malformed_header_line_is_400_and_closes(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(b"POST /v1/messages/contact HTTP/1.1\r\nno colon here\r\nContent-Length: 0\r\n\r\n")

    assert read_response(stream).status == 400
    assert stream.read() == b""


def test_post_without_content_length_is_411(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(f"POST {MESSAGES_PATH} HTTP/1.1\r\nHost: x\r\nx-api-key: {API_KEY}\r\n\r\n".encode())

    assert read_response(stream).status == 411


def test_chunked_request_body_is_refused_with_411(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(f"POST {MESSAGES_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n".encode())

    assert read_response(stream).status == 411


def test_body_over_the_limit_is_413_without_reading_it(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(f"POST {MESSAGES_PATH} HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())

    assert read_response(stream).status == 413


def test_headers_over_the_limit_are_431(raw_conn: tuple[socket.socket, Any]) -> None:
    sock, stream = raw_conn
    sock.sendall(f"POST {MESSAGES_PATH} HTTP/1.1\r\nx-padding: ".encode() + b"a" * (MAX_HEADER_BYTES + 1))

    response = read_response(stream)
    assert response.status == 431
    assert response.headers["connection"] == "close"


# --- options ------------------------------------------------------------------------------------------------------


def test_latency_ms_delays_each_answer() -> None:
    with SandboxServer(latency_ms=60) as server, httpx.Client(base_url=server.url) as http:
        started = time.perf_counter()
        response = send(http)
        elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.060


def test_failure_rate_one_injects_only_failures_and_accepts_nothing() -> None:
    with SandboxServer(failure_rate=1.0, seed=7) as server, httpx.Client(base_url=server.url) as http:
        responses = [send(http) for _ in range(40)]

        assert {r.status_code for r in responses} == {429, 500, 503}
        for response in responses:
            assert response.json()["statusCode"] == response.status_code
            if response.status_code in (429, 503):
                assert response.headers["retry-after"] == "1"
        assert server.accepted_total == 0
        assert server.accepted_by_key == {}
        assert server.requests_total == 40


def test_failure_injection_spares_invalid_requests() -> None:
    with SandboxServer(failure_rate=1.0, seed=1) as server, httpx.Client(base_url=server.url) as http:
        assert send(http, valid_body(contactId="nope")).status_code == 400
        assert send(http, headers={"x-sender-id": SENDER}).status_code == 401


def test_failure_sequence_is_deterministic_for_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with SandboxServer(failure_rate=0.5, seed=seed) as server, httpx.Client(base_url=server.url) as http:
            return [send(http).status_code for _ in range(30)]

    first = statuses(11)
    assert first == statuses(11)
    assert 200 in first
    assert set(first) - {200}


def test_accepted_by_key_counts_acceptances_per_idempotency_key(server: SandboxServer, client: httpx.Client) -> None:
    for key in ["a", "a", "b", None, None, "a"]:
        headers = auth_headers() if key is None else auth_headers(**{"Idempotency-Key": key})
        assert send(client, headers=headers).status_code == 200
    send(client, valid_body(contactId="bad"), headers=auth_headers(**{"Idempotency-Key": "c"}))

    assert server.accepted_by_key == {"a": 3, "b": 1, "": 2}
    assert server.stats() == {"requests_total": 7, "accepted_total": 6, "duplicate_keys": 1}


def test_without_key_counting_memory_does_not_grow_per_message() -> None:
    with SandboxServer(count_keys=False) as quiet, httpx.Client(base_url=quiet.url, timeout=5) as client:
        for key in ["a", "a", "b"]:
            assert send(client, headers=auth_headers(**{"Idempotency-Key": key})).status_code == 200
        assert quiet.accepted_by_key == {}
        assert quiet.stats()["accepted_total"] == 3


def test_api_key_value_never_appears_in_any_response() -> None:
    secret, wrong = "sk-live-SECRET-91c2", "sk-live-WRONG-55aa"
    seen: list[str] = []

    def record(response: httpx.Response) -> None:
        seen.append(response.text)
        seen.extend(f"{name}: {value}" for name, value in response.headers.items())

    for options in ({"api_key": secret}, {"api_key": secret, "failure_rate": 1.0, "seed": 3}):
        with SandboxServer(**options) as server, httpx.Client(base_url=server.url) as http:
            for key in (secret, wrong):
                headers = {"x-api-key": key, "x-sender-id": SENDER}
                record(send(http, headers=headers))
                record(send(http, valid_body(contactId=key, extra=key), headers=headers))
                record(send(http, valid_body(**{key: "x"}, messageBody={key: 1}), headers=headers))
                record(send(http, headers={**headers, "x-sender-id": key}))
                record(http.post(MESSAGES_PATH, content=key, headers={**headers, "content-type": "text/plain"}))
                record(http.post(MESSAGES_PATH, content=key, headers={**headers, "content-type": "application/json"}))
                record(http.get(MESSAGES_PATH, headers=headers))
                record(http.post(f"/other?{key}", headers=headers, json={}))
                record(http.post(f"/{key}", headers=headers, json={}))
                record(http.request(key, MESSAGES_PATH, headers=headers))  # the key is a valid method token

    assert len(seen) > 20
    assert not [text for text in seen if secret in text or wrong in text]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": -0.1}, "failure_rate"),
        ({"failure_rate": "0.5"}, "failure_rate"),
        ({"seed": 1.5}, "seed"),
        ({"api_key": ""}, "api_key"),
        ({"sender_id": "not-a-guid"}, "sender_id"),
        ({"port": 70000}, "port"),
        ({"host": ""}, "host"),
        ({"empty_success": "yes"}, "empty_success"),
    ],
)
def test_bad_options_raise_value_error_naming_the_option(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SandboxServer(**options)


# --- lifecycle ----------------------------------------------------------------------------------------------------


def test_url_is_loopback_with_port_and_no_trailing_slash(server: SandboxServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert not server.url.endswith("/")
    assert int(server.url.rsplit(":", 1)[1]) > 0


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        _ = SandboxServer().url


def test_stop_is_idempotent_and_closes_open_connections() -> None:
    server = SandboxServer().start()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock, sock.makefile("rb") as stream:
        sock.sendall(raw_post())
        assert read_response(stream).status == 200
        server.stop()
        server.stop()
        assert stream.read() == b""


def test_port_in_use_fails_start_with_os_error(server: SandboxServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # noqa: PT011 - the errno differs between platforms
        SandboxServer(port=port).start()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_forever_serves_until_a_signal_then_exits_cleanly(signum: int) -> None:
    code = (
        "from pipeline.sandbox import serve_forever\n"
        "serve_forever(host='127.0.0.1', port=0, on_ready=lambda url: print(url, flush=True), empty_success=True)\n"
        "print('stopped', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            with httpx.Client(base_url=url) as http:
                assert send(http).status_code == 204
            process.send_signal(signum)
            out, err = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

    assert process.returncode == 0, err
    assert out.strip() == "stopped"
    assert err == ""
