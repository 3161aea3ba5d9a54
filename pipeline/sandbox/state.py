"""The sandbox's options and counters: what every API generation reads and updates.

Only the server's event loop mutates a :class:`SandboxState`; other threads read ints or copies.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.sandbox.exchange import is_guid
from pipeline.sandbox.idempotency import IdempotencyStore
from pipeline.sandbox.lifecycle import DeliveryOptions
from pipeline.sandbox.ratelimit import RateWindow
from pipeline.sandbox.registry import MessageRegistry
from pipeline.sandbox.templates import TemplateCatalogue
from pipeline.sandbox.webhook_posts import WebhookPoster, WebhookTarget

# The failures a healthy-looking request may meet: declined (503, 429) or broken mid-way (500).
INJECTED_STATUSES = (503, 500, 429)


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


class SandboxState:
    """Validated options, the clock, the random sources, the v3 stores (accepted messages among them), the
    webhook poster, and the acceptance counters."""

    def __init__(
        self,
        *,
        latency_ms: float,
        failure_rate: float,
        seed: int | None,
        api_key: str | None,
        sender_id: str | None,
        empty_success: bool | None,
        record_bodies: bool,
        count_keys: bool,
        templates: Sequence[Mapping[str, Any]] | None = None,
        rate_limit_per_min: int | None = None,
        clock: Callable[[], float] | None = None,
        delivery: DeliveryOptions | None = None,
        messages_path: Path | None = None,
        webhooks: WebhookTarget | None = None,
    ) -> None:
        self.latency_s = _check_number("latency_ms", latency_ms, 0.0, math.inf) / 1000.0
        self.failure_rate = _check_number("failure_rate", failure_rate, 0.0, 1.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {type(seed).__name__}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if sender_id is not None and not is_guid(sender_id):
            raise ValueError("sender_id must be a GUID (8-4-4-4-12 hex) or None")
        if empty_success is not None and not isinstance(empty_success, bool):
            raise ValueError("empty_success must be a bool or None")
        if not isinstance(record_bodies, bool):
            raise ValueError("record_bodies must be a bool")
        if clock is not None and not callable(clock):
            raise ValueError("clock must be a callable returning Unix seconds, or None")
        if delivery is not None and not isinstance(delivery, DeliveryOptions):
            raise ValueError("delivery must be a DeliveryOptions or None")
        if messages_path is not None and not isinstance(messages_path, Path):
            raise ValueError("messages_path must be a Path or None")
        if webhooks is not None and not isinstance(webhooks, WebhookTarget):
            raise ValueError("webhooks must be a WebhookTarget or None")
        self.seed = seed
        self.rng = random.Random(seed)
        # v3 recipient order has its own source, so the failure sequence for a seed does not depend on recipients
        self.shuffler = random.Random(seed)
        # Unix seconds: idempotency keys age on it, rate-limit windows turn on it, v3 timestamps come from it
        self.clock: Callable[[], float] = time.time if clock is None else clock
        self.templates = TemplateCatalogue(templates)
        self.idempotency = IdempotencyStore(self.clock)
        self.rate_window = RateWindow(rate_limit_per_min, self.clock)
        # v3: how accepted messages fare (by default on the sandbox's seed), where they are kept for status lookups,
        # and where their status changes are posted
        self.delivery = delivery if delivery is not None else DeliveryOptions(seed=seed or 0)
        self.registry = MessageRegistry(messages_path)
        self.poster = WebhookPoster(webhooks, self.clock) if webhooks is not None else None
        self._messages_made = 0
        self.api_key = api_key
        self.sender_id = sender_id.lower() if sender_id is not None else None
        # None: each generation answers success its own way (v1 200 JSON, v2 204 empty); True or False: all alike
        self.empty_success = empty_success
        self.record_bodies = record_bodies
        # per-key counts prove "no duplicate sends" in tests; a campaign's own sandbox skips them, since they grow
        # with every message (about 100 bytes each)
        self.count_keys = count_keys

        self.requests_total = 0
        self.accepted_total = 0
        self.injected_total = 0
        self.duplicate_keys = 0
        self.accepted_by_key: dict[str, int] = {}
        self.accepted_by_number: dict[str, int] = {}
        self.accepted_bodies: list[dict[str, Any]] = []
        self.last_headers: dict[str, str] | None = None

    def new_message_id(self, idempotency_key: str | None, number: str, channel: str) -> str:
        """A new v3 message's id: random, or with a seed made from it, the request's Idempotency-Key, the number
        and the channel, so a rehearsal run again with the same seed gets the same ids - and so the same fates."""
        self._messages_made += 1
        if self.seed is None:
            return str(uuid.uuid4())
        made_from = idempotency_key if idempotency_key is not None else f"#{self._messages_made}"
        digest = hashlib.sha256(f"{self.seed}\x00{made_from}\x00{number}\x00{channel}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))

    def note_request(self, headers: dict[str, str] | None) -> None:
        """Count a request as it arrives; ``headers`` is None for one too broken to parse."""
        self.requests_total += 1
        if self.record_bodies and headers is not None:
            self.last_headers = dict(headers)

    def injected_failure(self) -> int | None:
        """The status of a failure to inject instead of accepting a valid request, or None to accept it."""
        if self.failure_rate > 0.0 and self.rng.random() < self.failure_rate:
            self.injected_total += 1
            return self.rng.choice(INJECTED_STATUSES)
        return None

    def record_acceptance(self, headers: dict[str, str], body: dict[str, Any], numbers: Iterable[str] = ()) -> None:
        """Count one accepted send; ``numbers`` holds a v3 send's recipient of each message (one per channel)."""
        if self.count_keys:
            key = headers.get("idempotency-key", "")
            count = self.accepted_by_key.get(key, 0) + 1
            self.accepted_by_key[key] = count
            if count == 2 and key:
                self.duplicate_keys += 1
            for number in numbers:
                self.accepted_by_number[number] = self.accepted_by_number.get(number, 0) + 1
        self.accepted_total += 1
        if self.record_bodies:
            self.accepted_bodies.append(body)
