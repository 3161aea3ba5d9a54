"""A verified webhook body -> one Event: what the store keeps, and the key that recognises a repeat.

Sent.dm has no per-event id (`X-Webhook-ID` is the endpoint's id, the same on every delivery), so a repeat is
recognised by content: a message event by its message id and status (one event per state transition), anything
else (`message.received`, sub-types added later) by a hash of its canonical JSON.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# the lifecycle order a message's current status only moves forward in. FAILED sits below DELIVERED so that a
# DELIVERED or READ after it wins (it was delivered after all) and a late QUEUED/ROUTED/SENT does not undo it.
STATUS_RANK = {"QUEUED": 1, "ROUTED": 2, "SENT": 3, "FAILED": 4, "DELIVERED": 5, "READ": 6}
# a status this table does not know yet (a later API addition) is kept in the history; it becomes the current
# status only of a message that has no other
UNKNOWN_RANK = 0

# where a failure's reason may be, in the order they are read: the payload documents none, these are the names
# Sent.dm's other answers use
_ERROR_FIELDS = ("error_code", "error", "reason", "description")


class MalformedEvent(ValueError):
    """A signed body that is not the documented event shape; the reason is safe to log (it quotes no content)."""


@dataclass(frozen=True)
class Event:
    dedupe_key: str
    sub_type: str
    message_id: str | None  # None for events about no outbound message (message.received...)
    status: str | None
    rank: int
    channel: str | None
    error: str | None
    event_at: str | None  # the event's own timestamp, as sent
    body: str  # the body as received (decoded), kept so later versions can read what these columns do not


def parse_event(raw: bytes) -> Event:
    """The event in a verified body; MalformedEvent when it is not JSON or not the documented shape."""
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"body is not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise MalformedEvent("body is not a JSON object")
    sub_type = data.get("sub_type")
    payload = data.get("payload")
    timestamp = data.get("timestamp")
    if not isinstance(sub_type, str) or not sub_type:
        raise MalformedEvent("`sub_type` missing or not a string")
    if not isinstance(payload, dict):
        raise MalformedEvent("`payload` missing or not an object")
    if timestamp is not None and not isinstance(timestamp, str):
        raise MalformedEvent("`timestamp` is not a string")
    channel = _text(payload.get("channel"))
    if sub_type.startswith("message.") and sub_type != "message.received":
        message_id = payload.get("message_id")
        status = payload.get("message_status")
        if not isinstance(message_id, str) or not message_id:
            raise MalformedEvent(f"{sub_type} without `payload.message_id`")
        if not isinstance(status, str) or not status:
            raise MalformedEvent(f"{sub_type} without `payload.message_status`")
        status = status.upper()
        return Event(
            dedupe_key=f"m:{message_id}:{status}",
            sub_type=sub_type,
            message_id=message_id,
            status=status,
            rank=STATUS_RANK.get(status, UNKNOWN_RANK),
            channel=channel,
            error=_error(payload),
            event_at=timestamp,
            body=text,
        )
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Event(
        dedupe_key="h:" + hashlib.sha256(canonical.encode()).hexdigest(),
        sub_type=sub_type,
        message_id=None,
        status=None,
        rank=UNKNOWN_RANK,
        channel=channel,
        error=None,
        event_at=timestamp,
        body=text,
    )


def _error(payload: dict[str, Any]) -> str | None:
    for name in _ERROR_FIELDS:
        value = payload.get(name)
        if isinstance(value, dict):  # {"error": {"code": ...}}
            value = value.get("code")
        found = _text(value)
        if found:
            return found
    return None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None
