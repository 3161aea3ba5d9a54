"""One classification of every answer (or non-answer) from the API, made in one place.

    SENT        a 2xx: the server accepted the message
    PERMANENT   the server refused this request and will refuse it again (400, 404, 409, 422, other 4xx)
    AUTH        401/403: every request of the run would fail the same way, so the run stops
    TRANSIENT   the message was certainly not accepted and may be sent again (429, 503, 408, connection failures
                before the request was fully written)
    AMBIGUOUS   the request reached the server and the answer was lost or says it failed midway (500, 502, 504,
                a read timeout, a reset after writing): the message may have gone out

A row's final status follows from its last verdict: SENT -> sent; PERMANENT/AUTH/TRANSIENT -> failed; AMBIGUOUS ->
unknown, unless ambiguous rows are retried (send.retry_ambiguous) and a later attempt settles it.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

import httpx

SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"
NOT_ATTEMPTED = "not_attempted"

_ERROR_TEXT_CHARS = 200


class Verdict(enum.Enum):
    SENT = "sent"
    PERMANENT = "permanent"
    AUTH = "auth"
    TRANSIENT = "transient"
    AMBIGUOUS = "ambiguous"

    @property
    def final_status(self) -> str:
        if self is Verdict.SENT:
            return SENT
        if self is Verdict.AMBIGUOUS:
            return UNKNOWN
        return FAILED


_TRANSIENT_STATUSES = frozenset({408, 429, 503})
_AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


def classify_status(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.SENT
    if status in (401, 403):
        return Verdict.AUTH
    if status in _TRANSIENT_STATUSES:
        return Verdict.TRANSIENT
    if status in _AMBIGUOUS_STATUSES or status >= 500:
        # other 5xx (501, 505, 507...) say nothing certain about whether the message went out
        return Verdict.AMBIGUOUS
    return Verdict.PERMANENT


def classify_exception(exc: BaseException) -> Verdict:
    """Network failures: before the request was fully written the server cannot have acted on it; after, it may."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.WriteError):
        return Verdict.TRANSIENT
    if isinstance(exc, httpx.WriteTimeout):
        return Verdict.TRANSIENT
    if isinstance(exc, httpx.LocalProtocolError):
        # refused before anything was sent (e.g. a header with a line break): every retry would fail the same way
        return Verdict.PERMANENT
    # ReadTimeout, ReadError, RemoteProtocolError (closed while waiting), the overall deadline, and anything else
    # that happened once the request could have been on the wire
    return Verdict.AMBIGUOUS


def describe_exception(exc: BaseException) -> str:
    names = {
        httpx.ConnectError: "connection failed",
        httpx.ConnectTimeout: "connect timeout",
        httpx.PoolTimeout: "no free connection in time",
        httpx.WriteError: "connection closed while sending",
        httpx.WriteTimeout: "timeout while sending",
        httpx.ReadTimeout: "no response before the timeout",
        httpx.ReadError: "connection reset while waiting for the response",
        httpx.RemoteProtocolError: "connection closed without a valid response",
        httpx.LocalProtocolError: "request refused before sending",
    }
    for kind, text in names.items():
        if isinstance(exc, kind):
            detail = str(exc).strip()
            return f"{text}: {detail}"[:_ERROR_TEXT_CHARS] if detail else text
    if isinstance(exc, TimeoutError):
        return "no response before the deadline (api.timeout_s)"
    return f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_CHARS]


def parse_body(content: bytes) -> dict[str, Any] | None:
    """The response body as a JSON object, or None (empty, not JSON, or not an object)."""
    text = content.strip()
    if not text.startswith(b"{"):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def message_id(body: dict[str, Any] | None) -> str | None:
    """The message id of a 2xx body, wherever the API generation put it."""
    if body is None:
        return None
    for holder in (body, body.get("data")):
        if isinstance(holder, dict):
            for key in ("messageId", "message_id", "id"):
                value = holder.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    return str(value)
    return None


def error_text(status: int, content: bytes, body: dict[str, Any] | None, *, secret: str) -> str:
    """A short, single-line reason for a non-2xx answer, taken from the body; the secret is masked if echoed."""
    text = ""
    if body is not None:
        parts: list[str] = []
        error = body.get("error")
        source = error if isinstance(error, dict) else body
        for key in ("code", "title", "message", "detail"):
            value = source.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value) not in parts:
                parts.append(str(value))
        if isinstance(error, str):
            parts.append(error)
        errors = body.get("errors")
        if isinstance(errors, dict):
            parts.extend(f"{field}: {msgs}" for field, msgs in errors.items())
        text = " - ".join(parts)
    if not text:
        text = content.decode("utf-8", "replace")
    text = re.sub(r"\s+", " ", text).strip()
    if secret:
        text = text.replace(secret, "***")
    prefix = f"HTTP {status}"
    return f"{prefix}: {text[:_ERROR_TEXT_CHARS]}" if text else prefix
