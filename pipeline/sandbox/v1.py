"""v1 in the sandbox: ``POST /v1/messages/contact`` (the seed contract), its checks and its answers.

Also the pieces v2 shares with it - headers, GUID fields, the map of template variables, error codes - since v2 is
v1 with one field renamed.
"""

from __future__ import annotations

import uuid
from typing import Any, cast
from urllib.parse import urlsplit

from pipeline.sandbox.exchange import (
    Request,
    Response,
    Route,
    is_guid,
    json_response,
    media_type,
    parse_json,
    plain_error,
)
from pipeline.sandbox.state import SandboxState

PATH = "/v1/messages/contact"
_FIELDS = ("contactId", "templateId", "messageBody", "webhookUrl")
_RETRY_AFTER = (("Retry-After", "1"),)

Problem = tuple[str, str, str | None]  # (field, message, code or None)


def route(path: str) -> Route | None:
    return _ROUTE if path == PATH else None


def _answer(request: Request, state: SandboxState) -> Response:
    problem = check_headers(request.headers, state)
    if problem is not None:
        return problem
    body = read_object(request.body)
    if isinstance(body, Response):
        return body
    problems = id_problems(body) + variables_problems(body, "messageBody") + _webhook_problems(body)
    problems += unknown_key_problems(body, _FIELDS)
    if problems:
        return bad_request(problems)
    return accept(request, state, body, empty=state.empty_success is True)


def check_headers(headers: dict[str, str], state: SandboxState) -> Response | None:
    """Authentication first, as the real API does, then sender id and media type."""
    api_key = headers.get("x-api-key", "")
    if not api_key:
        return plain_error(401, "x-api-key header is missing", "AUTH-001")
    sender_id = headers.get("x-sender-id", "")
    if not sender_id:
        return plain_error(401, "x-sender-id header is missing", "AUTH-002")
    if (state.api_key is not None and api_key != state.api_key) or (
        state.sender_id is not None and sender_id.lower() != state.sender_id
    ):
        return plain_error(401, "invalid credentials", "AUTH-003")
    if not is_guid(sender_id):
        return plain_error(400, "x-sender-id must be a GUID", "VAL-002", {"x-sender-id": ["must be a GUID"]})
    if media_type(headers) != "application/json":
        return plain_error(415, "Content-Type must be application/json")
    return None


def read_object(raw: bytes) -> dict[str, Any] | Response:
    """The body as a JSON object, or the 400 answer saying why it is not one."""
    ok, body = parse_json(raw)
    if not ok:
        return plain_error(400, "request body is not valid JSON", errors={"body": ["must be valid JSON"]})
    if not isinstance(body, dict):
        return plain_error(400, "request body must be a JSON object", errors={"body": ["must be a JSON object"]})
    return cast("dict[str, Any]", body)


def id_problems(body: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for name in ("contactId", "templateId"):
        value = body.get(name)
        if value is None:
            problems.append((name, f"{name} is required", "VAL-001"))
        elif not is_guid(value):
            problems.append((name, f"{name} must be a GUID", "VAL-002"))
    return problems


def variables_problems(body: dict[str, Any], name: str) -> list[Problem]:
    """Problems of the template-variables object (v1 ``messageBody``, v2 ``templateVariables``)."""
    variables = body.get(name)
    if variables is None:
        return [(name, f"{name} is required", "VAL-003")]
    if not isinstance(variables, dict):
        return [(name, f"{name} must be a JSON object", "VAL-003")]
    if not variables:
        return [(name, f"{name} must not be empty", "VAL-003")]
    return [
        (name, f"{name}.{key} must be a string", "VAL-003")
        for key, value in variables.items()
        if not isinstance(value, str)
    ]


def unknown_key_problems(body: dict[str, Any], known: tuple[str, ...]) -> list[Problem]:
    return [(key, f"property {key} should not exist", None) for key in body if key not in known]


def bad_request(problems: list[Problem]) -> Response:
    """The 400 answer listing every problem under ``errors``.

    ``code`` and ``message`` come from the first problem; callers list known fields first so the code is the most
    specific one.
    """
    errors: dict[str, list[str]] = {}
    for field, text, _code in problems:
        errors.setdefault(field, []).append(text)
    _field, first_text, first_code = problems[0]
    return plain_error(400, first_text, first_code, errors)


def accept(request: Request, state: SandboxState, body: dict[str, Any], *, empty: bool) -> Response:
    """Answer a valid message: an injected failure, or an acceptance (204 empty or 200 with a message id)."""
    failure = state.injected_failure()
    if failure == 503:
        return plain_error(503, "service temporarily unavailable", headers=_RETRY_AFTER)
    if failure == 429:
        return plain_error(429, "too many requests", headers=_RETRY_AFTER)
    if failure is not None:
        return plain_error(500, "internal server error")
    state.record_acceptance(request.headers, body)
    if empty:
        return Response(204)
    return json_response(200, {"messageId": str(uuid.uuid4()), "status": "queued", "channel": "sms"})


def _webhook_problems(body: dict[str, Any]) -> list[Problem]:
    if "webhookUrl" not in body:
        return []
    webhook = body["webhookUrl"]
    if isinstance(webhook, str) and _is_absolute_http_url(webhook):
        return []
    return [("webhookUrl", "webhookUrl must be an absolute http or https URL", None)]


def _is_absolute_http_url(value: str) -> bool:
    if not value or any(ch.isspace() for ch in value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # urlsplit is lazy: a malformed port only fails here
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


_ROUTE = Route(("POST",), _answer)
