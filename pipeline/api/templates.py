"""The v3 template check made before the first send (and by `validate`): each distinct template the campaign uses is
looked up once - `GET /v3/templates/{id}`, or `GET /v3/templates?name=NAME` for a template named by name - and must
exist, be APPROVED, and have every variable it declares mapped by the spec. Variables the spec maps that a template
does not declare are a warning, and are left out of that template's messages.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.api.base import USER_AGENT
from pipeline.api.v3 import V3
from pipeline.errors import ApiUnavailable, SpecError
from pipeline.outcome import describe_exception, parse_body, systemic_failure
from pipeline.send import retry_after_s
from pipeline.spec import MessageSpec

_ATTEMPTS = 4  # a busy server (429, 503) or a dropped connection gets a few more tries, as a send would
_MAX_WAIT_S = 10.0


@dataclass(frozen=True)
class TemplateInfo:
    reference: str  # the GUID (lower-case) or the name, as the fields frame holds it
    id: str
    name: str
    status: str
    variables: tuple[str, ...]


@dataclass
class TemplateCheck:
    """What the check found: each template's declared variables (by reference), and warnings to show."""

    declared: dict[str, tuple[str, ...]] = field(default_factory=dict)
    templates: list[TemplateInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for a report: which templates were checked, with their status."""
        shown = ", ".join(f"{t.name} ({t.status.lower()})" for t in self.templates)
        return f"{len(self.templates)} template(s) checked with the API: {shown}" if shown else "no template to check"


def check_templates(
    spec_path: Path,
    message: MessageSpec,
    references: Iterable[str],
    *,
    base_url: str,
    api_key: str,
    profile_id: str = "",
    timeout_s: float = 30.0,
    ca_bundle: Path | None = None,
) -> TemplateCheck:
    """Look every template up; raise SpecError listing every problem (nothing may be sent), ApiUnavailable when the
    API refuses the credentials or cannot be reached."""
    by_name = message.template_id is None
    key = "message.template_name" if by_name else "message.template_id"
    headers = {"x-api-key": api_key, "user-agent": USER_AGENT, "accept": "application/json"}
    if profile_id:
        headers["x-profile-id"] = profile_id
    verify: ssl.SSLContext | bool = True
    if base_url.startswith("https://"):
        verify = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle is not None else None)
    check = TemplateCheck()
    problems: list[str] = []
    mapped = list(message.variables)
    # a proxy named in the environment is used as the sender uses it: never for a server on this machine
    local = httpx.URL(base_url).host in ("127.0.0.1", "localhost", "::1")
    client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, verify=verify, trust_env=not local)
    with client:
        for reference in sorted(set(references)):
            found = _look_up(client, reference, by_name=by_name, secret=api_key)
            if found is None:
                where = f"named {reference!r}" if by_name else reference
                problems.append(f"{key}: no template {where} exists. Hint: check it in the Sent.dm dashboard.")
                continue
            check.templates.append(found)
            check.declared[reference] = found.variables
            if found.status != "APPROVED":
                problems.append(
                    f"{key}: template {found.name} ({found.id}) is {found.status}, not APPROVED: it cannot be sent. "
                    "Hint: wait for its approval, or use an approved template."
                )
            missing = [name for name in found.variables if name not in mapped]
            if missing:
                example = missing[0]
                problems.append(
                    f"message.variables: template {found.name} needs {', '.join(missing)}, which the spec does not "
                    f"map. Hint: add {'them' if len(missing) > 1 else 'it'} under message.variables, e.g. "
                    f"`{example}: {{column: {example}}}`."
                )
            extra = [name for name in mapped if name not in found.variables]
            if extra:
                check.warnings.append(
                    f"{spec_path}: message.variables: template {found.name} has no variable(s) {', '.join(extra)}; "
                    "they are not sent in its messages."
                )
    if problems:
        raise SpecError("\n".join([f"{spec_path}: the template check failed:", *(f"  {p}" for p in problems)]))
    return check


def _look_up(client: httpx.Client, reference: str, *, by_name: bool, secret: str) -> TemplateInfo | None:
    path = "/v3/templates" if by_name else f"/v3/templates/{quote(reference, safe='')}"
    params = {"name": reference} if by_name else None
    answer = _get(client, path, params, secret=secret)
    if answer is None:
        return None
    if by_name:
        listed = answer if isinstance(answer, list) else []
        answer = next((t for t in listed if isinstance(t, dict) and t.get("name") == reference), None)
        if answer is None:
            return None
    if not isinstance(answer, dict):
        raise ApiUnavailable(f"GET {path}: the answer holds no template description; cannot check the template")
    variables = answer.get("variables") or []
    return TemplateInfo(
        reference=reference,
        id=str(answer.get("id", "")),
        name=str(answer.get("name", reference)),
        status=str(answer.get("status", "")).upper(),
        variables=tuple(str(v) for v in variables if isinstance(v, str | int)),
    )


def _get(client: httpx.Client, path: str, params: dict[str, str] | None, *, secret: str) -> Any:
    """The `data` of a 200; None for a 404; ApiUnavailable for what a user must fix or wait out. Answers read as
    sends' answers do (v3.py), waits as the sender's (Retry-After, X-RateLimit-Reset), setup failures as outcome.py
    names them."""
    what = f"GET {path}" + (f"?name={params['name']}" if params else "")
    for attempt in range(1, _ATTEMPTS + 1):
        backoff_s = min(0.5 * 2 ** (attempt - 1), _MAX_WAIT_S)
        try:
            response = client.get(path, params=params)
        except httpx.HTTPError as exc:
            setup = systemic_failure(exc)
            if setup is not None and not setup.confirm:  # a certificate or TLS problem: no retry can help
                raise ApiUnavailable(f"{what}: {setup.what}; cannot check the template. Hint: {setup.fix}") from None
            if attempt == _ATTEMPTS:
                raise ApiUnavailable(
                    f"{what}: {describe_exception(exc)}; cannot check the template before sending. Hint: check "
                    "api.base_url and the network (`validate --offline` skips the check)."
                ) from None
            time.sleep(backoff_s)
            continue
        status = response.status_code
        if status == 200:
            body = parse_body(response.content)
            if body is None:
                raise ApiUnavailable(f"{what}: HTTP 200 without a JSON object; cannot check the template")
            return body.get("data")
        if status == 404:
            return None
        line = V3().read_answer(status, response.content, secret=secret).error
        if status in (401, 403):
            raise ApiUnavailable(
                f"{what}: authentication failed ({line}). Hint: check api.api_key (and api.profile_id)."
            )
        if status in (408, 429, 500, 502, 503, 504) and attempt < _ATTEMPTS:
            time.sleep(min(retry_after_s(response.headers) or backoff_s, _MAX_WAIT_S))
            continue
        raise ApiUnavailable(f"{what}: {line}; cannot check the template before sending.")
    raise ApiUnavailable(f"{what}: no answer after {_ATTEMPTS} attempts")
