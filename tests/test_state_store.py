"""The state stores' shared contract, run against both: SQLite and a real PostgreSQL server (`new_state` yields
each). Then what only PostgreSQL has: several campaigns in one database, migrations, and URLs that hold passwords.
End-to-end runs with the state in PostgreSQL are in tests/test_resume.py."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import psycopg
import pytest

from pipeline.errors import CampaignBusy, OutputError
from pipeline.state import (
    GroupCommitter,
    InFlightRequest,
    StateStore,
    open_state,
    shard_counts,
    state_exists,
)
from pipeline.state_location import PostgresState, StateLocation, mask_url
from pipeline.state_pg import SCHEMA_VERSION
from tests.postgres_server import wait_until_session_gone

NewState = Callable[[], StateLocation]
ROOT = Path(__file__).resolve().parent.parent
SENT = ("sent", "sent", 202, "msg-1", None, 1, "2026-12-03T10:00:00Z", 12.5)


def statuses(store: StateStore, keys: list[str]) -> dict[str, str]:
    return dict(store.lookup(keys).select("idempotency_key", "result_status").iter_rows())


def test_in_flight_marks_and_outcomes_are_read_back_typed(new_state: NewState) -> None:
    with open_state(new_state(), "c") as store:
        store.commit(["a", "b"], [])
        store.commit(["c"], [("a", *SENT)])
        store.commit([], [("a", "sent", "sent", 202, "msg-2", None, 2, "later", 1.0)])  # attempts add up
        found = store.lookup(["a", "b", "c", "never"]).sort("idempotency_key")
    assert found["idempotency_key"].to_list() == ["a", "b", "c"]
    assert found["result_status"].to_list() == ["sent", "in_flight", "in_flight"]
    assert found.row(0) == ("a", "sent", "sent", 202, "msg-2", None, 3, "later", 1.0, 0)  # 0: never resent for delivery


def test_a_reopened_state_resumes_with_what_was_committed(new_state: NewState) -> None:
    location = new_state()
    with open_state(location, "c") as store:
        store.commit(["a", "b"], [("a", *SENT)])
    assert state_exists(location, "c")
    with open_state(location, "c") as store:
        assert store.recover_in_flight(resend=False) == 1
        found = store.lookup(["a", "b"]).sort("idempotency_key")
    assert found["result_status"].to_list() == ["sent", "unknown"]
    assert "in flight" in found["result_error"][1]


def test_in_flight_rows_become_pending_to_resend(new_state: NewState) -> None:
    with open_state(new_state(), "c") as store:
        store.commit(["a"], [])
        assert store.recover_in_flight(resend=True) == 1
        assert statuses(store, ["a"]) == {"a": "pending"}
        store.commit(["a"], [("a", *SENT)])
        assert store.recover_in_flight(resend=True) == 0
        assert statuses(store, ["a"]) == {"a": "sent"}


def test_a_broadcast_left_in_flight_is_resent_as_it_was(new_state: NewState) -> None:
    request = InFlightRequest("req-1", '{"to": ["+1", "+2"]}', [("a", "+1"), ("b", "+2")])
    with open_state(new_state(), "c") as store:
        store.commit([], [], [request])
        store.commit([], [], [request])  # marked again (a resend): still one request
        assert store.recover_in_flight(resend=True) == 2
        pending = store.pending_requests()
        assert [(p.request_key, p.body, p.members) for p in pending] == [
            ("req-1", request.body, [("a", "+1"), ("b", "+2")])
        ]
        store.commit([], [("a", *SENT), ("b", *SENT)])
        store.recover_in_flight(resend=True)  # no member waits: the body goes
        assert store.pending_requests() == []


def test_a_broadcast_not_to_be_resent_is_forgotten(new_state: NewState) -> None:
    with open_state(new_state(), "c") as store:
        store.commit([], [], [InFlightRequest("req-1", "{}", [("a", "+1")])])
        assert store.recover_in_flight(resend=False) == 1
        assert store.pending_requests() == []
        assert statuses(store, ["a"]) == {"a": "unknown"}


def test_a_second_process_is_refused_while_the_first_holds_the_lock(new_state: NewState) -> None:
    location = new_state()
    with open_state(location, "c"):
        with pytest.raises(CampaignBusy, match=r"campaign 'c' is already running \(pid \d+"):
            open_state(location, "c").open()
        # reading beside a live run takes no lock
        with open_state(location, "c", read_only=True) as reader:
            assert reader.lookup(["a"]).height == 0
    with open_state(location, "c"):
        pass


def test_a_killed_holder_does_not_block_the_next_run(new_state: NewState) -> None:
    location = new_state()
    argument = location.url if isinstance(location, PostgresState) else str(location)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipeline.state import open_state\n"
        "from pipeline.state_location import PostgresState, is_postgres_url\n"
        "where = PostgresState(sys.argv[1]) if is_postgres_url(sys.argv[1]) else Path(sys.argv[1])\n"
        "with open_state(where, 'c') as store:\n"
        "    store.commit(['a'], [])\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, argument], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(CampaignBusy, match=f"pid {holder.pid}"):
            open_state(location, "c").open()
        holder.send_signal(signal.SIGKILL)
    finally:
        holder.communicate(timeout=30)
    if isinstance(location, PostgresState):
        wait_until_session_gone(location.url, holder.pid)
    with open_state(location, "c") as store:
        assert store.recover_in_flight(resend=False) == 1  # and what it committed is there


def test_group_commits_from_many_workers_mark_before_send_and_record_after(new_state: NewState) -> None:
    location = new_state()

    async def main(store: StateStore) -> None:
        committer = GroupCommitter(store)
        seen: list[str] = []

        async def worker(key: str) -> None:
            await committer.before_send(key)
            seen.append(statuses(store, [key])[key])  # committed before the "request"
            committer.record((key, *SENT))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(committer.run)
            async with anyio.create_task_group() as workers:
                for i in range(50):
                    workers.start_soon(worker, f"k{i}")
            committer.flush()
            tasks.cancel_scope.cancel()
        assert seen == ["in_flight"] * 50
        assert committer.error is None

    with open_state(location, "c") as store:
        anyio.run(main, store)
        assert set(statuses(store, [f"k{i}" for i in range(50)]).values()) == {"sent"}


def test_an_earlier_shard_layout_is_found(new_state: NewState) -> None:
    from pipeline.shard import Shard
    from pipeline.state_location import shard_location

    location = new_state()
    assert shard_counts(location, "c") == set()
    for index in (0, 1):
        with open_state(shard_location(location, Shard(index, 2)), "c"):
            pass
    assert shard_counts(location, "c") == {2}
    assert not state_exists(location, "c")
    assert state_exists(shard_location(location, Shard(1, 2)), "c")


# --- PostgreSQL only ------------------------------------------------------------------------------------------------


def test_campaigns_and_shards_share_one_database_apart(new_database: Callable[[], str]) -> None:
    database = PostgresState(new_database())
    shard = database.for_shard("shard-0-of-2")
    with open_state(database, "a") as a, open_state(database, "b") as b, open_state(shard, "a") as a0:
        a.commit(["k"], [("k", *SENT)])
        b.commit(["k"], [])
        a0.commit(["k"], [])
        assert b.recover_in_flight(resend=False) == 1
        assert statuses(a, ["k"]) == {"k": "sent"}
        assert statuses(b, ["k"]) == {"k": "unknown"}
        assert statuses(a0, ["k"]) == {"k": "in_flight"}
    assert shard_counts(database, "a") == {1, 2}
    assert shard_counts(database, "b") == {1}


def test_tables_are_made_once_and_a_newer_schema_is_refused(new_database: Callable[[], str]) -> None:
    database = PostgresState(new_database())
    assert not state_exists(database, "c")
    with open_state(database, "c", read_only=True) as reader:  # reading an empty database makes nothing
        assert reader.lookup(["a"]).height == 0
    for _ in range(2):
        with open_state(database, "c"):
            pass
    with psycopg.connect(database.url, autocommit=True) as db:
        rows = db.execute("SELECT version FROM sentdm.schema_version").fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        db.execute("INSERT INTO sentdm.schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(OutputError, match=r"the state tables are at version \d+, newer than this version"):
        open_state(database, "c").open()


def test_a_password_in_the_url_is_never_shown(postgres_server: str) -> None:
    url = postgres_server.replace("sentdm@", "sentdm:s3cret-pw@")
    location = PostgresState(url)
    assert location.has_password
    assert "s3cret-pw" not in f"{location} {location!r} {mask_url(url)}"
    assert str(location).startswith("postgresql://sentdm:***@127.0.0.1:")
    unreachable = PostgresState("postgresql://sentdm:s3cret-pw@127.0.0.1:1/none")
    with pytest.raises(OutputError) as raised:
        open_state(unreachable, "c").open()
    assert "s3cret-pw" not in str(raised.value)
    assert str(raised.value).startswith("postgresql://sentdm:***@127.0.0.1:1/none: cannot open the campaign state")


def test_the_session_advisory_lock_is_the_campaigns_own(new_database: Callable[[], str]) -> None:
    """Another tool's advisory locks, or another campaign's, never collide with this one's."""
    database = PostgresState(new_database())
    with open_state(database, "a"), open_state(database, "b"), psycopg.connect(database.url) as db:
        row = db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchone()
        assert row == (2,)
