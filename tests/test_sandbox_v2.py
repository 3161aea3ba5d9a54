"""The sandbox's v2 endpoint (`POST /v2/messages/contact`), over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline.sandbox import SandboxServer

PATH = "/v2/messages/contact"
SENDER = "00000000-0000-4000-8000-000000000000"
CONTACT = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
TEMPLATE = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"
API_KEY = "sk-test-v2-1c0d"


def valid_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contactId": CONTACT, "templateId": TEMPLATE, "templateVariables": {"name": "Ada"}}
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
    return http.post(PATH, json=valid_body() if body is None else body, headers=headers or auth_headers())


# --- success ------------------------------------------------------------------------------------------------------


def test_valid_request_is_204_with_an_empty_body(server: SandboxServer, client: httpx.Client) -> None:
    response = send(client)

    assert response.status_code == 204
    assert response.content == b""
    assert "content-length" not in response.headers
    assert server.accepted_total == 1
    assert server.accepted_bodies == [valid_body()]


def test_empty_success_false_answers_200_json_as_v1_does() -> None:
    with SandboxServer(empty_success=False) as server, httpx.Client(base_url=server.url) as http:
        response = send(http)

    assert response.status_code == 200
    payload = response.json()
    assert payload["status"] == "queued"
    assert uuid.UUID(payload["messageId"]).version == 4


def test_empty_success_true_makes_v1_answer_204_too() -> None:
    with SandboxServer(empty_success=True) as server, httpx.Client(base_url=server.url) as http:
        v1 = http.post(
            "/v1/messages/contact",
            json={"contactId": CONTACT, "templateId": TEMPLATE, "messageBody": {"name": "Ada"}},
            headers=auth_headers(),
        )
        v2 = send(http)

    assert (v1.status_code, v2.status_code) == (204, 204)


def test_accepted_by_key_counts_v2_acceptances(server: SandboxServer, client: httpx.Client) -> None:
    for key in ["a", "a", "b"]:
        assert send(client, headers=auth_headers(**{"Idempotency-Key": key})).status_code == 204

    assert server.accepted_by_key == {"a": 2, "b": 1}
    assert server.stats() == {"requests_total": 3, "accepted_total": 3, "duplicate_keys": 1}


# --- headers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"x-sender-id": SENDER}, 401, "AUTH-001"),
        ({"x-api-key": API_KEY}, 401, "AUTH-002"),
        ({"x-api-key": API_KEY, "x-sender-id": "sender-42"}, 400, "VAL-002"),
    ],
    ids=["no-api-key", "no-sender-id", "sender-id-not-guid"],
)
def test_v2_checks_headers_as_v1_does(client: httpx.Client, headers: dict[str, str], status: int, code: str) -> None:
    response = send(client, headers=headers)

    assert response.status_code == status
    assert response.json()["code"] == code


def test_credentials_other_than_configured_are_401_auth_003() -> None:
    with SandboxServer(api_key=API_KEY, sender_id=SENDER) as server, httpx.Client(base_url=server.url) as http:
        response = send(http, headers={"x-api-key": "sk-someone-else", "x-sender-id": SENDER})

        assert response.status_code == 401
        assert response.json() == {"statusCode": 401, "code": "AUTH-003", "message": "invalid credentials"}
        assert server.accepted_total == 0


def test_non_json_content_type_is_415(client: httpx.Client) -> None:
    headers = auth_headers(**{"content-type": "text/plain"})
    response = client.post(PATH, content=json.dumps(valid_body()), headers=headers)

    assert response.status_code == 415


# --- body ---------------------------------------------------------------------------------------------------------


def without(field: str) -> dict[str, Any]:
    body = valid_body()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (without("contactId"), "contactId", "VAL-001"),
        (valid_body(templateId="not-a-guid"), "templateId", "VAL-002"),
        (without("templateVariables"), "templateVariables", "VAL-003"),
        (valid_body(templateVariables={}), "templateVariables", "VAL-003"),
        (valid_body(templateVariables=["Ada"]), "templateVariables", "VAL-003"),
        (valid_body(templateVariables={"order_id": 12345}), "templateVariables", "VAL-003"),
        (valid_body(webhookUrl="https://hooks.example.com/sent"), "webhookUrl", None),
        (valid_body(channel="sms"), "channel", None),
    ],
    ids=[
        "missing-contactId",
        "templateId-not-guid",
        "missing-templateVariables",
        "empty-templateVariables",
        "templateVariables-not-object",
        "templateVariables-number-value",
        "webhookUrl-is-v1-only",
        "unknown-key",
    ],
)
def test_invalid_body_is_400_naming_the_field(
    server: SandboxServer, client: httpx.Client, body: dict[str, Any], field: str, code: str | None
) -> None:
    response = send(client, body)

    assert response.status_code == 400
    payload = response.json()
    assert field in payload["errors"]
    assert payload.get("code") == code
    assert server.accepted_total == 0


def test_a_v1_body_is_refused_naming_both_fields(client: httpx.Client) -> None:
    response = send(client, {"contactId": CONTACT, "templateId": TEMPLATE, "messageBody": {"name": "Ada"}})

    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "VAL-003"
    assert set(payload["errors"]) == {"templateVariables", "messageBody"}


@pytest.mark.parametrize("raw", [b"{not json", b"[]"], ids=["broken", "array"])
def test_a_body_that_is_not_a_json_object_is_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post(PATH, content=raw, headers=auth_headers(**{"content-type": "application/json"}))

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["body"]


def test_other_methods_are_405_allowing_post(client: httpx.Client) -> None:
    response = client.get(PATH, headers=auth_headers())

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# --- failure injection --------------------------------------------------------------------------------------------


def test_failure_rate_one_injects_v1_style_failures_and_accepts_nothing() -> None:
    with SandboxServer(failure_rate=1.0, seed=5) as server, httpx.Client(base_url=server.url) as http:
        responses = [send(http) for _ in range(30)]

        assert {r.status_code for r in responses} == {429, 500, 503}
        for response in responses:
            assert response.json()["statusCode"] == response.status_code
            if response.status_code != 500:
                assert response.headers["retry-after"] == "1"
        assert server.accepted_total == 0
        assert server.injected_total == 30


# --- latency ------------------------------------------------------------------------------------------------------


def test_a_request_takes_effect_on_arrival_though_its_answer_is_late() -> None:
    # the client gives up long before the answer; the message was accepted all the same, as on a slow real server
    with SandboxServer(latency_ms=5_000) as server, httpx.Client(base_url=server.url, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            send(http)

        assert server.accepted_total == 1
