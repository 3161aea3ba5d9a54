"""v3 under faults, against real servers on 127.0.0.1: the sandbox (which keeps Idempotency-Keys as Sent.dm does and
counts what it accepted per phone number) behind a fault proxy that loses answers, and real processes killed -9.

What is proved: an answer lost after the server accepted the message is resent with the same key and replayed, so
nobody is texted twice (v1, without keys, leaves such rows `unknown`); a resend that meets the first request still in
flight (409 CONFLICT_001) waits and gets the first answer; a killed run resumes with the same keys; and a row whose
first attempt is over 23 hours old is never resent, since the server keeps a key only 24 hours.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml

from pipeline.campaign import prepare_campaign
from pipeline.sandbox import SandboxServer
from pipeline.send import KEY_RESEND_WINDOW_S
from pipeline.spec import load_spec
from pipeline.state import StateStore, open_state
from pipeline.state_location import StateLocation
from tests.conftest import API_KEY, FakeClock, api_section, contact_rows, write_csv
from tests.fault_proxy import Fate, FaultProxy, drop_after_answer
from tests.fault_server import Request

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]
ROOT = Path(__file__).resolve().parent.parent
CAMPAIGN = "v3-faults"
HOUR_S = 3600.0

pytestmark = pytest.mark.usefixtures("credentials")


def number(n: int) -> str:
    return f"+1202555{n:04d}"


def write_v3_campaign(folder: Path, url: str, rows: int, **send: object) -> Path:
    """A v3 campaign of `rows` people, one number each, sending the sandbox's `order_shipped` template."""
    people = [{"phone": number(i), "first_name": f"Name{i}", "order_id": f"{i:06d}"} for i in range(rows)]
    write_csv(folder / "contacts.csv", people)
    spec = {
        "version": 1,
        "name": CAMPAIGN,
        "input": {"path": "contacts.csv"},
        "message": {
            "to": {"column": "phone"},
            "template_name": {"value": "order_shipped"},
            "variables": {
                "name": {"column": "first_name"},
                "order_id": {"column": "order_id"},
                "carrier": {"value": "UPS"},
            },
        },
        "api": {"base_url": url, "version": "v3", "api_key": "${SENT_DM_API_KEY}", "timeout_s": 5},
        "send": {"concurrency": 8, "backoff_s": 0, **send},
        "output": {"results": "out/results.csv"},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def results(spec: Path) -> pl.DataFrame:
    return pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)


def keys_by_row(spec: Path) -> dict[int, str]:
    """Each row's Idempotency-Key, as the sender derives it."""
    payloads = prepare_campaign(load_spec(spec)[0]).payloads
    return dict(zip(payloads["result_row"].to_list(), payloads["idempotency_key"].to_list(), strict=True))


def state_file(spec: Path) -> Path:
    return spec.parent / "out" / f"{CAMPAIGN}.state.sqlite"


def keys_with_status(spec: Path, status: str) -> set[str]:
    with sqlite3.connect(state_file(spec)) as db:
        return {key for (key,) in db.execute("SELECT idempotency_key FROM messages WHERE status = ?", (status,))}


# --- 1 and 5: answers lost after the server accepted ----------------------------------------------------------------


def test_v3_answers_dropped_after_acceptance_are_replayed_and_nobody_is_texted_twice(cli: Cli, tmp_path: Path) -> None:
    rows = 300
    with SandboxServer(api_key=API_KEY) as sandbox, FaultProxy(sandbox, drop_after_answer(0.1, seed=7)) as proxy:
        spec = write_v3_campaign(tmp_path, proxy.url, rows)
        code, _, err = cli("run", spec)
        accepted = sandbox.accepted_by_number
        accepted_total = sandbox.accepted_total

    assert code == 0, err
    table = results(spec)
    assert table["result_status"].to_list() == ["sent"] * rows
    # every person got exactly one message, though about one answer in ten never reached the sender
    assert accepted == {number(i): 1 for i in range(rows)}
    assert accepted_total == rows
    dropped = {e.key for e in proxy.dropped()}
    assert 15 <= len(dropped) <= 60
    attempts = dict(zip(table["result_row"].cast(int), table["result_attempts"].cast(int), strict=True))
    for row, key in keys_by_row(spec).items():
        sends = proxy.sends_for(key)
        # the server answered every attempt: the first one accepted, each resend (same key) was a replay of it
        assert [e.status for e in sends] == [202] * len(sends)
        assert [e.replayed for e in sends] == [False] + [True] * (len(sends) - 1)
        assert sends[-1].fate is Fate.PASS
        assert (len(sends) > 1) == (key in dropped)
        assert attempts[row] == len(sends)


def test_v1_answers_dropped_after_acceptance_end_unknown_and_are_not_resent(
    cli: Cli, make_campaign: MakeCampaign
) -> None:
    """The same faults on v1, which has no idempotency: a resend could text twice, so such rows stay `unknown`."""
    rows = 300
    with SandboxServer() as sandbox, FaultProxy(sandbox, drop_after_answer(0.1, seed=7)) as proxy:
        spec = make_campaign(
            contact_rows(rows), api=api_section(proxy.url, timeout_s=5), send={"concurrency": 8, "backoff_s": 0}
        )
        code, _, err = cli("run", spec)
        accepted_by_key = sandbox.accepted_by_key

    assert code == 1, err
    dropped = {e.key for e in proxy.dropped()}
    assert 15 <= len(dropped) <= 60
    keys = keys_by_row(spec)
    # one request per row, dropped or not: nothing was sent again
    assert sorted(e.key or "" for e in proxy.recorded()) == sorted(keys.values())
    assert accepted_by_key == dict.fromkeys(keys.values(), 1)  # the server did act on the dropped ones
    table = results(spec)
    expected = ["unknown" if keys[row] in dropped else "sent" for row in range(1, rows + 1)]
    assert table["result_status"].to_list() == expected
    unknown = table.filter(pl.col("result_status") == "unknown")
    assert all(error.startswith("connection reset while waiting for the response") for error in unknown["result_error"])


# --- 2: a resend while the first request is still in flight ---------------------------------------------------------


class InFlightOnce:
    """The client loses the first send of each key while the sandbox is still processing it; later sends pass.

    The sandbox's clock stands still until a key's third send: the second one is sure to find the first still in
    flight, and by the third the first has finished."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sends: dict[str, int] = {}

    def __call__(self, request: Request) -> Fate:
        if request.method != "POST":
            return Fate.PASS
        key = request.idempotency_key or ""
        self.sends[key] = self.sends.get(key, 0) + 1
        if self.sends[key] == 1:
            return Fate.RESET_IN_FLIGHT
        if self.sends[key] == 3:
            self.clock.now += 1
        return Fate.PASS


def test_a_resend_that_meets_its_key_in_flight_gets_409_then_the_first_answer(cli: Cli, tmp_path: Path) -> None:
    clock = FakeClock()
    # the sandbox acts on a request at once; its key stays in flight for latency_ms on the sandbox's clock
    with (
        SandboxServer(api_key=API_KEY, latency_ms=20, clock=clock) as sandbox,
        FaultProxy(sandbox, InFlightOnce(clock)) as proxy,
    ):
        # one request at a time: the proxy resets a connection once the sandbox has counted every request so far
        spec = write_v3_campaign(tmp_path, proxy.url, 2, concurrency=1)
        code, _, err = cli("run", spec)
        accepted = sandbox.accepted_by_number

    assert code == 0, err
    table = results(spec)
    assert table["result_status"].to_list() == ["sent", "sent"]
    assert table["result_attempts"].to_list() == ["3", "3"]
    assert accepted == {number(0): 1, number(1): 1}
    for key in keys_by_row(spec).values():
        sends = [(e.fate, e.status, e.error_code, e.replayed) for e in proxy.sends_for(key)]
        assert sends == [
            (Fate.RESET_IN_FLIGHT, None, None, False),  # accepted; the answer was lost
            (Fate.PASS, 409, "CONFLICT_001", False),  # resent at once: the first is still being processed
            (Fate.PASS, 202, None, True),  # after Retry-After: the first request's answer
        ]


# --- 3 and 4: kill -9 mid-run, then run again -----------------------------------------------------------------------


def start_run(spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def state_counts(path: Path) -> dict[str, int]:
    """Rows per status in a live run's state, read without disturbing it; empty while it cannot be read yet."""
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.1) as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM messages GROUP BY status").fetchall())
    except sqlite3.Error:  # not created yet, or its schema not yet written
        return {}


def kill_mid_run(spec: Path, proxy: FaultProxy, *, sent_at_least: int) -> set[str]:
    """Start `run` in a real process, kill -9 it once it has sent some rows and has others in flight (as its state
    says); returns the keys it left in flight, once the proxy has taken in every request the process sent."""
    process = start_run(spec)
    try:
        deadline = time.monotonic() + 10
        while True:
            counts = state_counts(state_file(spec))
            if counts.get("in_flight", 0) >= 1 and counts.get("sent", 0) >= sent_at_least:
                break
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, f"the run never got there: {counts}"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while proxy.open_connections:
        assert time.monotonic() < deadline, "the proxy still holds the killed process's connections"
        time.sleep(0.005)
    in_flight = keys_with_status(spec, "in_flight")
    assert in_flight
    return in_flight


@pytest.fixture
def slow_sandbox() -> Iterator[tuple[SandboxServer, FaultProxy]]:
    """A sandbox that answers after 200 ms (so a killed run leaves requests in flight), watched through a proxy."""
    with SandboxServer(api_key=API_KEY, latency_ms=200) as sandbox, FaultProxy(sandbox) as proxy:
        yield sandbox, proxy


@pytest.mark.slow
def test_kill_9_mid_run_then_run_again_resends_in_flight_rows_with_their_keys_and_texts_nobody_twice(
    cli: Cli, tmp_path: Path, slow_sandbox: tuple[SandboxServer, FaultProxy]
) -> None:
    sandbox, proxy = slow_sandbox
    rows = 80
    spec = write_v3_campaign(tmp_path, proxy.url, rows)
    in_flight = kill_mid_run(spec, proxy, sent_at_least=16)
    sent_before = keys_with_status(spec, "sent")
    resumed_from = proxy.arrivals

    code, out, err = cli("run", spec)

    assert code == 0, err
    assert f"{len(in_flight)} row(s) were in flight when an earlier run stopped" in out
    assert results(spec)["result_status"].to_list() == ["sent"] * rows
    assert sandbox.accepted_by_number == {number(i): 1 for i in range(rows)}
    resumed = [e for e in proxy.recorded() if e.index >= resumed_from and e.method == "POST"]
    assert not {e.key for e in resumed} & sent_before  # rows the first run saw acknowledged were left alone
    assert in_flight <= {e.key for e in resumed}  # rows in flight were sent again...
    replayed = {e.key for e in resumed if e.replayed}
    assert replayed  # ... with their keys: the sandbox had them, and answered with the first answer
    assert replayed <= in_flight


@pytest.mark.slow
def test_a_row_first_sent_over_23_hours_ago_is_not_resent_and_ends_unknown(
    cli: Cli, tmp_path: Path, slow_sandbox: tuple[SandboxServer, FaultProxy]
) -> None:
    sandbox, proxy = slow_sandbox
    rows = 60
    spec = write_v3_campaign(tmp_path, proxy.url, rows)
    in_flight = kill_mid_run(spec, proxy, sent_at_least=8)
    # as if the killed run had been 23.5 hours ago: the server may forget those keys before a resend got there
    with sqlite3.connect(state_file(spec)) as db:
        db.execute(
            "UPDATE messages SET first_attempt_at = first_attempt_at - ? WHERE status = 'in_flight'", (23.5 * HOUR_S,)
        )
    resumed_from = proxy.arrivals

    code, out, err = cli("run", spec)

    assert code == 1, err
    assert f"{len(in_flight)} row(s) were in flight when an earlier run stopped" in out
    resumed = [e for e in proxy.recorded() if e.index >= resumed_from and e.method == "POST"]
    assert not {e.key for e in resumed} & in_flight  # not one request for them
    keys = keys_by_row(spec)
    table = results(spec)
    old = table.filter(pl.col("result_row").cast(int).replace_strict(keys, return_dtype=pl.String).is_in(in_flight))
    assert old.height == len(in_flight)
    assert set(old["result_status"]) == {"unknown"}
    assert all("keeps an Idempotency-Key 24 hours" in error for error in old["result_error"])
    sent = table.filter(pl.col("result_status") == "sent")
    assert sent.height == rows - len(in_flight)  # every other row was sent, each to one person once
    accepted = sandbox.accepted_by_number
    assert [accepted.get(to) for to in sent["result_to"]] == [1] * sent.height
    assert max(accepted.values()) == 1

    # and a later run leaves them alone too
    before = proxy.arrivals
    assert cli("run", spec)[0] == 1
    assert [e for e in proxy.recorded() if e.index >= before and e.method == "POST"] == []


def test_a_resumed_row_whose_first_request_is_still_being_processed_is_unknown_not_failed(
    cli: Cli, tmp_path: Path
) -> None:
    """A killed run's request may still be in the server's hands when the row is resent: the server answers 409
    until it is done. If the attempts run out first, the row may well have been delivered: `unknown`, never `failed`."""
    # a frozen clock: the first request with a key never finishes processing, so every resend meets 409 CONFLICT_001
    with SandboxServer(api_key=API_KEY, latency_ms=20, clock=FakeClock()) as sandbox:
        spec = write_v3_campaign(tmp_path, sandbox.url, 1, max_attempts=2)
        payloads = prepare_campaign(load_spec(spec)[0]).payloads
        key, body = payloads["idempotency_key"][0], payloads["payload"][0]
        # what a run killed with this request on the wire leaves: the server has it, the state says in flight
        with open_state(state_file(spec), CAMPAIGN) as store:
            store.commit([key], [])
        headers = {"x-api-key": API_KEY, "content-type": "application/json", "idempotency-key": key}
        assert httpx.post(f"{sandbox.url}/v3/messages", content=body, headers=headers).status_code == 202

        code, _, err = cli("run", spec)
        accepted = sandbox.accepted_by_number

    assert code == 1, err
    table = results(spec)
    assert table["result_status"].to_list() == ["unknown"]
    assert table["result_attempts"].to_list() == ["2"]  # a 409 is worth waiting for: it was retried
    assert table["result_error"][0].startswith("HTTP 409 CONFLICT_001")
    assert accepted == {number(0): 1}


KEY_STATUS_ERROR = ("idempotency_key", "result_status", "result_error")


def test_recover_in_flight_resends_only_rows_first_sent_within_the_window(
    new_state: Callable[[], StateLocation],
) -> None:
    clock = FakeClock()
    now = clock.now = 1_800_000_000.0

    def mark(store: StateStore, key: str, *, hours_ago: float) -> None:
        clock.now = now - hours_ago * HOUR_S
        store.commit([key], [])

    def statuses(store: StateStore) -> dict[str, tuple[str, str | None]]:
        found = store.lookup(["pending", "resent", "young", "old"])
        return {key: (status, error) for key, status, error in found.select(KEY_STATUS_ERROR).iter_rows()}

    def fill(store: StateStore) -> None:
        # first sent 30 hours ago, recovered and in flight again an hour ago: its key's age counts from the first
        mark(store, "resent", hours_ago=30)
        clock.now = now - 29 * HOUR_S
        store.recover_in_flight(resend=True, resend_window_s=None)
        mark(store, "resent", hours_ago=1)
        mark(store, "young", hours_ago=22.98)
        mark(store, "old", hours_ago=23.02)
        clock.now = now

    with open_state(new_state(), "c", clock=clock) as store:
        # first sent 23.5 hours ago, left `pending` by a recovery 23 hours ago whose run then died before sending
        # it: too old by now
        mark(store, "pending", hours_ago=23.5)
        clock.now = now - 23 * HOUR_S
        assert store.recover_in_flight(resend=True, resend_window_s=KEY_RESEND_WINDOW_S) == 1
        assert statuses(store)["pending"] == ("pending", None)
        fill(store)

        assert store.recover_in_flight(resend=True, resend_window_s=KEY_RESEND_WINDOW_S) == 3
        found = statuses(store)
        assert found["young"] == ("pending", None)
        for key in ("old", "resent", "pending"):
            status, error = found[key]
            assert status == "unknown", key
            assert error is not None
            assert error.startswith("first sent more than 23 hours ago and its answer was lost")
            assert "the server keeps an Idempotency-Key 24 hours" in error

    # v1 keeps no keys: no window, the age of a row changes nothing
    with open_state(new_state(), "c", clock=clock) as store:
        fill(store)
        assert store.recover_in_flight(resend=True, resend_window_s=None) == 3
        assert {key: status for key, (status, _) in statuses(store).items()} == dict.fromkeys(
            ("young", "old", "resent"), "pending"
        )
    with open_state(new_state(), "c", clock=clock) as store:
        fill(store)
        assert store.recover_in_flight(resend=False) == 3
        found = statuses(store)
        assert {status for status, _ in found.values()} == {"unknown"}
        assert all("in flight" in (error or "") for _, error in found.values())
