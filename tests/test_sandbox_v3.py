"""The sandbox's v3 API (`POST /v3/messages`, `GET /v3/templates`), over real HTTP on 127.0.0.1.

Most tests give the server a fake clock: idempotency keys age, in-flight requests finish and rate-limit windows turn
on it, so a test moves time instead of waiting for it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.sandbox import SandboxServer
from pipeline.spec import load_spec

PATH = "/v3/messages"
API_KEY = "sk_test_v3_5e1f"
SHIPPED = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"  # default template: order_shipped, APPROVED, sms + whatsapp
DELAYED = "7ba7b821-9dad-11d1-80b4-00c04fd430c8"  # default template: order_delayed, PENDING
NUMBER = "+14155550123"
PARAMETERS = {"name": "Ada", "order_id": "000123", "carrier": "UPS"}
START = 1_800_000_010.0  # ten seconds into a clock minute
DAY_S = 24 * 60 * 60


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def numbers(count: int) -> list[str]:
    return [f"+1202555{n:04d}" for n in range(count)]


def valid_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": [NUMBER], "template": {"id": SHIPPED, "parameters": dict(PARAMETERS)}}
    body.update(changes)
    return body


def with_template(**template: Any) -> dict[str, Any]:
    return valid_body(template=template)


def headers_for(key: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"x-api-key": API_KEY, **extra}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def send(http: httpx.Client, body: Any = None, *, key: str | None = None, **extra: str) -> httpx.Response:
    return http.post(PATH, json=valid_body() if body is None else body, headers=headers_for(key, **extra))


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error object of a v3 failure envelope, after checking the envelope itself."""
    payload = response.json()
    assert payload["success"] is False
    assert payload["data"] is None
    assert payload["meta"]["version"] == "v3"
    error: dict[str, Any] = payload["error"]
    assert error["doc_url"].endswith(error["code"])
    return error


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[SandboxServer]:
    with SandboxServer(record_bodies=True, clock=clock, seed=1) as running:
        yield running


@pytest.fixture
def client(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


# --- success ------------------------------------------------------------------------------------------------------


def test_valid_send_is_202_with_the_v3_envelope(server: SandboxServer, client: httpx.Client) -> None:
    response = send(client)

    assert response.status_code == 202
    payload = response.json()
    assert payload["success"] is True
    assert payload["error"] is None
    assert payload["meta"] == {
        "request_id": response.headers["x-request-id"],
        "timestamp": datetime.fromtimestamp(START, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "version": "v3",
    }
    data = payload["data"]
    assert (data["status"], data["template_id"], data["template_name"]) == ("QUEUED", SHIPPED, "order_shipped")
    [recipient] = data["recipients"]
    assert uuid.UUID(recipient["message_id"]).version == 4
    assert (recipient["to"], recipient["channel"]) == (NUMBER, "sms")
    assert all(value in recipient["body"] for value in PARAMETERS.values())
    assert "x-sandbox" not in response.headers


def test_an_accepted_send_is_counted_per_key_and_per_number(server: SandboxServer, client: httpx.Client) -> None:
    send(client, key="row-1")

    assert server.accepted_total == 1
    assert server.accepted_by_key == {"row-1": 1}
    assert server.accepted_by_number == {NUMBER: 1}
    assert server.accepted_bodies == [valid_body()]


def test_each_listed_channel_is_one_message_per_number(server: SandboxServer, client: httpx.Client) -> None:
    to = numbers(3)
    response = send(client, valid_body(to=to, channel=["sms", "whatsapp"]))

    recipients = response.json()["data"]["recipients"]
    assert sorted((r["to"], r["channel"]) for r in recipients) == sorted(
        (number, channel) for number in to for channel in ("sms", "whatsapp")
    )
    assert len({r["message_id"] for r in recipients}) == 6
    assert server.accepted_by_number == dict.fromkeys(to, 2)
    assert server.accepted_total == 1


def test_recipients_come_back_shuffled_but_complete(client: httpx.Client) -> None:
    to = numbers(20)
    answered = [r["to"] for r in send(client, valid_body(to=to)).json()["data"]["recipients"]]

    assert answered != to
    assert sorted(answered) == sorted(to)


def test_the_recipient_order_is_repeatable_for_a_seed() -> None:
    def order() -> list[str]:
        with SandboxServer(seed=9) as server, httpx.Client(base_url=server.url) as http:
            return [r["to"] for r in send(http, valid_body(to=numbers(10))).json()["data"]["recipients"]]

    assert order() == order()


def test_a_template_can_be_named_instead_of_identified(client: httpx.Client) -> None:
    response = send(client, with_template(name="order_shipped", parameters=PARAMETERS))

    assert response.status_code == 202
    assert response.json()["data"]["template_id"] == SHIPPED


def test_parameters_the_template_does_not_declare_are_ignored(client: httpx.Client) -> None:
    response = send(client, with_template(id=SHIPPED, parameters={**PARAMETERS, "coupon": "X1"}))

    assert response.status_code == 202
    assert "X1" not in response.json()["data"]["recipients"][0]["body"]


def test_x_sender_id_is_not_needed_and_a_profile_id_is_accepted(client: httpx.Client) -> None:
    response = send(client, **{"x-profile-id": "6ba7b812-9dad-11d1-80b4-00c04fd430c8"})

    assert response.status_code == 202


def test_sandbox_true_answers_alike_with_x_sandbox_and_counts_nothing(
    server: SandboxServer, client: httpx.Client
) -> None:
    response = send(client, valid_body(sandbox=True), key="rehearsal")

    assert response.status_code == 202
    assert response.headers["x-sandbox"] == "true"
    assert response.json()["data"]["recipients"][0]["to"] == NUMBER
    assert server.accepted_total == 0
    assert server.accepted_by_key == {}
    assert server.accepted_by_number == {}
    assert server.accepted_bodies == []
    assert server.requests_total == 1


def test_sandbox_false_is_an_ordinary_send(server: SandboxServer, client: httpx.Client) -> None:
    response = send(client, valid_body(sandbox=False))

    assert "x-sandbox" not in response.headers
    assert server.accepted_total == 1


def test_without_key_counting_no_number_is_remembered() -> None:
    with SandboxServer(count_keys=False) as server, httpx.Client(base_url=server.url) as http:
        send(http, key="k")

        assert server.accepted_total == 1
        assert server.accepted_by_key == {}
        assert server.accepted_by_number == {}


# --- authentication -----------------------------------------------------------------------------------------------


def test_missing_api_key_is_401_auth_001_in_the_v3_envelope(client: httpx.Client) -> None:
    response = client.post(PATH, json=valid_body())

    assert response.status_code == 401
    error = error_of(response)
    assert (error["code"], error["details"]) == ("AUTH_001", None)


def test_a_key_other_than_the_configured_one_is_401_auth_002() -> None:
    with SandboxServer(api_key=API_KEY) as server, httpx.Client(base_url=server.url) as http:
        wrong = http.post(PATH, json=valid_body(), headers={"x-api-key": "sk_test_someone_else"})
        right = send(http)

        assert wrong.status_code == 401
        assert error_of(wrong)["code"] == "AUTH_002"
        assert right.status_code == 202
        assert server.accepted_total == 1


def test_a_profile_id_that_is_not_a_uuid_is_400_validation_003(client: httpx.Client) -> None:
    response = send(client, **{"x-profile-id": "child-7"})

    assert response.status_code == 400
    assert error_of(response)["code"] == "VALIDATION_003"


# --- the body -----------------------------------------------------------------------------------------------------


def without(field: str) -> dict[str, Any]:
    body = valid_body()
    del body[field]
    return body


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (without("to"), "to", "VALIDATION_004"),
        (valid_body(to=NUMBER), "to", "VALIDATION_001"),
        (valid_body(to=[]), "to", "VALIDATION_005"),
        (valid_body(to=numbers(1001)), "to", "VALIDATION_005"),
        (valid_body(to=[NUMBER, "4155550123"]), "to[1]", "VALIDATION_002"),
        (valid_body(to=["+1 415 555 0123"]), "to[0]", "VALIDATION_002"),
        (valid_body(to=["+15555550123"]), "to[0]", "VALIDATION_002"),
        (valid_body(to=[14155550123]), "to[0]", "VALIDATION_002"),
        (without("template"), "template", "VALIDATION_004"),
        (valid_body(template=SHIPPED), "template", "VALIDATION_001"),
        (with_template(parameters=PARAMETERS), "template", "VALIDATION_004"),
        (with_template(id=SHIPPED, name="order_shipped", parameters=PARAMETERS), "template", "VALIDATION_001"),
        (with_template(id="order-shipped", parameters=PARAMETERS), "template.id", "VALIDATION_003"),
        (with_template(name="", parameters=PARAMETERS), "template.name", "VALIDATION_001"),
        (with_template(id=SHIPPED, parameters=["Ada"]), "template.parameters", "VALIDATION_001"),
        (
            with_template(id=SHIPPED, parameters={**PARAMETERS, "order_id": 123}),
            "template.parameters.order_id",
            "VALIDATION_001",
        ),
        (with_template(id=SHIPPED, parameters=PARAMETERS, locale="en"), "template.locale", "VALIDATION_001"),
        (valid_body(channel="sms"), "channel", "VALIDATION_001"),
        (valid_body(channel=[]), "channel", "VALIDATION_005"),
        (valid_body(channel=["email"]), "channel[0]", "VALIDATION_006"),
        (valid_body(channel=["sms", "sms"]), "channel[1]", "VALIDATION_001"),
        (valid_body(sandbox="yes"), "sandbox", "VALIDATION_001"),
        (valid_body(priority="high"), "priority", "VALIDATION_001"),
        (valid_body(parameters=PARAMETERS), "parameters", "VALIDATION_001"),
    ],
    ids=[
        "missing-to",
        "to-not-a-list",
        "to-empty",
        "to-over-1000",
        "to-without-plus",
        "to-with-spaces",
        "to-no-such-number",
        "to-a-number-not-text",
        "missing-template",
        "template-not-an-object",
        "template-without-id-or-name",
        "template-with-id-and-name",
        "template-id-not-uuid",
        "template-name-empty",
        "parameters-not-an-object",
        "parameter-not-text",
        "template-unknown-key",
        "channel-not-a-list",
        "channel-empty",
        "channel-unknown",
        "channel-twice",
        "sandbox-not-bool",
        "unknown-key",
        "parameters-outside-template",
    ],
)
def test_an_invalid_body_is_400_naming_the_field(
    server: SandboxServer, client: httpx.Client, body: dict[str, Any], field: str, code: str
) -> None:
    response = send(client, body)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    assert field in error["details"]
    assert server.accepted_total == 0


def test_an_invalid_number_is_named_by_its_position_not_its_digits(client: httpx.Client) -> None:
    error = error_of(send(client, valid_body(to=[NUMBER, "+15555550123"])))

    assert "to[1]" in error["message"]
    assert "5555550123" not in json.dumps(error)


def test_every_body_problem_is_listed(client: httpx.Client) -> None:
    body = {"to": ["0"], "template": {"id": "x"}, "channel": ["fax"], "extra": 1}
    error = error_of(send(client, body))

    assert error["code"] == "VALIDATION_002"
    assert set(error["details"]) == {"to[0]", "template.id", "channel[0]", "extra"}


@pytest.mark.parametrize(
    ("content", "content_type", "field"),
    [
        (b"{not json", "application/json", "body"),
        (b"[]", "application/json", "body"),
        (json.dumps(valid_body()).encode(), "text/plain", "content-type"),
    ],
    ids=["broken-json", "array", "not-json-content-type"],
)
def test_a_body_that_is_not_a_json_object_is_400_validation_001(
    client: httpx.Client, content: bytes, content_type: str, field: str
) -> None:
    response = client.post(PATH, content=content, headers=headers_for(**{"content-type": content_type}))

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "VALIDATION_001"
    assert list(error["details"]) == [field]


# --- templates ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        {"id": "00000000-0000-4000-8000-00000000beef", "parameters": PARAMETERS},
        {"name": "order_cancelled", "parameters": PARAMETERS},
    ],
    ids=["by-id", "by-name"],
)
def test_an_unknown_template_is_404_resource_002(
    server: SandboxServer, client: httpx.Client, template: dict[str, Any]
) -> None:
    response = send(client, valid_body(template=template))

    assert response.status_code == 404
    assert error_of(response)["code"] == "RESOURCE_002"
    assert server.accepted_total == 0


def test_parameters_missing_a_declared_variable_are_400_listing_each(client: httpx.Client) -> None:
    response = send(client, with_template(id=SHIPPED, parameters={"name": "Ada"}))

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "VALIDATION_001"
    assert set(error["details"]) == {"template.parameters.order_id", "template.parameters.carrier"}


def test_a_template_without_parameters_lacks_every_variable(client: httpx.Client) -> None:
    error = error_of(send(client, with_template(id=SHIPPED)))

    assert set(error["details"]) == {f"template.parameters.{name}" for name in PARAMETERS}


def test_a_template_not_yet_approved_is_422_business_005(server: SandboxServer, client: httpx.Client) -> None:
    response = send(client, with_template(id=DELAYED, parameters={"name": "Ada", "order_id": "1"}))

    assert response.status_code == 422
    assert error_of(response)["code"] == "BUSINESS_005"
    assert server.accepted_total == 0


def test_a_channel_the_template_lacks_is_422_business_007(client: httpx.Client) -> None:
    response = send(client, valid_body(channel=["sms", "rcs"]))

    assert response.status_code == 422
    assert error_of(response)["code"] == "BUSINESS_007"


def test_get_template_describes_it(client: httpx.Client) -> None:
    response = client.get(f"/v3/templates/{SHIPPED.upper()}", headers=headers_for())

    assert response.status_code == 200
    payload = response.json()
    assert payload["success"] is True
    assert payload["data"] == {
        "id": SHIPPED,
        "name": "order_shipped",
        "status": "APPROVED",
        "variables": ["name", "order_id", "carrier"],
        "channels": ["sms", "whatsapp"],
        "category": "UTILITY",
    }


def test_get_template_reports_a_pending_one(client: httpx.Client) -> None:
    response = client.get(f"/v3/templates/{DELAYED}", headers=headers_for())

    assert response.json()["data"]["status"] == "PENDING"


@pytest.mark.parametrize(
    ("template_id", "status", "code"),
    [("00000000-0000-4000-8000-00000000beef", 404, "RESOURCE_002"), ("order_shipped", 400, "VALIDATION_003")],
    ids=["unknown", "not-a-uuid"],
)
def test_get_template_refuses_an_unknown_or_malformed_id(
    client: httpx.Client, template_id: str, status: int, code: str
) -> None:
    response = client.get(f"/v3/templates/{template_id}", headers=headers_for())

    assert response.status_code == status
    assert error_of(response)["code"] == code


def test_get_template_needs_an_api_key(client: httpx.Client) -> None:
    response = client.get(f"/v3/templates/{SHIPPED}")

    assert response.status_code == 401
    assert error_of(response)["code"] == "AUTH_001"


def test_templates_can_be_looked_up_by_name(client: httpx.Client) -> None:
    found = client.get("/v3/templates", params={"name": "order_shipped"}, headers=headers_for())
    not_found = client.get("/v3/templates", params={"name": "order_cancelled"}, headers=headers_for())
    no_name = client.get("/v3/templates", headers=headers_for())

    assert [t["id"] for t in found.json()["data"]] == [SHIPPED]
    assert not_found.json()["data"] == []
    assert no_name.status_code == 400
    assert error_of(no_name)["code"] == "VALIDATION_004"


def test_configured_templates_replace_the_defaults() -> None:
    own = {"id": "5ba7b830-9dad-11d1-80b4-00c04fd430c8", "name": "otp", "variables": ["code"], "channels": ["whatsapp"]}
    with SandboxServer(templates=[own]) as server, httpx.Client(base_url=server.url) as http:
        shipped = send(http)
        described = http.get(f"/v3/templates/{own['id']}", headers=headers_for()).json()["data"]
        sent = send(http, with_template(name="otp", parameters={"code": "123456"}))

    assert shipped.status_code == 404
    assert described["status"] == "APPROVED"
    # without a channel the message goes out on the template's own channel, as SMS is not one of them
    assert sent.json()["data"]["recipients"][0]["channel"] == "whatsapp"


def test_templates_from_a_job_spec_are_taken_as_they_are(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "version: 1\nname: t\ninput: {path: c.csv}\noutput: {results: r.csv}\n"
        "message: {contact_id: {column: c}, template_id: {column: t}, variables: {code: {column: code}}}\n"
        "api:\n  base_url: sandbox\n  sandbox:\n    templates:\n"
        "      - {id: 5ba7b830-9dad-11d1-80b4-00c04fd430c8, name: otp, variables: [code], status: REJECTED}\n"
    )
    box = load_spec(spec, environ={})[0].api.sandbox
    assert box is not None
    with (
        SandboxServer(templates=[t.model_dump() for t in box.templates or ()]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        described = http.get("/v3/templates/5ba7b830-9dad-11d1-80b4-00c04fd430c8", headers=headers_for())

    assert described.json()["data"]["status"] == "REJECTED"
    assert described.json()["data"]["channels"] == ["sms"]


@pytest.mark.parametrize(
    ("templates", "fragment"),
    [
        ([{"id": "not-a-guid", "name": "x"}], r"templates\[0\]\.id"),
        ([{"id": SHIPPED, "name": ""}], r"templates\[0\]\.name"),
        ([{"id": SHIPPED, "name": "x", "status": "DRAFT"}], r"templates\[0\]\.status"),
        ([{"id": SHIPPED, "name": "x", "variables": "name"}], r"templates\[0\]\.variables"),
        ([{"id": SHIPPED, "name": "x", "channels": ["fax"]}], r"templates\[0\]\.channels"),
        ([{"id": SHIPPED, "name": "x", "body": "Hi"}], r"templates\[0\].*unknown keys \['body'\]"),
        ([{"id": SHIPPED, "name": "x"}, {"id": SHIPPED.upper(), "name": "y"}], r"templates\[1\]\.id"),
        ([{"id": SHIPPED, "name": "x"}, {"id": DELAYED, "name": "x"}], r"templates\[1\]\.name"),
    ],
    ids=["id", "name", "status", "variables", "channels", "unknown-key", "same-id", "same-name"],
)
def test_bad_templates_raise_value_error_naming_the_entry(templates: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SandboxServer(templates=templates)


# --- idempotency --------------------------------------------------------------------------------------------------


def test_a_repeated_key_replays_the_first_answer_byte_for_byte(server: SandboxServer, client: httpx.Client) -> None:
    first = send(client, key="row-1")
    repeat = send(client, key="row-1")

    assert repeat.status_code == 202
    assert repeat.content == first.content
    assert repeat.headers["idempotent-replayed"] == "true"
    assert repeat.headers["x-original-request-id"] == first.json()["meta"]["request_id"]
    assert repeat.headers["x-request-id"] != first.headers["x-request-id"]
    assert "idempotent-replayed" not in first.headers
    assert server.accepted_total == 1
    assert server.accepted_by_number == {NUMBER: 1}
    assert server.stats()["duplicate_keys"] == 0


def test_a_repeated_key_with_another_body_still_gets_the_first_answer(
    server: SandboxServer, client: httpx.Client
) -> None:
    first = send(client, key="row-1")
    repeat = send(client, valid_body(to=numbers(2), channel=["whatsapp"]), key="row-1")

    assert repeat.content == first.content
    assert server.accepted_by_number == {NUMBER: 1}


def test_keys_belong_to_one_api_key(server: SandboxServer, client: httpx.Client) -> None:
    send(client, key="row-1")
    other = client.post(PATH, json=valid_body(), headers={"x-api-key": "sk_test_other", "Idempotency-Key": "row-1"})

    assert other.status_code == 202
    assert "idempotent-replayed" not in other.headers
    assert server.accepted_total == 2


def test_a_repeat_while_the_first_is_processed_is_409_conflict_001(clock: FakeClock) -> None:
    # the sandbox's clock stands still, so the first send is still being processed (for latency_ms) when the repeat
    # arrives, however long the real wait; moving the clock past its latency completes it
    with SandboxServer(latency_ms=50, clock=clock) as server, httpx.Client(base_url=server.url) as http:
        first = send(http, key="row-1")
        during = send(http, key="row-1")
        clock.advance(0.05)
        after = send(http, key="row-1")

        assert first.status_code == 202
        assert during.status_code == 409
        assert error_of(during)["code"] == "CONFLICT_001"
        assert during.headers["retry-after"] == "1"
        assert after.content == first.content
        assert server.accepted_total == 1


def test_a_retry_after_a_client_timeout_meets_409_in_real_time() -> None:
    with SandboxServer(latency_ms=1_000) as server:
        with httpx.Client(base_url=server.url, timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
            send(impatient, key="row-1")
        with httpx.Client(base_url=server.url, timeout=10) as http:
            retry = send(http, key="row-1")

        assert retry.status_code == 409
        assert error_of(retry)["code"] == "CONFLICT_001"
        assert server.accepted_total == 1


def test_a_key_is_forgotten_after_24_hours(server: SandboxServer, client: httpx.Client, clock: FakeClock) -> None:
    first = send(client, key="row-1")
    clock.advance(DAY_S - 1)
    within = send(client, key="row-1")
    clock.advance(1)
    after = send(client, key="row-1")

    assert within.content == first.content
    assert after.status_code == 202
    assert "idempotent-replayed" not in after.headers
    assert after.content != first.content
    assert server.accepted_by_key == {"row-1": 2}
    assert server.stats()["duplicate_keys"] == 1


def test_a_refused_send_leaves_its_key_free(server: SandboxServer, client: httpx.Client) -> None:
    refused = send(client, valid_body(to=["4155550123"]), key="row-1")
    corrected = send(client, key="row-1")

    assert refused.status_code == 400
    assert corrected.status_code == 202
    assert "idempotent-replayed" not in corrected.headers


def test_an_injected_failure_leaves_its_key_free() -> None:
    with SandboxServer(failure_rate=0.5, seed=1) as server, httpx.Client(base_url=server.url) as http:
        statuses = []
        while not statuses or statuses[-1] != 202:
            response = send(http, key="row-1")
            statuses.append(response.status_code)
            assert "idempotent-replayed" not in response.headers
            assert len(statuses) < 50

        assert len(statuses) > 1  # this seed fails the first attempt
        assert server.accepted_by_key == {"row-1": 1}
        assert send(http, key="row-1").headers["idempotent-replayed"] == "true"


def test_a_sandbox_answer_is_kept_under_its_key_too(server: SandboxServer, client: httpx.Client) -> None:
    rehearsal = send(client, valid_body(sandbox=True), key="row-1")
    real = send(client, key="row-1")

    assert real.content == rehearsal.content
    assert real.headers["x-sandbox"] == "true"
    assert server.accepted_total == 0


@pytest.mark.parametrize("key", ["has space", "a" * 256, "", "row/1", "row-1, row-2"])
def test_a_malformed_idempotency_key_is_400_validation_007(
    server: SandboxServer, client: httpx.Client, key: str
) -> None:
    response = send(client, key=key)

    assert response.status_code == 400
    assert error_of(response)["code"] == "VALIDATION_007"
    assert server.accepted_total == 0


@pytest.mark.parametrize("key", ["a" * 255, "Row_1-A"])
def test_an_idempotency_key_of_letters_digits_dash_and_underscore_is_accepted(client: httpx.Client, key: str) -> None:
    assert send(client, key=key).status_code == 202


# --- rate limit ---------------------------------------------------------------------------------------------------


def test_every_v3_answer_reports_a_generous_limit_by_default(client: httpx.Client) -> None:
    answers = [send(client), send(client, valid_body(to=[])), client.get("/v3/templates/x", headers=headers_for())]

    assert [a.headers["x-ratelimit-limit"] for a in answers] == ["1000000"] * 3
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["999999", "999998", "999997"]
    assert {a.headers["x-ratelimit-reset"] for a in answers} == {str(int(START) - 10 + 60)}


def test_over_the_rate_limit_is_429_business_002_until_the_minute_turns(clock: FakeClock) -> None:
    with (
        SandboxServer(rate_limit_per_min=3, clock=clock) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        allowed = [send(http) for _ in range(3)]
        refused = send(http)
        clock.advance(50)  # START is ten seconds into its minute
        next_minute = send(http)

        assert [a.status_code for a in allowed] == [202] * 3
        assert [a.headers["x-ratelimit-remaining"] for a in allowed] == ["2", "1", "0"]
        assert refused.status_code == 429
        assert error_of(refused)["code"] == "BUSINESS_002"
        assert refused.headers["retry-after"] == "50"
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert next_minute.status_code == 202
        assert next_minute.headers["x-ratelimit-remaining"] == "2"
        assert server.accepted_total == 4


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_a_bad_rate_limit_raises_value_error(limit: Any) -> None:
    with pytest.raises(ValueError, match="rate_limit_per_min"):
        SandboxServer(rate_limit_per_min=limit)


# --- failure injection and latency --------------------------------------------------------------------------------


def test_failure_rate_one_injects_v3_failures_and_accepts_nothing() -> None:
    codes = {503: "SERVICE_001", 500: "INTERNAL_001", 429: "BUSINESS_002"}
    with SandboxServer(failure_rate=1.0, seed=4) as server, httpx.Client(base_url=server.url) as http:
        responses = [send(http, key=f"row-{n}") for n in range(30)]

        assert {r.status_code for r in responses} == set(codes)
        for response in responses:
            assert error_of(response)["code"] == codes[response.status_code]
            if response.status_code != 500:
                assert response.headers["retry-after"] == "1"
        assert server.accepted_total == 0
        assert server.injected_total == 30


def test_failure_injection_spares_invalid_sends_and_template_lookups() -> None:
    with SandboxServer(failure_rate=1.0, seed=1) as server, httpx.Client(base_url=server.url) as http:
        assert send(http, valid_body(to=[])).status_code == 400
        assert http.get(f"/v3/templates/{SHIPPED}", headers=headers_for()).status_code == 200


# --- routing and secrets ------------------------------------------------------------------------------------------


def test_other_methods_and_paths_are_refused(client: httpx.Client) -> None:
    wrong_method = client.get(PATH, headers=headers_for())
    wrong_path = client.post("/v3/message", json=valid_body(), headers=headers_for())

    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_path.status_code == 404


def test_the_api_key_never_comes_back_even_as_a_parameter(client: httpx.Client) -> None:
    echoed = send(client, with_template(id=SHIPPED, parameters={**PARAMETERS, "name": API_KEY}))
    refused = send(client, valid_body(**{API_KEY: 1}))

    assert echoed.status_code == 202
    assert refused.status_code == 400
    assert API_KEY not in echoed.text + refused.text


# --- the sandbox command ------------------------------------------------------------------------------------------


def test_the_sandbox_command_announces_every_generation_and_answers_each() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox"],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        endpoints = [tuple(process.stdout.readline().split()) for _ in range(5)]
        v1_url, v2_url, v3_url = (url for _, method, url in endpoints if method == "POST")
        sender = {"x-api-key": API_KEY, "x-sender-id": "00000000-0000-4000-8000-000000000000"}
        contact = {"contactId": SHIPPED, "templateId": SHIPPED}
        v1 = httpx.post(v1_url, json={**contact, "messageBody": PARAMETERS}, headers=sender)
        v2 = httpx.post(v2_url, json={**contact, "templateVariables": PARAMETERS}, headers=sender)
        v3 = httpx.post(v3_url, json=valid_body(), headers=headers_for())
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)

    assert first.startswith("Sandbox listening on http://127.0.0.1:")
    assert [(generation, method) for generation, method, _ in endpoints] == [
        ("v1:", "POST"),
        ("v2:", "POST"),
        ("v3:", "POST"),
        ("v3:", "GET"),
        ("v3:", "GET"),
    ]
    assert endpoints[3][2].endswith("/v3/messages/{id}")
    assert endpoints[4][2].endswith("/v3/templates/{id}")
    assert (v1.status_code, v2.status_code, v3.status_code) == (200, 204, 202)
    assert process.returncode == 0
