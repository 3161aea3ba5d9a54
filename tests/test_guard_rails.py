"""Guard rails for texting real people, end to end through the CLI against real servers on 127.0.0.1: test sends
(`run --test-to`), send caps, suppression lists, recipients' quiet hours and `plan`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sandbox import SandboxServer
from tests.conftest import API_KEY, SENDER, contact_rows, spec_data
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
