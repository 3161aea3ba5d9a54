"""v3 idempotency in the sandbox: the answers kept per (API key, Idempotency-Key) for 24 hours.

A send that was accepted is kept with the moment its processing ends (arrival plus the configured latency). A repeat
before that moment is told 409 (still in flight); after it, the first answer is replayed byte for byte, whatever the
repeat's body says; after 24 hours the key is forgotten and a repeat is a new send. Answers that refused the request
are not kept: nothing was done, so the key stays free for a corrected request.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.sandbox.exchange import Response

KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
KEEP_S = 24 * 60 * 60


@dataclass(frozen=True, slots=True)
class KeptAnswer:
    response: Response
    request_id: str
    kept_at: float
    done_at: float  # until then the first request counts as still being processed


class IdempotencyStore:
    """Kept answers, oldest first, on the sandbox's clock (Unix seconds, injectable so tests can age keys)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._kept: OrderedDict[tuple[str, str], KeptAnswer] = OrderedDict()

    def find(self, api_key: str, key: str) -> KeptAnswer | None:
        """The answer kept for this key, unless there is none or it is 24 hours old."""
        now = self._clock()
        self._forget_expired(now)
        kept = self._kept.get((api_key, key))
        if kept is not None and now - kept.kept_at >= KEEP_S:
            # the sweep stops at the first live entry; a clock that stepped back can leave an older one behind it
            del self._kept[(api_key, key)]
            return None
        return kept

    def keep(self, api_key: str, key: str, response: Response, request_id: str, busy_s: float) -> None:
        now = self._clock()
        self._kept[(api_key, key)] = KeptAnswer(response, request_id, now, now + busy_s)

    def in_flight(self, kept: KeptAnswer) -> bool:
        return self._clock() < kept.done_at

    def __len__(self) -> int:
        return len(self._kept)

    def _forget_expired(self, now: float) -> None:
        # Entries are kept in arrival order, so expired ones are at the front: each is dropped once, in O(1).
        while self._kept:
            kept = next(iter(self._kept.values()))
            if now - kept.kept_at < KEEP_S:
                return
            self._kept.popitem(last=False)
