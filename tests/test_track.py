"""`track` and `retry --delivery-failed` against real servers on 127.0.0.1: a scripted v3 API (FaultServer) that
accepts sends and answers `GET /v3/messages/{id}` as the API notes describe, the webhook receiver's own server
filled by signed posts, and real state stores (SQLite and PostgreSQL, through `new_state`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import psycopg
import pytest
import yaml

import tests.test_webhooks as webhook_tests
from pipeline.campaign.delivery import row_deliveries
from pipeline.campaign.track import TrackOptions, track_campaign
from pipeline.spec import load_spec
from pipeline.state import DELIVERY_COLUMNS, open_state
from pipeline.state_location import PostgresState, StateLocation
from pipeline.state_pg import MIGRATIONS
from pipeline.state_pg import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tests.conftest import API_KEY, FakeClock, write_csv
from tests.fault_server import Fault, FaultServer, Reply, Request
from tests.test_v3 import META, accepted, described_template, people, refused, v3_data
from tests.test_webhooks import LiveReceiver

# the webhook receiver's own server, filled by signed posts (a fixture of the receiver's tests)
receiver = webhook_tests.receiver

pytestmark = pytest.mark.usefixtures("credentials")
Cli = Callable[..., tuple[int, str, str]]
NewState = Callable[[], StateLocation]
ROOT = Path(__file__).resolve().parent.parent
DELIVERY = ["result_delivery_status", "result_delivery_error", "result_delivery_at", "result_delivery_channel"]
NUMBERS = ("+14155550101", "+14155550102", "+14155550103", "+14155550104")


class DeliveryApi:
    """A v3 API: templates, `POST /v3/messages` (a repeated Idempotency-Key gets the first answer again, as Sent.dm
    does), and `GET /v3/messages/{id}` answering each message's `events` (status, timestamp, description) - the
    furthest along is its `status`. `before_get(request, count)` may answer instead (429, 401, a hang...)."""

    RANK: ClassVar[dict[str, int]] = {"QUEUED": 1, "ROUTED": 2, "SENT": 3, "FAILED": 4, "DELIVERED": 5, "READ": 6}

    def __init__(self) -> None:
        self.answers: dict[str, Reply] = {}  # Idempotency-Key -> the first answer
        self.sent_keys: list[str] = []  # every key a new message was made for
        self.by_number: dict[str, list[str]] = {}  # number -> its message ids, oldest first
        self.events: dict[str, list[dict[str, str]]] = {}  # message id -> its events
        self.channels: dict[str, str] = {}
        self.gets: list[str] = []  # message ids asked for, in order
        self.before_get: Callable[[Request, int], Reply | Fault | None] = lambda _request, _count: None
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply | Fault:
        if request.method == "GET" and request.path.startswith("/v3/templates/"):
            return described_template(request)
        if request.method == "POST" and request.path == "/v3/messages":
            key = request.idempotency_key or ""
            with self._lock:
                if key not in self.answers:
                    answer = accepted(request)
                    self.answers[key] = answer
                    self.sent_keys.append(key)
                    assert isinstance(answer.body, dict)
                    for recipient in answer.body["data"]["recipients"]:
                        self.by_number.setdefault(recipient["to"], []).append(recipient["message_id"])
                        self.channels[recipient["message_id"]] = recipient["channel"]
                        self.events[recipient["message_id"]] = [{"status": "QUEUED", "timestamp": "t0"}]
                return self.answers[key]
        if request.method == "GET" and request.path.startswith("/v3/messages/"):
            message_id = request.path.rsplit("/", 1)[1]
            with self._lock:
                self.gets.append(message_id)
                count = self.gets.count(message_id)
            instead = self.before_get(request, count)
            if instead is not None:
                return instead
            events = self.events.get(message_id)
            if events is None:
                return refused(404, "RESOURCE_002", "message not found")
            status = max((e["status"] for e in events), key=lambda s: self.RANK.get(s, 0))
            data = {"id": message_id, "status": status, "channel": self.channels[message_id], "events": events}
            return Reply(200, {"success": True, "data": data, "error": None, "meta": META})
        return refused(404, "RESOURCE_001", f"no route for {request.method} {request.path}")

    def happened(self, number: str, status: str, *, at: str, reason: str | None = None) -> str:
        """Record that the number's latest message reached `status`; returns that message's id."""
        message_id = self.by_number[number][-1]
        event = {"status": status, "timestamp": at}
        if reason is not None:
            event["description"] = reason
        self.events[message_id].append(event)
        return message_id


@pytest.fixture
def api() -> Iterator[tuple[DeliveryApi, FaultServer]]:
    script = DeliveryApi()
    with FaultServer(script) as server:
        yield script, server


def campaign(folder: Path, url: str, state: StateLocation | None = None, **send: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = v3_data(url, send={"concurrency": 4, "backoff_s": 0, **send})
    if state is not None:
        data["output"]["state"] = state.url if isinstance(state, PostgresState) else str(state)
    write_csv(folder / "customers.csv", people(*NUMBERS))
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec


def results(spec: Path) -> pl.DataFrame:
    return pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)


def delivery_columns(spec: Path) -> list[tuple[str | None, ...]]:
    return results(spec).select(DELIVERY).rows()


# The facts of the tests: what became of each number's message
FACTS = [
    (NUMBERS[0], "DELIVERED", "2026-12-03T10:00:05Z", None),
    (NUMBERS[1], "FAILED", "2026-12-03T10:00:06Z", "ERR_CONSENT_BLOCKED"),
    (NUMBERS[2], "READ", "2026-12-03T10:00:07Z", None),
    (NUMBERS[3], "SENT", "2026-12-03T10:00:08Z", None),
]
EXPECTED = [
    ("DELIVERED", None, "2026-12-03T10:00:05Z", "sms"),
    ("FAILED", "ERR_CONSENT_BLOCKED", "2026-12-03T10:00:06Z", "sms"),
    ("READ", None, "2026-12-03T10:00:07Z", "sms"),
    ("SENT", None, "2026-12-03T10:00:08Z", "sms"),
]


def webhook_body(message_id: str, status: str, at: str, reason: str | None) -> bytes:
    payload: dict[str, Any] = {"account_id": "acc_1", "message_id": message_id, "message_status": status}
    payload["channel"] = "sms"
    if reason is not None:
        payload["error_code"] = reason
    body = {"field": "message", "sub_type": f"message.{status.lower()}", "timestamp": at, "payload": payload}
    return json.dumps(body).encode()


def test_track_from_events_and_from_polling_give_the_same_columns(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer], receiver: LiveReceiver, new_state: NewState
) -> None:
    script, server = api
    # one campaign, tracked twice: from the receiver's events, and by polling (a second folder, the same keys, so
    # the server answers its sends with the same messages)
    by_events = campaign(tmp_path / "events", server.url, new_state())
    by_polling = campaign(tmp_path / "poll", server.url, new_state())
    assert cli("run", by_events)[0] == 0
    assert cli("run", by_polling)[0] == 0
    assert len(script.sent_keys) == 4
    for number, status, at, reason in FACTS:
        message_id = script.happened(number, status, at=at, reason=reason)
        assert receiver.post(webhook_body(message_id, status, at, reason)).status_code == 200
    # the first lookup of every message is refused for a moment (429 with Retry-After, or 503): asked again
    script.before_get = lambda _r, count: (
        refused(429, "BUSINESS_002", "slow down", retry_after="0") if count == 1 else None
    )

    code_events, out_events, _err_events = cli("track", by_events, "--events", receiver.store)
    code_poll, out_poll, err_poll = cli("track", by_polling, "--poll")

    assert code_events in (0, 4), (out_events, _err_events)
    assert delivery_columns(by_events) == EXPECTED
    assert delivery_columns(by_polling) == delivery_columns(by_events)
    assert sorted(set(script.gets)) == sorted(m for ids in script.by_number.values() for m in ids)
    assert len(script.gets) == 8  # each once refused, once answered
    # SENT is not final: some messages wait (exit 4), as the summary says
    assert (code_events, code_poll) == (4, 4)
    assert "3 final, 1 not final yet" in out_events
    assert "3 final, 1 not final yet" in out_poll
    assert API_KEY not in out_poll + err_poll
    # the other columns are as the run wrote them
    table = results(by_polling)
    assert table["result_status"].to_list() == ["sent"] * 4
    assert table.columns[-4:] == DELIVERY


def test_polling_asks_only_for_messages_without_a_final_status(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    script, server = api
    spec = campaign(tmp_path, server.url)
    assert cli("run", spec)[0] == 0
    for number, status, at, reason in FACTS:
        script.happened(number, status, at=at, reason=reason)
    assert cli("track", spec, "--poll")[0] == 4
    asked_first = len(script.gets)
    script.happened(NUMBERS[3], "DELIVERED", at="2026-12-03T10:01:00Z")
    code, out, err = cli("track", spec, "--poll")
    assert code == 0
    assert len(script.gets) == asked_first + 1  # only the one still SENT
    assert "track: round 1: asking for 1 message(s) without a final status" in err
    assert "4 final, 0 not final yet" in out
    assert delivery_columns(spec)[3] == ("DELIVERED", None, "2026-12-03T10:01:00Z", "sms")


def test_out_of_order_facts_never_move_a_row_backwards(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer], receiver: LiveReceiver, new_state: NewState
) -> None:
    script, server = api
    spec = campaign(tmp_path, server.url, new_state())
    assert cli("run", spec)[0] == 0
    ids = [script.by_number[n][-1] for n in NUMBERS]
    # the receiver learnt: 1 SENT, 2 FAILED, 3 SENT, 4 ROUTED
    for message_id, status, reason in ((ids[0], "SENT", None), (ids[1], "FAILED", "ERR_ROUTE_DENIED")):
        assert receiver.post(webhook_body(message_id, status, "t-webhook", reason)).status_code == 200
    for message_id, status in ((ids[2], "SENT"), (ids[3], "ROUTED")):
        assert receiver.post(webhook_body(message_id, status, "t-webhook", None)).status_code == 200
    assert cli("track", spec, "--events", receiver.store)[0] == 4
    # the lookup, later, says less for 1 (QUEUED: stale), more for 3 (DELIVERED), and DELIVERED for 2 after its
    # failure (it was delivered after all); 4 stays as it was
    script.events[ids[2]].append({"status": "DELIVERED", "timestamp": "t-poll"})
    script.before_get = lambda request, _count: (
        Reply(200, {"success": True, "data": {"id": ids[0], "status": "QUEUED", "channel": "sms", "events": []}})
        if request.path.endswith(ids[0])
        else None
    )
    assert cli("track", spec, "--poll")[0] == 4  # 1 and 4 are not final
    script.events[ids[1]].append({"status": "DELIVERED", "timestamp": "t-late"})
    # the webhook store learns READ for 3 and a late FAILED for 3 (after its DELIVERED): READ wins
    assert receiver.post(webhook_body(ids[2], "READ", "t-read", None)).status_code == 200
    assert cli("track", spec, "--events", receiver.store)[0] == 4
    assert [row[0] for row in delivery_columns(spec)] == ["SENT", "FAILED", "READ", "ROUTED"]
    # FAILED is final for polling, but a DELIVERED the receiver gets later still wins
    assert receiver.post(webhook_body(ids[1], "DELIVERED", "t-late", None)).status_code == 200
    assert cli("track", spec, "--events", receiver.store)[0] == 4
    assert delivery_columns(spec)[:3] == [
        ("SENT", None, "t-webhook", "sms"),
        ("DELIVERED", None, "t-late", "sms"),
        ("READ", None, "t-read", "sms"),
    ]


def test_the_state_keeps_the_furthest_status_of_each_message(new_state: NewState) -> None:
    with open_state(new_state(), "c") as store:
        for fact in (
            ("m1", "READ", 6, None, "t2", "whatsapp", "events"),
            ("m1", "DELIVERED", 5, None, "t1", "whatsapp", "poll"),
            ("m2", "DELIVERED", 5, None, "t1", "sms", "events"),
            ("m2", "SENT", 3, None, "t0", "sms", "poll"),
            ("m2", "FAILED", 4, "ERR_ROUTE_DENIED", "t3", "sms", "poll"),
            ("m3", "FAILED", 4, None, "t1", "sms", "events"),
            ("m3", "FAILED", 4, "ERR_CONSENT_BLOCKED", "t9", "sms", "poll"),  # the same status fills the reason
            ("m4", "FAILED", 4, "ERR_ROUTE_DENIED", "t1", "sms", "events"),
            ("m4", "DELIVERED", 5, None, "t2", "sms", "poll"),
        ):
            store.record_deliveries([fact])
        found = store.delivery_facts(["m1", "m2", "m3", "m4", "m5"]).sort("message_id")
    assert found.rows() == [
        ("m1", "READ", 6, None, "t2", "whatsapp"),
        ("m2", "DELIVERED", 5, None, "t1", "sms"),
        ("m3", "FAILED", 4, "ERR_CONSENT_BLOCKED", "t1", "sms"),
        ("m4", "DELIVERED", 5, None, "t2", "sms"),
    ]


def test_a_row_of_several_messages_takes_the_furthest_and_fails_only_when_all_failed() -> None:
    messages = pl.DataFrame(
        {
            "idempotency_key": ["both-failed", "one-failed", "one-read", "one-unknown", "none"],
            "result_message_id": ["a1,a2", "b1,b2", "c1,c2", "d1,d2", None],
        }
    )
    facts = pl.DataFrame(
        [
            ("a1", "FAILED", 4, "ERR_ROUTE_DENIED", "t1", "sms"),
            ("a2", "FAILED", 4, "ERR_CONSENT_BLOCKED", "t2", "whatsapp"),
            ("b1", "FAILED", 4, "ERR_ROUTE_DENIED", "t1", "sms"),
            ("b2", "SENT", 3, None, "t2", "whatsapp"),
            ("c1", "DELIVERED", 5, None, "t1", "sms"),
            ("c2", "READ", 6, None, "t2", "whatsapp"),
            ("d1", "FAILED", 4, "ERR_ROUTE_DENIED", "t1", "sms"),
        ],
        schema=DELIVERY_COLUMNS,
        orient="row",
    )
    rows = row_deliveries(messages, facts).sort("idempotency_key").rows()
    assert rows == [
        ("both-failed", "FAILED", "ERR_ROUTE_DENIED", "t1", "sms"),  # the first message listed speaks
        ("one-failed", "SENT", None, "t2", "whatsapp"),
        ("one-read", "READ", None, "t2", "whatsapp"),
        ("one-unknown", None, None, None, None),  # one failed, the other may still arrive: not FAILED
    ]


def test_until_final_polls_in_rounds_until_every_message_is_final(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    script, server = api
    spec_path = campaign(tmp_path, server.url)
    assert cli("run", spec_path)[0] == 0
    ids = [script.by_number[n][-1] for n in NUMBERS]
    clock = FakeClock()
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        # between rounds, time passes and the messages move on: one more is delivered each round
        pauses.append(seconds)
        clock.now += seconds
        script.events[ids[len(pauses)]].append({"status": "DELIVERED", "timestamp": f"round-{len(pauses)}"})

    script.events[ids[0]].append({"status": "DELIVERED", "timestamp": "round-0"})
    spec, _ = load_spec(spec_path)
    options = TrackOptions(poll=True, until_final=True, max_wait_s=3600, round_pause_s=60, clock=clock, sleep=sleep)
    summary = track_campaign(spec, options)
    assert summary.all_final
    assert not summary.timed_out
    assert summary.rounds == 4
    assert pauses == [60, 60, 60]
    assert [row[0] for row in delivery_columns(spec_path)] == ["DELIVERED"] * 4
    # rounds ask only for what is not final yet: 4 + 3 + 2 + 1
    assert len(script.gets) == 10


def test_until_final_stops_when_the_time_is_up_and_says_so(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    _script, server = api
    spec_path = campaign(tmp_path, server.url)
    assert cli("run", spec_path)[0] == 0
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    spec, _ = load_spec(spec_path)
    options = TrackOptions(poll=True, until_final=True, max_wait_s=150, round_pause_s=60, clock=clock, sleep=sleep)
    summary = track_campaign(spec, options)
    assert summary.timed_out
    assert not summary.all_final
    assert summary.rounds == 4  # at 0, 60, 120 and 150 s: the last pause is what was left
    assert clock.now == 1150
    assert [row[0] for row in delivery_columns(spec_path)] == ["QUEUED"] * 4


def test_an_interrupted_poll_resumes_without_asking_again_what_it_learnt(
    tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    script, server = api
    numbers = [f"+1415555{n:04d}" for n in range(200, 260)]
    data = v3_data(server.url, send={"concurrency": 2, "backoff_s": 0})
    write_csv(tmp_path / "customers.csv", people(*numbers))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "SENT_DM_API_KEY": API_KEY}
    sent = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"], cwd=ROOT, env=env, capture_output=True
    )
    assert sent.returncode == 0, sent.stderr
    for number in numbers:
        script.happened(number, "DELIVERED", at="t1")
    # the server answers 20 lookups, then hangs: the poll is killed while it waits
    script.before_get = lambda _r, _count: Fault.HANG if len(script.gets) > 20 else None
    state = tmp_path / "out" / "v3-campaign.state.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "track", str(spec), "--poll"], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and learnt(state) < 20:
            time.sleep(0.05)  # polling the state for the poll's commits: nothing to wait on directly
        assert learnt(state) == 20, "the poll never committed what it learnt"
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
        assert process.stdout is not None
        process.stdout.close()
    committed = learnt_ids(state)
    assert len(committed) == 20
    asked_before = len(script.gets)
    script.before_get = lambda _r, _count: None
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", "track", str(spec), "--poll"], cwd=ROOT, env=env, capture_output=True
    )
    assert again.returncode == 0, again.stderr
    asked_again = script.gets[asked_before:]
    every_id = {script.by_number[n][-1] for n in numbers}
    assert not committed & set(asked_again)
    assert sorted(asked_again) == sorted(every_id - committed)  # each of the others once
    assert pl.read_csv(spec.parent / "out" / "results.csv")["result_delivery_status"].to_list() == ["DELIVERED"] * 60


def learnt_ids(state: Path) -> set[str]:
    with sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True) as db:
        return {m for (m,) in db.execute("SELECT message_id FROM deliveries")}


def learnt(state: Path) -> int:
    try:
        with sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not made yet


def test_an_auth_failure_while_polling_stops_with_exit_3_and_the_fix(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    script, server = api
    spec = campaign(tmp_path, server.url)
    assert cli("run", spec)[0] == 0
    script.before_get = lambda _r, _count: refused(401, "AUTH_002", f"invalid key {API_KEY}")
    code, out, err = cli("track", spec, "--poll")
    assert code == 3
    assert "authentication failed" in out
    assert "check api.api_key" in out
    assert API_KEY not in out + err
    assert len(script.gets) <= 4  # stopped, not one attempt after another
    assert results(spec)["result_status"].to_list() == ["sent"] * 4  # the results file is still whole


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_v1_and_v2_have_no_status_lookup_but_take_webhook_events(
    cli: Cli, make_campaign: Callable[..., Path], receiver: LiveReceiver, version: str
) -> None:
    spec = make_campaign(api={"base_url": "sandbox", **({"version": version} if version == "v2" else {})})
    assert cli("run", spec)[0] == 0
    code, _, err = cli("track", spec, "--poll")
    assert code == 2
    assert f"--poll needs api.version v3: Sent.dm's {version} has no message status lookup" in err
    assert "Traceback" not in err
    if version == "v2":
        return  # the sandbox's v2 answers 204 without a message id: nothing to track
    table = pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)
    first = table["result_message_id"][0]
    assert receiver.post(webhook_body(first, "DELIVERED", "t1", None)).status_code == 200
    code, _out, err = cli("track", spec, "--events", receiver.store)
    assert code == 4, err  # the others are not known
    table = pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)
    assert table["result_delivery_status"].to_list() == ["DELIVERED", None, None, None, None]


def test_retry_delivery_failed_resends_only_retryable_rows_once_with_new_keys(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer], new_state: NewState
) -> None:
    script, server = api
    spec = campaign(tmp_path, server.url, new_state())
    assert cli("run", spec)[0] == 0
    first_keys = list(script.sent_keys)
    script.happened(NUMBERS[0], "FAILED", at="t1", reason="ERR_ROUTE_DENIED")
    script.happened(NUMBERS[1], "FAILED", at="t1", reason="ERR_CONSENT_BLOCKED")
    script.happened(NUMBERS[2], "DELIVERED", at="t1")
    script.happened(NUMBERS[3], "FAILED", at="t1")  # no reason given: worth another attempt
    assert cli("track", spec, "--poll")[0] == 0
    old_ids = results(spec)["result_message_id"].to_list()

    code, out, _ = cli("retry", spec, "--delivery-failed")

    assert code == 0
    assert "2 row(s) resent" in out
    assert "1 row(s) whose delivery failed for good" in out
    resent = script.sent_keys[4:]
    assert resent == [first_keys[0] + "-d1", first_keys[3] + "-d1"] or sorted(resent) == sorted(
        [first_keys[0] + "-d1", first_keys[3] + "-d1"]
    )
    table = results(spec)
    new_ids = table["result_message_id"].to_list()
    assert new_ids[1:3] == old_ids[1:3]
    assert new_ids[0] != old_ids[0]
    assert new_ids[3] != old_ids[3]
    # the results keep the delivery columns: the resent rows' new messages are not known yet
    assert [row[0] for row in table.select(DELIVERY).rows()] == [None, "FAILED", "DELIVERED", None]
    # the same command again sends nothing: the resent rows' messages have not failed
    code, out, err = cli("retry", spec, "--delivery-failed")
    assert code == 0, out + err
    assert len(script.sent_keys) == 6
    # once the new messages fail too, a second resend gets the next keys
    script.happened(NUMBERS[0], "FAILED", at="t2", reason="ERR_ROUTE_DENIED")
    script.happened(NUMBERS[3], "DELIVERED", at="t2")
    assert cli("track", spec, "--poll")[0] == 0
    assert cli("retry", spec, "--delivery-failed", "--rows", "1")[0] == 0
    assert script.sent_keys[6:] == [first_keys[0] + "-d2"]


def test_an_old_schema_state_is_migrated_and_keeps_its_rows(new_state: NewState) -> None:
    location = new_state()
    if isinstance(location, PostgresState):
        with psycopg.connect(location.url, autocommit=True) as db:
            db.execute("CREATE SCHEMA sentdm")
            db.execute("CREATE TABLE sentdm.schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ)")
            db.execute(MIGRATIONS[0].encode())
            db.execute("INSERT INTO sentdm.schema_version VALUES (1, now())")
            db.execute("INSERT INTO sentdm.states VALUES ('c', 'c', 0)")
            db.execute(
                "INSERT INTO sentdm.messages (state, idempotency_key, status, message_id, attempts, updated_at) "
                "VALUES ('c', 'k', 'sent', 'm1', 1, 0)"
            )
    else:
        with sqlite3.connect(location) as db:
            db.executescript(
                """
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                INSERT INTO meta VALUES ('campaign', 'c'), ('schema', '1'), ('created_at', '0');
                CREATE TABLE messages (idempotency_key TEXT PRIMARY KEY, status TEXT NOT NULL, verdict TEXT,
                    http_status INTEGER, message_id TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                    sent_at TEXT, latency_ms REAL, updated_at REAL NOT NULL, first_attempt_at REAL,
                    request_key TEXT, recipient TEXT);
                CREATE TABLE requests (request_key TEXT PRIMARY KEY, body TEXT NOT NULL);
                INSERT INTO messages (idempotency_key, status, message_id, attempts, updated_at)
                    VALUES ('k', 'sent', 'm1', 1, 0);
                """
            )
    # read without the lock (a dry run beside an older version's run): read as it is, not migrated
    with open_state(location, "c", read_only=True) as reader:
        assert reader.lookup(["k"])["delivery_retries"].to_list() == [0]
        assert reader.delivery_facts().height == 0
        assert not reader.tracked
    with open_state(location, "c") as store:
        assert store.lookup(["k"]).select("result_status", "result_message_id", "delivery_retries").rows() == [
            ("sent", "m1", 0)
        ]
        store.record_deliveries([("m1", "DELIVERED", 5, None, "t1", "sms", "poll")])
        store.count_delivery_retries(["k"])
        store.mark_tracked()
    with open_state(location, "c") as store:
        assert store.tracked
        assert store.delivery_facts(["m1"])["delivery_status"].to_list() == ["DELIVERED"]
        assert store.lookup(["k"])["delivery_retries"].to_list() == [1]
    if isinstance(location, PostgresState):
        with psycopg.connect(location.url) as db:
            versions = [v for (v,) in db.execute("SELECT version FROM sentdm.schema_version ORDER BY 1")]
        assert versions == list(range(1, PG_SCHEMA_VERSION + 1))
    else:
        with sqlite3.connect(location) as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("2",)


def test_track_needs_a_source_and_a_sent_campaign(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    _, server = api
    spec = campaign(tmp_path, server.url)
    code, _, err = cli("track", spec)
    assert code == 2
    assert "track needs a source" in err
    code, _, err = cli("track", spec, "--poll")
    assert code == 2
    assert "nothing was sent yet" in err
    code, _, err = cli("track", spec, "--until-final")
    assert code == 2
    assert "goes with --poll" in err
    code, _, err = cli("track", spec, "--poll", "--max-wait", "soon")
    assert code == 2
    assert "is not a duration" in err


def test_a_delivery_resend_whose_answer_was_lost_goes_again_under_the_same_new_key(
    cli: Cli, tmp_path: Path, api: tuple[DeliveryApi, FaultServer]
) -> None:
    script, server = api
    spec = campaign(tmp_path, server.url)
    assert cli("run", spec)[0] == 0
    first_key = script.sent_keys[0]
    script.happened(NUMBERS[0], "FAILED", at="t1", reason="ERR_ROUTE_DENIED")
    assert cli("track", spec, "--poll")[0] == 4
    assert cli("retry", spec, "--delivery-failed")[0] == 0
    assert script.sent_keys[4:] == [first_key + "-d1"]
    resent_id = results(spec)["result_message_id"][0]
    # as if the process had died with that request on the wire: the row is in flight again, its answer lost
    with open_state(tmp_path / "out" / "v3-campaign.state.sqlite", "v3-campaign") as store:
        store.commit([first_key], [])
    code, out, err = cli("run", spec)
    assert code == 0, out + err
    # resent under the attempt's key, which the server answers with its first answer: no new message
    assert script.sent_keys[4:] == [first_key + "-d1"]
    assert [r.idempotency_key for r in server.requests if r.method == "POST"][-1] == first_key + "-d1"
    assert results(spec)["result_message_id"][0] == resent_id
