"""v2 in the sandbox: ``POST /v2/messages/contact``.

v1 with ``templateVariables`` in place of ``messageBody`` and no ``webhookUrl``: the same headers, credentials,
error codes and injected failures. Success is 204 with an empty body, as the real endpoint answers, unless the
sandbox was told ``empty_success=False`` (then 200 JSON, as v1 answers).
"""

from __future__ import annotations

from pipeline.sandbox import v1
from pipeline.sandbox.exchange import Request, Response, Route
from pipeline.sandbox.state import SandboxState

PATH = "/v2/messages/contact"
_FIELDS = ("contactId", "templateId", "templateVariables")


def route(path: str) -> Route | None:
    return _ROUTE if path == PATH else None


def _answer(request: Request, state: SandboxState) -> Response:
    problem = v1.check_headers(request.headers, state)
    if problem is not None:
        return problem
    body = v1.read_object(request.body)
    if isinstance(body, Response):
        return body
    problems = v1.id_problems(body) + v1.variables_problems(body, "templateVariables")
    problems += v1.unknown_key_problems(body, _FIELDS)
    if problems:
        return v1.bad_request(problems)
    return v1.accept(request, state, body, empty=state.empty_success is not False)


_ROUTE = Route(("POST",), _answer)
