"""Guard rails for texting real people, end to end through the CLI against real servers on 127.0.0.1: test sends
(`run --test-to`), suppression lists, send caps and `plan` (as of an injected moment through `plan_campaign`).
Recipients' sending hours, which need an injected clock, are in test_quiet_hours.py."""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.campaign import RunOptions, run_campaign
from pipeline.campaign.plan import format_plan, plan_campaign
from pipeline.sandbox import SandboxServer
from pipeline.spec import load_spec
from tests.conftest import API_KEY, SENDER, api_section, contact_rows, guid, spec_data, write_csv
from tests.fault_server import FaultServer
from tests.test_v3 import NUMBER, Cli, ScriptedV3, column, people, results_of, sends, v3_data, write_spec

pytestmark = pytest.mark.usefixtures("credentials")

TEST_SEND = "out/results.test-send.csv"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, sender_id=SENDER, record_bodies=True) as server:
        yield server


# === run --test-to =================================================================================================


def test_a_test_send_texts_the_test_numbers_with_the_first_valid_rows(cli: Cli, tmp_path: Path) -> None:
    rows = people("12345", NUMBER, "+44 20 7946 0958", "+1 415 555 0124")  # row 1 is invalid: not taken
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url), rows)
        code, out, err = cli("run", spec, "--test-to", "(415) 555-0199, +447911123456")
    assert code == 0, err
    assert out.startswith("Test send of campaign v3-campaign: 2 row(s)\n")
    bodies = [r.json() for r in sends(server)]
    assert sorted(body["to"] for body in bodies) == [["+14155550199"], ["+447911123456"]]
    # the messages are rows 2 and 3's, in order, one per test number
    by_number = {body["to"][0]: body["template"]["parameters"]["name"] for body in bodies}
    assert by_number == {"+14155550199": "Name2", "+447911123456": "Name3"}
    keys = [r.idempotency_key or "" for r in sends(server)]
    assert all(re.fullmatch(r"test-[0-9a-f]{32}", key) for key in keys)
    table = results_of(spec, TEST_SEND)
    assert column(table, "result_row") == ["2", "3"]
    assert column(table, "result_to") == ["+14155550199", "+447911123456"]
    assert column(table, "result_status") == ["sent", "sent"]
    assert column(table, "phone") == [NUMBER, "+44 20 7946 0958"]  # the input row the message was made from
    # the campaign itself: no results file, no state
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.test-send.csv"]


def test_a_test_send_leaves_the_campaign_untouched(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    spec = write_spec(tmp_path, v3_data(sandbox.url), people(NUMBER, "+1 415 555 0124"))

    code, _, err = cli("run", spec, "--test-to", "+14155550199")
    assert code == 0, err
    assert sandbox.accepted_total == 1
    # a second test send (after a template change, say) texts again: its keys are its own
    code, _, err = cli("run", spec, "--test-to", "+14155550199")
    assert code == 0, err
    assert sandbox.accepted_total == 2

    code, out, err = cli("run", spec)
    assert code == 0, err
    assert sandbox.accepted_total == 4  # every campaign row, none of them seen as sent before
    assert "Resumed" not in out
    assert column(results_of(spec), "result_to") == [NUMBER, "+14155550124"]


def test_a_test_send_with_more_numbers_than_valid_rows_sends_what_there_is(cli: Cli, tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NUMBER))
        code, _, err = cli("run", spec, "--test-to", "+14155550199,+14155550198")
    assert code == 0, err
    assert [r.json()["to"] for r in sends(server)] == [["+14155550199"]]
    assert column(results_of(spec, TEST_SEND), "result_to") == ["+14155550199"]


@pytest.mark.parametrize(
    ("numbers", "message"),
    [
        ("12", "error: --test-to: '12' is not a usable phone number: not a valid phone number\n"),
        (" , ", "error: --test-to needs at least one phone number, e.g. --test-to +14155550123\n"),
    ],
)
def test_a_bad_test_number_stops_before_anything_is_sent(cli: Cli, tmp_path: Path, numbers: str, message: str) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NUMBER))
        code, out, err = cli("run", spec, "--test-to", numbers)
    assert (code, out, err) == (2, "", message)
    assert server.requests == []


def test_a_test_send_needs_v3_and_goes_alone(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, spec_data(), contact_rows(2))
    code, _, err = cli("run", spec, "--test-to", "+14155550199")
    assert code == 2
    assert "--test-to needs api.version v3" in err

    spec = write_spec(tmp_path, v3_data(), people(NUMBER))
    code, _, err = cli("run", spec, "--test-to", "+14155550199", "--dry-run")
    assert (code, err) == (
        2,
        "error: --test-to goes alone: not with --dry-run, --server-dry-run, --shard or the retry command\n",
    )


# === suppression lists =============================================================================================

OPT_OUTS = "lists/opt-outs.csv"
FIVE = ("+1 415 555 0121", "+1 415 555 0122", "+1 415 555 0123", "+1 415 555 0124", "+1 415 555 0125")


def write_list(folder: Path, name: str, rows: list[dict[str, str]]) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(path, rows)


def with_lists(data: dict[str, Any], *lists: object) -> dict[str, Any]:
    return {**data, "suppress": list(lists)}


def test_a_listed_number_written_another_way_is_suppressed_and_never_requested(cli: Cli, tmp_path: Path) -> None:
    write_list(tmp_path, OPT_OUTS, [{"phone": "(415) 555-0123", "reason": "STOP"}])
    rows = people("+1 415 555 0123", "+1 415 555 0124", "+44 20 7946 0958")
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, with_lists(v3_data(server.url), OPT_OUTS), rows)
        code, out, err = cli("run", spec)
    assert code == 0, err  # a suppressed row is no failure to send
    assert sorted(r.json()["to"][0] for r in sends(server)) == ["+14155550124", "+442079460958"]
    table = results_of(spec)
    assert column(table, "result_status") == ["suppressed", "sent", "sent"]
    assert column(table, "result_error") == ["on suppression list opt-outs.csv", None, None]
    assert column(table, "result_to") == [NUMBER, "+14155550124", "+442079460958"]
    assert column(table, "result_attempts") == ["0", "1", "1"]
    assert re.search(r"^  suppressed +1$", out, re.MULTILINE), out


def test_a_parquet_list_and_a_list_naming_its_column(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    # typed numbers, as a warehouse export holds them: read as the text the input's numbers would be
    pl.DataFrame({"msisdn": [14155550124]}).write_parquet(tmp_path / "lists/bounced.parquet")
    write_list(tmp_path, "lists/complaints.csv", [{"Mobile": "+44 (0)20 7946 0958"}])
    rows = people(NUMBER, "415-555-0124", "+44 20 7946 0958", "+1 415 555 0125")
    lists = [
        {"path": "lists/bounced.parquet", "column": "msisdn"},
        {"path": "lists/complaints.csv", "column": "Mobile"},
    ]
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, with_lists(v3_data(server.url), *lists), rows)
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert sorted(r.json()["to"][0] for r in sends(server)) == [NUMBER, "+14155550125"]
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "suppressed", "suppressed", "sent"]
    assert column(table, "result_error")[1:3] == [
        "on suppression list bounced.parquet",
        "on suppression list complaints.csv",
    ]


@pytest.mark.parametrize(
    ("name", "make_list", "message"),
    [
        (OPT_OUTS, None, "suppression list (suppress[0]) not found"),
        ("lists/opt-outs.parquet", lambda p: p.write_bytes(b"PAR1 not parquet"), "is not a readable Parquet file"),
        (OPT_OUTS, lambda p: p.write_text("msisdn\n+14155550123\n"), "has no column 'phone'"),
    ],
    ids=["missing", "not-parquet", "no-column"],
)
def test_a_list_that_cannot_be_used_stops_the_run_before_any_request(
    cli: Cli, tmp_path: Path, name: str, make_list: Callable[[Path], object] | None, message: str
) -> None:
    if make_list is not None:
        (tmp_path / "lists").mkdir()
        make_list(tmp_path / name)
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, with_lists(v3_data(server.url), name), people(NUMBER, "+1 415 555 0124"))
        code, out, err = cli("run", spec)
    assert code == 2, err
    assert out == ""
    assert err.startswith(f"error: {(tmp_path / name).resolve()}: "), err
    assert message in err
    assert server.requests == []  # not even the template check: the list is read first
    assert list((tmp_path / "out").iterdir()) == []  # no results file, no state


def test_v1_contact_ids_on_a_list_match_whatever_their_case(cli: Cli, tmp_path: Path) -> None:
    rows = contact_rows(3)
    write_list(tmp_path, OPT_OUTS, [{"contact_id": f"  {guid(2).upper()} "}])
    with FaultServer() as server:  # answers every request 200: v1's success
        data = with_lists(spec_data(api=api_section(server.url)), OPT_OUTS)
        spec = write_spec(tmp_path, data, rows)
        code, _, err = cli("run", spec)
    assert code == 0, err
    assert sorted(r.json()["contactId"] for r in sends(server)) == [guid(1), guid(3)]
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "suppressed", "sent"]
    assert column(table, "result_error")[1] == "on suppression list opt-outs.csv"


def test_a_number_listed_after_an_earlier_run_sent_it_is_still_reported_sent(cli: Cli, tmp_path: Path) -> None:
    # an opt-out that arrives mid-campaign (between the scheduled runs of a campaign with sending hours, say)
    write_list(tmp_path, OPT_OUTS, [{"phone": "+1 415 555 0199"}])
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, with_lists(v3_data(server.url), OPT_OUTS), people(*FIVE[:3]))
        code, _, err = cli("run", spec, "--limit", "2")
        assert code == 1, err  # row 3 not attempted
        first = results_of(spec)
        write_list(tmp_path, OPT_OUTS, [{"phone": "(415) 555-0121"}, {"phone": "(415) 555-0123"}])
        code, out, err = cli("run", spec)
    assert code == 0, err
    assert len(sends(server)) == 2  # nothing more: row 3's person is listed now
    table = results_of(spec)
    # row 1 was texted before its person was listed: the results still say so, with its message id
    assert column(table, "result_status") == ["sent", "sent", "suppressed"]
    assert column(table, "result_error") == [None, None, "on suppression list opt-outs.csv"]
    assert column(table, "result_message_id")[:2] == column(first, "result_message_id")[:2]
    assert re.search(r"^  sent +2$", out, re.MULTILINE), out
    assert re.search(r"^  suppressed +1$", out, re.MULTILINE), out
    # and a plan counts row 1 as done by an earlier run, not as suppressed
    code, out, err = cli("plan", spec, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["suppressed"], plan["already_done"], plan["messages"]) == (1, 2, 0)


def test_validate_counts_the_suppressed_rows(cli: Cli, tmp_path: Path) -> None:
    write_list(tmp_path, OPT_OUTS, [{"phone": "(415) 555-0123"}, {"phone": "+1 415 555 0124"}])
    rows = people("+1 415 555 0123", "415.555.0124", "+1 415 555 0125", "12")
    spec = write_spec(tmp_path, with_lists(v3_data(), OPT_OUTS), rows)
    code, out, err = cli("validate", spec, "--offline")
    assert code == 1, err  # row 4 is invalid
    assert re.search(r"^  valid +1$", out, re.MULTILINE), out
    assert re.search(r"^  invalid +1$", out, re.MULTILINE), out
    assert re.search(r"^  suppressed +2$", out, re.MULTILINE), out


def test_a_list_is_never_overwritten_by_the_results(cli: Cli, tmp_path: Path) -> None:
    listed = write_list(tmp_path, "out/results.csv", [{"phone": NUMBER}])
    before = listed.read_bytes()
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, with_lists(v3_data(server.url), "out/results.csv"), people("+1 415 555 0124"))
        code, _, err = cli("run", spec)
    assert code == 2, err
    assert "output.results is the same file as suppress[0]" in err
    assert server.requests == []
    assert listed.read_bytes() == before


# === send caps =====================================================================================================


def test_a_run_over_the_cap_refuses_to_start_naming_the_count_and_the_cap(cli: Cli, tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send={"max_messages": 3}), people(*FIVE))
        code, out, err = cli("run", spec)
        assert (code, out) == (2, "")
        assert err == (
            f"error: {spec}: this run would send 5 messages, more than send.max_messages (3); nothing was sent. "
            f"Hint: check input.path ({tmp_path / 'customers.csv'}) is the file you meant; if it is, raise the cap "
            "for this run with --max-messages 5\n"
        )
        assert sends(server) == []
        assert not (tmp_path / "out" / "results.csv").exists()

        code, _, err = cli("run", spec, "--max-messages", "4")
        assert code == 2
        assert "would send 5 messages, more than --max-messages (4)" in err
        assert sends(server) == []

        code, _, err = cli("run", spec, "--max-messages", "10")
        assert code == 0, err
        assert len(sends(server)) == 5
    assert column(results_of(spec), "result_status") == ["sent"] * 5


def test_suppressed_duplicate_and_invalid_rows_do_not_count_towards_the_cap(cli: Cli, tmp_path: Path) -> None:
    write_list(tmp_path, OPT_OUTS, [{"phone": "415-555-0125"}])
    rows = people(*FIVE[:3], "12", FIVE[4])
    rows.append({**rows[0], "phone": "(415) 555-0121"})  # row 1 again, written another way
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, with_lists(v3_data(server.url, send={"max_messages": 3}), OPT_OUTS), rows)
        code, _, err = cli("run", spec)
    assert code == 1, err  # row 4 is invalid
    assert "max" not in err
    assert len(sends(server)) == 3
    assert column(results_of(spec), "result_status") == ["sent", "sent", "sent", "invalid", "suppressed", "duplicate"]


def test_rows_an_earlier_run_sent_do_not_count_on_a_rerun(cli: Cli, tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send={"max_messages": 3}), people(*FIVE))
        code, _, err = cli("run", spec, "--limit", "2", "--max-messages", "5")
        assert code == 1, err  # three rows not attempted
        assert len(sends(server)) == 2

        code, _, err = cli("run", spec, "--max-messages", "2")
        assert code == 2
        assert "would send 3 messages, more than --max-messages (2)" in err
        assert len(sends(server)) == 2

        code, _, err = cli("run", spec)  # 3 left: within send.max_messages
        assert code == 0, err
        assert len(sends(server)) == 5
    assert sorted(n for key, n in server.accepted_by_key.items() if key) == [1] * 5


def test_a_smoke_test_within_the_cap_runs_whatever_the_file_holds(cli: Cli, tmp_path: Path) -> None:
    """`--limit 2` sends at most 2 rows: the cap weighs what the run would send, not the whole file."""
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send={"max_messages": 3}), people(*FIVE))
        code, _, err = cli("run", spec, "--limit", "2")
        assert code == 1, err  # three rows not attempted
        assert len(sends(server)) == 2

        code, _, err = cli("run", spec, "--limit", "4")  # 3 left in the file, and 3 is the cap
        assert code == 0, err
        assert len(sends(server)) == 5


# === plan ==========================================================================================================

ALL_DAY = {"window": {"from": "00:00", "to": "24:00"}}  # open whenever the test runs


def plan_rows() -> list[dict[str, str]]:
    """7 rows: 1 invalid, 1 duplicate (of row 1), 1 on the opt-out list, 4 to send."""
    rows = people(*FIVE[:3], "12", FIVE[4], "+44 20 7946 0958")
    rows.append({**rows[0], "phone": "(415) 555-0121"})
    return rows


def line(text: str, label: str, value: object, note: str = "") -> bool:
    """Whether `text` has the line `label  value[  note]`, however wide the columns."""
    tail = f"  {re.escape(note)}" if note else ""
    return re.search(rf"^ +{label} +{value}{tail}$", text, re.MULTILINE) is not None


def test_plan_says_what_a_run_would_do_and_sends_nothing(cli: Cli, tmp_path: Path) -> None:
    write_list(tmp_path, OPT_OUTS, [{"phone": "415-555-0125"}])
    with FaultServer(ScriptedV3()) as server:
        data = with_lists(v3_data(server.url, send={**ALL_DAY, "rate": "2/s"}), OPT_OUTS)
        spec = write_spec(tmp_path, data, plan_rows())
        code, out, err = cli("plan", spec)
    assert code == 0, err
    assert out.startswith(f"Plan for campaign v3-campaign (v3): {tmp_path / 'customers.csv'}, as of "), out
    for label, value in [
        ("rows", 7),
        ("valid", 4),
        ("invalid", 1),
        ("duplicates", 1),
        ("suppressed", 1),
        ("messages to send", 4),
        ("requests", 4),
    ]:
        assert line(out, label, value), (label, out)
    assert line(out, "now", 4, "(inside send.window 00:00-24:00 every day)"), out
    assert line(out, "deferred now", 0, "(sent once their window opens)"), out
    assert "Time at send.rate (2/s): 2 s" in out
    assert "  at Sent.dm's plan limits: Starter (60 requests/min) 4 s, Growth (300 requests/min) 1 s" in out
    assert "  3  America/Los_Angeles: open now" in out
    assert "  1  Europe/London: open now" in out
    assert "warning" not in out + err
    assert server.requests == []  # no template check, no send
    assert not (tmp_path / "out").exists()  # no state, no lock, no results


def test_plan_as_json(cli: Cli, tmp_path: Path) -> None:
    write_list(tmp_path, OPT_OUTS, [{"phone": "415-555-0125"}])
    spec = write_spec(tmp_path, with_lists(v3_data(send=ALL_DAY), OPT_OUTS), plan_rows())
    code, out, err = cli("plan", spec, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert {key: plan[key] for key in ("rows", "valid", "invalid", "duplicates", "suppressed", "already_done")} == {
        "rows": 7,
        "valid": 4,
        "invalid": 1,
        "duplicates": 1,
        "suppressed": 1,
        "already_done": 0,
    }
    assert (plan["messages"], plan["send_now"], plan["deferred_now"], plan["requests"]) == (4, 4, 0, 4)
    assert (plan["api_version"], plan["window"], plan["max_messages"]) == ("v3", "00:00-24:00 every day", None)
    assert [(z["zones"], z["rows"], z["open_now"], z["reason"]) for z in plan["zones"]] == [
        (["America/Los_Angeles"], 3, True, None),
        (["Europe/London"], 1, True, None),
    ]
    assert plan["warnings"] == []


def test_plan_counts_broadcast_requests(cli: Cli, tmp_path: Path) -> None:
    literal = {
        "variables": {"name": {"value": "friend"}, "order_id": {"value": "all"}, "carrier": {"value": "UPS"}},
    }
    numbers = [f"+1 415 555 01{i:02d}" for i in range(7)]
    spec = write_spec(tmp_path, v3_data(message=literal, send={"batch_recipients": 3}), people(*numbers))
    code, out, err = cli("plan", spec, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["messages"], plan["requests"], plan["batch_recipients"]) == (7, 3, 3)
    code, out, _ = cli("plan", spec)
    assert line(out, "requests", 3, "(send.batch_recipients 3)"), out


def test_plan_warns_about_a_cap_and_still_exits_0(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, v3_data(send={"max_messages": 3}), people(*FIVE))
    code, out, err = cli("plan", spec)
    assert code == 0, err
    assert "  cap: 3 messages (EXCEEDED: a run refuses to start)" in out
    assert out.endswith(
        "\nwarning: 5 messages is more than the cap (3): a run would refuse to start (raise it for one run with "
        "--max-messages 5)\n"
    )
    code, out, _ = cli("plan", spec, "--max-messages", "10")
    assert code == 0
    assert "  cap: 10 messages (within it)" in out
    assert "warning" not in out


def test_plan_of_a_v1_campaign(cli: Cli, tmp_path: Path) -> None:
    rows = [*contact_rows(4), {"contact_id": "not-a-guid", "first_name": "X", "order_id": "1"}]
    spec = write_spec(tmp_path, spec_data(api=api_section("sandbox")), rows)
    code, out, err = cli("plan", spec)
    assert code == 0, err
    assert out.startswith("Plan for campaign test-campaign (v1): ")
    assert line(out, "rows", 5)
    assert line(out, "valid", 4)
    assert line(out, "invalid", 1)
    assert line(out, "messages to send", 4)
    assert "send.window" not in out


def test_plan_takes_no_lock_and_leaves_out_what_earlier_runs_sent(cli: Cli, tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(*FIVE))
        code, _, err = cli("run", spec, "--limit", "2")
        assert code == 1, err
        lock = tmp_path / "out" / "v3-campaign.state.sqlite.lock"
        with open(lock, "rb+") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run going on elsewhere
            code, _, err = cli("run", spec)
            assert code == 2
            assert "is already running" in err
            code, out, err = cli("plan", spec, "--json")
        assert code == 0, err
        plan = json.loads(out)
        assert (plan["rows"], plan["already_done"], plan["messages"], plan["requests"]) == (5, 2, 3, 3)
        assert len(sends(server)) == 2


def test_plan_as_of_a_moment_lists_each_zones_opening_and_warns_before_a_window_closes(tmp_path: Path) -> None:
    write_list(tmp_path, OPT_OUTS, [{"phone": "+44 20 7946 0960"}])
    rows = people("+1 212 555 1234", "+44 20 7946 0958", "+1 212 555 1235", "+44 20 7946 0959", "+44 20 7946 0960")
    window = {"window": {"from": "09:00", "to": "20:00"}, "rate": "1/s"}
    spec = load_spec(write_spec(tmp_path, with_lists(v3_data(send=window), OPT_OUTS), rows))[0]

    # Tuesday 12:00 UTC: 12:00 in London, 07:00 in New York
    plan = plan_campaign(spec, now=datetime(2026, 12, 1, 12, tzinfo=UTC))
    assert (plan.messages, plan.send_now, plan.deferred_now, plan.suppressed) == (4, 2, 2, 1)
    assert plan.now == "2026-12-01T12:00:00Z"
    assert [(z.zones, z.rows, z.open_now, z.opens_at, z.closes_at, z.reason) for z in plan.zones] == [
        (
            ["America/New_York"],
            2,
            False,
            "2026-12-01T14:00:00Z",
            "2026-12-02T01:00:00Z",
            "window opens 2026-12-01 14:00 UTC (09:00 America/New_York)",
        ),
        (["Europe/London"], 2, True, None, "2026-12-01T20:00:00Z", None),
    ]
    assert plan.warnings == []
    text = format_plan(plan)
    assert "\n  2  America/New_York: window opens 2026-12-01 14:00 UTC (09:00 America/New_York)\n" in text
    assert "\n  2  Europe/London: open now" in text

    # a second before London's window closes (14:59 in New York: open too), four messages at 1/s take 4 s: going
    # out in input order, about three quarters of London's two are still waiting when it closes
    plan = plan_campaign(spec, now=datetime(2026, 12, 1, 19, 59, 59, tzinfo=UTC))
    assert plan.warnings == [
        "at send.rate (1/s) the 4 messages whose window is open now take about 4 s; windows close before then (the "
        "first at 2026-12-01T20:00:00Z), so about 2 of them will wait for their next window (a rerun, or run --wait, "
        "sends them)"
    ]


def test_plan_counts_the_broadcast_requests_of_rows_waiting_for_their_window(tmp_path: Path) -> None:
    literal = {
        "variables": {"name": {"value": "friend"}, "order_id": {"value": "all"}, "carrier": {"value": "UPS"}},
    }
    numbers = [f"+1 212 555 01{i:02d}" for i in range(7)] + ["+44 20 7946 0958"]
    send = {"batch_recipients": 3, "window": {"from": "09:00", "to": "20:00"}}
    with FaultServer(ScriptedV3()) as server:
        path = write_spec(tmp_path, v3_data(server.url, message=literal, send=send), people(*numbers))
        spec = load_spec(path)[0]
        noon, nine_in_new_york = datetime(2026, 12, 1, 12, tzinfo=UTC), datetime(2026, 12, 1, 14, tzinfo=UTC)

        # 12:00 UTC: London's one number now, New York's seven in three requests of up to 3 once its window opens
        plan = plan_campaign(spec, now=noon)
        assert (plan.messages, plan.send_now, plan.deferred_now) == (8, 1, 7)
        assert plan.requests == 4
        assert plan.seconds_at_plan_limits == {"Starter": 4.0, "Growth": 0.8}

        # what the runs then do
        run_campaign(spec, RunOptions(clock=lambda: noon, handle_signals=False))
        run_campaign(spec, RunOptions(clock=lambda: nine_in_new_york, handle_signals=False))
    assert sorted(len(r.json()["to"]) for r in sends(server)) == [1, 1, 3, 3]
