"""Sent.dm's webhook signatures ("Svix-style"): the secret from the environment, and the check of one delivery.

A delivery is authentic when one of the `v1,<base64>` values in `X-Webhook-Signature` is the HMAC-SHA256, keyed
with the decoded secret, of `{X-Webhook-ID}.{X-Webhook-Timestamp}.{raw body}`, and its timestamp is within five
minutes of ours. The check runs over the raw bytes, before anything parses the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipeline import errors

SECRET_ENV = "SENT_DM_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
TOLERANCE_S = 5 * 60

ID_HEADER = "X-Webhook-ID"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"


@dataclass(frozen=True)
class WebhookSecret:
    """The decoded signing key. Its repr never shows the key, so it cannot leak through a log or a traceback."""

    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str | None) -> WebhookSecret:
        """The secret from its `whsec_<base64>` form; a SecretError (exit 2) naming the variable otherwise.
        The messages never quote the value."""
        if text is None or not text.strip():
            raise errors.SecretError(
                f"{SECRET_ENV} is not set: set it to the endpoint's signing secret (whsec_...) from Sent.dm's "
                "dashboard, in the environment of the receiver"
            )
        text = text.strip()
        if not text.startswith(SECRET_PREFIX):
            raise errors.SecretError(
                f"{SECRET_ENV} does not start with {SECRET_PREFIX!r}: copy the whole signing secret from Sent.dm's "
                "dashboard"
            )
        try:
            key = base64.b64decode(text.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise errors.SecretError(
                f"{SECRET_ENV}: the part after {SECRET_PREFIX!r} is not valid base64: copy the whole signing secret "
                "from Sent.dm's dashboard"
            )
        return cls(key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebhookSecret:
        return cls.parse(environ.get(SECRET_ENV))


def sign(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """One `v1,<base64>` signature value, as Sent.dm computes it (tests and the bench sign with this too)."""
    message = b"%s.%s.%s" % (webhook_id.encode(), timestamp.encode(), body)
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


class SignatureRejected(Exception):
    """Why a delivery is not accepted as Sent.dm's; the reason is safe to log (it never holds the body)."""


def verify(
    secret: WebhookSecret,
    headers: Mapping[str, str],
    body: bytes,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Return when the delivery is authentic and fresh; raise SignatureRejected saying why not. `headers` must
    look names up case-insensitively (as aiohttp's and Starlette's do)."""
    webhook_id = headers.get(ID_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    signatures = headers.get(SIGNATURE_HEADER)
    if not webhook_id or not timestamp or not signatures:
        named = ((ID_HEADER, webhook_id), (TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signatures))
        raise SignatureRejected("missing header " + ", ".join(name for name, value in named if not value))
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureRejected(f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    # the timestamp is checked before the signature's cost is paid, and both ways: a timestamp far in the future
    # would let a captured delivery be replayed later
    skew_s = clock() - sent_at
    if skew_s > TOLERANCE_S:
        raise SignatureRejected(f"timestamp too old ({int(skew_s)} s; at most {TOLERANCE_S} s)")
    if skew_s < -TOLERANCE_S:
        raise SignatureRejected(f"timestamp in the future ({int(-skew_s)} s ahead; at most {TOLERANCE_S} s)")
    expected = sign(secret.key, webhook_id, timestamp, body).encode()
    # every value is compared (no early exit), each in constant time; values of other versions (v1a, ...) are
    # skipped as Svix's own libraries do
    matched = False
    for value in signatures.split():
        if value.startswith("v1,"):
            matched |= hmac.compare_digest(value.encode(), expected)
    if not matched:
        raise SignatureRejected("bad signature")
