"""Recipients' sending hours (`send.window`) end to end: campaigns run through the library (`run_campaign`) with an
injected clock - and, for `run --wait`, an injected sleep that moves it - against a scripted v3 API on 127.0.0.1,
with phonenumbers' and zoneinfo's real time-zone data; and once as a real `python -m pipeline run` process, whose
exit code 4 says "finished; every row sent or deferred to its window"."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from phonenumbers import timezone as phone_zones

from pipeline.campaign import RunOptions, RunStart, RunSummary, run_campaign
from pipeline.cli import _run_exit_code
from pipeline.errors import UsageError
from pipeline.spec import WEEKDAYS, load_spec
from tests.conftest import api_section, contact_rows, guid, spec_data
from tests.fault_server import FaultServer, Reply, Request
from tests.test_v3 import Cli, ScriptedV3, accepted, column, people, results_of, sends, v3_data, write_spec

pytestmark = pytest.mark.usefixtures("credentials")

NEW_YORK = ("+1 212 555 1234", "+12125551234")  # as written, as sent
NEW_YORK_2 = ("+1 212 555 1235", "+12125551235")
LONDON = ("+44 20 7946 0958", "+442079460958")
LONDON_2 = ("+44 20 7946 0959", "+442079460959")
LOS_ANGELES = ("+1 415 555 0123", "+14155550123")
TOLL_FREE = ("+1 800 234 5678", "+18002345678")  # phonenumbers: in every one of +1's 42 zones

NINE_TO_EIGHT = {"window": {"from": "09:00", "to": "20:00"}}


def utc(day: str, clock: str = "00:00:00") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)


class Clock:
    """The moment the run takes for "now"; tests and the injected sleep move it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def run_at(spec: Path, clock: Clock | datetime, **options: Any) -> tuple[int, RunSummary]:
    """Run the campaign in-process as of `clock`; (the exit code the CLI would give, the summary)."""
    now = clock if isinstance(clock, Clock) else Clock(clock)
    summary = run_campaign(load_spec(spec)[0], RunOptions(clock=now, handle_signals=False, **options))
    return _run_exit_code(summary), summary


def sent_numbers(server: FaultServer, since: int = 0) -> list[str]:
    return sorted(number for r in sends(server)[since:] for number in r.json()["to"])


def accepted_per_key(server: FaultServer) -> list[int]:
    """How many times each message was accepted (the template checks' GETs carry no key)."""
    return sorted(n for key, n in server.accepted_by_key.items() if key)


def campaign(tmp_path: Path, url: str, *numbers: tuple[str, str], **send: Any) -> Path:
    return write_spec(tmp_path, v3_data(url, send={**NINE_TO_EIGHT, **send}), people(*(n[0] for n in numbers)))


# === deferred rows, and the rerun that sends them =================================================================


def test_rows_outside_their_hours_are_deferred_and_a_rerun_in_their_window_sends_only_them(tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = campaign(tmp_path, server.url, NEW_YORK, LONDON, NEW_YORK_2, LONDON_2)

        # Tuesday 12:00 UTC: 12:00 in London, 07:00 in New York
        code, summary = run_at(spec, utc("2026-12-01", "12:00"))
        assert code == 4  # finished: every row sent or waiting for its window
        assert sent_numbers(server) == [LONDON[1], LONDON_2[1]]
        table = results_of(spec)
        assert column(table, "result_status") == ["deferred", "sent", "deferred", "sent"]
        opens = "window opens 2026-12-01 14:00 UTC (09:00 America/New_York)"
        assert column(table, "result_error") == [opens, None, opens, None]
        assert column(table, "result_attempts") == ["0", "1", "0", "1"]
        assert column(table, "result_to") == [NEW_YORK[1], LONDON[1], NEW_YORK_2[1], LONDON_2[1]]
        assert summary.counts["deferred"] == 2
        assert summary.next_window_opens == "2026-12-01T14:00:00Z"

        # a scheduled rerun a minute early: still closed in New York, nothing sent
        code, _ = run_at(spec, utc("2026-12-01", "13:59"))
        assert code == 4
        assert len(sends(server)) == 2

        # 09:00 in New York: its rows go, London's are not sent again
        code, summary = run_at(spec, utc("2026-12-01", "14:00"))
        assert code == 0
        assert sent_numbers(server, since=2) == [NEW_YORK[1], NEW_YORK_2[1]]
    assert accepted_per_key(server) == [1, 1, 1, 1]  # four messages, each sent once
    assert summary.skipped == 2
    assert column(results_of(spec), "result_status") == ["sent"] * 4
    assert column(results_of(spec), "result_error") == [None] * 4


def test_failed_rows_still_make_exit_1_beside_deferred_ones(tmp_path: Path) -> None:
    def refuse_london(request: Request, _attempt: int) -> Reply:
        if request.json()["to"] == [LONDON[1]]:
            return Reply(400, {"success": False, "error": {"code": "VALIDATION_001", "message": "no"}})
        return accepted(request)

    with FaultServer(ScriptedV3(refuse_london)) as server:
        spec = campaign(tmp_path, server.url, NEW_YORK, LONDON)
        code, summary = run_at(spec, utc("2026-12-01", "12:00"))
    assert code == 1  # a failed row wins over the deferred one
    assert summary.counts["failed"] == 1
    assert summary.counts["deferred"] == 1


def test_us_spring_forward_a_nine_o_clock_window_opens_at_13_00_utc(tmp_path: Path) -> None:
    """2027-03-14, a Sunday: New York's clocks jump from 02:00 EST to 03:00 EDT (07:00 UTC). Seen from the Saturday
    evening before, 09:00 that morning is 13:00 UTC, not the 14:00 UTC of a winter morning."""
    with FaultServer(ScriptedV3()) as server:
        spec = campaign(tmp_path, server.url, NEW_YORK)
        code, _ = run_at(spec, utc("2027-03-14", "04:00"))  # Saturday 23:00 EST
        assert (code, sends(server)) == (4, [])
        assert column(results_of(spec), "result_error") == [
            "window opens 2027-03-14 13:00 UTC (09:00 America/New_York)"
        ]
        code, _ = run_at(spec, utc("2027-03-14", "12:59"))  # 08:59 EDT
        assert (code, sends(server)) == (4, [])
        code, _ = run_at(spec, utc("2027-03-14", "13:00"))  # 09:00 EDT
        assert code == 0
        assert sent_numbers(server) == [NEW_YORK[1]]


def test_a_toll_free_number_goes_only_when_its_window_is_open_in_all_its_zones(tmp_path: Path) -> None:
    zones = phone_zones.time_zones_for_number(phonenumbers.parse(TOLL_FREE[1]))
    assert len(zones) == 42

    def inside_everywhere(moment: datetime) -> bool:
        return all(9 <= moment.astimezone(ZoneInfo(zone)).hour < 20 for zone in zones)

    with FaultServer(ScriptedV3()) as server:
        spec = campaign(tmp_path, server.url, NEW_YORK, TOLL_FREE)
        # 10:00 in New York: open there, but not in Adak (05:00) nor Guam (01:00 the next day)
        now = utc("2026-12-01", "15:00")
        code, _ = run_at(spec, now)
        assert code == 4
        assert sent_numbers(server) == [NEW_YORK[1]]
        reason = column(results_of(spec), "result_error")[1]
        assert column(results_of(spec), "result_status") == ["sent", "deferred"]
        found = re.fullmatch(r"window opens (\S+ \S+) UTC \((.*) and 39 more\)", reason or "")
        assert found is not None, reason
        assert found.group(2) == "13:00 America/Adak, 14:00 America/Anchorage, 19:00 America/Anguilla"
        opening = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        # the moment given is the first one inside the window in every zone (checked here with zoneinfo alone)
        assert inside_everywhere(opening)
        assert not inside_everywhere(opening - timedelta(minutes=1))

        code, _ = run_at(spec, opening - timedelta(minutes=1))
        assert (code, len(sends(server))) == (4, 1)
        code, _ = run_at(spec, opening)
        assert code == 0
        assert sent_numbers(server, since=1) == [TOLL_FREE[1]]


def test_v1_rows_are_in_the_zone_they_name_or_the_default_one(tmp_path: Path) -> None:
    rows = contact_rows(4)
    for row, zone in zip(rows, ["Europe/London", "", "America/New_York", "Mars/Olympus_Mons"], strict=True):
        row["tz"] = zone
    send = {**NINE_TO_EIGHT, "timezone": {"column": "tz"}, "default_timezone": "Asia/Tokyo"}
    with FaultServer() as server:  # answers every request 200: v1's success
        spec = write_spec(tmp_path, spec_data(api=api_section(server.url), send=send), rows)
        code, _ = run_at(spec, utc("2026-12-01", "12:00"))  # 12:00 in London, 21:00 in Tokyo, 07:00 in New York
    assert code == 1  # row 4's zone does not exist: invalid, which wins over the deferred rows
    assert [r.json()["contactId"] for r in sends(server)] == [guid(1)]
    table = results_of(spec)
    assert column(table, "result_status") == ["sent", "deferred", "deferred", "invalid"]
    assert column(table, "result_error") == [
        None,
        "window opens 2026-12-02 00:00 UTC (09:00 Asia/Tokyo)",
        "window opens 2026-12-01 14:00 UTC (09:00 America/New_York)",
        "timezone: not an IANA time zone (column tz)",
    ]


def test_rows_waiting_for_their_window_count_towards_the_cap(tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = campaign(tmp_path, server.url, NEW_YORK, NEW_YORK_2, LONDON, max_messages=2)
        with pytest.raises(UsageError, match=r"would send 3 messages, more than send\.max_messages \(2\)"):
            run_at(spec, utc("2026-12-01", "12:00"))  # only London's row could go now
    assert sends(server) == []


# === run --wait ===================================================================================================


class Recorder:
    """A ProgressSink keeping the notices."""

    def __init__(self) -> None:
        self.notices: list[str] = []

    def start(self, run: RunStart) -> None:
        pass

    def update(self, counts: Mapping[str, int], pace: str = "") -> None:
        pass

    def notice(self, message: str) -> None:
        self.notices.append(message)

    def warn(self, message: str) -> None:
        pass

    def finish(self) -> None:
        pass


def test_wait_sends_each_row_when_its_window_opens(tmp_path: Path) -> None:
    clock = Clock(utc("2026-12-01", "12:00:30"))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += timedelta(seconds=seconds)

    sent_at: dict[str, datetime] = {}
    lock = threading.Lock()

    def send(request: Request, _attempt: int) -> Reply:
        with lock:
            sent_at.update((number, clock.now) for number in request.json()["to"])
        return accepted(request)

    progress = Recorder()
    with FaultServer(ScriptedV3(send)) as server:
        spec = campaign(tmp_path, server.url, NEW_YORK, LONDON, LOS_ANGELES)
        summary = run_campaign(
            load_spec(spec)[0],
            RunOptions(clock=clock, sleep=sleep, wait=True, handle_signals=False),
            progress=progress,
        )
    assert _run_exit_code(summary) == 0
    assert column(results_of(spec), "result_status") == ["sent", "sent", "sent"]
    assert accepted_per_key(server) == [1, 1, 1]
    # London at once, New York at its 09:00 (14:00 UTC), Los Angeles at its 09:00 (17:00 UTC)
    assert sent_at == {
        LONDON[1]: utc("2026-12-01", "12:00:30"),
        NEW_YORK[1]: utc("2026-12-01", "14:00"),
        LOS_ANGELES[1]: utc("2026-12-01", "17:00"),
    }
    # slept in steps of at most a minute, to each opening exactly
    assert slept == [60.0] * 119 + [30.0] + [60.0] * 180
    assert [n for n in progress.notices if "waiting" in n] == [
        "2 row(s) outside their sending hours; waiting for the next window to open at 2026-12-01T14:00:00Z "
        "(Ctrl-C stops; a rerun goes on where this one stopped)",
        "1 row(s) outside their sending hours; waiting for the next window to open at 2026-12-01T17:00:00Z "
        "(Ctrl-C stops; a rerun goes on where this one stopped)",
    ]


def test_wait_needs_a_window(cli: Cli, tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url), people(NEW_YORK[0]))
        code, out, err = cli("run", spec, "--wait")
    assert (code, out) == (2, "")
    assert err == (
        "error: --wait sends deferred rows when their sending hours open: it needs send.window, and goes neither "
        "with --dry-run, --server-dry-run nor --test-to\n"
    )
    assert server.requests == []


# === a real process ===============================================================================================


def closed_in_new_york() -> dict[str, Any]:
    """A window open all day, but neither today nor tomorrow in New York: closed there now whenever a test runs,
    even across midnight."""
    today = datetime.now(ZoneInfo("America/New_York")).weekday()
    days = ",".join(name for day, name in enumerate(WEEKDAYS) if day not in (today, (today + 1) % 7))
    return {"window": {"from": "00:00", "to": "24:00", "days": days}}


def test_a_run_outside_every_rows_window_exits_4(tmp_path: Path) -> None:
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send=closed_in_new_york()), people(NEW_YORK[0], NEW_YORK_2[0]))
        process = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SENTDM_BATCH_DEBUG": "1"},
            check=False,
        )
    assert process.returncode == 4, process.stderr
    assert sends(server) == []
    assert "Deferred: 2 row(s) are outside their sending hours (send.window)." in process.stdout
    table = results_of(spec)
    assert column(table, "result_status") == ["deferred", "deferred"]
    for reason in column(table, "result_error"):
        # midnight in New York is 04:00 or 05:00 UTC, the same day
        assert re.fullmatch(r"window opens \d{4}-\d\d-\d\d 0[45]:00 UTC \(00:00 America/New_York\)", reason or "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_run_wait_ends_the_wait_with_every_row_accounted_for(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """`run --wait` sleeps until the next window opens; a signal then is the run's interrupt, never an escape: the
    results file is written (every row deferred) and the exit code names the signal."""
    with FaultServer(ScriptedV3()) as server:
        spec = write_spec(tmp_path, v3_data(server.url, send=closed_in_new_york()), people(NEW_YORK[0], NEW_YORK_2[0]))
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet", "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            waited = ""
            while "waiting for the next window" not in waited:
                line = process.stderr.readline()
                assert line, f"the run ended before waiting: {waited}"
                waited += line
            process.send_signal(sig)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert sends(server) == []
    assert column(results_of(spec), "result_status") == ["deferred", "deferred"]
    assert f"INTERRUPTED by {sig.name}" in out
