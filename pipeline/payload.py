"""Rows -> request bodies and deterministic idempotency keys, in bulk, for any API generation.

`message_fields` turns the input frame into one text column per payload field: the generation's own (GUIDs trimmed
and lower-cased, phone numbers in E.164, ...; see pipeline/api) and the variables as they are. A typed column
(Parquet) becomes text as a person would write it, not as a program prints it: `0.3` not `0.30000000000000004`,
`0.0000001` not `1e-7`, `3` not `3.0`, `2026-03-01 09:30:00` without `.000000` (see `as_text`).

`encode_payloads` renders the JSON bodies with polars' JSON encoder (each template's messages with only the
variables it declares, once the v3 template check has said which) and derives each row's idempotency key from the
campaign name and the row's content, so the same row of the same campaign always gets the same key, across runs,
machines and row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import polars as pl

from pipeline.api import Generation
from pipeline.api.v1 import text_of
from pipeline.fields import BODY, CONTACT, CONTENT, KEY, ROW, TEMPLATE, TEMPLATE_NAME, TO, WEBHOOK, variable_column
from pipeline.spec import MessageSpec

# What each template declares, by the template's reference in the fields frame (its GUID, or its name): only these
# variables go into its messages. None: not known (no template check was made), so every mapped variable goes.
Declared = Mapping[str, tuple[str, ...]] | None

# the fields frame's column names, here too for the modules that build on payloads
__all__ = ["BODY", "CONTACT", "CONTENT", "KEY", "ROW", "TEMPLATE", "TO", "WEBHOOK", "variable_column"]


# Significant decimal digits each float type holds whole (53, 24 and 11 bits of mantissa): more digits than that are
# the binary value's noise, not what anyone wrote. And the range in which such a float is an exact integer.
_FLOAT_DIGITS: dict[type[pl.DataType], int] = {pl.Float64: 15, pl.Float32: 7, pl.Float16: 3}
_FLOAT_EXACT_INTEGERS: dict[type[pl.DataType], int] = {pl.Float64: 2**53, pl.Float32: 2**24, pl.Float16: 2**11}
# polars' shortest round-trip text of a finite float: `-1.2345678901234567e+19`, `0.30000000000000004`, `1e-7`
_FLOAT_TEXT = r"^-?(?<whole>[0-9]+)(?:\.(?<fraction>[0-9]+))?(?:e(?<exponent>[+-]?[0-9]+))?$"


def as_text(frame: pl.DataFrame, columns: list[str], *, rule: str = "readable") -> pl.DataFrame:
    """`frame` with each of `columns` as the text a person would write for its values.

    Floats: at most 15 significant digits for Float64 (7 for Float32), written out in full, never with an exponent
    (`0.3`, `0.0000001`, `1234.5`); whole numbers without `.0` (`3`: a pandas integer column with gaps is float);
    NaN is empty. Datetimes `2026-03-01 09:30:00`, fractional seconds only when there are some (`09:30:05.12`), the
    UTC offset when the column has a time zone (`+01:00`); times likewise; dates `2026-03-01`. Booleans
    `true`/`false`; decimals keep their scale (`12.50`); integers and text as they are. Rule "cast"
    (`message.value_text: cast`) is polars' own cast, the rule of 0.1.0: idempotency keys derive from this text."""
    converted: list[pl.Expr | pl.Series] = []
    for name in columns:
        dtype, value = frame.schema[name], pl.col(name)
        if rule == "cast" or dtype == pl.String:
            converted.append(value.cast(pl.String))
        elif dtype.base_type() in _FLOAT_DIGITS:
            converted.append(_float_text(frame[name]).alias(name))
        elif isinstance(dtype, pl.Datetime):
            offset = "%:z" if dtype.time_zone is not None else ""
            converted.append(_trim_fraction(value.dt.to_string(f"%Y-%m-%d %H:%M:%S%.f{offset}")))
        elif dtype == pl.Time:
            converted.append(_trim_fraction(value.dt.to_string("%H:%M:%S%.f")))
        else:
            converted.append(value.cast(pl.String))
    return frame.with_columns(converted)


def _trim_fraction(text: pl.Expr) -> pl.Expr:
    # chrono's `%.f` writes 3, 6 or 9 digits (none when zero); a person writes the ones that say something
    return text.str.replace(r"(\.[0-9]*[1-9])0+", "${1}")


def _float_text(values: pl.Series) -> pl.Series:
    """Floats written out in full with at most the digits their type holds. Most values (`12.5`, `0.3`) are already
    so in polars' shortest round-trip text; the others (`0.30000000000000004`, `1e-7`) are rewritten."""
    dtype = values.dtype.base_type()
    held = _FLOAT_DIGITS[dtype]
    x, text = pl.col("x"), pl.col("text")
    frame = pl.DataFrame({"x": values}).with_columns(text=x.cast(pl.String))
    whole = (x == x.round()) & (x.abs() <= _FLOAT_EXACT_INTEGERS[dtype])
    # at most `held` digits beside the point and the sign, and no exponent: nothing to round, nothing to move
    plain = (text.str.len_chars() - text.str.starts_with("-").cast(pl.UInt32) <= held + 1) & ~text.str.contains("e")
    out = frame.select(
        pl.when(x.is_nan())
        .then(pl.lit(None, dtype=pl.String))
        .when(whole)
        .then(x.cast(pl.Int64).cast(pl.String))  # -0.0 is "0" too
        .otherwise(text)
        .alias(values.name),
        (x.is_finite() & ~whole & ~plain).alias("rewrite"),
    )
    written, rewrite = out[values.name], out["rewrite"]
    if rewrite.any():
        written.scatter(rewrite.arg_true(), _written_out(frame["text"].filter(rewrite), held))
    return written


def _written_out(texts: pl.Series, held: int) -> pl.Series:
    """Shortest round-trip texts (`-1.2345678901234567e+19`, `0.30000000000000004`, `1e-7`) rounded to `held`
    significant digits and written without an exponent: the digits are rounded as an integer, then placed around
    the decimal point by the exponent. Each step is one pass of polars expressions (one expression would repeat
    every earlier step inside each later one)."""
    steps = (
        texts.to_frame("text")
        .with_columns(pl.col("text").str.extract_groups(_FLOAT_TEXT).alias("parts"))
        .unnest("parts")
        .with_columns(
            digits=pl.concat_str(pl.col("whole"), pl.col("fraction").fill_null("")),
            point=pl.col("whole").str.len_chars().cast(pl.Int64) + pl.col("exponent").cast(pl.Int64).fill_null(0),
        )
        # leading zeros say where the point is, not what the number is
        .with_columns(significant=pl.col("digits").str.strip_chars_start("0"))
        .with_columns(
            pl.col("point") - (pl.col("digits").str.len_chars() - pl.col("significant").str.len_chars()).cast(pl.Int64)
        )
        # round half up to the digits held: the kept digits as an integer (< 10^15), plus one if the next is >= 5
        .with_columns(
            rounded=(
                pl.col("significant").str.slice(0, held).cast(pl.Int64, strict=False)
                + (pl.col("significant").str.slice(held, 1).cast(pl.Int64, strict=False).fill_null(0) >= 5)
            ).cast(pl.String),
            kept=pl.col("significant").str.len_chars().clip(upper_bound=held).cast(pl.Int64),
        )
        # 99.. rounded up gains a digit in front, which moves the point one place right
        .with_columns(
            pl.col("point") + pl.col("rounded").str.len_chars().cast(pl.Int64) - pl.col("kept"),
            shown=pl.col("rounded").str.strip_chars_end("0"),
        )
        .with_columns(length=pl.col("shown").str.len_chars().cast(pl.Int64))
    )
    point, shown, length = pl.col("point"), pl.col("shown"), pl.col("length")
    placed = (
        pl.when(point <= 0)
        .then(pl.concat_str(pl.lit("0."), shown.str.pad_start(length - point, "0")))
        .when(point >= length)
        .then(shown.str.pad_end(point, "0"))
        .otherwise(pl.concat_str(shown.str.slice(0, point), pl.lit("."), shown.str.slice(point)))
    )
    signed = pl.when(pl.col("text").str.starts_with("-")).then(pl.concat_str(pl.lit("-"), placed)).otherwise(placed)
    return steps.select(signed).to_series()


def message_fields(
    frame: pl.DataFrame, message: MessageSpec, generation: Generation, *, numbers: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One text column per payload field, plus `result_row` and the row's `content` (its identity for duplicate
    detection and idempotency keys). `numbers`: the rows' phone numbers, when decided already (v3)."""
    mapped = message.columns()
    texts = as_text(frame.select(ROW, *mapped), mapped, rule=message.value_text)
    fields = generation.recipient_fields(texts, message, numbers=numbers)
    # with `result_row` beside them, literals fill every row (a frame of literals alone would have one row)
    variables = [text_of(source).alias(variable_column(i)) for i, source in enumerate(message.variables.values())]
    if variables:
        fields = fields.with_columns(texts.select(pl.col(ROW), *variables).drop(ROW))
    return fields.with_columns(_content(message, generation).alias(CONTENT))


def _content(message: MessageSpec, generation: Generation) -> pl.Expr:
    """An unambiguous text of everything that goes into the request: each part is prefixed with its length, so no
    choice of values can make two different rows read the same."""
    parts = generation.identity(message)
    for i, name in enumerate(message.variables):
        parts += [pl.lit(name), pl.col(variable_column(i))]
    texts = [p.fill_null("") for p in parts]
    framed = [pl.concat_str([t.str.len_bytes().cast(pl.String), pl.lit(":"), t]) for t in texts]
    return pl.concat_str(framed, separator="|")


def _parameters(message: MessageSpec, names: tuple[str, ...] | None) -> pl.Expr | None:
    """The template variables as a struct (only `names`, when given); None when there are none to send."""
    fields = [
        pl.col(variable_column(i)).alias(name)
        for i, name in enumerate(message.variables)
        if names is None or name in names
    ]
    return pl.struct(fields) if fields else None


def bodies(
    message: MessageSpec, generation: Generation, *, declared: Declared = None, rehearsal: bool = False
) -> pl.Expr:
    """Each row's JSON body. With `declared`, a row's parameters are those its template declares."""
    everything = generation.body(message, _parameters(message, None), rehearsal=rehearsal)
    if not declared:
        return everything
    reference = pl.col(TEMPLATE if message.template_id is not None else TEMPLATE_NAME)
    per_template = [
        pl.when(reference == template).then(generation.body(message, _parameters(message, names), rehearsal=rehearsal))
        for template, names in declared.items()
    ]
    return pl.coalesce(*per_template, everything)


def encode_payloads(
    fields: pl.DataFrame,
    message: MessageSpec,
    generation: Generation,
    *,
    campaign: str,
    keys: bool = True,
    declared: Declared = None,
    rehearsal: bool = False,
    with_bodies: bool = True,
) -> pl.DataFrame:
    """`result_row`, the JSON request body and (unless `keys` is False) the idempotency key of every row in
    `fields`; `to` too when the generation sends to phone numbers. Without `with_bodies` the body is null (a pass
    that only looks outcomes up by key need not build what it will not send)."""
    if with_bodies:
        body = bodies(message, generation, declared=declared, rehearsal=rehearsal)
    else:
        body = pl.lit(None, dtype=pl.String)
    out = fields.select(pl.col(ROW), body.alias(BODY), *([pl.col(TO)] if TO in fields.columns else []))
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


def rehearsal_keys(keys: pl.Expr) -> pl.Expr:
    """The Idempotency-Keys of a server-side dry run: its own, derived from the real ones. The server keeps every
    key 24 hours, rehearsals' too: reusing the real keys would make the real run that follows get the rehearsal's
    answers replayed, and send nothing."""
    return pl.concat_str(pl.lit("rehearsal-"), keys).alias(KEY)
