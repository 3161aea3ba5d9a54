"""v3 broadcasts (send.batch_recipients): rows with the same message share one request, every row still gets its own
outcome and message id, and a run killed with broadcasts in flight resends exactly those requests, under the same
keys, so that no number is texted twice. Against the sandbox as a real server on 127.0.0.1."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from pipeline.sandbox import SandboxServer
from tests.conftest import write_csv

Cli = Callable[..., tuple[int, str, str]]
ROOT = Path(__file__).resolve().parent.parent


def number(i: int) -> str:
    return f"+1 415 555 {i:04d}"  # valid US numbers, written as people write them


def e164(i: int) -> str:
    return f"+1415555{i:04d}"


def write_campaign(
    folder: Path,
    url: str,
    rows: int,
    *,
    batch: int,
    personal: bool = False,
    concurrency: int = 4,
    state: str | None = None,
) -> Path:
    people = [{"phone": number(i), "first_name": f"Name{i}", "order_id": f"{i:06d}"} for i in range(rows)]
    write_csv(folder / "customers.csv", people)
    variables = (
        "    name: {column: first_name}\n    order_id: {column: order_id}\n"
        if personal
        else "    name: {value: friend}\n    order_id: {value: SALE}\n"
    )
    spec = folder / "campaign.yaml"
    spec.write_text(
        "version: 1\n"
        "name: broadcast-test\n"
        "input: {path: customers.csv}\n"
        "message:\n"
        "  to: {column: phone}\n"
        "  template_name: {value: order_shipped}\n"
        "  variables:\n"
        f"{variables}"
        "    carrier: {value: UPS}\n"
        "api:\n"
        "  version: v3\n"
        f"  base_url: {url}\n"
        "  api_key: sk-test-broadcast\n"
        "  timeout_s: 10\n"
        f"send: {{batch_recipients: {batch}, concurrency: {concurrency}, backoff_s: 0}}\n"
        "output: {results: out/results.csv" + (f", state: '{state}'" if state else "") + "}\n",
        encoding="utf-8",
    )
    return spec


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(record_bodies=True) as server:
        yield server


def results(spec: Path) -> pl.DataFrame:
    return pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)


def test_one_broadcast_of_5000_rows_goes_out_as_5_requests_of_1000(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec = write_campaign(tmp_path, sandbox.url, 5000, batch=1000)
    code, _out, err = cli("run", str(spec))
    assert code == 0, err
    bodies = sandbox.accepted_bodies
    assert sorted(len(body["to"]) for body in bodies) == [1000] * 5
    table = results(spec)
    assert table["result_status"].unique().to_list() == ["sent"]
    assert table["result_to"].to_list() == [e164(i) for i in range(5000)]
    # every number texted once, and every row has its own message id, found by number in the shuffled answer
    assert sandbox.accepted_by_number == {e164(i): 1 for i in range(5000)}
    assert table["result_message_id"].n_unique() == 5000
    assert all(len(set(body["to"])) == 1000 for body in bodies)
    assert len(sandbox.accepted_by_key) == 5  # one key per request


def test_message_ids_follow_their_numbers_whatever_the_order_of_recipients(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec = write_campaign(tmp_path, sandbox.url, 50, batch=50)
    code, _out, err = cli("run", str(spec))
    assert code == 0, err
    # the sandbox renders each recipient's message; ids are unique, so match them back through the state's answer:
    # a row's id must be one the server gave to that row's number
    table = results(spec)
    assert table["result_message_id"].n_unique() == 50
    assert len(sandbox.accepted_bodies) == 1
    assert sandbox.accepted_bodies[0]["to"] == [e164(i) for i in range(50)]


def test_personal_rows_are_not_held_back_and_same_message_rows_still_share(
    cli: Cli, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec = write_campaign(tmp_path, sandbox.url, 30, batch=100, personal=True)
    code, _out, err = cli("run", str(spec))
    assert code == 0, err
    # every row has its own variables: one request each, under the row's own key, none waiting for a batch
    assert [len(body["to"]) for body in sandbox.accepted_bodies] == [1] * 30
    table = results(spec)
    assert table["result_status"].unique().to_list() == ["sent"]


def test_a_broadcast_that_fails_fails_for_each_of_its_rows(cli: Cli, tmp_path: Path) -> None:
    # the sandbox refuses a template that is not approved: the template check stops the run first (exit 2), so
    # make the server refuse each send instead - with a wrong key it answers 401 and the run stops
    with SandboxServer(api_key="the-right-key") as server:
        spec = write_campaign(tmp_path, server.url, 20, batch=10)
        code, _out, err = cli("run", str(spec))
    assert code == 3
    assert "authentication failed" in err or "HTTP 401" in err


def state_rows(spec: Path, state: str | None = None) -> list[tuple[Any, ...]]:
    if state is not None:
        with psycopg.connect(state) as pg:
            return pg.execute("SELECT status, request_key, recipient FROM sentdm.messages").fetchall()
    db = sqlite3.connect(spec.parent / "out" / "broadcast-test.state.sqlite")
    try:
        return db.execute("SELECT status, request_key, recipient FROM messages").fetchall()
    finally:
        db.close()


def in_flight_requests(spec: Path, state: str | None = None) -> set[str]:
    if state is not None:
        try:
            with psycopg.connect(state) as pg:
                rows = pg.execute(
                    "SELECT DISTINCT request_key FROM sentdm.messages "
                    "WHERE status = 'in_flight' AND request_key IS NOT NULL"
                ).fetchall()
        except psycopg.errors.UndefinedTable:
            return set()  # the run has not made its tables yet
        return {str(key) for (key,) in rows}
    path = spec.parent / "out" / "broadcast-test.state.sqlite"
    if not path.exists():
        return set()
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            found = db.execute(
                "SELECT DISTINCT request_key FROM messages WHERE status = 'in_flight' AND request_key IS NOT NULL"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return set()
    return {key for (key,) in found}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_kill_9_in_the_middle_of_a_broadcast_then_resume_texts_no_number_twice(
    cli: Cli, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    state = None if store == "sqlite" else request.getfixturevalue("new_database")()
    rows, batch = 3000, 100
    # each answer takes 0.6 s: a request takes effect when it arrives, so requests in flight at the kill were
    # accepted by the server, and their answers lost
    with SandboxServer(latency_ms=600) as server:
        spec = write_campaign(tmp_path, server.url, rows, batch=batch, concurrency=4, state=state)
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            # wait until a few broadcasts have been answered and others are in flight
            while time.monotonic() < deadline:
                if server.accepted_total >= 6 and in_flight_requests(spec, state):
                    break
                time.sleep(0.05)  # polling the server's counter and the state: nothing to wait on directly
            else:
                pytest.fail("the run never had broadcasts in flight")
            in_flight = in_flight_requests(spec, state)
            process.send_signal(signal.SIGKILL)
        finally:
            process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
        accepted_before = server.accepted_total
        assert in_flight, "nothing was in flight at the kill"

        code, out, err = cli("run", str(spec))
        assert code == 0, err

        # no number was texted twice: the resumed requests were the same requests under the same keys, and the
        # server answered them from its idempotency store
        counts = server.accepted_by_number
        assert set(counts) == {e164(i) for i in range(rows)}
        assert max(counts.values()) == 1
        # the requests killed in flight were resent under their own keys (not regrouped)
        by_key = server.accepted_by_key
        assert in_flight <= set(by_key)
        assert all(by_key[key] == 1 for key in in_flight)
        assert server.accepted_total >= accepted_before
    table = results(spec)
    assert table.height == rows
    assert table["result_status"].unique().to_list() == ["sent"]
    assert table["result_message_id"].null_count() == 0
    # the state keeps no request body once every member has an outcome and a run has started since
    assert all(status == "sent" for status, _, _ in state_rows(spec, state))
    assert "Resumed" in out or "in flight" in out
