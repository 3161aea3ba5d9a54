"""The pacer on a fake clock: token bucket, global pause, and slowing down on 429 then recovering."""

from __future__ import annotations

import itertools

import anyio
import pytest

from pipeline.limits import Pacer
from tests.conftest import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    real_sleep = anyio.sleep

    async def sleep(seconds: float) -> None:
        fake.now += seconds
        await real_sleep(0)

    monkeypatch.setattr("pipeline.limits.anyio.sleep", sleep)
    return fake


def admit(pacer: Pacer, clock: FakeClock, count: int) -> list[float]:
    times: list[float] = []

    async def go() -> None:
        for _ in range(count):
            await pacer.wait_turn()
            times.append(clock.now)

    anyio.run(go)
    return times


def test_rate_admits_evenly_after_the_burst(clock: FakeClock) -> None:
    pacer = Pacer(rate_per_s=10, burst=3, clock=clock)
    times = admit(pacer, clock, 13)
    start = times[0]
    assert [round(t - start, 6) for t in times[:3]] == [0, 0, 0]  # the burst
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times[2:])]
    assert gaps == [0.1] * 10
    # over the whole span, never more than burst + rate x elapsed
    assert 3 + 10 * (times[-1] - start) + 1e-9 >= 13


def test_no_rate_admits_at_once(clock: FakeClock) -> None:
    pacer = Pacer(clock=clock)
    assert len(set(admit(pacer, clock, 50))) == 1


def test_a_pause_holds_every_request_until_it_ends(clock: FakeClock) -> None:
    pacer = Pacer(clock=clock)
    pacer.pause_for(2.5)
    pacer.pause_for(1.0)  # a shorter pause does not shorten the longer one
    started = clock.now
    times = admit(pacer, clock, 3)
    assert all(t - started >= 2.5 for t in times)
    assert pacer.pauses == 1


def test_429_halves_the_rate_then_it_recovers_a_tenth_per_second(clock: FakeClock) -> None:
    pacer = Pacer(rate_per_s=20, burst=1, clock=clock)
    pacer.slow_down()
    assert pacer.rate_per_s == 10
    pacer.slow_down()  # more 429s from requests already in flight: no further cut within a second
    assert pacer.rate_per_s == 10
    clock.now += 1.0
    pacer.slow_down()
    assert pacer.rate_per_s == 5
    clock.now += 3.0
    admit(pacer, clock, 1)
    assert pacer.rate_per_s == 11  # 5 + 3 x 2
    clock.now += 10.0
    admit(pacer, clock, 1)
    assert pacer.rate_per_s == 20  # never above the configured rate
    assert pacer.slowdowns == 2


def test_429_without_a_configured_rate_limits_to_half_the_achieved_rate(clock: FakeClock) -> None:
    pacer = Pacer(clock=clock)

    async def steady() -> None:
        for _ in range(100):  # 100 requests over one second
            await pacer.wait_turn()
            clock.now += 0.01

    anyio.run(steady)
    pacer.slow_down()
    assert pacer.rate_per_s == pytest.approx(50, rel=0.05)
    clock.now += 30
    admit(pacer, clock, 1)
    assert pacer.rate_per_s is None  # recovered: unlimited again


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0)])
def test_bad_arguments_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        Pacer(rate_per_s=rate, burst=burst)


@pytest.mark.parametrize("held_by", ["rate", "pause"])
def test_closing_lets_every_waiter_go_at_once_without_a_turn(held_by: str) -> None:
    # one turn an hour, or an hour's pause: without close() the waiters would wait that long
    pacer = Pacer(rate_per_s=1 / 3600, burst=1) if held_by == "rate" else Pacer()
    answers: list[bool] = []

    async def wait() -> None:
        answers.append(await pacer.wait_turn())

    async def go() -> None:
        if held_by == "rate":
            assert await pacer.wait_turn()  # the burst's one turn
        else:
            pacer.pause_for(3600)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                assert answers == []
                pacer.close()
        answers.append(await pacer.wait_turn())  # and anyone who comes later

    anyio.run(go)
    assert answers == [False] * 4
