"""The v3 contract end to end, as a user meets it: the CLI called in-process against real servers on 127.0.0.1 - the
sandbox (SandboxServer, which checks v3 requests the way Sent.dm documents them) and, for answers the sandbox does
not give on demand, the scripted FaultServer. Covered: which spec keys belong to which generation, the request the
server receives, phone numbers, how answers read, the template check before the first send, and `--server-dry-run`.
v1/v2 appear where the contract differs between generations."""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import phonenumbers
import polars as pl
import pytest
import yaml

from pipeline import __version__
from pipeline.sandbox import SandboxServer
from tests.conftest import API_KEY, SENDER, TEMPLATE, contact_rows, guid, spec_data, write_csv
from tests.fault_server import Fault, FaultServer, Reply, Request

Cli = Callable[..., tuple[int, str, str]]

SHIPPED = TEMPLATE  # the sandbox's order_shipped: APPROVED, variables name, order_id, carrier; sms + whatsapp
DELAYED = "7ba7b821-9dad-11d1-80b4-00c04fd430c8"  # the sandbox's order_delayed: PENDING, variables name, order_id
READY = "7ba7b822-9dad-11d1-80b4-00c04fd430c8"  # a template the tests define: order_ready, variable name only
PROFILE = "5ba7b810-9dad-11d1-80b4-00c04fd430c8"
NUMBER = "+14155550123"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

pytestmark = pytest.mark.usefixtures("credentials")


# --- campaigns ----------------------------------------------------------------------------------------------------


def people(*phones: str) -> list[dict[str, str]]:
    """One row per number, each with its own name and order, so that no two rows are the same message."""
    return [{"phone": phone, "first_name": f"Name{i}", "order_id": f"{i:06d}"} for i, phone in enumerate(phones, 1)]


def v3_data(url: str = "sandbox", **overrides: dict[str, Any]) -> dict[str, Any]:
    """A v3 spec as a dict; each override section is merged into the default one, a key set to None is removed."""
    data: dict[str, Any] = {
        "version": 1,
        "name": "v3-campaign",
        "input": {"path": "customers.csv"},
        "message": {
            "to": {"column": "phone"},
            "default_region": "US",
            "template_id": {"value": SHIPPED},
            "variables": {
                "name": {"column": "first_name"},
                "order_id": {"column": "order_id"},
                "carrier": {"value": "UPS"},
            },
        },
        "api": {"version": "v3", "base_url": url, "api_key": "${SENT_DM_API_KEY}", "timeout_s": 10},
        "send": {"concurrency": 4, "backoff_s": 0},
        "output": {"results": "out/results.csv"},
    }
    return merged(data, overrides)


def merged(data: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for section, changes in overrides.items():
        for key, value in changes.items():
            if value is None:
                out[section].pop(key, None)
            else:
                out[section][key] = value
    return out


def write_spec(folder: Path, data: dict[str, Any], rows: Sequence[dict[str, str]]) -> Path:
    write_csv(folder / data["input"]["path"], rows)
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec


def results_of(spec: Path, name: str = "out/results.csv") -> pl.DataFrame:
    return pl.read_csv(spec.parent / name, infer_schema=False)


def column(table: pl.DataFrame, name: str) -> list[str | None]:
    return table[name].to_list()


def state_keys(spec: Path) -> dict[str, str]:
    """message id -> Idempotency-Key, as the campaign's state recorded them."""
    with sqlite3.connect(spec.parent / "out" / "v3-campaign.state.sqlite") as db:
        found = db.execute("SELECT idempotency_key, message_id FROM messages WHERE status = 'sent'").fetchall()
    return {message_id: key for key, message_id in found}


def by_json(bodies: Sequence[Any]) -> list[Any]:
    return sorted(bodies, key=lambda body: json.dumps(body, sort_keys=True))


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, sender_id=SENDER, record_bodies=True) as server:
        yield server


# --- a scripted v3 API on FaultServer -----------------------------------------------------------------------------

TEMPLATES = {
    SHIPPED: {
        "id": SHIPPED,
        "name": "order_shipped",
        "status": "APPROVED",
        "variables": ["name", "order_id", "carrier"],
    },
    READY: {"id": READY, "name": "order_ready", "status": "APPROVED", "variables": ["name"]},
}
META = {"request_id": "req_test", "timestamp": "2026-12-01T10:00:00.000Z", "version": "v3"}


def accepted(request: Request) -> Reply:
    """202 with the v3 envelope: one message per number and channel."""
    body = request.json()
    recipients = [
        {"message_id": str(uuid.uuid4()), "to": number, "channel": channel, "body": "..."}
        for number in body["to"]
        for channel in body.get("channel") or ["sms"]
    ]
    data = {"status": "QUEUED", "template_id": SHIPPED, "template_name": "order_shipped", "recipients": recipients}
    return Reply(202, {"success": True, "data": data, "error": None, "meta": META})


def refused(
    status: int, code: str, message: str, *, details: dict[str, list[str]] | None = None, retry_after: str | None = None
) -> Reply:
    error = {"code": code, "message": message, "details": details, "doc_url": f"https://docs.sent.dm/errors#{code}"}
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status, {"success": False, "data": None, "error": error, "meta": META}, headers=headers)


def described_template(request: Request) -> Reply:
    """`GET /v3/templates/{id}` answered from TEMPLATES."""
    template = TEMPLATES.get(request.path.rsplit("/", 1)[1])
    if template is None:
        return refused(404, "RESOURCE_002", "no such template")
    return Reply(200, {"success": True, "data": template, "error": None, "meta": META})


class ScriptedV3:
    """Answers `GET /v3/templates/{id}` from TEMPLATES and each `POST /v3/messages` with `send(request, attempt)`,
    attempt counting from 0 per Idempotency-Key; records the sends' keys and answers."""

    def __init__(self, send: Callable[[Request, int], Reply | Fault] | None = None) -> None:
        self.send = send or (lambda request, _attempt: accepted(request))
        self.attempts: dict[str, int] = {}
        self.message_ids: dict[str, str] = {}  # message id -> the key of the request it answered
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply | Fault:
        if request.method == "GET" and request.path.startswith("/v3/templates/"):
            return described_template(request)
        if request.method != "POST" or request.path != "/v3/messages":
            return refused(404, "RESOURCE_001", f"no route for {request.method} {request.path}")
        key = request.idempotency_key or ""
        with self._lock:
            attempt = self.attempts.get(key, 0)
            self.attempts[key] = attempt + 1
        answer = self.send(request, attempt)
        if isinstance(answer, Reply) and isinstance(answer.body, dict) and answer.body.get("success"):
            with self._lock:
                for recipient in answer.body["data"]["recipients"]:
                    self.message_ids[recipient["message_id"]] = key
        return answer


def sends(server: FaultServer) -> list[Request]:
    return [r for r in server.requests if r.method == "POST"]


def gets(server: FaultServer) -> list[str]:
    return [r.path for r in server.requests if r.method == "GET"]


# === 1. the spec: which keys belong to which generation ============================================================

V1_MESSAGE = {"contact_id": {"column": "contact_id"}, "to": None, "default_region": None}


@pytest.mark.parametrize(
    ("version", "changes", "line"),
    [
        (
            "v1",
            {"message": {"to": {"column": "phone"}}},
            "message.to: belongs to api.version v3, not v1. Hint: v1 and v2 address contacts by GUID: use "
            "message.contact_id, or set api.version.",
        ),
        (
            "v3",
            {"message": {"contact_id": {"column": "phone"}}},
            "message.contact_id: belongs to api.version v1 and v2, not v3. Hint: v3 addresses phone numbers: use "
            "message.to (and message.default_region), or set api.version.",
        ),
        (
            "v2",
            {"message": {"template_name": {"value": "order_shipped"}}},
            "message.template_name: belongs to api.version v3, not v2. Hint: v1 and v2 name templates by GUID: use "
            "message.template_id, or set api.version.",
        ),
        (
            "v3",
            {"api": {"sender_id": SENDER}},
            "api.sender_id: belongs to api.version v1 and v2, not v3. Hint: v3 authenticates with api.api_key alone, "
            "or set api.version.",
        ),
        (
            "v1",
            {"api": {"profile_id": PROFILE}},
            "api.profile_id: belongs to api.version v3, not v1. Hint: a profile is chosen only on v3, or set "
            "api.version.",
        ),
        (
            "v1",
            {"message": {"channel": {"value": "sms"}}},
            "message.channel: belongs to api.version v3, not v1. Hint: v1 and v2 let Sent.dm pick the channel, or "
            "set api.version.",
        ),
        (
            "v1",
            {"message": {"default_region": "US"}},
            "message.default_region: belongs to api.version v3, not v1. Hint: it reads phone numbers, which only v3 "
            "takes, or set api.version.",
        ),
        (
            "v3",
            {"message": {"webhook_url": {"value": "https://example.com/hook"}}},
            "message.webhook_url: belongs to api.version v1 and v2, not v3. Hint: v3 reports delivery by webhooks "
            "set up in the Sent.dm dashboard, or set api.version.",
        ),
    ],
    ids=[
        "to-v1",
        "contact_id-v3",
        "template_name-v2",
        "sender_id-v3",
        "profile_id-v1",
        "channel-v1",
        "region-v1",
        "webhook-v3",
    ],
)
def test_a_key_of_another_generation_is_a_spec_error_and_nothing_is_sent(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, version: str, changes: dict[str, dict[str, Any]], line: str
) -> None:
    if version == "v3":
        data = v3_data(sandbox.url, **changes)
        rows = people(NUMBER)
    else:
        base = spec_data(
            api={
                "version": version,
                "base_url": sandbox.url,
                "sender_id": "${SENT_DM_SENDER_ID}",
                "api_key": "${SENT_DM_API_KEY}",
            }
        )
        data = merged(base, changes)
        rows = [{**row, "phone": NUMBER} for row in contact_rows(2)]
    spec = write_spec(tmp_path, data, rows)

    code, out, err = cli("run", spec)

    assert code == 2
    assert out == ""
    assert err == f"error: {spec}: the job spec is invalid:\n  {line}\n"
    assert sandbox.requests_total == 0
    assert not (tmp_path / "out").exists()


def spec_error_lines(cli: Cli, spec: Path) -> list[str]:
    code, out, err = cli("validate", spec, "--offline")
    assert (code, out) == (2, ""), err
    head, *lines = err.splitlines()
    assert head == f"error: {spec}: the job spec is invalid:"
    return lines


def test_v3_without_to_is_a_spec_error(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, v3_data(message={"to": None}), people(NUMBER))
    assert spec_error_lines(cli, spec) == [
        "  message.to: required key is missing (v3 sends to phone numbers). Hint: write `to: {column: phone}`."
    ]


@pytest.mark.parametrize(
    "template",
    [
        {"template_name": {"value": "order_shipped"}},  # with the default template_id: both
        {"template_id": None},  # neither
    ],
    ids=["both", "neither"],
)
def test_v3_takes_template_id_or_template_name(cli: Cli, tmp_path: Path, template: dict[str, Any]) -> None:
    spec = write_spec(tmp_path, v3_data(message=template), people(NUMBER))
    assert spec_error_lines(cli, spec) == [
        "  message.template_id: give either template_id or template_name on v3. Hint: `template_name: {value: "
        "order_shipped}` names an approved template."
    ]


def test_an_unknown_default_region_is_a_spec_error(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, v3_data(message={"default_region": "XX"}), people(NUMBER))
    assert spec_error_lines(cli, spec) == [
        "  message.default_region: 'XX' is not a region code phonenumbers knows: use ISO 3166 alpha-2, e.g. US, GB"
    ]


def test_a_channel_literal_outside_sms_whatsapp_rcs_is_a_spec_error(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, v3_data(message={"channel": {"value": "sms, pigeon"}}), people(NUMBER))
    assert spec_error_lines(cli, spec) == [
        "  message.channel: value 'sms, pigeon' is not a comma-separated list of sms, whatsapp, rcs. "
        'Hint: e.g. `channel: {value: "sms,whatsapp"}`, or leave it out to let Sent.dm pick'
    ]


def test_empty_variables_count_as_absent_keys(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key whose variable is empty (`${VAR:-}` unset, or `${VAR}` set to "") is no key at all: a v3 spec may keep
    a sender_id for its v1 sibling, and an empty `default_region: ${SENT_DM_REGION:-}` means no default region."""
    monkeypatch.delenv("SENT_DM_PROFILE_ID", raising=False)
    monkeypatch.delenv("SENT_DM_REGION", raising=False)
    monkeypatch.setenv("SENT_DM_NO_SENDER", "")
    api = {"sender_id": "${SENT_DM_NO_SENDER}", "profile_id": "${SENT_DM_PROFILE_ID:-}"}
    data = v3_data(sandbox.url, message={"default_region": "${SENT_DM_REGION:-}"}, api=api)
    spec = write_spec(tmp_path, data, people("+1 415 555 0123", "(415) 555-0124"))

    code, _, err = cli("run", spec)

    assert code == 1, err
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "invalid"]
    # without a default region a number without +country code cannot be read
    assert column(table, "result_error")[1] == (
        "to: needs a country code: write +CC or set message.default_region (column phone)"
    )
    headers = sandbox.last_headers
    assert headers is not None
    assert "x-sender-id" not in headers
    assert "x-profile-id" not in headers


def test_a_v1_spec_without_api_version_is_sent_as_before(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No api.version: v1, unchanged - `POST /v1/messages/contact` with messageBody, no template check, no result_to.
    Empty v3-only keys (`${VAR:-}`) are no keys at all."""
    monkeypatch.delenv("SENT_DM_PROFILE_ID", raising=False)
    monkeypatch.delenv("SENT_DM_REGION", raising=False)
    with FaultServer() as server:
        api = {
            "base_url": server.url,
            "sender_id": "${SENT_DM_SENDER_ID}",
            "api_key": "${SENT_DM_API_KEY}",
            "profile_id": "${SENT_DM_PROFILE_ID:-}",
        }
        data = spec_data(api=api, message={"default_region": "${SENT_DM_REGION:-}"})
        spec = write_spec(tmp_path, data, contact_rows(3))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert {(r.method, r.path) for r in server.requests} == {("POST", "/v1/messages/contact")}
    assert by_json([r.json() for r in server.requests]) == by_json(
        [
            {"contactId": guid(i), "templateId": TEMPLATE, "messageBody": {"name": f"Name{i}", "order_id": f"{i:06d}"}}
            for i in (1, 2, 3)
        ]
    )
    headers = server.requests[0].headers
    assert (headers["x-sender-id"], headers["x-api-key"]) == (SENDER, API_KEY)
    table = results_of(spec)
    assert "result_to" not in table.columns
    assert column(table, "result_status") == ["sent"] * 3


# === 2. the v3 request, as the server receives it ==================================================================

FORMATS = {  # as people keep them -> E.164, with default_region US
    "+1 415 555 0123": "+14155550123",
    "(415) 555-0123": "+14155550123",
    "415.555.0123": "+14155550123",
    "011 44 20 7946 0958": "+442079460958",
    "+44 20 7946 0958": "+442079460958",
}


def test_the_server_receives_the_v3_request_with_numbers_in_e164(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec = write_spec(tmp_path, v3_data(sandbox.url, send={"concurrency": 1}), people(*FORMATS))

    code, out, err = cli("run", spec)

    assert code == 0, err
    assert "Template check: 1 template(s) checked with the API: order_shipped (approved)" in out
    expected = [
        {
            "to": [e164],
            "template": {"id": SHIPPED, "parameters": {"name": f"Name{i}", "order_id": f"{i:06d}", "carrier": "UPS"}},
        }
        for i, e164 in enumerate(FORMATS.values(), 1)
    ]
    # each body is exactly this: no channel (not configured), no sandbox flag, nothing of v1/v2
    assert sandbox.accepted_bodies == expected
    headers = sandbox.last_headers
    assert headers is not None
    assert headers["x-api-key"] == API_KEY
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"sentdm-batch/{__version__}"
    assert "x-sender-id" not in headers
    assert "x-profile-id" not in headers
    table = results_of(spec)
    assert table.columns == [
        "phone",
        "first_name",
        "order_id",
        "result_row",
        "result_status",
        "result_to",
        "result_http_status",
        "result_message_id",
        "result_error",
        "result_attempts",
        "result_sent_at",
        "result_latency_ms",
    ]
    assert column(table, "phone") == list(FORMATS)  # the number as given stays in its column
    assert column(table, "result_to") == list(FORMATS.values())
    assert column(table, "result_status") == ["sent"] * 5
    assert column(table, "result_http_status") == ["202"] * 5
    # every request carried its row's Idempotency-Key: the key the state keeps for the row whose message id it got
    keys = state_keys(spec)
    assert sorted(sandbox.accepted_by_key) == sorted(keys[m] for m in column(table, "result_message_id"))
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys.values())
    assert headers["idempotency-key"] == keys[column(table, "result_message_id")[-1]]


@pytest.mark.parametrize(
    ("region", "written", "reason"),
    [
        ("US", "12345", "to: not a valid phone number"),
        ("US", "   ", "to: empty"),
        ("US", "+999 555 0123", "to: unknown country calling code"),
        ("US", "+1 415 555 01234567", "to: not a valid phone number"),
        (None, "(415) 555-0123", "to: needs a country code: write +CC or set message.default_region"),
    ],
)
def test_an_invalid_number_is_invalid_with_the_reason_and_kept_as_written(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, region: str | None, written: str, reason: str
) -> None:
    data = v3_data(sandbox.url, message={"default_region": region})
    spec = write_spec(tmp_path, data, people("+1 415 555 0123", written))

    code, _, err = cli("run", spec)

    assert code == 1, err
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "invalid"]
    assert column(table, "result_error")[1] == f"{reason} (column phone)"
    assert column(table, "result_to")[1] is None
    assert column(table, "phone")[1] == written
    assert [body["to"] for body in sandbox.accepted_bodies] == [[NUMBER]]


def test_one_person_written_two_ways_is_a_duplicate(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    rows = [
        {"phone": phone, "first_name": "Ada", "order_id": "000001"} for phone in ("+1 415-555-0123", "(415) 555-0123")
    ]
    spec = write_spec(tmp_path, v3_data(sandbox.url), rows)

    code, out, err = cli("run", spec)

    assert code == 0, err
    assert "duplicate      1" in out
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "duplicate"]
    assert column(table, "result_error") == [None, "duplicate of row 1"]
    assert column(table, "result_to") == [NUMBER, NUMBER]
    assert sandbox.accepted_by_number == {NUMBER: 1}


@pytest.mark.parametrize("profile", [PROFILE, ""], ids=["set", "empty"])
def test_x_profile_id_is_sent_only_when_api_profile_id_is_set(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    monkeypatch.setenv("SENT_DM_PROFILE_ID", profile)
    with FaultServer(ScriptedV3()) as server:
        data = v3_data(server.url, api={"profile_id": "${SENT_DM_PROFILE_ID:-}"})
        spec = write_spec(tmp_path, data, people(NUMBER, "+1 415 555 0124"))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert len(server.requests) == 3  # the template check, then one send per row
    for request in server.requests:  # the template check acts for the profile too
        assert request.headers.get("x-profile-id") == (profile or None)
        assert request.headers["x-api-key"] == API_KEY
        assert "x-sender-id" not in request.headers


def test_two_channels_give_one_message_id_each(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    data = v3_data(sandbox.url, message={"channel": {"value": "SMS, WhatsApp"}})
    spec = write_spec(tmp_path, data, people(NUMBER, "+1 415 555 0124"))

    code, _, err = cli("run", spec)

    assert code == 0, err
    assert [body["channel"] for body in sandbox.accepted_bodies] == [["sms", "whatsapp"]] * 2
    assert sandbox.accepted_by_number == {NUMBER: 2, "+14155550124": 2}
    ids = [str(m).split(",") for m in column(results_of(spec), "result_message_id")]
    assert [len(row) for row in ids] == [2, 2]
    assert all(re.fullmatch(UUID_RE, m) for row in ids for m in row)
    assert len({m for row in ids for m in row}) == 4


def test_a_channel_column_is_normalised_and_an_empty_cell_lets_sent_pick(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    rows = people(NUMBER, "+1 415 555 0124", "+1 415 555 0125")
    for row, channel in zip(rows, ["WhatsApp , sms", "", "sms,pigeon"], strict=True):
        row["channel"] = channel
    spec = write_spec(tmp_path, v3_data(sandbox.url, message={"channel": {"column": "channel"}}), rows)

    code, _, err = cli("run", spec)

    assert code == 1, err
    channels = {body["to"][0]: body.get("channel") for body in sandbox.accepted_bodies}
    assert channels == {NUMBER: ["whatsapp", "sms"], "+14155550124": None}
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "sent", "invalid"]
    assert column(table, "result_error")[2] == (
        "channel is not a comma-separated list of sms, whatsapp, rcs (column channel)"
    )


def test_template_name_is_sent_as_template_name(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    data = v3_data(sandbox.url, message={"template_id": None, "template_name": {"value": "order_shipped"}})
    spec = write_spec(tmp_path, data, people(NUMBER))

    code, _, err = cli("run", spec)

    assert code == 0, err
    parameters = {"name": "Name1", "order_id": "000001", "carrier": "UPS"}
    assert sandbox.accepted_bodies == [
        {"to": [NUMBER], "template": {"name": "order_shipped", "parameters": parameters}}
    ]


# === 3. v2 and v1: the same sender, their own requests =============================================================


@pytest.mark.parametrize(
    ("version", "path", "field"),
    [("v2", "/v2/messages/contact", "templateVariables"), ("v1", "/v1/messages/contact", "messageBody")],
)
def test_v2_and_v1_requests(cli: Cli, tmp_path: Path, version: str, path: str, field: str) -> None:
    with FaultServer(lambda _request: Reply(204, b"")) as server:
        api = {
            "version": version,
            "base_url": server.url,
            "sender_id": "${SENT_DM_SENDER_ID}",
            "api_key": "${SENT_DM_API_KEY}",
        }
        spec = write_spec(tmp_path, spec_data(api=api), contact_rows(2))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert {(r.method, r.path) for r in server.requests} == {("POST", path)}  # no template check before v3
    assert by_json([r.json() for r in server.requests]) == by_json(
        [
            {"contactId": guid(i), "templateId": TEMPLATE, field: {"name": f"Name{i}", "order_id": f"{i:06d}"}}
            for i in (1, 2)
        ]
    )
    headers = server.requests[-1].headers
    assert (headers["x-sender-id"], headers["x-api-key"]) == (SENDER, API_KEY)
    assert headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["idempotency-key"])
    assert "x-profile-id" not in headers
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "sent"]
    assert column(table, "result_http_status") == ["204", "204"]
    assert "result_to" not in table.columns


def test_v2_against_the_sandbox(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    api = {
        "version": "v2",
        "base_url": sandbox.url,
        "sender_id": "${SENT_DM_SENDER_ID}",
        "api_key": "${SENT_DM_API_KEY}",
    }
    spec = write_spec(tmp_path, spec_data(api=api), contact_rows(3))

    code, out, err = cli("run", spec)

    assert code == 0, err
    assert "Template check" not in out
    assert len(sandbox.accepted_bodies) == 3
    assert all(set(body) == {"contactId", "templateId", "templateVariables"} for body in sandbox.accepted_bodies)
    assert column(results_of(spec), "result_status") == ["sent"] * 3


# === 4. answers ====================================================================================================


def test_a_refusal_by_the_sandbox_reads_status_code_and_message(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    rows = people(NUMBER, "+1 415 555 0124")
    rows[0]["channel"], rows[1]["channel"] = "rcs", "sms"  # order_shipped is set up for sms and whatsapp only
    spec = write_spec(tmp_path, v3_data(sandbox.url, message={"channel": {"column": "channel"}}), rows)

    code, _, err = cli("run", spec)

    assert code == 1, err
    table = results_of(spec)
    assert column(table, "result_status") == ["failed", "sent"]
    assert column(table, "result_http_status") == ["422", "202"]
    assert column(table, "result_error")[0] == (
        "HTTP 422 BUSINESS_007: template order_shipped is not set up for rcs - channel: template order_shipped is "
        "not set up for rcs"
    )
    assert column(table, "result_attempts")[0] == "1"  # a refusal is never retried


def test_a_validation_error_reads_code_message_and_details(cli: Cli, tmp_path: Path) -> None:
    details = {"to[0]": ["to[0] is not a valid E.164 phone number"]}
    script = ScriptedV3(lambda _r, _a: refused(400, "VALIDATION_002", "invalid phone number", details=details))
    with FaultServer(script) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NUMBER))
        code, _, err = cli("run", spec)
    assert code == 1, err
    table = results_of(spec)
    assert column(table, "result_status") == ["failed"]
    assert column(table, "result_error") == [
        "HTTP 400 VALIDATION_002: invalid phone number - to[0]: to[0] is not a valid E.164 phone number"
    ]
    assert len(sends(server)) == 1


def test_an_empty_balance_stops_the_run_and_a_run_after_topping_up_finishes_it(cli: Cli, tmp_path: Path) -> None:
    script = ScriptedV3(lambda _r, _a: refused(422, "BUSINESS_003", "insufficient balance"))
    rows = people("+1 415 555 0123", "+1 415 555 0124", "+1 415 555 0125", "+1 415 555 0126")
    with FaultServer(script) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send={"concurrency": 1}), rows)
        code, out, err = cli("run", spec)
        assert code == 3, err
        assert len(sends(server)) == 1  # every further row would fail the same way
        stop = (
            "the account cannot pay for more messages (HTTP 422 BUSINESS_003: insufficient balance). Hint: top up "
            "the balance, then run again: rows not sent yet are sent then"
        )
        assert f"ABORTED: {stop}\n" in out
        table = results_of(spec)
        assert column(table, "result_status") == ["failed"] + ["not_attempted"] * 3
        assert column(table, "result_error") == [
            "HTTP 422 BUSINESS_003: insufficient balance",
            *[f"not sent: run aborted: {stop}"] * 3,
        ]

        script.send = lambda request, _attempt: accepted(request)  # topped up
        code, _, err = cli("run", spec)
        assert code == 1, err
        assert column(results_of(spec), "result_status") == ["failed"] + ["sent"] * 3
        code, _, err = cli("retry", spec)  # and the row the empty balance refused
        assert code == 0, err
        assert column(results_of(spec), "result_status") == ["sent"] * 4
    assert len(sends(server)) == 5
    assert sorted(script.attempts.values()) == [1, 1, 1, 2]


def test_a_conflict_is_retried_with_the_same_key_and_ends_sent(cli: Cli, tmp_path: Path) -> None:
    conflict = refused(409, "CONFLICT_001", "a request with this Idempotency-Key is still being processed")
    script = ScriptedV3(lambda request, attempt: conflict if attempt == 0 else accepted(request))
    with FaultServer(script) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NUMBER, "+1 415 555 0124", "+1 415 555 0125"))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert sorted(script.attempts.values()) == [2, 2, 2]  # each key sent twice: the 409, then the answer
    table = results_of(spec)
    assert column(table, "result_status") == ["sent"] * 3
    assert column(table, "result_attempts") == ["2"] * 3
    # each row got the answer to its own key
    by_key = {key: m for m, key in script.message_ids.items()}
    assert sorted(column(table, "result_message_id")) == sorted(by_key.values())


def test_a_401_stops_the_run_with_the_credentials_hint(cli: Cli, tmp_path: Path) -> None:
    script = ScriptedV3(lambda _r, _a: refused(401, "AUTH_002", "invalid API key"))
    with FaultServer(script) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send={"concurrency": 1}), people(*FORMATS))
        code, out, err = cli("run", spec)
    assert code == 3, err
    assert (
        "ABORTED: authentication failed (HTTP 401 AUTH_002: invalid API key); check api.api_key (and "
        "api.profile_id, when set)\n"
    ) in out
    assert API_KEY not in out + err
    assert len(sends(server)) == 1
    table = results_of(spec)
    assert column(table, "result_status") == ["failed"] + ["not_attempted"] * 4
    assert column(table, "result_http_status")[0] == "401"


def test_429_and_503_are_retried_with_the_same_key_until_sent(cli: Cli, tmp_path: Path) -> None:
    busy = refused(429, "BUSINESS_002", "too many requests", retry_after="0")
    down = refused(503, "SERVICE_001", "service temporarily unavailable", retry_after="0")
    script = ScriptedV3(lambda request, attempt: [busy, down][attempt] if attempt < 2 else accepted(request))
    with FaultServer(script) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NUMBER, "+1 415 555 0124"))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert sorted(script.attempts.values()) == [3, 3]
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "sent"]
    assert column(table, "result_attempts") == ["3", "3"]
    assert len(sends(server)) == 6


def test_a_lost_answer_is_resent_with_the_same_key_on_v3(cli: Cli, tmp_path: Path) -> None:
    """v3 keeps keys, so send.retry_ambiguous defaults to true: a 500 or a reset after the request went out is
    resent under the same key, and the server answers the repeat instead of sending again."""
    broken = refused(500, "INTERNAL_001", "internal server error")
    script = ScriptedV3(
        lambda request, attempt: [broken, Fault.RESET_AFTER_READ][attempt] if attempt < 2 else accepted(request)
    )
    with FaultServer(script) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NUMBER))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert [r.idempotency_key for r in sends(server)] == [sends(server)[0].idempotency_key] * 3
    table = results_of(spec)
    assert (column(table, "result_status"), column(table, "result_attempts")) == (["sent"], ["3"])


def test_a_lost_answer_is_unknown_and_not_resent_on_v2(cli: Cli, tmp_path: Path) -> None:
    """v2 keeps no keys: a resend could text the person twice, so send.retry_ambiguous defaults to false."""
    with FaultServer(lambda _request: Reply(500, {"message": "internal error"})) as server:
        api = {
            "version": "v2",
            "base_url": server.url,
            "sender_id": "${SENT_DM_SENDER_ID}",
            "api_key": "${SENT_DM_API_KEY}",
        }
        spec = write_spec(tmp_path, spec_data(api=api, send={"backoff_s": 0}), contact_rows(1))
        code, _, err = cli("run", spec)
    assert code == 1, err
    assert len(server.requests) == 1
    table = results_of(spec)
    assert (column(table, "result_status"), column(table, "result_attempts")) == (["unknown"], ["1"])


# === 5. the template check before the first send ==================================================================

MISSING = "00000000-0000-4000-8000-00000000beef"


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (
            {"template_id": {"value": MISSING}},
            f"message.template_id: no template {MISSING} exists. Hint: check it in the Sent.dm dashboard.",
        ),
        (
            {"template_id": None, "template_name": {"value": "order_shiped"}},
            "message.template_name: no template named 'order_shiped' exists. Hint: check it in the Sent.dm dashboard.",
        ),
        (
            {"template_id": {"value": DELAYED}},
            f"message.template_id: template order_delayed ({DELAYED}) is PENDING, not APPROVED: it cannot be sent. "
            "Hint: wait for its approval, or use an approved template.",
        ),
        (
            {"variables": {"name": {"column": "first_name"}}},
            "message.variables: template order_shipped needs order_id, carrier, which the spec does not map. Hint: "
            "add them under message.variables, e.g. `order_id: {column: order_id}`.",
        ),
    ],
    ids=["no-such-id", "no-such-name", "pending", "unmapped-variables"],
)
def test_a_template_that_cannot_be_sent_stops_the_run_before_any_send(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, message: dict[str, Any], problem: str
) -> None:
    spec = write_spec(tmp_path, v3_data(sandbox.url, message=message), people(NUMBER, "+1 415 555 0124"))

    code, out, err = cli("run", spec)

    assert (code, out) == (2, "")
    assert err == f"error: {spec}: the template check failed:\n  {problem}\n"
    assert sandbox.requests_total == 1  # the template's GET, and no POST
    assert sandbox.accepted_total == 0
    assert not (tmp_path / "out" / "results.csv").exists()


def test_the_embedded_sandbox_takes_the_spec_s_templates(cli: Cli, tmp_path: Path) -> None:
    """`api.sandbox.templates` replaces the embedded sandbox's templates: here one that needs three variables the
    spec does not map (all named), and one that is approved with the variables mapped."""
    templates = [
        {"id": READY, "name": "order_ready", "variables": ["name", "pickup_code", "store", "hours"]},
        {"id": SHIPPED, "name": "order_shipped", "variables": ["name"], "channels": ["sms", "whatsapp"]},
    ]
    data = v3_data(message={"template_id": {"value": READY}}, api={"sandbox": {"templates": templates}})
    spec = write_spec(tmp_path, data, people(NUMBER))

    code, _, err = cli("run", spec)

    assert code == 2
    assert "template order_ready needs pickup_code, store, hours, which the spec does not map" in err
    assert list((tmp_path / "out").iterdir()) == []  # no results, no state

    data = v3_data(message={"variables": {"name": {"column": "first_name"}}}, api={"sandbox": {"templates": templates}})
    spec = write_spec(tmp_path, data, people(NUMBER))
    code, out, err = cli("run", spec)
    assert code == 0, err
    assert "Template check: 1 template(s) checked with the API: order_shipped (approved)" in out


def test_mapped_variables_a_template_lacks_are_a_warning_and_not_sent(cli: Cli, tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        data = v3_data(server.url, message={"template_id": {"value": READY}})  # order_ready has `name` only
        spec = write_spec(tmp_path, data, people(NUMBER))
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert (
        f"warning: {spec}: message.variables: template order_ready has no variable(s) order_id, carrier; they are "
        "not sent in its messages.\n"
    ) in err
    assert [r.json() for r in sends(server)] == [
        {"to": [NUMBER], "template": {"id": READY, "parameters": {"name": "Name1"}}}
    ]


def test_a_refused_key_during_the_template_check_stops_before_any_send(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SENT_DM_API_KEY", "sk_test_wrong")
    spec = write_spec(tmp_path, v3_data(sandbox.url), people(NUMBER))

    code, out, err = cli("run", spec)

    assert (code, out) == (3, "")
    assert "authentication failed (HTTP 401 AUTH_002: invalid API key). Hint: check api.api_key" in err
    assert "sk_test_wrong" not in err
    assert (sandbox.requests_total, sandbox.accepted_total) == (1, 0)


def test_validate_checks_the_templates_when_the_key_is_set(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    spec = write_spec(tmp_path, v3_data(sandbox.url), people(NUMBER))

    code, out, err = cli("validate", spec)

    assert code == 0, err
    assert "Template check: 1 template(s) checked with the API: order_shipped (approved)\n" in out
    assert (sandbox.requests_total, sandbox.accepted_total) == (1, 0)

    spec = write_spec(tmp_path, v3_data(sandbox.url, message={"template_id": {"value": DELAYED}}), people(NUMBER))
    code, out, err = cli("validate", spec)
    assert (code, out) == (2, "")
    assert "template order_delayed" in err
    assert "is PENDING, not APPROVED" in err


def test_validate_offline_makes_no_call_and_says_so(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    # a pending template: the check, had it been made, would have failed
    spec = write_spec(tmp_path, v3_data(sandbox.url, message={"template_id": {"value": DELAYED}}), people(NUMBER))

    code, out, err = cli("validate", spec, "--offline")

    assert code == 0, err
    assert "Template check: not made (--offline): templates are checked when the campaign runs\n" in out
    assert sandbox.requests_total == 0


def test_validate_without_a_key_says_the_check_was_not_made(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SENT_DM_API_KEY")
    spec = write_spec(tmp_path, v3_data(sandbox.url), people(NUMBER))

    code, out, err = cli("validate", spec)

    assert code == 0, err
    assert "Template check: not made: api.api_key is not set (the check reads the templates with it)\n" in out
    assert sandbox.requests_total == 0


def test_a_template_column_is_checked_once_per_distinct_template(cli: Cli, tmp_path: Path) -> None:
    rows = people(*[f"+1 415 555 01{i:02d}" for i in range(6)])
    # the same two templates, written as people write GUIDs
    for row, template in zip(rows, [SHIPPED, READY, SHIPPED.upper(), f" {READY} ", SHIPPED, READY], strict=True):
        row["template"] = template
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url, message={"template_id": {"column": "template"}}), rows)
        code, out, err = cli("validate", spec)
        assert code == 0, err
        assert sorted(gets(server)) == [f"/v3/templates/{SHIPPED}", f"/v3/templates/{READY}"]
        assert "Template check: 2 template(s) checked with the API: " in out
        # order_ready has `name` only: one warning for it, none for order_shipped
        assert err.count("warning: ") == 1
        assert "template order_ready has no variable(s) order_id, carrier" in err

        code, _, err = cli("run", spec)
    assert code == 0, err
    assert sorted(gets(server)[2:]) == [f"/v3/templates/{SHIPPED}", f"/v3/templates/{READY}"]
    # each template's messages carry that template's own variables
    parameters = {
        body["template"]["id"]: set(body["template"]["parameters"]) for body in map(Request.json, sends(server))
    }
    assert parameters == {SHIPPED: {"name", "order_id", "carrier"}, READY: {"name"}}
    assert len(sends(server)) == 6


def test_a_template_name_column_is_checked_once_per_distinct_name(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    rows = people(*[f"+1 415 555 01{i:02d}" for i in range(5)])
    for row, name in zip(rows, ["order_shipped", "order_delayed", " order_shipped", "order_delayed", ""], strict=True):
        row["template"] = name
    message = {"template_id": None, "template_name": {"column": "template"}}
    spec = write_spec(tmp_path, v3_data(sandbox.url, message=message), rows)

    code, out, err = cli("validate", spec)

    assert (code, out) == (2, "")  # order_delayed is pending
    assert sandbox.requests_total == 2
    assert err.count("the template check failed") == 1
    assert "message.template_name: template order_delayed" in err


# === 6. run --server-dry-run =======================================================================================

REHEARSAL = "out/results.server-dry-run.csv"


def test_a_server_dry_run_sends_every_row_as_a_rehearsal(cli: Cli, tmp_path: Path) -> None:
    rows = people(*FORMATS)
    rows.append({**rows[0], "phone": "+1 (415) 555-0123"})  # row 1 again: a duplicate does not spoil exit 0
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url), rows)
        code, out, err = cli("run", spec, "--server-dry-run")
    assert code == 0, err
    assert out.startswith("Server dry run of campaign v3-campaign: 6 row(s)\n")
    assert "  valid          5\n  duplicate      1\n" in out
    bodies = [r.json() for r in sends(server)]
    assert len(bodies) == 5
    assert all(body["sandbox"] is True for body in bodies)
    assert sorted(body["to"][0] for body in bodies) == sorted(FORMATS.values())
    keys = [r.idempotency_key or "" for r in sends(server)]
    assert all(re.fullmatch(r"rehearsal-[0-9a-f]{32}", key) for key in keys)
    assert len(set(keys)) == 5
    table = results_of(spec, REHEARSAL)
    assert column(table, "result_status") == ["valid"] * 5 + ["duplicate"]
    assert column(table, "result_to") == [*FORMATS.values(), NUMBER]
    assert all(re.fullmatch(UUID_RE, str(m)) for m in column(table, "result_message_id")[:5])
    # the campaign itself: no results file, no state
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.server-dry-run.csv"]


def test_a_server_dry_run_leaves_the_campaign_to_the_real_run(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    """The server keeps every key 24 hours, rehearsals' too: had the rehearsal used the real keys, the real run
    would get its answers replayed, and send nothing."""
    spec = write_spec(tmp_path, v3_data(sandbox.url), people(*FORMATS))

    code, _, err = cli("run", spec, "--server-dry-run")
    assert code == 0, err
    assert sandbox.requests_total == 6  # the template check and 5 rehearsals
    assert sandbox.accepted_total == 0  # the sandbox sent nothing
    assert not (tmp_path / "out" / "results.csv").exists()

    code, _, err = cli("run", spec)
    assert code == 0, err
    assert sandbox.accepted_total == 5
    assert sorted(sandbox.accepted_by_key.values()) == [1] * 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in sandbox.accepted_by_key)
    assert column(results_of(spec), "result_status") == ["sent"] * 5

    # a rehearsal after the real run: the real results stay as they are
    real = (tmp_path / "out" / "results.csv").read_bytes()
    code, _, err = cli("run", spec, "--server-dry-run")
    assert code == 0, err
    assert (tmp_path / "out" / "results.csv").read_bytes() == real
    assert column(results_of(spec, REHEARSAL), "result_status") == ["valid"] * 5
    assert sandbox.accepted_total == 5
    # and the real run still knows every row is sent
    code, out, err = cli("run", spec)
    assert code == 0, err
    assert "Resumed: 5 row(s) already had an outcome from an earlier run and were not sent again\n" in out
    assert sandbox.accepted_total == 5


def test_a_server_dry_run_reports_refused_and_invalid_rows(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    rows = people(NUMBER, "+1 415 555 0124", "12345")
    for row, channel in zip(rows, ["sms", "rcs", "sms"], strict=True):
        row["channel"] = channel
    spec = write_spec(tmp_path, v3_data(sandbox.url, message={"channel": {"column": "channel"}}), rows)

    code, _, err = cli("run", spec, "--server-dry-run")

    assert code == 1, err
    table = results_of(spec, REHEARSAL)
    assert column(table, "result_status") == ["valid", "failed", "invalid"]
    assert str(column(table, "result_error")[1]).startswith("HTTP 422 BUSINESS_007: ")
    assert sandbox.accepted_total == 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_server_dry_run_is_refused_on_v1_and_v2(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer, version: str
) -> None:
    api = {
        "version": version,
        "base_url": sandbox.url,
        "sender_id": "${SENT_DM_SENDER_ID}",
        "api_key": "${SENT_DM_API_KEY}",
    }
    spec = write_spec(tmp_path, spec_data(api=api), contact_rows(2))

    code, out, err = cli("run", spec, "--server-dry-run")

    assert (code, out) == (2, "")
    assert err == (
        f"error: {spec}: --server-dry-run needs api.version v3 ({version} has no server-side dry run). Hint: use "
        "--dry-run, which checks everything locally.\n"
    )
    assert sandbox.requests_total == 0


def test_numbers_decided_several_blocks_at_a_time_stay_with_their_rows(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phone numbers are decided a span of blocks at a time (prepare.py): with tiny blocks and spans, every row of
    a file that spans many of both still gets its own number, reason and duplicate verdict, in order."""
    from pipeline import source
    from pipeline.campaign import prepare

    monkeypatch.setattr(source, "BLOCK_BYTES", 200)
    monkeypatch.setattr(prepare, "_NUMBERS_SPAN_ROWS", 7)
    written = [f"(415) 555-{i:04d}" if i % 5 else f"+44 20 7946 {i:04d}" for i in range(120)]
    written[13] = "555-0100"  # too short
    written[40] = ""
    written[77] = "+1 415 555 0001"  # row 2 again, written another way
    rows = [
        {"phone": phone, "first_name": f"N{i}", "order_id": str(i), "carrier": "UPS"} for i, phone in enumerate(written)
    ]
    rows[77] |= {"first_name": "N1", "order_id": "1"}  # the same message to the same person as row 2
    spec = write_spec(tmp_path, v3_data(), rows)
    code, _out, err = cli("validate", spec, "--offline", "--output", tmp_path / "checked.csv")
    assert code == 1, err
    table = pl.read_csv(tmp_path / "checked.csv", infer_schema=False)
    expected = [
        phonenumbers.format_number(phonenumbers.parse(text, "US"), phonenumbers.PhoneNumberFormat.E164)
        if text and i != 13
        else None
        for i, text in enumerate(written)
    ]
    assert table["result_to"].to_list()[:13] == expected[:13]
    assert table["result_to"][14:40].to_list() == expected[14:40]
    assert table["result_to"][41:].to_list() == expected[41:]
    statuses = table["result_status"].to_list()
    assert statuses[13] == statuses[40] == "invalid"
    assert statuses[77] == "duplicate"
    assert statuses.count("valid") == 117
