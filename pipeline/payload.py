"""Rows -> the seed endpoint's request bodies and deterministic idempotency keys, in bulk.

`message_fields` turns the input frame into one text column per payload field (GUIDs trimmed and lower-cased,
webhook URLs trimmed, variables as they are). `encode_payloads` renders the JSON bodies with polars' JSON encoder and
derives each row's idempotency key from the campaign name and the row's content, so the same row of the same
campaign always gets the same key, across runs, machines and row order.
"""

from __future__ import annotations

import hashlib

import polars as pl

from pipeline.spec import FieldSource, MessageSpec

ROW = "result_row"
CONTACT = "contact_id"
TEMPLATE = "template_id"
WEBHOOK = "webhook_url"
BODY = "payload"
KEY = "idempotency_key"
CONTENT = "content"


def variable_column(index: int) -> str:
    """Name of the fields-frame column holding the index-th variable (user variable names may be anything)."""
    return f"var_{index}"


def _text(source: FieldSource) -> pl.Expr:
    if source.value is not None:
        return pl.lit(source.value, dtype=pl.String)
    return pl.col(str(source.column)).cast(pl.String)


def message_fields(frame: pl.DataFrame, message: MessageSpec) -> pl.DataFrame:
    """One text column per payload field, plus `result_row` and the row's `content` (its identity for duplicate
    detection and idempotency keys)."""
    columns = [
        pl.col(ROW),
        _text(message.contact_id).str.strip_chars().str.to_lowercase().alias(CONTACT),
        _text(message.template_id).str.strip_chars().str.to_lowercase().alias(TEMPLATE),
        *(_text(source).alias(variable_column(i)) for i, source in enumerate(message.variables.values())),
    ]
    if message.webhook_url is not None:
        url = _text(message.webhook_url).str.strip_chars()
        # an empty cell means "no webhook for this row"
        columns.append(pl.when(url != "").then(url).alias(WEBHOOK))
    fields = frame.select(columns)
    return fields.with_columns(_content(message).alias(CONTENT))


def _content(message: MessageSpec) -> pl.Expr:
    """An unambiguous text of everything that goes into the request: each part is prefixed with its length, so no
    choice of values can make two different rows read the same."""
    parts: list[pl.Expr] = [pl.col(CONTACT), pl.col(TEMPLATE)]
    for i, name in enumerate(message.variables):
        parts += [pl.lit(name), pl.col(variable_column(i))]
    if message.webhook_url is not None:
        parts.append(pl.col(WEBHOOK).fill_null(""))
    texts = [p.fill_null("") for p in parts]
    framed = [pl.concat_str([t.str.len_bytes().cast(pl.String), pl.lit(":"), t]) for t in texts]
    return pl.concat_str(framed, separator="|")


def encode_payloads(fields: pl.DataFrame, message: MessageSpec, *, campaign: str, keys: bool = True) -> pl.DataFrame:
    """`result_row`, the JSON request body and (unless `keys` is False) the idempotency key of every row in
    `fields`."""
    body = {
        "contactId": pl.col(CONTACT),
        "templateId": pl.col(TEMPLATE),
        "messageBody": pl.struct([pl.col(variable_column(i)).alias(name) for i, name in enumerate(message.variables)]),
    }
    plain = pl.struct([e.alias(k) for k, e in body.items()]).struct.json_encode()
    if message.webhook_url is None:
        encoded = plain
    else:
        with_hook = pl.struct([*(e.alias(k) for k, e in body.items()), pl.col(WEBHOOK).alias("webhookUrl")])
        with_hook = with_hook.struct.json_encode()
        encoded = pl.when(pl.col(WEBHOOK).is_null()).then(plain).otherwise(with_hook)
    out = fields.select(pl.col(ROW), encoded.alias(BODY))
    if KEY in fields.columns:
        return out.with_columns(fields[KEY])
    if not keys:
        return out.with_columns(pl.lit(None, dtype=pl.String).alias(KEY))
    return out.with_columns(idempotency_keys(fields[CONTENT], campaign=campaign))


def idempotency_keys(content: pl.Series, *, campaign: str) -> pl.Series:
    """32 hex characters per row: BLAKE2b-128 of the campaign name and the row's content.

    Hashed in Python because polars' own hash is documented as unstable across polars versions, and a key that
    changed after an upgrade would make a resumed campaign send every row again."""
    prefix = f"{len(campaign.encode())}:{campaign}|".encode()
    blake2b = hashlib.blake2b
    keys = [blake2b(prefix + text.encode(), digest_size=16).hexdigest() for text in content]
    return pl.Series(KEY, keys, dtype=pl.String)
