"""Every kind of answer, and non-answer, from a real misbehaving server on 127.0.0.1: how each row ends, how often it
was tried, and that nothing the server accepted is ever sent twice."""

from __future__ import annotations

import email.utils
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import API_KEY, api_section, contact_rows
from tests.fault_server import Fault, FaultServer, Reply, Request, Script, chaos, per_key, sequence

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]


pytestmark = pytest.mark.usefixtures("credentials")


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


class Campaign:
    """Runs the CLI on a campaign pointed at a URL and reads back what happened."""

    def __init__(self, cli: Cli, make_campaign: MakeCampaign) -> None:
        self.cli = cli
        self.make_campaign = make_campaign
        self.spec = Path()
        self.out = ""
        self.err = ""

    def run(self, url: str, rows: int = 1, *, timeout_s: float = 5, **send: Any) -> int:
        self.spec = self.make_campaign(
            contact_rows(rows),
            api=api_section(url, timeout_s=timeout_s),
            send={"concurrency": 1, "backoff_s": 0, "max_attempts": 3, **send},
        )
        code, self.out, self.err = self.cli("run", self.spec, "--summary-json", self.spec.parent / "summary.json")
        return code

    @property
    def results(self) -> pl.DataFrame:
        return pl.read_csv(self.spec.parent / "out" / "results.csv", infer_schema=False)

    def row(self, n: int = 1) -> dict[str, Any]:
        return self.results.row(n - 1, named=True)

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.spec.parent / "summary.json").read_text())


@pytest.fixture
def campaign(cli: Cli, make_campaign: MakeCampaign) -> Campaign:
    return Campaign(cli, make_campaign)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 2xx -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "message_id"),
    [
        (Reply(200, {"messageId": "m-1", "status": "queued"}), "m-1"),
        (Reply(201, {"message_id": "m-2"}), "m-2"),
        (Reply(202, {"data": {"id": "m-3"}}), "m-3"),
        (Reply(204, b""), None),
        (Reply(200, b"{not json"), None),
        (Reply(200, "queued"), None),
    ],
)
def test_any_2xx_is_sent_with_the_message_id_when_there_is_one(
    campaign: Campaign, server: FaultServer, reply: Reply, message_id: str | None
) -> None:
    server.script = sequence(reply, then=reply)
    assert campaign.run(server.url) == 0, campaign.err
    row = campaign.row()
    assert (row["result_status"], row["result_http_status"], row["result_message_id"]) == (
        "sent",
        str(reply.status),
        message_id,
    )
    assert row["result_attempts"] == "1"


# --- permanent -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 409, 422, 413])
def test_permanent_4xx_fail_at_once_with_the_servers_reason(
    campaign: Campaign, server: FaultServer, status: int
) -> None:
    body = {"statusCode": status, "code": "VAL-002", "message": "Invalid UUID format", "errors": {"contactId": ["bad"]}}
    server.script = sequence(then=Reply(status, body))
    assert campaign.run(server.url) == 1
    row = campaign.row()
    assert row["result_status"] == "failed"
    assert row["result_http_status"] == str(status)
    assert row["result_error"] == f"HTTP {status}: VAL-002 - Invalid UUID format - contactId: ['bad']"
    assert row["result_attempts"] == "1"
    assert len(server.requests) == 1


def test_401_aborts_the_run_and_leaves_the_rest_not_attempted(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(then=Reply(401, {"code": "AUTH-003", "message": "invalid credentials"}))
    assert campaign.run(server.url, rows=20) == 3
    statuses = campaign.results["result_status"].to_list()
    assert statuses == ["failed"] + ["not_attempted"] * 19
    assert len(server.requests) == 1
    reason = "authentication failed (HTTP 401: AUTH-003 - invalid credentials); check api.sender_id and api.api_key"
    assert campaign.summary["aborted_reason"] == reason
    assert f"ABORTED: {reason}" in campaign.out
    assert campaign.row(5)["result_error"] == f"not sent: run aborted: {reason}"


# --- transient -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503, 408])
def test_transient_answers_are_retried_with_the_same_key(campaign: Campaign, server: FaultServer, status: int) -> None:
    server.script = per_key(lambda _key, attempt: Reply(status, b"") if attempt < 2 else Reply(200))
    assert campaign.run(server.url) == 0
    assert campaign.row()["result_status"] == "sent"
    assert campaign.row()["result_attempts"] == "3"
    assert len({r.idempotency_key for r in server.requests}) == 1
    assert server.duplicate_keys() == []


def test_transient_failures_end_as_failed_after_max_attempts(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(then=Reply(503, {"message": "busy"}))
    assert campaign.run(server.url, max_attempts=4) == 1
    row = campaign.row()
    assert (row["result_status"], row["result_attempts"], row["result_error"]) == ("failed", "4", "HTTP 503: busy")


def test_connection_refused_is_retried_then_failed(campaign: Campaign) -> None:
    assert campaign.run(f"http://127.0.0.1:{closed_port()}", max_attempts=2) == 1
    row = campaign.row()
    assert row["result_status"] == "failed"
    assert row["result_attempts"] == "2"
    assert row["result_http_status"] is None
    assert row["result_error"].startswith("connection failed")


def test_max_retry_s_caps_the_time_spent_on_one_row(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(then=Reply(503, b"", headers={"Retry-After": "30"}))
    started = time.monotonic()
    assert campaign.run(server.url, max_attempts=5, max_retry_s=1) == 1
    assert time.monotonic() - started < 20
    assert campaign.row()["result_attempts"] == "1"


def _arrivals(server: FaultServer, script: Script) -> list[float]:
    times: list[float] = []

    def timed(request: Request) -> Reply | Fault:
        times.append(time.monotonic())
        return script(request)

    server.script = timed
    return times


def test_retry_after_in_seconds_is_waited_at_least(campaign: Campaign, server: FaultServer) -> None:
    times = _arrivals(server, sequence(Reply(429, b"", headers={"Retry-After": "1"})))
    assert campaign.run(server.url) == 0
    assert times[1] - times[0] >= 0.95


def test_retry_after_as_an_http_date_is_waited_at_least(campaign: Campaign, server: FaultServer) -> None:
    later = email.utils.formatdate(time.time() + 2, usegmt=True)
    times = _arrivals(server, sequence(Reply(503, b"", headers={"Retry-After": later})))
    assert campaign.run(server.url) == 0
    assert times[1] - times[0] >= 0.9  # the date has whole-second precision


def test_a_rate_limit_answer_pauses_every_worker(campaign: Campaign, server: FaultServer) -> None:
    times = _arrivals(server, sequence(Reply(429, b"", headers={"Retry-After": "1"})))
    assert campaign.run(server.url, rows=6, concurrency=3) == 0
    first = times[0]
    # requests that were already on the wire may land right after the 429; none may start later within the pause
    late = [t - first for t in times[1:] if t - first > 0.2]
    assert late, "the paused requests must arrive eventually"
    assert all(t >= 0.95 for t in late)
    assert len(times) == 7


def test_ratelimit_remaining_zero_pauses_until_the_reset(campaign: Campaign, server: FaultServer) -> None:
    reset = str(int(time.time()) + 2)
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    times = _arrivals(server, sequence(Reply(200, headers=headers)))
    assert campaign.run(server.url, rows=2) == 0
    assert times[1] - times[0] >= 0.9


# --- ambiguous -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
def test_ambiguous_5xx_end_as_unknown_and_are_not_resent(campaign: Campaign, server: FaultServer, status: int) -> None:
    server.script = sequence(then=Reply(status, {"message": "oops"}))
    assert campaign.run(server.url) == 1
    row = campaign.row()
    assert (row["result_status"], row["result_http_status"], row["result_attempts"]) == ("unknown", str(status), "1")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "fault", [Fault.RESET_AFTER_READ, Fault.CLOSE_AFTER_READ, Fault.MALFORMED, Fault.RESET_BEFORE_READ]
)
def test_a_lost_answer_is_unknown_and_never_resent(campaign: Campaign, server: FaultServer, fault: Fault) -> None:
    server.script = sequence(fault)
    assert campaign.run(server.url) == 1
    assert campaign.row()["result_status"] == "unknown"
    assert len(server.requests) == 1


def test_a_server_that_never_answers_hits_the_overall_deadline(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(Fault.HANG)
    started = time.monotonic()
    assert campaign.run(server.url, timeout_s=0.5) == 1
    assert time.monotonic() - started < 10
    row = campaign.row()
    assert row["result_status"] == "unknown"
    assert "timeout" in row["result_error"] or "deadline" in row["result_error"]


def test_a_body_dripped_slower_than_the_deadline_is_cut_off(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(Reply(200, {"messageId": "x" * 40}, drip_s=0.1))
    assert campaign.run(server.url, timeout_s=0.5) == 1
    assert campaign.row()["result_status"] == "unknown"


def test_retry_ambiguous_resends_with_the_same_key(campaign: Campaign, server: FaultServer) -> None:
    server.script = per_key(lambda _key, attempt: Reply(500) if attempt == 0 else Reply(200))
    assert campaign.run(server.url, retry_ambiguous=True) == 0
    row = campaign.row()
    assert (row["result_status"], row["result_attempts"]) == ("sent", "2")
    assert len({r.idempotency_key for r in server.requests}) == 1


def test_an_ambiguous_attempt_followed_by_a_refusal_is_still_unknown(campaign: Campaign, server: FaultServer) -> None:
    server.script = per_key(lambda _key, attempt: Reply(502) if attempt == 0 else Reply(503))
    assert campaign.run(server.url, retry_ambiguous=True, max_attempts=2) == 1
    assert campaign.row()["result_status"] == "unknown"


# --- systemic ------------------------------------------------------------------------------------------------------


def test_the_circuit_breaker_stops_a_run_against_a_dead_service(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(then=Reply(503, b""))
    assert campaign.run(server.url, rows=80, max_attempts=1) == 3
    counts = campaign.summary["counts"]
    assert counts["failed"] == 50
    assert counts["not_attempted"] == 30
    assert "50 requests in a row failed" in campaign.summary["aborted_reason"]


def test_flaky_server_every_row_accounted_for_and_no_duplicate_sends(campaign: Campaign, server: FaultServer) -> None:
    faults = [
        Reply(503, b""),
        Reply(429, b"", headers={"Retry-After": "0"}),
        Reply(500),
        Fault.RESET_AFTER_READ,
        Reply(400, {"message": "bad"}),
    ]
    server.script = chaos(0.1, seed=7, faults=faults)
    code = campaign.run(server.url, rows=1000, concurrency=8, max_attempts=4)
    assert code == 1
    table = campaign.results
    assert table.height == 1000
    assert table["result_row"].to_list() == [str(i) for i in range(1, 1001)]
    assert server.duplicate_keys() == []
    sent = set(table.filter(pl.col("result_status") == "sent")["contact_id"])
    accepted = {json.loads(r.body)["contactId"] for r in server.requests if r.idempotency_key in server.accepted_by_key}
    assert sent <= accepted  # every row we call sent was accepted; accepted-but-unknown rows are the lost answers
    counts = campaign.summary["counts"]
    assert counts["sent"] + counts["failed"] + counts["unknown"] == 1000
    assert counts["unknown"] > 0
    assert counts["failed"] > 0
    unexplained = table.filter((pl.col("result_status") != "sent") & pl.col("result_error").is_null())
    assert unexplained.height == 0


# --- secrets -------------------------------------------------------------------------------------------------------


def test_the_api_key_appears_in_no_output_log_or_results(campaign: Campaign, server: FaultServer) -> None:
    server.script = sequence(
        Reply(400, {"message": f"key {API_KEY} is not allowed here"}),
        Reply(500, f"upstream said {API_KEY}"),
        then=Reply(401, {"message": f"invalid key {API_KEY}"}),
    )
    assert campaign.run(server.url, rows=4) == 3
    files = [p for p in campaign.spec.parent.rglob("*") if p.is_file() and p.name != "spec.yaml"]
    assert files
    for text in (campaign.out, campaign.err, *(p.read_bytes().decode("utf-8", "replace") for p in files)):
        assert API_KEY not in text
    assert campaign.row(1)["result_error"] == "HTTP 400: key *** is not allowed here"
