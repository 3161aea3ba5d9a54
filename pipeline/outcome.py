"""One classification of every answer (or non-answer) from the API, made in one place.

    SENT        a 2xx: the server accepted the message
    PERMANENT   the server refused this request and will refuse it again (400, 404, 409, 422, other 4xx)
    AUTH        401/403: every request of the run would fail the same way, so the run stops
    TRANSIENT   the message was certainly not accepted and may be sent again (429, 503, 408, connection failures
                before the request was fully written)
    AMBIGUOUS   the request reached the server and the answer was lost or says it failed midway (500, 502, 504,
                a read timeout, a reset after writing): the message may have gone out
    SYSTEMIC    nothing was sent and no request can get through until the setup changes: the server's TLS
                certificate or host name fails verification, the server does not speak TLS (or no TLS version the
                two sides share), or the API's host name does not resolve. The run stops; `SystemicFailure` says
                what failed and what to change

A row's final status follows from its last verdict: SENT -> sent; PERMANENT/AUTH/TRANSIENT/SYSTEMIC -> failed;
AMBIGUOUS -> unknown, unless ambiguous rows are retried (send.retry_ambiguous) and a later attempt settles it.
"""

from __future__ import annotations

import enum
import json
import re
import socket
import ssl
from dataclasses import dataclass
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
    SYSTEMIC = "systemic"

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
    if isinstance(exc, httpx.ConnectError) and systemic_failure(exc) is not None:
        return Verdict.SYSTEMIC
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


@dataclass(frozen=True, slots=True)
class SystemicFailure:
    """Why every request of the run would fail the same way, and what to change."""

    what: str  # e.g. "TLS certificate verify failed: self-signed certificate"
    fix: str
    # A missing host name is looked up again before the run stops: resolvers have bad moments too.
    confirm: bool = False

    def message(self, target: str) -> str:
        """The reason the run stops; `target` is the API's host:port."""
        return f"cannot connect to {target}: {self.what}; every request would fail the same way. Hint: {self.fix}"


_TRUST_FIX = "if this server uses a private CA, point SSL_CERT_FILE at its bundle or set api.ca_bundle"
# OpenSSL's X509_V_ERR_* codes that call for another fix than trusting a CA.
_NAME_MISMATCH_CODES = frozenset({62, 64})  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_VALIDITY_CODES = frozenset({9, 10})  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
# What an https client reads when the other side answers in plain text (the names vary with the OpenSSL version).
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})
# No protocol version or cipher both sides accept.
_MISMATCH_REASONS = frozenset(
    {
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "NO_PROTOCOLS_AVAILABLE",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "NO_CIPHERS_AVAILABLE",
    }
)
# "No such name" answers; EAI_AGAIN (the resolver did not answer) says nothing about the name and stays transient.
_NO_SUCH_NAME = frozenset(code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None)


def systemic_failure(exc: BaseException) -> SystemicFailure | None:
    """The setup problem behind a network error, or None when it is not one.

    The ssl or socket error is looked for along the chain of causes: the transport wraps it in httpx.ConnectError,
    and on the proxy path httpcore wraps it once more."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _certificate_failure(cause)
        if isinstance(cause, ssl.SSLError):
            return _handshake_failure(cause)
        if isinstance(cause, socket.gaierror):
            return _name_failure(cause)
        cause = cause.__cause__ or cause.__context__
    return None


# The attributes below are set by the ssl module's C code; an error made by hand (a wrapper, a test) may lack them.


def _certificate_failure(error: ssl.SSLCertVerificationError) -> SystemicFailure:
    code = getattr(error, "verify_code", None)
    detail = str(getattr(error, "verify_message", None) or "unknown reason").rstrip(".")
    if code in _NAME_MISMATCH_CODES:
        return SystemicFailure(
            f"TLS hostname mismatch ({detail})",
            "connect to a host name that the server's certificate lists (the host in api.base_url)",
        )
    if code in _VALIDITY_CODES:
        return SystemicFailure(
            f"TLS certificate verify failed: {detail}",
            "check this machine's clock; otherwise the server's certificate needs renewing",
        )
    return SystemicFailure(f"TLS certificate verify failed: {detail}", _TRUST_FIX)


def _handshake_failure(error: ssl.SSLError) -> SystemicFailure | None:
    reason = str(getattr(error, "reason", None) or "")
    detail = reason.lower().replace("_", " ")
    if reason in _NOT_TLS_REASONS:
        return SystemicFailure(
            f"the server does not speak TLS ({detail})",
            "check the scheme and port in api.base_url: an http:// server, or the wrong port?",
        )
    if reason in _MISMATCH_REASONS:
        return SystemicFailure(
            f"TLS protocol mismatch ({detail})",
            "the server and this machine share no TLS version or cipher: check api.base_url, then the server's TLS "
            "settings or this machine's OpenSSL",
        )
    return None  # e.g. an EOF in the middle of the handshake: the server may just be busy


def _name_failure(error: socket.gaierror) -> SystemicFailure | None:
    if error.errno not in _NO_SUCH_NAME:
        return None
    return SystemicFailure(
        f"the host name does not resolve ({error.strerror})",
        "check the spelling of the host in api.base_url, then this machine's DNS settings and network",
        confirm=True,
    )


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
    if isinstance(exc, httpx.ConnectError):
        systemic = systemic_failure(exc)
        if systemic is not None:
            return systemic.what[:_ERROR_TEXT_CHARS]
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
