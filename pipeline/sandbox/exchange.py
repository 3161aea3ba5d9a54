"""What a sandbox route is given and what it gives back: one request, one answer, and the generic error body.

The HTTP machinery in ``server`` turns bytes into a :class:`Request` and a :class:`Response` into bytes; the modules
for each API generation (``v1``, ``v2``, ``v3``) only ever see these two types.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pipeline.sandbox.state import SandboxState

Headers = tuple[tuple[str, str], ...]

_GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class Request(NamedTuple):
    """One well-framed request; header names are lower-cased, repeated headers joined with ", ".

    A NamedTuple rather than a frozen dataclass: one is built per request, and this is several times cheaper.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class Response:
    """A status, an optional JSON body and extra headers, ready to serialise."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: Headers = ()) -> None:
        self.status = status
        self.body = body
        self.headers = headers


class Route(NamedTuple):
    """The methods a path takes and what answers them; ``server`` answers 405 for any other method."""

    methods: tuple[str, ...]
    answer: Callable[[Request, SandboxState], Response]


def json_response(status: int, payload: dict[str, Any], headers: Headers = ()) -> Response:
    return Response(status, json.dumps(payload, separators=(",", ":")).encode(), headers)


def plain_error(
    status: int,
    message: str,
    code: str | None = None,
    errors: dict[str, list[str]] | None = None,
    headers: Headers = (),
) -> Response:
    """The error body of v1 and v2, also used for requests no route takes; ``code`` and ``errors`` only when they
    apply."""
    payload: dict[str, Any] = {"statusCode": status}
    if code is not None:
        payload["code"] = code
    payload["message"] = message
    if errors is not None:
        payload["errors"] = errors
    return json_response(status, payload, headers)


def is_guid(value: object) -> bool:
    return isinstance(value, str) and _GUID_RE.fullmatch(value) is not None


def media_type(headers: dict[str, str]) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return headers.get("content-type", "").partition(";")[0].strip().lower()


def parse_json(body: bytes) -> tuple[bool, Any]:
    """(True, value) for a body that is JSON text, else (False, None)."""
    try:
        return True, json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError; RecursionError is deeply nested input.
        return False, None
