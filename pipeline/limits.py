"""Pacing shared by all send workers: a token-bucket rate limit, a global pause, and self-adjustment on 429.

The API's limits are per account, so when one worker hears "slow down" (429/503 with Retry-After, or
X-RateLimit-Remaining: 0) every worker waits, not just the one that was told. When 429s arrive although the client
already paces itself, the rate is halved (from the configured rate, or from the rate actually achieved when none is
configured) and then raised again by a tenth of the starting rate each second without a 429 - additive increase,
multiplicative decrease, as TCP does. When the run stops, `close()` lets every waiter go at once without a turn.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

_RECOVERY_STEP_S = 1.0
_MEASURE_WINDOW_S = 2.0
_MIN_RATE_PER_S = 0.1


@dataclass(frozen=True)
class PacingEvent:
    """A change of pace worth telling the user about as it happens."""

    kind: str  # "pause": the server asked every worker to wait; "slowdown": the rate was halved after a 429
    reason: str  # "server Retry-After", "server X-RateLimit-Reset", "HTTP 429"
    pause_s: float | None  # how long every worker now waits (pause)
    rate_per_s: float | None  # the rate in force afterwards (None: unlimited)


class Pacer:
    """Admits one request at a time at no more than the current rate (bursts up to `burst`), and holds every request
    while a pause is in force. `rate_per_s=None` means no rate limit until the server asks for one."""

    def __init__(
        self,
        *,
        rate_per_s: float | None = None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[PacingEvent], None] | None = None,
    ) -> None:
        if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self._configured = rate_per_s
        self._rate = rate_per_s
        self._ceiling = rate_per_s  # where recovery stops; None = unlimited again
        self._burst = float(burst)
        self._clock = clock
        now = clock()
        self._tokens = float(burst)
        self._stamp = now
        self._paused_until = 0.0
        self._last_change = self._last_slowdown = now
        self._window_start = now
        self._window_count = 0
        self._previous_rate = 0.0
        self._lock = anyio.Lock()
        self._closed = False
        self._sleeper: anyio.CancelScope | None = None  # the waiter sleeping for a token or a pause, if any
        self.pauses = 0
        self.slowdowns = 0
        self._on_event = on_event

    @property
    def rate_per_s(self) -> float | None:
        """The rate in force now (None: unlimited)."""
        return self._rate

    def paused_for_s(self) -> float:
        """Seconds left of the pause in force (0 when none)."""
        return max(0.0, self._paused_until - self._clock())

    def hold_back(self, pause_s: float | None, *, reason: str, too_many_requests: bool) -> None:
        """What the server said about pace in one answer: a 429 halves the rate, a wait (Retry-After,
        X-RateLimit-Reset) pauses every worker; one event tells both."""
        cut = self.slow_down(notify=False) if too_many_requests else False
        paused = self.pause_for(pause_s, reason=reason, notify=False) if pause_s is not None else False
        if self._on_event is not None and paused:
            self._on_event(PacingEvent("pause", reason, pause_s, self._rate))
        elif self._on_event is not None and cut:
            self._on_event(PacingEvent("slowdown", "HTTP 429", None, self._rate))

    def pause_for(self, seconds: float, *, reason: str = "server Retry-After", notify: bool = True) -> bool:
        """Hold every request for at least `seconds` from now (a longer pause already in force wins). True when a
        new pause starts (not one that only grew): that is worth telling."""
        if seconds <= 0:
            return False
        now = self._clock()
        until = now + seconds
        if until <= self._paused_until:
            return False
        starts = now >= self._paused_until
        self._paused_until = until
        self.pauses += 1
        if starts and notify and self._on_event is not None:
            self._on_event(PacingEvent("pause", reason, seconds, self._rate))
        return starts

    def slow_down(self, *, notify: bool = True) -> bool:
        """The server said 429: halve the rate - once per second at most, since the requests already in flight
        when the first 429 came are likely to get one too. True when the rate was cut."""
        now = self._clock()
        if self.slowdowns and now - self._last_slowdown < _RECOVERY_STEP_S:
            return False
        current = self._rate if self._rate is not None else self._achieved_rate(now)
        if self._ceiling is None and self._configured is None:
            self._ceiling = max(current, _MIN_RATE_PER_S)
        self._rate = max(current / 2, _MIN_RATE_PER_S)
        self._tokens = min(self._tokens, 1.0)
        self._stamp = self._last_change = self._last_slowdown = now
        self.slowdowns += 1
        if notify and self._on_event is not None:
            self._on_event(PacingEvent("slowdown", "HTTP 429", None, self._rate))
        return True

    def _achieved_rate(self, now: float) -> float:
        elapsed = now - self._window_start
        if elapsed >= 0.5:
            return self._window_count / elapsed
        return max(self._previous_rate, self._window_count / max(elapsed, 0.1))

    def _recover(self, now: float) -> None:
        if self._rate is None or self._ceiling is None or self._rate >= self._ceiling:
            return
        steps = int((now - self._last_change) / _RECOVERY_STEP_S)
        if steps:
            self._rate = min(self._ceiling, self._rate + steps * self._ceiling / 10)
            self._last_change += steps * _RECOVERY_STEP_S
            if self._rate >= self._ceiling and self._configured is None:
                self._rate = self._ceiling = None  # fully recovered: unlimited again

    def _count(self, now: float) -> None:
        self._window_count += 1
        if now - self._window_start >= _MEASURE_WINDOW_S:
            self._previous_rate = self._window_count / (now - self._window_start)
            self._window_start, self._window_count = now, 0

    def close(self) -> None:
        """The run is stopping: every waiter, and every later caller, is told at once that no turn will come."""
        self._closed = True
        if self._sleeper is not None:
            self._sleeper.cancel()

    async def wait_turn(self) -> bool:
        """Wait until a request may go out: True, or False once the pacer is closed (send nothing then)."""
        if self._closed:
            return False
        if self._rate is None and self._ceiling is None and not self._lock.locked():
            # unlimited and nobody waiting: the common case costs no lock (measured: 4% of a run's CPU)
            now = self._clock()
            if now >= self._paused_until:
                self._count(now)
                return True
        # one waiter at a time keeps the admission order fair and the bucket arithmetic simple
        async with self._lock:
            while not self._closed:
                now = self._clock()
                if now < self._paused_until:
                    await self._sleep(self._paused_until - now)
                    continue
                self._recover(now)
                if self._rate is None:
                    self._count(now)
                    return True
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1 - 1e-9:  # tolerance: float sums of waits land a hair short of a whole token
                    self._tokens = max(self._tokens - 1, 0.0)
                    self._count(now)
                    return True
                await self._sleep((1 - self._tokens) / self._rate)
            return False

    async def _sleep(self, seconds: float) -> None:
        # in a scope close() can cancel: at 60/min a queue of waiters would otherwise take a second each to notice
        with anyio.CancelScope() as scope:
            self._sleeper = scope
            try:
                await anyio.sleep(seconds)
            finally:
                self._sleeper = None
