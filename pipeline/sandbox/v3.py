"""v3 in the sandbox: ``POST /v3/messages``, ``GET /v3/messages/{id}``, ``GET /v3/templates/{id}`` and
``GET /v3/templates?name=``.

Every answer is the v3 envelope (``success``, ``data``, ``error``, ``meta``) and carries ``X-Request-Id`` and the
``X-RateLimit-*`` headers. A send is checked in this order: the API key, the rate limit, the Idempotency-Key
(replay or 409), the body, the template; then it may meet an injected failure; then it is accepted - one message per
number and channel, listed in no particular order - unless it asked for ``"sandbox": true``, which answers alike
(with ``X-Sandbox: true``) and counts nothing.

Each accepted message is kept in the registry and lives out its fate (``lifecycle``): ``GET /v3/messages/{id}`` tells
how far it got at the moment of asking, and, with webhooks configured, each status change is posted when it happens.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from pipeline.sandbox.exchange import (
    Headers,
    Request,
    Response,
    Route,
    is_guid,
    json_response,
    media_type,
    parse_json,
)
from pipeline.sandbox.idempotency import KEY_RE, KeptAnswer
from pipeline.sandbox.lifecycle import iso_time, price_of, steps_of
from pipeline.sandbox.registry import KeptMessage, RegistryError
from pipeline.sandbox.state import SandboxState
from pipeline.sandbox.templates import CHANNELS, Template

MESSAGES_PATH = "/v3/messages"
TEMPLATES_PATH = "/v3/templates"
MAX_RECIPIENTS = 1000
_FIELDS = ("to", "template", "channel", "sandbox")
_TEMPLATE_FIELDS = ("id", "name", "parameters")
_E164_SHAPE = re.compile(r"\+[1-9][0-9]{1,14}")
_DOC_URL = "https://docs.sent.dm/reference/api/errors#"
_RETRY_AFTER = (("Retry-After", "1"),)

Meta = dict[str, str]
Problem = tuple[str, str, str]  # (field, message, code)
_Answer = Callable[[Request, SandboxState, Meta], Response]


def route(path: str) -> Route | None:
    if path == MESSAGES_PATH:
        return _SEND_ROUTE
    if path.startswith(MESSAGES_PATH + "/") and "/" not in path[len(MESSAGES_PATH) + 1 :]:
        return _MESSAGE_STATUS_ROUTE
    if path == TEMPLATES_PATH:
        return _FIND_TEMPLATE_ROUTE
    if path.startswith(TEMPLATES_PATH + "/") and "/" not in path[len(TEMPLATES_PATH) + 1 :]:
        return _DESCRIBE_TEMPLATE_ROUTE
    return None


def _v3(answer: _Answer) -> Callable[[Request, SandboxState], Response]:
    """Give the answer a request id, and every answer the headers every v3 answer has."""

    def answer_v3(request: Request, state: SandboxState) -> Response:
        meta = {
            "request_id": f"req_{uuid.uuid4().hex}",
            "timestamp": datetime.fromtimestamp(state.clock(), UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "version": "v3",
        }
        response = answer(request, state, meta)
        # a new Response: the one the route returned may be the kept first answer of an Idempotency-Key
        headers = (*response.headers, ("X-Request-Id", meta["request_id"]), *state.rate_window.headers())
        return Response(response.status, response.body, headers)

    return answer_v3


def _success(status: int, data: object, meta: Meta, headers: Headers = ()) -> Response:
    return json_response(status, {"success": True, "data": data, "error": None, "meta": meta}, headers)


def _failure(
    status: int,
    code: str,
    message: str,
    meta: Meta,
    details: dict[str, list[str]] | None = None,
    headers: Headers = (),
) -> Response:
    error = {"code": code, "message": message, "details": details, "doc_url": _DOC_URL + code}
    return json_response(status, {"success": False, "data": None, "error": error, "meta": meta}, headers)


def _admit(request: Request, state: SandboxState, meta: Meta) -> Response | None:
    """The checks every v3 endpoint makes first: the key, then the account's rate limit, then the profile."""
    api_key = request.headers.get("x-api-key", "")
    if not api_key:
        return _failure(401, "AUTH_001", "x-api-key header is missing", meta)
    if state.api_key is not None and api_key != state.api_key:
        return _failure(401, "AUTH_002", "invalid API key", meta)
    if not state.rate_window.admit():
        wait_s = state.rate_window.retry_after_s()
        message = f"rate limit of {state.rate_window.limit} requests a minute reached; retry after {wait_s} s"
        return _failure(429, "BUSINESS_002", message, meta, headers=(("Retry-After", str(wait_s)),))
    profile = request.headers.get("x-profile-id")
    if profile is not None and not is_guid(profile):
        return _failure(
            400, "VALIDATION_003", "x-profile-id must be a UUID", meta, {"x-profile-id": ["must be a UUID"]}
        )
    return None


# --- POST /v3/messages --------------------------------------------------------------------------------------------


def _send(request: Request, state: SandboxState, meta: Meta) -> Response:
    refused = _admit(request, state, meta)
    if refused is not None:
        return refused
    key = request.headers.get("idempotency-key")
    if key is not None:
        if KEY_RE.fullmatch(key) is None:
            text = "Idempotency-Key must be 1 to 255 letters, digits, '-' or '_'"
            return _failure(400, "VALIDATION_007", text, meta, {"Idempotency-Key": [text]})
        kept = state.idempotency.find(request.headers["x-api-key"], key)
        if kept is not None:
            return _repeat(kept, state, meta)
    if media_type(request.headers) != "application/json":
        text = "Content-Type must be application/json"
        return _failure(400, "VALIDATION_001", text, meta, {"content-type": [text]})
    ok, body = parse_json(request.body)
    if not ok or not isinstance(body, dict):
        text = "request body must be a JSON object" if ok else "request body is not valid JSON"
        return _failure(400, "VALIDATION_001", text, meta, {"body": [text]})
    problems = _body_problems(body)
    if problems:
        return _invalid(problems, meta)
    return _send_valid(request, state, meta, body)


def _repeat(kept: KeptAnswer, state: SandboxState, meta: Meta) -> Response:
    if state.idempotency.in_flight(kept):
        message = "a request with this Idempotency-Key is still being processed; retry shortly with the same key"
        return _failure(409, "CONFLICT_001", message, meta, headers=_RETRY_AFTER)
    first = kept.response
    replay = (("Idempotent-Replayed", "true"), ("X-Original-Request-Id", kept.request_id))
    return Response(first.status, first.body, (*first.headers, *replay))


def _send_valid(request: Request, state: SandboxState, meta: Meta, body: dict[str, Any]) -> Response:
    reference: dict[str, Any] = body["template"]
    parameters: dict[str, str] = reference.get("parameters", {})
    template = (
        state.templates.by_id(reference["id"]) if "id" in reference else state.templates.by_name(reference["name"])
    )
    if template is None:
        which = f"id {reference['id']}" if "id" in reference else f"name {reference['name']!r}"
        return _failure(404, "RESOURCE_002", f"no template with {which}", meta)
    missing = [name for name in template.variables if name not in parameters]
    if missing:
        message = f"template.parameters lacks what template {template.name} declares: {', '.join(missing)}"
        details = {f"template.parameters.{name}": [f"required by template {template.name}"] for name in missing}
        return _failure(400, "VALIDATION_001", message, meta, details)
    if template.status != "APPROVED":
        message = f"template {template.name} is {template.status}; only APPROVED templates can be sent"
        return _failure(422, "BUSINESS_005", message, meta)
    channels: list[str] = body.get("channel") or [_default_channel(template)]
    unavailable = [channel for channel in channels if channel not in template.channels]
    if unavailable:
        message = f"template {template.name} is not set up for {', '.join(unavailable)}"
        return _failure(422, "BUSINESS_007", message, meta, {"channel": [message]})
    injected = _injected_failure(state, meta)
    if injected is not None:
        return injected
    return _accept(request, state, meta, body, template, parameters, channels)


def _default_channel(template: Template) -> str:
    # the real API picks a channel per recipient; the sandbox picks SMS whenever the template has it
    return "sms" if "sms" in template.channels else template.channels[0]


def _injected_failure(state: SandboxState, meta: Meta) -> Response | None:
    status = state.injected_failure()
    if status == 503:
        return _failure(503, "SERVICE_001", "service temporarily unavailable", meta, headers=_RETRY_AFTER)
    if status == 429:
        return _failure(429, "BUSINESS_002", "too many requests", meta, headers=_RETRY_AFTER)
    if status is not None:
        return _failure(500, "INTERNAL_001", "internal server error", meta)
    return None


def _accept(
    request: Request,
    state: SandboxState,
    meta: Meta,
    body: dict[str, Any],
    template: Template,
    parameters: dict[str, str],
    channels: list[str],
) -> Response:
    text = template.render(parameters)
    key = request.headers.get("idempotency-key")
    recipients = [
        {"message_id": state.new_message_id(key, number, channel), "to": number, "channel": channel, "body": text}
        for number in body["to"]
        for channel in channels
    ]
    # the real API promises no order; a client that matches answers to numbers by position must fail here
    state.shuffler.shuffle(recipients)
    data = {"status": "QUEUED", "template_id": template.id, "template_name": template.name, "recipients": recipients}
    rehearsal = body.get("sandbox", False)
    if not rehearsal:
        try:
            _keep_messages(state, recipients, template.id)
        except RegistryError as exc:
            # nothing is answered as accepted that a status lookup could not find; the request can be retried
            return _failure(500, "INTERNAL_001", str(exc), meta)
    response = _success(202, data, meta, (("X-Sandbox", "true"),) if rehearsal else ())
    if not rehearsal:
        state.record_acceptance(request.headers, body, (recipient["to"] for recipient in recipients))
    if key is not None:
        state.idempotency.keep(request.headers["x-api-key"], key, response, meta["request_id"], state.latency_s)
    return response


def _keep_messages(state: SandboxState, recipients: list[dict[str, str]], template_id: str) -> None:
    """Keep each new message for status lookups and schedule its webhooks; a message the registry already holds (a
    resend under the same key that this sandbox did not see first) keeps its first life and posts nothing again."""
    accepted_at = state.clock()
    for recipient in recipients:
        message = KeptMessage(recipient["message_id"], accepted_at, recipient["to"], recipient["channel"], template_id)
        if state.registry.add(message, check_kept=state.poster is not None) and state.poster is not None:
            steps = steps_of(message.id, message.channel, accepted_at, state.delivery)
            state.poster.schedule(message.id, message.channel, template_id, steps)


def _invalid(problems: list[Problem], meta: Meta) -> Response:
    """400 listing every problem under ``details``; the code and message are the first problem's."""
    details: dict[str, list[str]] = {}
    for field, text, _code in problems:
        details.setdefault(field, []).append(text)
    _field, text, code = problems[0]
    return _failure(400, code, text, meta, details)


def _body_problems(body: dict[str, Any]) -> list[Problem]:
    problems = _to_problems(body) + _template_problems(body) + _channel_problems(body)
    if "sandbox" in body and not isinstance(body["sandbox"], bool):
        problems.append(("sandbox", "sandbox must be true or false", "VALIDATION_001"))
    for key in body:
        if key == "parameters":
            problems.append((key, "parameters belong inside template: {template: {id, parameters}}", "VALIDATION_001"))
        elif key not in _FIELDS:
            problems.append((key, f"property {key} should not exist", "VALIDATION_001"))
    return problems


def _to_problems(body: dict[str, Any]) -> list[Problem]:
    numbers = body.get("to")
    if numbers is None:
        return [("to", "to is required", "VALIDATION_004")]
    if not isinstance(numbers, list):
        return [("to", "to must be a list of E.164 phone numbers", "VALIDATION_001")]
    if not 1 <= len(numbers) <= MAX_RECIPIENTS:
        return [("to", f"to must list 1 to {MAX_RECIPIENTS} numbers, not {len(numbers)}", "VALIDATION_005")]
    # the message names the position only: numbers are people's data, and error messages end up in logs
    return [
        (f"to[{index}]", f"to[{index}] is not a valid E.164 phone number", "VALIDATION_002")
        for index, number in enumerate(numbers)
        if not _is_e164(number)
    ]


def _is_e164(number: object) -> bool:
    """A number written exactly as E.164 (``+`` and digits only) that is valid for its country."""
    if not isinstance(number, str) or _E164_SHAPE.fullmatch(number) is None:
        return False
    # imported here, not at the top: loading phonenumbers takes about 70 ms, which every command would pay
    from pipeline.phones import decide_phone

    return decide_phone(number, None)[0] == number


def _template_problems(body: dict[str, Any]) -> list[Problem]:
    reference = body.get("template")
    if reference is None:
        return [("template", "template is required", "VALIDATION_004")]
    if not isinstance(reference, dict):
        return [("template", "template must be an object: {id or name, parameters}", "VALIDATION_001")]
    problems: list[Problem] = []
    if "id" in reference and "name" in reference:
        problems.append(("template", "template takes id or name, not both", "VALIDATION_001"))
    elif "id" not in reference and "name" not in reference:
        problems.append(("template", "template.id or template.name is required", "VALIDATION_004"))
    if "id" in reference and not is_guid(reference["id"]):
        problems.append(("template.id", "template.id must be a UUID", "VALIDATION_003"))
    if "name" in reference and (not isinstance(reference["name"], str) or not reference["name"]):
        problems.append(("template.name", "template.name must be a non-empty string", "VALIDATION_001"))
    parameters = reference.get("parameters", {})
    if not isinstance(parameters, dict):
        problems.append(("template.parameters", "template.parameters must be an object of strings", "VALIDATION_001"))
    else:
        problems.extend(
            (f"template.parameters.{name}", f"template.parameters.{name} must be a string", "VALIDATION_001")
            for name, value in parameters.items()
            if not isinstance(value, str)
        )
    problems.extend(
        (f"template.{key}", f"property template.{key} should not exist", "VALIDATION_001")
        for key in reference
        if key not in _TEMPLATE_FIELDS
    )
    return problems


def _channel_problems(body: dict[str, Any]) -> list[Problem]:
    if "channel" not in body:
        return []
    channels = body["channel"]
    if not isinstance(channels, list):
        return [("channel", f"channel must be a list of {', '.join(CHANNELS)}", "VALIDATION_001")]
    if not channels:
        return [("channel", "channel must name at least one channel, or be left out", "VALIDATION_005")]
    problems: list[Problem] = []
    for index, channel in enumerate(channels):
        if channel not in CHANNELS:
            problems.append(
                (f"channel[{index}]", f"channel[{index}] must be one of {', '.join(CHANNELS)}", "VALIDATION_006")
            )
        elif channel in channels[:index]:
            # each listed channel is one more message to every number: a repeat would text everyone twice
            problems.append((f"channel[{index}]", f"channel lists {channel} twice", "VALIDATION_001"))
    return problems


# --- GET /v3/messages/{id} ---------------------------------------------------------------------------------------


def _message_status(request: Request, state: SandboxState, meta: Meta) -> Response:
    refused = _admit(request, state, meta)
    if refused is not None:
        return refused
    message_id = request.path[len(MESSAGES_PATH) + 1 :]
    if not is_guid(message_id):
        return _failure(400, "VALIDATION_003", "a message id must be a UUID", meta, {"id": ["must be a UUID"]})
    try:
        kept = state.registry.find(message_id.lower())
    except RegistryError as exc:
        return _failure(500, "INTERNAL_001", str(exc), meta)
    if kept is None:
        return _failure(404, "RESOURCE_001", f"no message with id {message_id}", meta)
    now = state.clock()
    steps = steps_of(kept.id, kept.channel, kept.accepted_at, state.delivery)
    reached = [step for step in steps if step.at <= now] or steps[:1]
    data = {
        "id": kept.id,
        "status": reached[-1].status,
        "channel": kept.channel,
        "phone": kept.phone,
        "price": price_of(kept.channel, reached),
        "template_id": kept.template_id,
        "events": [
            {"status": step.status, "timestamp": iso_time(step.at), "description": step.description} for step in reached
        ],
    }
    return _success(200, data, meta)


# --- GET /v3/templates/{id}, GET /v3/templates?name= --------------------------------------------------------------


def _describe_template(request: Request, state: SandboxState, meta: Meta) -> Response:
    refused = _admit(request, state, meta)
    if refused is not None:
        return refused
    template_id = request.path[len(TEMPLATES_PATH) + 1 :]
    if not is_guid(template_id):
        return _failure(400, "VALIDATION_003", "a template id must be a UUID", meta, {"id": ["must be a UUID"]})
    template = state.templates.by_id(template_id)
    if template is None:
        return _failure(404, "RESOURCE_002", f"no template with id {template_id}", meta)
    return _success(200, template.describe(), meta)


def _find_template(request: Request, state: SandboxState, meta: Meta) -> Response:
    refused = _admit(request, state, meta)
    if refused is not None:
        return refused
    names = parse_qs(request.query).get("name", [])
    if len(names) != 1:
        text = "give exactly one name: GET /v3/templates?name=NAME"
        return _failure(400, "VALIDATION_004", text, meta, {"name": [text]})
    template = state.templates.by_name(names[0])
    return _success(200, [] if template is None else [template.describe()], meta)


_SEND_ROUTE = Route(("POST",), _v3(_send))
_MESSAGE_STATUS_ROUTE = Route(("GET", "HEAD"), _v3(_message_status))
_FIND_TEMPLATE_ROUTE = Route(("GET", "HEAD"), _v3(_find_template))
_DESCRIBE_TEMPLATE_ROUTE = Route(("GET", "HEAD"), _v3(_describe_template))
