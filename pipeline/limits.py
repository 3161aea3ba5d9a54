"""Pacing shared by all send workers: an optional token-bucket rate limit and a global pause.

The API's limits are per account, so when one worker hears "slow down" (429/503 with Retry-After, or
X-RateLimit-Remaining: 0) every worker waits, not just the one that was told.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio


class Pacer:
    """Admits one request at a time at no more than `rate_per_s` (bursts up to `burst`), and holds every request
    while a pause is in force. `rate_per_s=None` means no rate limit."""

    def __init__(
        self,
        *,
        rate_per_s: float | None = None,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s is not None and not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = anyio.Lock()
        self.pauses = 0

    def pause_for(self, seconds: float) -> None:
        """Hold every request for at least `seconds` from now (a longer pause already in force wins)."""
        if seconds <= 0:
            return
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1

    async def wait_turn(self) -> None:
        # one waiter at a time keeps the admission order fair and the bucket arithmetic simple
        async with self._lock:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await anyio.sleep(self._paused_until - now)
                    continue
                if self._rate is None:
                    return
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await anyio.sleep((1 - self._tokens) / self._rate)
