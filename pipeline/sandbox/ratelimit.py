"""The sandbox's v3 rate limit: requests per clock minute for the whole account, and the headers that report it.

Sent.dm limits an account, not a key, so one window covers every request that passed authentication. Without a
configured limit the headers advertise a generous one the sandbox cannot reach, so a client that reads them never
slows down for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pipeline.sandbox.exchange import Headers

GENEROUS_PER_MIN = 1_000_000
_WINDOW_S = 60


class RateWindow:
    """A fixed window per clock minute (Unix seconds), counting requests and refusing those over the limit."""

    def __init__(self, per_min: int | None, clock: Callable[[], float]) -> None:
        if per_min is not None and (isinstance(per_min, bool) or not isinstance(per_min, int) or per_min < 1):
            raise ValueError(f"rate_limit_per_min must be a positive int or None, got {per_min!r}")
        self.limit = GENEROUS_PER_MIN if per_min is None else per_min
        self._clock = clock
        self._window = 0
        self._used = 0

    def admit(self) -> bool:
        """Count one request; False when the window is already full (the request is refused and not counted)."""
        self._roll()
        if self._used >= self.limit:
            return False
        self._used += 1
        return True

    def headers(self) -> Headers:
        self._roll()
        return (
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.limit - self._used)),
            ("X-RateLimit-Reset", str(self._reset_at())),
        )

    def retry_after_s(self) -> int:
        """Whole seconds until the window opens again (at least 1)."""
        return max(1, math.ceil(self._reset_at() - self._clock()))

    def _reset_at(self) -> int:
        return (self._window + 1) * _WINDOW_S

    def _roll(self) -> None:
        window = int(self._clock() // _WINDOW_S)
        if window != self._window:
            self._window, self._used = window, 0
