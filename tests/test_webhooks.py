"""The webhook receiver against real servers on 127.0.0.1: the in-process aiohttp server on a thread for the HTTP
answers and the stored state, and `python -m pipeline webhooks` as a subprocess for the command itself (the secret
never in its output, SIGTERM, and kill -9 in a burst losing no acknowledged event)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline import errors
from pipeline.cli import main
from pipeline.webhooks.lookup import history, statuses
from pipeline.webhooks.server import MAX_BODY_BYTES, Receiver, serve
from pipeline.webhooks.signature import SECRET_ENV, WebhookSecret, sign
from pipeline.webhooks.store import SCHEMA_VERSION, EventStore, StoreFailed, connect

KEY = b"test-webhook-signing-key-DO-NOT-LEAK"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER_KEY = b"another-endpoint-signing-key-000"
ENDPOINT_ID = "ep_2Yc8dEhT"  # X-Webhook-ID: the endpoint's id, the same on every delivery
REPO = Path(__file__).resolve().parent.parent


def event(message_id: str, status: str, **payload: Any) -> bytes:
    body = {
        "field": "message",
        "sub_type": f"message.{status.lower()}",
        "timestamp": "2026-12-03T10:00:00Z",
        "payload": {"account_id": "acc_1", "message_id": message_id, "message_status": status, "channel": "sms"}
        | payload,
    }
    return json.dumps(body).encode()


def signed(
    body: bytes, *, key: bytes = KEY, timestamp: int | None = None, extra: tuple[str, ...] = ()
) -> dict[str, str]:
    sent_at = str(int(time.time()) if timestamp is None else timestamp)
    signatures = " ".join((*extra, sign(key, ENDPOINT_ID, sent_at, body)))
    return {
        "X-Webhook-ID": ENDPOINT_ID,
        "X-Webhook-Timestamp": sent_at,
        "X-Webhook-Signature": signatures,
        "Content-Type": "application/json",
    }


@dataclass
class LiveReceiver:
    url: str
    store: Path
    logs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def post(self, body: bytes, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/webhooks/sent", content=body, headers=dict(headers or signed(body)), timeout=10)

    def log_text(self) -> str:
        return json.dumps(self.logs, default=str)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[LiveReceiver]:
    """The receiver's aiohttp server on a thread of its own, its store in tmp_path; stopped gracefully after."""
    store_path = tmp_path / "events.db"
    logs: list[tuple[str, dict[str, Any]]] = []
    ready = threading.Event()
    bound: list[int] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    store = EventStore(store_path)
    receiver = Receiver(secret=WebhookSecret(KEY), store=store, log=lambda name, fields: logs.append((name, fields)))

    def on_ready(host: str, port: int) -> None:
        bound.append(port)
        ready.set()

    failures: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(serve(receiver, "127.0.0.1", 0, stop=stop, on_ready=on_ready))
        except BaseException as exc:
            failures.append(exc)
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "the receiver did not start"
    assert not failures, failures
    try:
        yield LiveReceiver(url=f"http://127.0.0.1:{bound[0]}", store=store_path, logs=logs)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        store.close()
    assert not failures, failures


def stored_events(store: Path) -> int:
    with closing(connect(store)) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def test_a_signed_event_is_stored_with_its_status(receiver: LiveReceiver) -> None:
    answer = receiver.post(event("m-1", "DELIVERED"))
    assert answer.status_code == 200
    assert answer.json() == {"ok": True}
    found = statuses(receiver.store, ["m-1", "m-unknown"])
    assert list(found) == ["m-1"]
    assert (found["m-1"].status, found["m-1"].channel, found["m-1"].at) == ("DELIVERED", "sms", "2026-12-03T10:00:00Z")
    assert [e.sub_type for e in history(receiver.store, ["m-1"])["m-1"]] == ["message.delivered"]


def test_a_tampered_body_is_401_and_not_stored(receiver: LiveReceiver) -> None:
    body = event("m-1", "DELIVERED")
    answer = receiver.post(body.replace(b"DELIVERED", b"FAILED"), signed(body))
    assert answer.status_code == 401
    assert "bad signature" in answer.json()["error"]
    assert stored_events(receiver.store) == 0
    assert receiver.logs == [("rejected", {"status": 401, "reason": "bad signature", "remote": "127.0.0.1"})]


def test_a_body_signed_with_another_secret_is_401(receiver: LiveReceiver) -> None:
    body = event("m-1", "DELIVERED")
    assert receiver.post(body, signed(body, key=OTHER_KEY)).status_code == 401
    assert stored_events(receiver.store) == 0


@pytest.mark.parametrize(
    # a timestamp ahead is seen as less far ahead the longer the request takes: a margin keeps the test exact
    ("offset_s", "reason"),
    [(-301, "timestamp too old"), (330, "timestamp in the future"), (-3600, "too old")],
)
def test_a_timestamp_more_than_5_minutes_off_is_401(receiver: LiveReceiver, offset_s: int, reason: str) -> None:
    body = event("m-1", "DELIVERED")
    answer = receiver.post(body, signed(body, timestamp=int(time.time()) + offset_s))
    assert answer.status_code == 401
    assert stored_events(receiver.store) == 0
    assert reason in receiver.logs[0][1]["reason"]


@pytest.mark.parametrize("header", ["X-Webhook-ID", "X-Webhook-Timestamp", "X-Webhook-Signature"])
def test_a_missing_header_is_401_and_the_log_names_it(receiver: LiveReceiver, header: str) -> None:
    body = event("m-1", "DELIVERED")
    headers = signed(body)
    del headers[header]
    assert receiver.post(body, headers).status_code == 401
    assert receiver.logs[0][1]["reason"] == f"missing header {header}"


def test_several_signatures_are_accepted_when_one_matches(receiver: LiveReceiver) -> None:
    body = event("m-1", "SENT")
    sent_at = int(time.time())
    stale = sign(OTHER_KEY, ENDPOINT_ID, str(sent_at), body)
    answer = receiver.post(body, signed(body, timestamp=sent_at, extra=(stale, "v1,bm90LWEtc2lnbmF0dXJl", "v2,xyz")))
    assert answer.status_code == 200
    assert statuses(receiver.store)["m-1"].status == "SENT"


def test_the_same_event_twice_is_answered_200_and_stored_once(receiver: LiveReceiver) -> None:
    body = event("m-1", "DELIVERED")
    assert receiver.post(body).status_code == 200
    # Sent.dm's retry: the same content, a new timestamp, the same X-Webhook-ID (which is no event id)
    assert receiver.post(body, signed(body, timestamp=int(time.time()) - 10)).status_code == 200
    assert stored_events(receiver.store) == 1


def test_events_of_different_messages_are_not_deduplicated_by_the_webhook_id(receiver: LiveReceiver) -> None:
    for n in range(3):
        assert receiver.post(event(f"m-{n}", "SENT")).status_code == 200
    assert sorted(statuses(receiver.store)) == ["m-0", "m-1", "m-2"]


def test_a_late_sent_after_delivered_keeps_delivered_and_both_are_in_the_history(receiver: LiveReceiver) -> None:
    receiver.post(event("m-1", "DELIVERED"))
    receiver.post(event("m-1", "SENT"))
    assert statuses(receiver.store)["m-1"].status == "DELIVERED"
    assert [e.status for e in history(receiver.store, ["m-1"])["m-1"]] == ["DELIVERED", "SENT"]


@pytest.mark.parametrize("order", [("DELIVERED", "READ"), ("READ", "DELIVERED")])
def test_read_beats_delivered_in_either_order(receiver: LiveReceiver, order: tuple[str, str]) -> None:
    for status in order:
        receiver.post(event("m-1", status))
    assert statuses(receiver.store)["m-1"].status == "READ"


def test_a_delivered_after_failed_wins_and_the_failure_stays_in_the_history(receiver: LiveReceiver) -> None:
    receiver.post(event("m-1", "FAILED", error_code="ERR_ROUTE_DENIED"))
    failed = statuses(receiver.store)["m-1"]
    assert (failed.status, failed.error) == ("FAILED", "ERR_ROUTE_DENIED")
    receiver.post(event("m-1", "DELIVERED"))
    delivered = statuses(receiver.store)["m-1"]
    assert (delivered.status, delivered.error) == ("DELIVERED", None)
    assert [(e.status, e.error) for e in history(receiver.store, ["m-1"])["m-1"]] == [
        ("FAILED", "ERR_ROUTE_DENIED"),
        ("DELIVERED", None),
    ]


def test_failed_is_final_against_earlier_statuses_arriving_late(receiver: LiveReceiver) -> None:
    for status in ("QUEUED", "FAILED", "SENT", "ROUTED"):
        receiver.post(event("m-1", status))
    assert statuses(receiver.store)["m-1"].status == "FAILED"
    assert len(history(receiver.store, ["m-1"])["m-1"]) == 4


@pytest.mark.parametrize(
    "where",
    [
        {"error_code": "ERR_CONSENT_BLOCKED"},
        {"error": {"code": "ERR_CONSENT_BLOCKED", "message": "opted out"}},
        {"reason": "ERR_CONSENT_BLOCKED"},
        {"description": "ERR_CONSENT_BLOCKED"},
    ],
)
def test_a_failure_reason_is_read_from_any_of_its_documented_fields(
    receiver: LiveReceiver, where: dict[str, Any]
) -> None:
    receiver.post(event("m-1", "FAILED", **where))
    assert statuses(receiver.store)["m-1"].error == "ERR_CONSENT_BLOCKED"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"this is not json {", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"sub_type": "message.sent", "payload": {"message_status": "SENT"}}).encode(), "message_id"),
        (json.dumps({"sub_type": "message.sent"}).encode(), "payload"),
    ],
)
def test_a_malformed_signed_body_is_400_and_kept_aside(receiver: LiveReceiver, body: bytes, reason: str) -> None:
    answer = receiver.post(body)
    assert answer.status_code == 400
    assert reason in answer.json()["error"]
    assert stored_events(receiver.store) == 0
    with closing(connect(receiver.store)) as db:
        kept = db.execute("SELECT reason, body FROM rejected").fetchall()
    assert len(kept) == 1
    assert reason in kept[0][0]
    assert kept[0][1] == body
    assert body.decode() not in receiver.log_text()  # the log says why, never what


def test_message_received_events_are_deduplicated_by_their_content(receiver: LiveReceiver) -> None:
    inbound = {
        "field": "message",
        "sub_type": "message.received",
        "timestamp": "2026-12-03T10:00:00Z",
        "payload": {"account_id": "acc_1", "from": "+14155550123", "text": "STOP"},
    }
    body = json.dumps(inbound).encode()
    reordered = json.dumps(dict(reversed(list(inbound.items()))), indent=1).encode()  # same content, other bytes
    later = json.dumps(inbound | {"timestamp": "2026-12-03T10:05:00Z"}).encode()
    for each in (body, reordered, later):
        assert receiver.post(each).status_code == 200
    assert stored_events(receiver.store) == 2
    assert statuses(receiver.store) == {}  # about no outbound message


def test_a_body_over_the_limit_is_413(receiver: LiveReceiver) -> None:
    body = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    answer = receiver.post(body)
    assert answer.status_code == 413
    assert "error" in answer.json()
    assert stored_events(receiver.store) == 0


def test_healthz_and_json_errors_for_other_paths(receiver: LiveReceiver) -> None:
    health = httpx.get(f"{receiver.url}/healthz")
    assert (health.status_code, health.json()) == (200, {"ok": True})
    missing = httpx.post(f"{receiver.url}/webhooks/other", content=b"{}")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    wrong_method = httpx.get(f"{receiver.url}/webhooks/sent")
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()


def test_the_store_keeps_its_events_across_a_reopen_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with closing(connect(path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(errors.OutputError, match="newer than this sentdm-batch knows"):
        connect(path)


def test_a_secret_is_parsed_and_never_shown() -> None:
    secret = WebhookSecret.parse(SECRET)
    assert secret.key == KEY
    assert base64.b64encode(KEY).decode() not in repr(secret)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "SENT_DM_WEBHOOK_SECRET is not set"),
        ("sk_live_abcdef", "does not start with 'whsec_'"),
        ("whsec_***not base64***", "not valid base64"),
        ("whsec_", "not valid base64"),
    ],
)
def test_a_missing_or_malformed_secret_stops_the_command_with_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    value: str | None,
    message: str,
) -> None:
    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    code = main(["webhooks", "--listen", "127.0.0.1:0", "--store", str(tmp_path / "events.db")])
    assert code == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    if value and value != "whsec_":
        assert value.removeprefix("whsec_") not in err
    assert not (tmp_path / "events.db").exists()  # nothing started


def test_a_bad_listen_address_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webhooks", "--listen", "nowhere", "--store", str(tmp_path / "e.db")]) == errors.EXIT_USAGE
    assert "is not HOST:PORT" in capsys.readouterr().err


class ReceiverProcess:
    """`python -m pipeline webhooks` on 127.0.0.1 on a free port, its stderr collected by a thread."""

    def __init__(self, store: Path) -> None:
        env = {**os.environ, SECRET_ENV: SECRET}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "webhooks", "--listen", "127.0.0.1:0", "--store", str(store)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()  # blocks until the receiver listens (or dies)
        self.output = [first]
        assert first.startswith("Receiving webhooks on http://127.0.0.1:"), first
        self.url = first.split()[3].removesuffix("/webhooks/sent")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        self.output.extend(self.process.stdout)

    def finish(self, timeout_s: float = 30) -> tuple[int, str]:
        code = self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code, "".join(self.output)


@pytest.mark.slow
def test_the_command_never_shows_the_secret_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "events.db")
    try:
        with httpx.Client(base_url=receiver.url, timeout=10) as client:
            good = event("m-1", "DELIVERED")
            assert client.post("/webhooks/sent", content=good, headers=signed(good)).status_code == 200
            bad = event("m-2", "SENT")
            assert client.post("/webhooks/sent", content=bad, headers=signed(bad, key=OTHER_KEY)).status_code == 401
            assert client.post("/webhooks/sent", content=b"nope", headers=signed(b"nope")).status_code == 400
    finally:
        receiver.process.send_signal(signal.SIGTERM)
        code, output = receiver.finish()
    assert code == 0
    assert "stopped stopped_by=SIGTERM accepted=1 unauthorized=1 malformed=1" in output
    assert "reason=bad signature" in output
    for secret_part in (SECRET, base64.b64encode(KEY).decode(), KEY.decode()):
        assert secret_part not in output
    assert "nope" not in output
    assert statuses(tmp_path / "events.db")["m-1"].status == "DELIVERED"


def burst_until_killed(
    store: Path, *, round_: int, kill_after: int, signum: signal.Signals = signal.SIGKILL
) -> tuple[list[str], int]:
    """Start a receiver on `store`, fire signed events at it from 8 connections, send it `signum` once `kill_after`
    have been answered 2xx; the message ids of every event answered 2xx, and the receiver's exit code."""
    receiver = ReceiverProcess(store)
    acknowledged: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()
    enough = threading.Event()
    connections, per_connection = 8, 400  # far more than get answered before the kill

    def burst(worker: int) -> None:
        with httpx.Client(base_url=receiver.url, timeout=10) as client:
            for n in range(per_connection):
                message_id = f"m-{round_}-{worker}-{n}"
                body = event(message_id, "DELIVERED")
                try:
                    answer = client.post("/webhooks/sent", content=body, headers=signed(body))
                except httpx.TransportError:
                    return  # the receiver is gone: what was not answered 2xx may be lost, and will be redelivered
                if answer.status_code != 200:
                    refused.append(answer.status_code)
                    return
                with lock:
                    acknowledged.append(message_id)
                    if len(acknowledged) >= kill_after:
                        enough.set()

    workers = [threading.Thread(target=burst, args=(w,)) for w in range(connections)]
    for worker in workers:
        worker.start()
    try:
        assert enough.wait(60), f"the burst got fewer than {kill_after} answers"
    finally:
        receiver.process.send_signal(signum)
        code = receiver.finish()[0]
        for worker in workers:
            worker.join(30)
    assert refused == []
    assert kill_after <= len(acknowledged) < connections * per_connection  # stopped mid-burst
    return acknowledged, code


@pytest.mark.slow
def test_kill_9_during_a_burst_loses_no_acknowledged_event(tmp_path: Path) -> None:
    store = tmp_path / "events.db"
    acknowledged: list[str] = []
    # several kills, each at another point of the commit cycle, each restarting on the store the last one left
    for round_, kill_after in enumerate((300, 457, 611)):
        acknowledged += burst_until_killed(store, round_=round_, kill_after=kill_after)[0]
    restarted = ReceiverProcess(store)  # opens the store again (WAL recovery) and serves
    restarted.process.send_signal(signal.SIGTERM)
    assert restarted.finish()[0] == 0
    found = statuses(store, acknowledged)
    missing = [message_id for message_id in acknowledged if message_id not in found]
    assert missing == []
    assert {s.status for s in found.values()} == {"DELIVERED"}


def test_an_event_the_store_cannot_commit_is_503_so_sent_dm_delivers_it_again() -> None:
    class FullDisk:
        async def record(self, event: object) -> None:
            raise StoreFailed("events.db: database or disk is full")

    logs: list[tuple[str, Mapping[str, Any]]] = []
    receiver = Receiver(
        secret=WebhookSecret(KEY),
        store=FullDisk(),  # type: ignore[arg-type]  # only record() is reached
        log=lambda name, fields: logs.append((name, fields)),
    )
    body = event("m-1", "DELIVERED")
    status, answer = asyncio.run(receiver.receive(signed(body), body, remote=None))
    assert status == 503
    assert "deliver it again" in str(answer)
    assert logs == [("store_error", {"status": 503, "reason": "events.db: database or disk is full"})]
    assert receiver.stats.store_errors == 1


@pytest.mark.slow
def test_sigterm_during_a_burst_exits_0_with_every_acknowledged_event_stored(tmp_path: Path) -> None:
    store = tmp_path / "events.db"
    acknowledged, code = burst_until_killed(store, round_=0, kill_after=300, signum=signal.SIGTERM)
    assert code == 0
    found = statuses(store, acknowledged)
    assert [message_id for message_id in acknowledged if message_id not in found] == []
