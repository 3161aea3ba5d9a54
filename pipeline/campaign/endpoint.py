"""Where requests go and what is checked there before the first send: the spec's base URL, or an embedded sandbox
started for the command; and, on v3, the template check (api/templates.py) over every template the input uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import polars as pl

from pipeline import source
from pipeline.api.templates import TemplateCheck, check_templates
from pipeline.sandbox import SandboxServer
from pipeline.spec import GUID_PATTERN, CampaignSpec, SandboxSpec


@contextlib.contextmanager
def api_endpoint(spec: CampaignSpec) -> Iterator[str]:
    """The base URL of the API for this command; a sandbox spec gets a local server for as long as it runs."""
    if not spec.api.is_sandbox:
        yield spec.api.base_url
        return
    box = spec.api.sandbox or SandboxSpec()
    templates = None if box.templates is None else [t.model_dump() for t in box.templates]
    server = SandboxServer(
        latency_ms=box.latency_ms, failure_rate=box.failure_rate, seed=box.seed, count_keys=False, templates=templates
    )
    with server:
        yield server.url


def template_references(spec: CampaignSpec) -> list[str]:
    """Every distinct template the campaign sends, as the fields frame holds it: the literal, or - for a template
    read from a column - each distinct well-formed value of that column (one pass over the input, that column only;
    malformed values make invalid rows, reported with the rest)."""
    message = spec.message
    by_id = message.template_id is not None
    chosen = message.template_id if by_id else message.template_name
    assert chosen is not None
    if chosen.value is not None:
        return [_literal(chosen.value, by_id)]
    column = str(chosen.column)
    found: set[str] = set()
    contacts = source.open_contacts(spec.input, spec.input_format, required=[column])
    for frame in contacts.batches():
        values = frame.select(_reference(pl.col(column).cast(pl.String), by_id=by_id).unique().drop_nulls())
        found.update(values.to_series().to_list())
    return sorted(found)


def _literal(value: str, by_id: bool) -> str:
    return value.strip().lower() if by_id else value.strip()


def _reference(value: pl.Expr, *, by_id: bool) -> pl.Expr:
    text = value.str.strip_chars()
    if by_id:
        text = text.str.to_lowercase()
        return pl.when(text.str.contains(GUID_PATTERN)).then(text)
    return pl.when(text != "").then(text)


def checked_templates(spec: CampaignSpec, base_url: str) -> TemplateCheck | None:
    """The template check, on the generations that have one (v3); None on the others."""
    if spec.api.version != "v3":
        return None
    _, api_key = spec.api.credentials()
    return check_templates(
        spec.spec_path,
        spec.message,
        template_references(spec),
        base_url=base_url,
        api_key=api_key,
        profile_id=spec.api.profile_id or "",
        timeout_s=spec.api.timeout_s,
        ca_bundle=spec.api.ca_bundle,
    )
