"""What happens to a v3 message after the sandbox accepted it: its fate and the moments of its status changes.

Everything here is a pure function of the sandbox's seed, the message's id and channel, the moment it was accepted
and the delivery options, so any sandbox - this process's or a new one started later for the same campaign - tells
the same story about the same message: a lookup needs only what the message registry keeps (``registry``).

A message moves QUEUED -> ROUTED -> SENT -> DELIVERED, on WhatsApp and RCS on to READ for a share of them, or ends
FAILED with one of the reasons Sent.dm documents, at the step where that reason arises. Its last status arrives
between half and all of ``delivery_ms`` after acceptance (the steps evenly spaced), so the run that sent it knows
how long to wait for its final webhooks.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

QUEUED, ROUTED, SENT, DELIVERED, READ, FAILED = "QUEUED", "ROUTED", "SENT", "DELIVERED", "READ", "FAILED"
FINAL = frozenset({DELIVERED, READ, FAILED})
READ_CHANNELS = frozenset({"whatsapp", "rcs"})  # READ exists on WhatsApp and RCS only

# (reason, the statuses a message reaches before it fails for it): an opted-out number or parameters the channel
# refuses are caught before routing; a denied route once the route is chosen
FAILURE_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ERR_CONSENT_BLOCKED", (QUEUED,)),
    ("ERR_TEMPLATE_PARAMS_INVALID", (QUEUED,)),
    ("ERR_ROUTE_DENIED", (QUEUED, ROUTED)),
)
_DESCRIPTIONS = {
    QUEUED: "accepted and queued",
    ROUTED: "routed to a carrier",
    SENT: "sent to the carrier",
    DELIVERED: "delivered to the handset",
    READ: "read by the recipient",
}
# the defaults of api.sandbox: about a second to each message's last status, and a few failures in the sample
DEFAULT_DELIVERY_MS = 1000.0
DEFAULT_FAILURE_RATE = 0.05
DEFAULT_READ_RATE = 0.5
# what the sandbox charges per message and channel, in US dollars (a message that failed before SENT costs nothing)
PRICES = {"sms": 0.0079, "whatsapp": 0.0050, "rcs": 0.0060}


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return number


@dataclass(frozen=True)
class DeliveryOptions:
    """How accepted messages fare: ``delivery_ms`` until the last status (each message takes between half and all
    of it), the share that fail, the share of delivered WhatsApp/RCS messages that are read, and the seed."""

    delivery_ms: float = DEFAULT_DELIVERY_MS
    failure_rate: float = DEFAULT_FAILURE_RATE
    read_rate: float = DEFAULT_READ_RATE
    seed: int = 0

    def __post_init__(self) -> None:
        delivery_ms = self.delivery_ms
        if isinstance(delivery_ms, bool) or not isinstance(delivery_ms, (int, float)):
            raise ValueError(f"delivery_ms must be a number, got {type(delivery_ms).__name__}")
        if not math.isfinite(delivery_ms) or not 0.0 <= delivery_ms <= 3_600_000.0:
            raise ValueError(f"delivery_ms must be between 0 and 3600000, got {delivery_ms!r}")
        _check_rate("delivery_failure_rate", self.failure_rate)
        _check_rate("read_rate", self.read_rate)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {type(self.seed).__name__}")

    @property
    def delivery_s(self) -> float:
        return self.delivery_ms / 1000.0


@dataclass(frozen=True)
class Step:
    status: str
    at: float  # Unix seconds
    description: str  # a FAILED step's is its reason code, as Sent.dm's status lookup gives it


@dataclass(frozen=True)
class Fate:
    statuses: tuple[str, ...]  # every status the message passes through, QUEUED first
    reason: str | None  # FAILED's reason code
    duration_s: float  # from acceptance to the last status


def _draws(seed: int, message_id: str) -> tuple[float, float, float]:
    """Three independent numbers in [0, 1) for this message: whether it fails, which way it goes, how long it
    takes. A hash rather than a random generator: it needs no state, so every process draws the same."""
    digest = hashlib.sha256(f"sentdm-sandbox-delivery\x00{seed}\x00{message_id}".encode()).digest()
    scale = float(1 << 64)
    return tuple(int.from_bytes(digest[i : i + 8], "big") / scale for i in (0, 8, 16))  # type: ignore[return-value]


def fate_of(message_id: str, channel: str, options: DeliveryOptions) -> Fate:
    fails, way, pace = _draws(options.seed, message_id)
    duration_s = options.delivery_s * (0.5 + 0.5 * pace)
    if fails < options.failure_rate:
        reason, before = FAILURE_REASONS[min(int(way * len(FAILURE_REASONS)), len(FAILURE_REASONS) - 1)]
        return Fate((*before, FAILED), reason, duration_s)
    if channel in READ_CHANNELS and way < options.read_rate:
        return Fate((QUEUED, ROUTED, SENT, DELIVERED, READ), None, duration_s)
    return Fate((QUEUED, ROUTED, SENT, DELIVERED), None, duration_s)


def steps_of(message_id: str, channel: str, accepted_at: float, options: DeliveryOptions) -> list[Step]:
    """Every status change of the message, due or not yet: QUEUED at acceptance, the last at the fate's end."""
    fate = fate_of(message_id, channel, options)
    later = len(fate.statuses) - 1
    steps = []
    for index, status in enumerate(fate.statuses):
        at = accepted_at + fate.duration_s * index / later
        description = fate.reason if status == FAILED and fate.reason is not None else _DESCRIPTIONS[status]
        steps.append(Step(status, at, description))
    return steps


def price_of(channel: str, reached: list[Step]) -> float:
    """What the message costs once it got this far: nothing until it was handed to a carrier."""
    if not any(step.status == SENT for step in reached):
        return 0.0
    return PRICES.get(channel, PRICES["sms"])


def iso_time(at: float) -> str:
    """Unix seconds as Sent.dm writes times: ISO 8601 in UTC, milliseconds, a trailing Z."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
