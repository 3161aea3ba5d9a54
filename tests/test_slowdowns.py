"""A slow run explains itself while it happens: pacing events become notices at once (then summed up), the progress
line shows what holds the run back, and a throughput collapse of more than a minute gets one warning saying why."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.limits import Pacer, PacingEvent
from pipeline.send import RunControl
from pipeline.slowdowns import SlowdownWatch
from tests.conftest import FakeClock, api_section, contact_rows
from tests.fault_server import FaultServer, Reply, sequence

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Said:
    def __init__(self) -> None:
        self.notices: list[str] = []
        self.warnings: list[str] = []


@pytest.fixture
def said() -> Said:
    return Said()


def watch(clock: FakeClock, said: Said) -> SlowdownWatch:
    return SlowdownWatch(said.notices.append, said.warnings.append, clock=clock)


def test_the_first_pause_is_told_at_once_and_later_ones_are_summed_up(clock: FakeClock, said: Said) -> None:
    w = watch(clock, said)
    pacer = Pacer(rate_per_s=8, burst=8, clock=clock, on_event=w.on_event)
    pacer.pause_for(1.0, reason="server Retry-After")
    assert said.notices == ["paused 1 s: server Retry-After; rate now 8/s"]
    clock.now += 2  # the pause is over; a new one starts, and a 429 halves the rate
    pacer.pause_for(3.0, reason="server X-RateLimit-Reset")
    pacer.slow_down()
    assert len(said.notices) == 1  # within NOTICE_EVERY_S of the first: held
    clock.now += 10
    status = w.tick(100, pacer, RunControl())
    assert said.notices[1] == (
        "rate cut to 4/s: the server answered HTTP 429 (1 pause(s) and 1 rate cut(s) since the last notice)"
    )
    assert status == "rate 4/s"


def test_a_pause_that_only_grows_is_not_told_again(clock: FakeClock, said: Said) -> None:
    w = watch(clock, said)
    pacer = Pacer(clock=clock, on_event=w.on_event)
    pacer.pause_for(5.0)
    pacer.pause_for(6.0)  # a second worker heard the same 429
    clock.now += 30
    w.tick(0, pacer, RunControl())
    assert said.notices == ["paused 5 s: server Retry-After; rate now unlimited"]


def test_the_progress_status_names_a_pause_in_force_and_rows_waiting_to_retry(clock: FakeClock, said: Said) -> None:
    w = watch(clock, said)
    pacer = Pacer(clock=clock, on_event=w.on_event)
    control = RunControl()
    assert w.tick(0, pacer, control) == ""
    pacer.pause_for(30.0)
    control.retrying = 3
    assert w.tick(0, pacer, control) == "paused 30 s by the server, 3 waiting to retry"


def test_a_collapse_of_throughput_for_a_minute_is_warned_once_with_the_reasons(clock: FakeClock, said: Said) -> None:
    w = watch(clock, said)
    pacer = Pacer(clock=clock, on_event=w.on_event)
    control = RunControl()
    done = 0
    for _ in range(30):  # 30 s at 100 rows/s
        clock.now += 1
        done += 100
        w.tick(done, pacer, control)
    control.retrying, control.last_retry_error = 12, "HTTP 503: unavailable"
    for second in range(70):  # then 2 rows/s, with the server pausing everyone now and then
        clock.now += 1
        done += 2
        if second % 10 == 0:
            pacer.pause_for(1.0)
        w.tick(done, pacer, control)
    assert said.warnings == [
        "throughput fell to 2 rows/s over the last minute (it reached 100/s): the server asked every worker to "
        "wait 6 time(s) (Retry-After / X-RateLimit-Reset); 12 row(s) are waiting to be retried after failures "
        "(last: HTTP 503: unavailable)"
    ]
    for _ in range(70):  # back to full speed: the watch re-arms
        clock.now += 1
        done += 100
        w.tick(done, pacer, control)
    control.retrying = 0
    for _ in range(70):
        clock.now += 1
        w.tick(done, pacer, control)
    assert len(said.warnings) == 2
    assert said.warnings[1].endswith("no pauses or failures: the server answers slowly, or the input is slow to read")


def test_steady_throughput_is_never_a_collapse(clock: FakeClock, said: Said) -> None:
    w = watch(clock, said)
    pacer = Pacer(clock=clock)
    for second in range(300):
        clock.now += 1
        w.tick(second * 5, pacer, RunControl())
    assert said.warnings == []


def test_pacing_events_carry_the_rate_in_force_afterwards(clock: FakeClock) -> None:
    events: list[PacingEvent] = []
    pacer = Pacer(rate_per_s=10, burst=10, clock=clock, on_event=events.append)
    pacer.slow_down()
    assert events == [PacingEvent("slowdown", "HTTP 429", None, 5.0)]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as running:
        yield running


@pytest.mark.usefixtures("credentials")
def test_a_run_tells_at_once_when_the_server_asks_to_wait(
    cli: Cli, make_campaign: MakeCampaign, server: FaultServer
) -> None:
    server.script = sequence(Reply(429, b"", headers={"Retry-After": "1"}))
    spec = make_campaign(
        contact_rows(3), api=api_section(server.url, timeout_s=5), send={"concurrency": 1, "backoff_s": 0}
    )
    code, _, err = cli("run", spec, "--log-format", "json")
    assert code == 0
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["event"] for e in events][:2] == ["start", "notice"]
    assert events[1]["message"].startswith("paused 1 s: server Retry-After; rate now ")
