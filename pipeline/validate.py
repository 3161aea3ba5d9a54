"""Row validation: every reason a row cannot be sent, and which rows repeat an earlier one.

All checks are polars expressions over the whole frame. A row gets every reason that applies, joined by "; ", so a
user fixes the file once. Reasons name the field and the column but never the value: they are grouped and counted
in reports, and values are people's data.
"""

from __future__ import annotations

import polars as pl

from pipeline.payload import CONTACT, CONTENT, ROW, TEMPLATE, WEBHOOK, variable_column
from pipeline.spec import GUID_PATTERN, URL_PATTERN, FieldSource, MessageSpec

STATUS = "result_status"
ERROR = "result_error"
INVALID = "invalid"
DUPLICATE = "duplicate"
REASON_SEPARATOR = "; "


def _guid_reason(field: str, source: FieldSource) -> pl.Expr | None:
    if source.column is None:  # a literal, checked once when the spec was loaded
        return None
    value = pl.col(field)
    return (
        pl.when(value.is_null() | (value == ""))
        .then(pl.lit(f"{field} is empty (column {source.column})"))
        .when(~value.str.contains(GUID_PATTERN))
        .then(pl.lit(f"{field} is not a GUID (column {source.column})"))
    )


def _reasons(message: MessageSpec) -> list[pl.Expr]:
    reasons = [_guid_reason(CONTACT, message.contact_id), _guid_reason(TEMPLATE, message.template_id)]
    for i, (name, source) in enumerate(message.variables.items()):
        if source.column is None:
            continue
        value = pl.col(variable_column(i))
        reasons.append(
            pl.when(value.is_null() | (value.str.strip_chars() == "")).then(
                pl.lit(f"variable {name} is empty (column {source.column})")
            )
        )
    hook = message.webhook_url
    if hook is not None and hook.column is not None:
        reasons.append(
            pl.when(pl.col(WEBHOOK).is_not_null() & ~pl.col(WEBHOOK).str.contains(URL_PATTERN)).then(
                pl.lit(f"webhook_url is not an absolute http(s) URL (column {hook.column})")
            )
        )
    return [r for r in reasons if r is not None]


def check_rows(fields: pl.DataFrame, message: MessageSpec) -> pl.DataFrame:
    """`fields` (from payload.message_fields) plus `result_status` ("invalid", "duplicate" or null for a row to
    send) and `result_error` (every reason, or "duplicate of row N")."""
    reasons = _reasons(message)
    error = (
        pl.concat_str(reasons, separator=REASON_SEPARATOR, ignore_nulls=True)
        if reasons
        else pl.lit(None, dtype=pl.String)
    )
    checked = fields.with_columns(pl.when(error != "").then(error).alias(ERROR))
    valid = pl.col(ERROR).is_null()
    # the first valid row with a given content is sent; later ones point at it
    first_row = pl.col(ROW).min().over(pl.when(valid).then(pl.col(CONTENT)))
    duplicate = valid & (first_row != pl.col(ROW))
    return checked.with_columns(
        pl.when(~valid).then(pl.lit(INVALID)).when(duplicate).then(pl.lit(DUPLICATE)).alias(STATUS),
        pl.when(duplicate).then(pl.format("duplicate of row {}", first_row)).otherwise(pl.col(ERROR)).alias(ERROR),
    )


def reason_counts(checked: pl.DataFrame, *, examples: int = 5) -> pl.DataFrame:
    """One row per distinct invalidity reason: `reason`, `rows` (count) and `example_rows` (first few row numbers),
    most frequent first."""
    return (
        checked.filter(pl.col(STATUS) == INVALID)
        .select(ROW, pl.col(ERROR).str.split(REASON_SEPARATOR).alias("reason"))
        .explode("reason")
        .group_by("reason")
        .agg(pl.len().alias("rows"), pl.col(ROW).sort().head(examples).alias("example_rows"))
        .sort(["rows", "reason"], descending=[True, False])
    )
