"""The seed's generation: `POST /v1/messages/contact` with `x-sender-id` and `x-api-key`, body `{contactId,
templateId, messageBody, webhookUrl?}`; success is any 2xx (204 empty, or JSON with a message id). The server keeps
no Idempotency-Key, so a request whose answer was lost is `unknown` unless send.retry_ambiguous says otherwise."""

from __future__ import annotations

from typing import ClassVar

import polars as pl

from pipeline.api.base import USER_AGENT, Answer, Credentials, Generation, optional_field
from pipeline.fields import CONTACT, ROW, TEMPLATE, WEBHOOK
from pipeline.outcome import Verdict, classify_status, error_text, message_id, parse_body
from pipeline.spec import GUID_PATTERN, URL_PATTERN, FieldSource, MessageSpec


def text_of(source: FieldSource) -> pl.Expr:
    """A field's text: its column (already text) or its literal."""
    if source.value is not None:
        return pl.lit(source.value, dtype=pl.String)
    return pl.col(str(source.column))


def guid(source: FieldSource) -> pl.Expr:
    return text_of(source).str.strip_chars().str.to_lowercase()


def guid_reason(field: str, source: FieldSource | None) -> pl.Expr | None:
    """Empty or not a GUID, for a field read from a column (a literal was checked when the spec was loaded)."""
    if source is None or source.column is None:
        return None
    value = pl.col(field)
    return (
        pl.when(value.is_null() | (value == ""))
        .then(pl.lit(f"{field} is empty (column {source.column})"))
        .when(~value.str.contains(GUID_PATTERN))
        .then(pl.lit(f"{field} is not a GUID (column {source.column})"))
    )


class V1(Generation):
    version = "v1"
    messages_path = "/v1/messages/contact"
    credentials_hint = "check api.sender_id and api.api_key"
    variables_field: ClassVar[str] = "messageBody"

    def headers(self, credentials: Credentials) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-sender-id", credentials.sender_id.encode()),
            (b"x-api-key", credentials.api_key.encode()),
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT.encode()),
        ]

    def recipient_fields(
        self, texts: pl.DataFrame, message: MessageSpec, *, numbers: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        # the spec's version check made sure of both
        assert message.contact_id is not None
        assert message.template_id is not None
        columns = [pl.col(ROW), guid(message.contact_id).alias(CONTACT), guid(message.template_id).alias(TEMPLATE)]
        if message.webhook_url is not None:
            url = text_of(message.webhook_url).str.strip_chars()
            # an empty cell means "no webhook for this row"
            columns.append(pl.when(url != "").then(url).alias(WEBHOOK))
        return texts.select(columns)

    def reasons(self, message: MessageSpec) -> list[pl.Expr]:
        reasons = [guid_reason(CONTACT, message.contact_id), guid_reason(TEMPLATE, message.template_id)]
        hook = message.webhook_url
        if hook is not None and hook.column is not None:
            reasons.append(
                pl.when(pl.col(WEBHOOK).is_not_null() & ~pl.col(WEBHOOK).str.contains(URL_PATTERN)).then(
                    pl.lit(f"webhook_url is not an absolute http(s) URL (column {hook.column})")
                )
            )
        return [r for r in reasons if r is not None]

    def identity(self, message: MessageSpec) -> list[pl.Expr]:
        parts = [pl.col(CONTACT), pl.col(TEMPLATE)]
        if message.webhook_url is not None:
            parts.append(pl.col(WEBHOOK).fill_null(""))
        return parts

    def body(self, message: MessageSpec, parameters: pl.Expr | None, *, rehearsal: bool = False) -> pl.Expr:
        if rehearsal:
            raise ValueError(f"{self.version} has no server-side dry run")
        if parameters is None:  # the spec requires a variable on v1/v2: the API refuses an empty object
            raise ValueError(f"{self.version} needs at least one variable")
        fields = {"contactId": pl.col(CONTACT), "templateId": pl.col(TEMPLATE), self.variables_field: parameters}
        if message.webhook_url is None:
            return pl.struct([e.alias(k) for k, e in fields.items()]).struct.json_encode()
        return optional_field(fields, "webhookUrl", pl.col(WEBHOOK), present=pl.col(WEBHOOK).is_not_null())

    def read_answer(self, status: int, content: bytes, *, secret: str) -> Answer:
        verdict = classify_status(status)
        body = parse_body(content)
        if verdict is Verdict.SENT:
            return Answer(verdict, message_id=message_id(body))
        return Answer(verdict, error=error_text(status, content, body, secret=secret))
