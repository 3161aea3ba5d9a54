"""Where requests go and what is checked there before the first send: the spec's base URL, or an embedded sandbox
started for the command; and, on v3, the template check (api/templates.py) over every template the input uses."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from pipeline import source
from pipeline.api.templates import TemplateCheck, check_templates
from pipeline.sandbox import SandboxServer
from pipeline.sandbox.lifecycle import DeliveryOptions
from pipeline.sandbox.webhook_posts import WebhookTarget
from pipeline.spec import GUID_PATTERN, CampaignSpec, SandboxSpec


@contextlib.contextmanager
def api_endpoint(spec: CampaignSpec, *, notice: Callable[[str], None] | None = None) -> Iterator[str]:
    """The base URL of the API for this command; a sandbox spec gets a local server for as long as it runs.

    The sandbox keeps the v3 messages it accepts in ``sandbox_messages_path(spec)``, so a later command's sandbox
    (`track --poll`) answers ``GET /v3/messages/{id}`` for them, and posts their status changes when
    ``api.sandbox.webhooks.url`` is set. On leaving, it waits for the status changes still due (about
    ``delivery_ms`` and a little more, however dead the receiver), then ``notice`` gets one line saying how many
    webhooks could not be delivered, and what kept the registry from being written, if anything did."""
    if not spec.api.is_sandbox:
        yield spec.api.base_url
        return
    box = spec.api.sandbox or SandboxSpec()
    templates = None if box.templates is None else [t.model_dump() for t in box.templates]
    hooks = box.webhooks
    target = None
    if hooks.url and hooks.secret is not None:
        key = base64.b64decode(hooks.secret.get_secret_value().removeprefix("whsec_"))
        target = WebhookTarget(hooks.url, key, include_reason=hooks.include_reason)
    delivery = DeliveryOptions(
        delivery_ms=box.delivery_ms,
        failure_rate=box.delivery_failure_rate,
        read_rate=box.read_rate,
        seed=box.seed or 0,
    )
    server = SandboxServer(
        latency_ms=box.latency_ms,
        failure_rate=box.failure_rate,
        seed=box.seed,
        count_keys=False,
        templates=templates,
        delivery=delivery,
        messages_path=sandbox_messages_path(spec),
        webhooks=target,
    )
    with server:
        yield server.url
    if notice is None:
        return
    counts = server.webhook_counts()
    if target is not None and counts is not None and counts[0]:
        scheduled, _delivered, undelivered = counts
        notice(
            f"Sandbox webhooks: {scheduled - undelivered} of {scheduled} status event(s) delivered to "
            f"{target.where}; {undelivered} could not be delivered"
        )
    if server.registry_error is not None:
        notice(f"Sandbox: {server.registry_error}; `track --poll` will not find every message")


def sandbox_messages_path(spec: CampaignSpec) -> Path:
    """Where a sandbox campaign's accepted v3 messages are kept: beside its results file, named after the campaign
    (shards and test sends of the campaign share it)."""
    return spec.output.results.parent / f"{spec.name}.sandbox-messages.sqlite"


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
