"""The sandbox's simulated delivery: seeded fates, `GET /v3/messages/{id}` (from a later sandbox too), and signed
webhooks posted to the real receiver (`python -m pipeline webhooks`) or to a receiver that is down.

Lookups move a fake clock instead of waiting for messages to age; tests that need webhooks posted wait for the run
(or the sandbox's stop) to finish them, never for a fixed time.
"""

from __future__ import annotations

import base64
import collections
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import yaml

from pipeline import errors
from pipeline.campaign.endpoint import api_endpoint, sandbox_messages_path
from pipeline.sandbox import SandboxServer
from pipeline.sandbox.lifecycle import FAILURE_REASONS, DeliveryOptions, fate_of, steps_of
from pipeline.sandbox.webhook_posts import RETRIES, WebhookTarget
from pipeline.spec import load_spec
from pipeline.webhooks.lookup import statuses
from pipeline.webhooks.signature import SECRET_ENV, WebhookSecret, verify
from tests.conftest import FakeClock, write_csv

REPO = Path(__file__).resolve().parents[1]
SHIPPED = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"  # order_shipped: sms + whatsapp
PARAMETERS = {"name": "Ada", "order_id": "000123", "carrier": "UPS"}
API_KEY = "sk_test_delivery_51d0"
KEY = b"sandbox-delivery-test-signing-key"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
REASONS = {reason for reason, _ in FAILURE_REASONS}


def send(url: str, numbers: list[str], *, key: str | None = None, **body: Any) -> httpx.Response:
    headers = {"x-api-key": API_KEY}
    if key is not None:
        headers["Idempotency-Key"] = key
    payload = {"to": numbers, "template": {"id": SHIPPED, "parameters": PARAMETERS}, **body}
    return httpx.post(f"{url}/v3/messages", json=payload, headers=headers, timeout=10)


def message_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 202, response.text
    return [recipient["message_id"] for recipient in response.json()["data"]["recipients"]]


def look_up(url: str, message_id: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{url}/v3/messages/{message_id}", headers={"x-api-key": API_KEY, **headers}, timeout=10)


def numbers(count: int) -> list[str]:
    return [f"+1202555{n:04d}" for n in range(count)]


# --- fates --------------------------------------------------------------------------------------------------------


def test_a_message_fate_follows_the_seed_and_its_id_alone() -> None:
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(3000)]
    options = DeliveryOptions(failure_rate=0.1, read_rate=0.5, seed=11)
    first = [fate_of(i, "whatsapp", options) for i in ids]
    again = [fate_of(i, "whatsapp", DeliveryOptions(failure_rate=0.1, read_rate=0.5, seed=11)) for i in ids]
    other_seed = [fate_of(i, "whatsapp", DeliveryOptions(failure_rate=0.1, read_rate=0.5, seed=12)) for i in ids]
    assert first == again
    assert first != other_seed
    endings = collections.Counter(fate.statuses[-1] for fate in first)
    # 10% fail, half of the rest are read: the shares hold within a few points over 3000 messages
    assert 0.07 < endings["FAILED"] / len(ids) < 0.13
    assert 0.40 < endings["READ"] / (len(ids) - endings["FAILED"]) < 0.60
    assert {fate.reason for fate in first if fate.reason is not None} == REASONS


def test_only_whatsapp_and_rcs_messages_are_read_and_every_path_starts_queued() -> None:
    options = DeliveryOptions(failure_rate=0.2, read_rate=1.0, seed=3)
    ids = [f"10000000-0000-4000-8000-{n:012d}" for n in range(500)]
    sms = [fate_of(i, "sms", options) for i in ids]
    rcs = [fate_of(i, "rcs", options) for i in ids]
    assert {fate.statuses[-1] for fate in sms} == {"DELIVERED", "FAILED"}
    assert {fate.statuses[-1] for fate in rcs} == {"READ", "FAILED"}
    for fate in sms + rcs:
        assert fate.statuses[0] == "QUEUED"
        if fate.reason == "ERR_ROUTE_DENIED":
            assert fate.statuses == ("QUEUED", "ROUTED", "FAILED")


def test_the_steps_are_in_order_and_the_last_comes_within_delivery_ms() -> None:
    options = DeliveryOptions(delivery_ms=2000, failure_rate=0.5, seed=5)
    for n in range(200):
        steps = steps_of(f"20000000-0000-4000-8000-{n:012d}", "whatsapp", 100.0, options)
        moments = [step.at for step in steps]
        assert moments == sorted(moments)
        assert moments[0] == 100.0
        assert 101.0 <= moments[-1] <= 102.0
        if steps[-1].status == "FAILED":
            assert steps[-1].description in REASONS


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"delivery_ms": -1}, "delivery_ms must be between"),
        ({"failure_rate": 1.5}, "delivery_failure_rate must be between 0 and 1"),
        ({"read_rate": "half"}, "read_rate must be a number"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_delivery_options_are_checked(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DeliveryOptions(**options)


def test_a_seeded_sandbox_gives_a_rehearsal_the_same_message_ids() -> None:
    def ids_of_one_run() -> list[str]:
        with SandboxServer(seed=9, delivery=DeliveryOptions(seed=9)) as sandbox:
            return sorted(message_ids(send(sandbox.url, numbers(3), key="row-1", channel=["sms", "whatsapp"])))

    first, second = ids_of_one_run(), ids_of_one_run()
    assert first == second
    assert len(set(first)) == 6
    with SandboxServer() as unseeded:
        assert not set(first) & set(message_ids(send(unseeded.url, numbers(3), key="row-1")))


# --- GET /v3/messages/{id} ----------------------------------------------------------------------------------------


def test_a_lookup_tells_how_far_the_message_got_at_the_moment_of_asking() -> None:
    clock = FakeClock()
    options = DeliveryOptions(delivery_ms=4000, failure_rate=0.0, read_rate=1.0, seed=2)
    with SandboxServer(clock=clock, delivery=options, rate_limit_per_min=100) as sandbox:
        [message_id] = message_ids(send(sandbox.url, ["+14155550123"], channel=["whatsapp"]))
        at_once = look_up(sandbox.url, message_id)
        clock.now += 4.0
        later = look_up(sandbox.url, message_id)

    assert at_once.status_code == 200
    data = at_once.json()["data"]
    assert data == {
        "id": message_id,
        "status": "QUEUED",
        "channel": "whatsapp",
        "phone": "+14155550123",
        "price": 0.0,
        "template_id": SHIPPED,
        "events": [
            {"status": "QUEUED", "timestamp": data["events"][0]["timestamp"], "description": "accepted and queued"}
        ],
    }
    final = later.json()["data"]
    assert final["status"] == "READ"
    assert [event["status"] for event in final["events"]] == ["QUEUED", "ROUTED", "SENT", "DELIVERED", "READ"]
    assert final["price"] > 0
    assert later.json()["success"] is True
    assert later.json()["meta"]["version"] == "v3"
    # the lookups count against the account's rate limit like every v3 request
    assert later.headers["X-RateLimit-Limit"] == "100"
    assert later.headers["X-RateLimit-Remaining"] == "97"
    assert "X-RateLimit-Reset" in later.headers


def test_a_failed_message_carries_its_reason_in_the_failed_event_description() -> None:
    clock = FakeClock()
    with SandboxServer(clock=clock, delivery=DeliveryOptions(failure_rate=1.0)) as sandbox:
        ids = message_ids(send(sandbox.url, numbers(20)))
        clock.now += 1.0
        found = [look_up(sandbox.url, message_id).json()["data"] for message_id in ids]
    for data in found:
        assert data["status"] == "FAILED"
        failed = data["events"][-1]
        assert failed["status"] == "FAILED"
        assert failed["description"] in REASONS
        assert data["price"] == 0.0  # none reached a carrier
    assert len({data["events"][-1]["description"] for data in found}) > 1


def test_lookups_need_the_key_and_a_known_uuid() -> None:
    with SandboxServer(api_key=API_KEY) as sandbox:
        [message_id] = message_ids(send(sandbox.url, ["+14155550123"]))
        no_key = httpx.get(f"{sandbox.url}/v3/messages/{message_id}", timeout=10)
        wrong_key = look_up(sandbox.url, message_id, **{"x-api-key": "sk_wrong"})
        unknown = look_up(sandbox.url, "7ba7b899-9dad-11d1-80b4-00c04fd430c8")
        not_a_uuid = look_up(sandbox.url, "12345")
        upper = look_up(sandbox.url, message_id.upper())

    assert (no_key.status_code, no_key.json()["error"]["code"]) == (401, "AUTH_001")
    assert (wrong_key.status_code, wrong_key.json()["error"]["code"]) == (401, "AUTH_002")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "RESOURCE_001")
    assert unknown.json()["success"] is False
    assert "X-RateLimit-Remaining" in unknown.headers
    assert (not_a_uuid.status_code, not_a_uuid.json()["error"]["code"]) == (400, "VALIDATION_003")
    assert upper.status_code == 200
    assert API_KEY not in no_key.text + wrong_key.text + unknown.text


def test_rehearsals_are_not_kept_and_a_replay_is_the_same_message(tmp_path: Path) -> None:
    with SandboxServer(messages_path=tmp_path / "messages.sqlite") as sandbox:
        rehearsed = message_ids(send(sandbox.url, ["+14155550123"], sandbox=True))
        first = message_ids(send(sandbox.url, ["+14155550124"], key="row-7"))
        replay = send(sandbox.url, ["+14155550124"], key="row-7")
        rehearsal_lookup = look_up(sandbox.url, rehearsed[0])
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert message_ids(replay) == first
    assert rehearsal_lookup.status_code == 404
    with SandboxServer(messages_path=tmp_path / "messages.sqlite") as later:
        assert look_up(later.url, first[0]).status_code == 200
        assert look_up(later.url, rehearsed[0]).status_code == 404


def test_a_new_sandbox_for_the_same_registry_tells_the_same_story(tmp_path: Path) -> None:
    registry = tmp_path / "out" / "messages.sqlite"
    options = DeliveryOptions(delivery_ms=500, failure_rate=0.3, read_rate=0.5, seed=4)
    clock = FakeClock()
    with SandboxServer(clock=clock, delivery=options, messages_path=registry) as first:
        ids = message_ids(send(first.url, numbers(30), channel=["sms", "whatsapp"]))
        clock.now += 1.0
        told_first = {i: look_up(first.url, i).json()["data"] for i in ids}
    with SandboxServer(clock=clock, delivery=options, messages_path=registry) as second:
        told_second = {i: look_up(second.url, i).json()["data"] for i in ids}
    assert told_first == told_second
    assert {data["status"] for data in told_first.values()} == {"DELIVERED", "READ", "FAILED"}


def test_a_sandbox_that_accepts_nothing_creates_no_registry(tmp_path: Path) -> None:
    registry = tmp_path / "messages.sqlite"
    with SandboxServer(messages_path=registry) as sandbox:
        assert look_up(sandbox.url, "7ba7b899-9dad-11d1-80b4-00c04fd430c8").status_code == 404
        assert httpx.get(f"{sandbox.url}/v3/templates/{SHIPPED}", headers={"x-api-key": "k"}).status_code == 200
    assert not registry.exists()


def test_a_registry_that_cannot_be_written_refuses_the_send_with_500(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the registry's folder would be")
    with SandboxServer(messages_path=blocker / "messages.sqlite") as sandbox:
        refused = send(sandbox.url, ["+14155550123"])
    assert refused.status_code == 500
    assert refused.json()["error"]["code"] == "INTERNAL_001"
    assert "message registry" in refused.json()["error"]["message"]


# --- webhooks to a test receiver ----------------------------------------------------------------------------------


class RecordingReceiver:
    """A plain HTTP server on 127.0.0.1 that records every delivery and answers 500 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 0) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.deliveries) < receiver.fail_first else 204
                receiver.deliveries.append(({k: v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/sent"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording() -> Iterator[RecordingReceiver]:
    receiver = RecordingReceiver()
    yield receiver
    receiver.close()


def test_each_status_change_is_posted_signed_in_sent_dm_s_shape(recording: RecordingReceiver) -> None:
    options = DeliveryOptions(delivery_ms=200, failure_rate=0.0, read_rate=1.0, seed=1)
    sandbox = SandboxServer(delivery=options, webhooks=WebhookTarget(recording.url, KEY)).start()
    [message_id] = message_ids(send(sandbox.url, ["+14155550123"], channel=["whatsapp"]))
    sandbox.stop()  # waits for the status changes still due

    assert sandbox.webhook_counts() == (5, 5, 0)
    secret = WebhookSecret.parse(SECRET)
    bodies = []
    for headers, body, status in recording.deliveries:
        assert status == 204
        verify(secret, httpx.Headers(headers), body)  # raises unless the signature is Sent.dm's
        bodies.append(json.loads(body))
    assert len({headers["X-Webhook-ID"] for headers, _, _ in recording.deliveries}) == 1
    assert sorted(body["payload"]["message_status"] for body in bodies) == sorted(
        ["QUEUED", "ROUTED", "SENT", "DELIVERED", "READ"]
    )
    read = next(body for body in bodies if body["payload"]["message_status"] == "READ")
    assert read["field"] == "message"
    assert read["sub_type"] == "message.read"
    assert read["timestamp"].endswith("Z")
    assert read["payload"]["message_id"] == message_id
    assert read["payload"]["channel"] == "whatsapp"
    assert read["payload"]["template_id"] == SHIPPED
    assert set(read["payload"]) == {"account_id", "message_id", "message_status", "channel", "template_id"}


@pytest.mark.parametrize("include_reason", [False, True])
def test_a_failure_reason_is_in_the_payload_only_when_asked_for(
    recording: RecordingReceiver, include_reason: bool
) -> None:
    options = DeliveryOptions(delivery_ms=0, failure_rate=1.0)
    target = WebhookTarget(recording.url, KEY, include_reason=include_reason)
    with SandboxServer(delivery=options, webhooks=target) as sandbox:
        send(sandbox.url, ["+14155550123"])
    failed = [json.loads(body) for _, body, _ in recording.deliveries if b'"FAILED"' in body]
    assert len(failed) == 1
    if include_reason:
        assert failed[0]["payload"]["error_code"] in REASONS
    else:
        assert "error_code" not in failed[0]["payload"]


def test_a_delivery_without_a_2xx_is_tried_again() -> None:
    receiver = RecordingReceiver(fail_first=2)
    try:
        options = DeliveryOptions(delivery_ms=0, failure_rate=0.0)
        with SandboxServer(delivery=options, webhooks=WebhookTarget(receiver.url, KEY)) as sandbox:
            send(sandbox.url, ["+14155550123"], channel=["sms"])
    finally:
        receiver.close()
    assert sandbox.webhook_counts() == (4, 4, 0)
    assert [status for _, _, status in receiver.deliveries].count(500) == 2
    delivered = [
        json.loads(body)["payload"]["message_status"] for _, body, status in receiver.deliveries if status == 204
    ]
    assert sorted(delivered) == ["DELIVERED", "QUEUED", "ROUTED", "SENT"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_receiver_that_is_down_is_given_up_on_when_the_sandbox_stops() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/sent"  # nothing listens there
    options = DeliveryOptions(delivery_ms=100, failure_rate=0.0)
    with SandboxServer(delivery=options, webhooks=WebhookTarget(url, KEY)) as sandbox:
        send(sandbox.url, numbers(3), channel=["sms"])
    assert sandbox.webhook_counts() == (12, 0, 12)
    assert RETRIES >= 1


def test_posts_to_a_receiver_that_never_answers_are_cut_short_and_counted() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the kernel's backlog; nothing ever reads or answers them
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/webhooks/sent"
        options = DeliveryOptions(delivery_ms=0, failure_rate=0.0)
        with SandboxServer(delivery=options, webhooks=WebhookTarget(url, KEY)) as sandbox:
            send(sandbox.url, ["+14155550123"], channel=["sms"])
    # every post was still waiting for an answer when the sandbox's stop gave up on it
    assert sandbox.webhook_counts() == (4, 0, 4)


# --- campaigns: the whole loop with the real receiver -------------------------------------------------------------


def loop_spec(folder: Path, webhook_url: str, *, seed: int = 21, rows: int = 12) -> Path:
    phones = numbers(rows)
    write_csv(
        folder / "customers.csv",
        [{"phone": phone, "first_name": f"Name{i}", "order_id": f"{i:06d}"} for i, phone in enumerate(phones)],
    )
    data = {
        "version": 1,
        "name": "loop-campaign",
        "input": {"path": "customers.csv"},
        "message": {
            "to": {"column": "phone"},
            "template_id": {"value": SHIPPED},
            "variables": {
                "name": {"column": "first_name"},
                "order_id": {"column": "order_id"},
                "carrier": {"value": "UPS"},
            },
            "channel": {"value": "whatsapp"},
        },
        "api": {
            "version": "v3",
            "base_url": "sandbox",
            "sandbox": {
                "seed": seed,
                "delivery_ms": 300,
                "delivery_failure_rate": 0.25,
                "webhooks": {"url": webhook_url, "secret": "${SENT_DM_WEBHOOK_SECRET}"},
            },
        },
        "send": {"concurrency": 4},
        "output": {"results": "out/results.csv"},
    }
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec


class ReceiverProcess:
    """`python -m pipeline webhooks` on a free port of 127.0.0.1; its output is collected by a thread."""

    def __init__(self, store: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "webhooks", "--listen", "127.0.0.1:0", "--store", str(store)],
            cwd=REPO,
            env={**os.environ, SECRET_ENV: SECRET},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()  # blocks until the receiver listens (or dies)
        assert first.startswith("Receiving webhooks on http://127.0.0.1:"), first
        self.url = first.split()[3]
        self.output = [first]
        self._reader = threading.Thread(target=lambda: self.output.extend(self.process.stdout or ()), daemon=True)
        self._reader.start()

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(30)
        self._reader.join(30)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return "".join(self.output)


def run_campaign_process(spec: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(spec)],
        cwd=REPO,
        env={**os.environ, SECRET_ENV: SECRET},
        capture_output=True,
        text=True,
        timeout=300,  # a deadline against a hang, not a measure of speed
    )


def sent_message_ids(spec: Path) -> list[str]:
    table = pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)
    assert table["result_status"].to_list() == ["sent"] * table.height
    return [str(m) for m in table["result_message_id"].to_list()]


@pytest.mark.slow
def test_the_receiver_holds_each_message_s_final_status_and_a_new_sandbox_agrees(tmp_path: Path) -> None:
    receiver = ReceiverProcess(tmp_path / "events.sqlite")
    try:
        spec = loop_spec(tmp_path, receiver.url)
        ran = run_campaign_process(spec)
    finally:
        receiver_output = receiver.stop()
    assert ran.returncode == errors.EXIT_OK, ran.stderr
    ids = sent_message_ids(spec)
    assert len(ids) == 12
    # the run waited for the last status changes before it ended: the receiver has every message's final status
    received = statuses(tmp_path / "events.sqlite")
    assert set(received) == set(ids)
    assert {received[i].status for i in ids} <= {"DELIVERED", "READ", "FAILED"}
    assert "status event(s) delivered" in ran.stdout + ran.stderr
    assert "0 could not be delivered" in ran.stdout + ran.stderr

    # `track --poll` runs later, in a new process with a new sandbox for the same spec: it finds the same fates
    campaign, _ = load_spec(spec, environ={**os.environ, SECRET_ENV: SECRET})
    assert sandbox_messages_path(campaign).exists()
    with api_endpoint(campaign) as base_url:
        looked_up = {i: look_up(base_url, i).json()["data"] for i in ids}
    assert {i: data["status"] for i, data in looked_up.items()} == {i: received[i].status for i in ids}
    failed = [data for data in looked_up.values() if data["status"] == "FAILED"]
    assert failed, "seed 21 with a 25% failure rate fails some of the 12"
    assert all(data["events"][-1]["description"] in REASONS for data in failed)

    # the secret shows nowhere: not in the run's output, the receiver's, the results or the registry
    for secret_part in (SECRET, base64.b64encode(KEY).decode(), KEY.decode()):
        assert secret_part not in ran.stdout + ran.stderr + receiver_output
        assert secret_part.encode() not in (spec.parent / "out" / "results.csv").read_bytes()
        assert secret_part.encode() not in sandbox_messages_path(campaign).read_bytes()


@pytest.mark.slow
def test_a_rehearsal_with_the_same_seed_repeats_every_fate(tmp_path: Path) -> None:
    finals = []
    for attempt in ("first", "second"):
        folder = tmp_path / attempt
        folder.mkdir()
        receiver = ReceiverProcess(folder / "events.sqlite")
        try:
            ran = run_campaign_process(loop_spec(folder, receiver.url))
        finally:
            receiver.stop()
        assert ran.returncode == errors.EXIT_OK, ran.stderr
        finals.append({i: m.status for i, m in statuses(folder / "events.sqlite").items()})
    assert finals[0] == finals[1]
    assert len(finals[0]) == 12


@pytest.mark.slow
def test_a_receiver_that_is_down_does_not_fail_the_run(tmp_path: Path) -> None:
    spec = loop_spec(tmp_path, f"http://127.0.0.1:{free_port()}/webhooks/sent")
    ran = run_campaign_process(spec)
    assert ran.returncode == errors.EXIT_OK, ran.stderr
    assert len(sent_message_ids(spec)) == 12
    output = ran.stdout + ran.stderr
    # every status change of every message (at least QUEUED and the last) was given up on, and said so once
    lines = [line for line in output.splitlines() if "could not be delivered" in line]
    assert len(lines) == 1
    undelivered = int(lines[0].split("; ")[1].split()[0])
    assert undelivered >= 24
    assert "0 of" in lines[0]
    assert SECRET not in output


# --- the spec -----------------------------------------------------------------------------------------------------


def spec_with_sandbox(folder: Path, sandbox: dict[str, Any]) -> Path:
    spec = loop_spec(folder, "http://127.0.0.1:9/webhooks/sent")
    data = yaml.safe_load(spec.read_text())
    data["api"]["sandbox"] = sandbox
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec


def test_the_delivery_keys_have_defaults_and_webhooks_are_off_without_a_url(tmp_path: Path) -> None:
    campaign, _ = load_spec(spec_with_sandbox(tmp_path, {}), environ={})
    box = campaign.api.sandbox
    assert box is not None
    defaults = DeliveryOptions()
    assert (box.delivery_ms, box.delivery_failure_rate, box.read_rate) == (
        defaults.delivery_ms,
        defaults.failure_rate,
        defaults.read_rate,
    )
    assert box.webhooks.url == ""
    assert box.webhooks.secret is None


@pytest.mark.parametrize(
    ("sandbox", "problem"),
    [
        ({"delivery_rate": 0.1}, "api.sandbox.delivery_rate: unknown key. Hint: did you mean `delivery_failure_rate`?"),
        (
            {"webhooks": {"url": "http://x/h", "secret": SECRET, "retries": 2}},
            "api.sandbox.webhooks.retries: unknown key",
        ),
        ({"delivery_failure_rate": 2}, "api.sandbox.delivery_failure_rate: Input should be less than or equal to 1"),
        ({"read_rate": -0.5}, "api.sandbox.read_rate: Input should be greater than or equal to 0"),
        ({"webhooks": {"url": "http://127.0.0.1:8080/webhooks/sent"}}, "url is set but secret is empty"),
        ({"webhooks": {"url": "ftp://host/hooks", "secret": SECRET}}, "must be an absolute http(s) URL"),
        ({"webhooks": {"url": "http://h/w", "secret": "sk_not_a_webhook_secret"}}, "must be a signing secret starting"),
        ({"webhooks": {"url": "http://h/w", "secret": "whsec_!!not-base64!!"}}, "is not valid base64"),
    ],
)
def test_bad_delivery_keys_are_named_with_a_fix(tmp_path: Path, sandbox: dict[str, Any], problem: str) -> None:
    with pytest.raises(errors.SpecError) as caught:
        load_spec(spec_with_sandbox(tmp_path, sandbox), environ={})
    message = str(caught.value)
    assert problem in message
    for secret_part in ("sk_not_a_webhook_secret", "!!not-base64!!", SECRET):
        assert secret_part not in message


# --- python -m pipeline sandbox -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_sandbox_command_keeps_messages_and_posts_webhooks(tmp_path: Path, recording: RecordingReceiver) -> None:
    command = [sys.executable, "-m", "pipeline", "sandbox", "--seed", "5", "--delivery-ms", "50"]
    command += ["--messages", str(tmp_path / "messages.sqlite"), "--webhook-url", recording.url]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, SECRET_ENV: SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = first.split()[3]
        ids = message_ids(send(url, ["+14155550123"], channel=["sms"]))
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "Webhooks: 4 of 4 delivered to 127.0.0.1:" in output
    assert SECRET not in first + output
    assert len(recording.deliveries) == 4
    with SandboxServer(
        messages_path=tmp_path / "messages.sqlite", delivery=DeliveryOptions(delivery_ms=50, seed=5)
    ) as later:
        assert look_up(later.url, ids[0]).json()["data"]["status"] in {"DELIVERED", "FAILED"}


def test_the_sandbox_command_needs_the_secret_for_webhooks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert main(["sandbox", "--webhook-url", "http://127.0.0.1:9/webhooks/sent"]) == errors.EXIT_USAGE
    assert SECRET_ENV in capsys.readouterr().err


@pytest.mark.slow
def test_the_loop_sample_runs_from_a_fresh_copy_into_the_receiver(tmp_path: Path) -> None:
    for name in ("configs", "sample_data"):
        shutil.copytree(REPO / name, tmp_path / name)
    receiver = ReceiverProcess(tmp_path / "events.sqlite")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SENT_DM_", "SENTDM_"))}
        env.update({SECRET_ENV: SECRET, "SENT_DM_WEBHOOK_URL": receiver.url})
        ran = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "configs/campaign-v3-loop.yaml"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        receiver.stop()
    assert ran.returncode == errors.EXIT_ROWS_NOT_SENT, ran.stderr  # the sample's invalid numbers, on purpose
    assert "could not be delivered" in ran.stdout + ran.stderr
    table = pl.read_csv(tmp_path / "out" / "order-shipped-v3-loop-results.csv", infer_schema=False)
    sent = table.filter(pl.col("result_status") == "sent")["result_message_id"].to_list()
    received = statuses(tmp_path / "events.sqlite")
    assert set(received) == set(sent)
    # seed 7 shows every ending in the sample
    assert {message.status for message in received.values()} == {"DELIVERED", "READ", "FAILED"}

    # the README's next steps: `track --events` gives each sent row its status; webhooks carry no failure reason, so
    # `track --poll` asks the sandbox (a new one, in a new process) once for each failure's reason
    delivery = ["result_delivery_status", "result_delivery_error", "result_delivery_at", "result_delivery_channel"]
    results = tmp_path / "out" / "order-shipped-v3-loop-results.csv"
    polled_only = tmp_path / "polled-only"
    shutil.copytree(tmp_path, polled_only, ignore=shutil.ignore_patterns("events.sqlite", "polled-only"))

    def pipeline_cli(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    tracked = pipeline_cli("track", "configs/campaign-v3-loop.yaml", "--events", str(tmp_path / "events.sqlite"))
    assert tracked.returncode == errors.EXIT_OK, tracked.stderr
    from_events = pl.read_csv(results, infer_schema=False).filter(pl.col("result_status") == "sent")
    by_id = dict(zip(from_events["result_message_id"], from_events["result_delivery_status"], strict=True))
    assert by_id == {message_id: received[message_id].status for message_id in sent}
    failed = from_events.filter(pl.col("result_delivery_status") == "FAILED")
    assert failed.height
    assert failed["result_delivery_error"].null_count() == failed.height

    polled = pipeline_cli(
        "track", "configs/campaign-v3-loop.yaml", "--events", str(tmp_path / "events.sqlite"), "--poll"
    )
    assert polled.returncode == errors.EXIT_OK, polled.stderr
    completed = pl.read_csv(results, infer_schema=False)
    # the lookups added reasons and moved no status
    assert completed.filter(pl.col("result_status") == "sent")["result_delivery_status"].equals(
        from_events["result_delivery_status"]
    )
    reasons = completed.filter(pl.col("result_delivery_status") == "FAILED")["result_delivery_error"].to_list()
    assert len(reasons) == failed.height
    assert set(reasons) <= REASONS

    # polling alone, from a copy of the campaign made before any tracking, learns exactly the same
    only = pipeline_cli("track", "configs/campaign-v3-loop.yaml", "--poll", cwd=polled_only)
    assert only.returncode == errors.EXIT_OK, only.stderr
    by_polling = pl.read_csv(polled_only / "out" / "order-shipped-v3-loop-results.csv", infer_schema=False)
    assert by_polling.select(delivery).equals(completed.select(delivery))

    report = pipeline_cli("report", "configs/campaign-v3-loop.yaml", "--html", "out/report.html")
    assert report.returncode == errors.EXIT_OK, report.stderr
    assert "FAILED" in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_sharded_campaign_is_tracked_shard_by_shard_and_merged_with_its_delivery_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    monkeypatch.setenv(SECRET_ENV, SECRET)
    spec = loop_spec(tmp_path, "", rows=10)  # webhooks off: the statuses come from the lookups alone
    data = yaml.safe_load(spec.read_text(encoding="utf-8"))
    data["api"]["sandbox"]["delivery_ms"] = 50
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    for shard in ("0/2", "1/2"):
        assert main(["run", str(spec), "--shard", shard, "--quiet"]) == errors.EXIT_OK
    capsys.readouterr()

    # the whole campaign cannot be tracked at once: each shard has its own state and results
    assert main(["track", str(spec), "--poll"]) == errors.EXIT_USAGE
    assert "track each shard with --shard I/2" in capsys.readouterr().err

    for shard in ("0/2", "1/2"):
        tracked = main(["track", str(spec), "--shard", shard, "--poll", "--until-final", "--poll-every", "0.1"])
        assert tracked == errors.EXIT_OK, capsys.readouterr().err
    assert main(["merge", str(spec)]) == errors.EXIT_OK
    merged = pl.read_csv(tmp_path / "out" / "results.csv", infer_schema=False)
    assert merged["result_row"].to_list() == [str(n) for n in range(1, 11)]
    assert set(merged["result_delivery_status"]) <= {"DELIVERED", "READ", "FAILED"}
    assert merged["result_delivery_channel"].to_list() == ["whatsapp"] * 10
    # each row's status is what the sandbox says of its message
    campaign, _ = load_spec(spec)
    with api_endpoint(campaign) as base_url:
        for message_id, status in merged.select("result_message_id", "result_delivery_status").iter_rows():
            assert look_up(base_url, message_id).json()["data"]["status"] == status
