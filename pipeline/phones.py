"""Phone numbers -> E.164, in bulk: every input element's normalised number or the reason it has none.

What a number becomes is what `phonenumbers` (the Python port of Google's libphonenumber) decides: `parse(text,
default_region)`, then `is_valid_number`, then `format_number(..., E164)`. `decide_phone` is exactly that, for one
value. This module owns doing the same for a million values without a million Python calls:

- the common shapes of input (digits with spaces, dots, hyphens, parentheses, a leading `+`, a `tel:` prefix) are
  parsed with polars expressions built from libphonenumber's own metadata - the default region's international
  and national prefixes, the country calling codes, and each region's number patterns - following the steps of
  `phonenumbers.parse` and `is_valid_number` one by one;
- anything else (letters, extensions, other scripts' digits, a `+` the metadata cannot place, a region whose
  patterns polars' regex engine would not take) goes to `decide_phone`, once per distinct text.

Reasons never contain the number: values are people's data; the caller adds the column name.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
import polars as pl
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, PhoneMetadata, PhoneNumberFormat

E164 = "e164"
PHONE_ERROR = "phone_error"

EMPTY = "empty"
NEEDS_COUNTRY = "needs a country code: write +CC or set message.default_region"
UNKNOWN_COUNTRY = "unknown country calling code"
INVALID = "not a valid phone number"

# phonenumbers raises INVALID_COUNTRY_CODE both for a national number without a default region and for a `+CC` it
# does not know; only this message tells them apart.
_MISSING_REGION_MESSAGE = "Missing or invalid default region."

# libphonenumber's own limits (phonenumberutil: _MAX_INPUT_STRING_LENGTH, _MIN_LENGTH_FOR_NSN, _MAX_LENGTH_FOR_NSN)
_MAX_INPUT_CHARS = 250
_MIN_NSN = 2
_MAX_NSN = 17
_NON_GEO_REGION = "001"

# Inputs the expressions parse. Everything before the first digit or `+` is dropped by phonenumbers (so a `tel:`
# prefix is harmless); the separators are all in its "valid punctuation", which it ignores; a `+` may only lead.
# With at least three digits such a text is always a "viable" number to phonenumbers, and no extension pattern of
# its can match (each needs a letter, `#`, `,`, `;` or `~`).
_SEPARATORS = " \u00a0().\\-/"
_SIMPLE = f"^(?:[Tt][Ee][Ll]:)?[{_SEPARATORS}]*\\+?[0-9{_SEPARATORS}]*$"
_MIN_SIMPLE_DIGITS = 3  # fewer digits is where phonenumbers' viability rules get subtle

# working columns
_I = "_i"
_TEXT = "_text"
_TRIMMED = "_trimmed"
_DIGITS = "_digits"
_PLUS = "_plus"
_SIMPLE_TEXT = "_simple"
_REST = "_rest"  # the digits after a `+` or an international prefix
_KIND = "_kind"
_CC = "_cc"
_NNN = "_nnn"  # the national number before parse strips a national prefix
_OWN_RULES = "_own_rules"  # a national number: the default region's national prefix applies, not the code's main one
_NSN = "_nsn"
_OK = "_ok"
_CLAIMED = "_claimed"
_VALID = "_valid"


@dataclass(frozen=True)
class PhoneStats:
    """How one call split its work: `fallback_values` distinct texts (of `fallback_rows` rows) went to phonenumbers
    one by one; the rest was decided by polars expressions."""

    rows: int
    fallback_rows: int
    fallback_values: int


def decide_phone(text: str | None, default_region: str | None) -> tuple[str | None, str | None]:
    """(E.164, None) for a valid number, (None, reason) otherwise: the rule every other function here reproduces."""
    if text is None or not text.strip():
        return None, EMPTY
    try:
        number = phonenumbers.parse(text, default_region)
    except NumberParseException as error:
        if error.error_type != NumberParseException.INVALID_COUNTRY_CODE:
            return None, INVALID
        return None, NEEDS_COUNTRY if error.args[:1] == (_MISSING_REGION_MESSAGE,) else UNKNOWN_COUNTRY
    if not phonenumbers.is_valid_number(number):
        return None, INVALID
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), None


def normalise_phones(numbers: pl.Series, *, default_region: str | None) -> pl.DataFrame:
    """One row per element of `numbers`, in order: `e164` (null unless valid) and `phone_error` (null if valid).

    `default_region` (e.g. "US") is where numbers written without a country code are from; without it only
    numbers with a leading `+` can be valid."""
    return normalise_phones_with_stats(numbers, default_region=default_region)[0]


def add_phone_columns(
    frame: pl.DataFrame, column: str, *, default_region: str | None, e164: str = E164, error: str = PHONE_ERROR
) -> pl.DataFrame:
    """`frame` with the normalised number and the reason for `frame[column]` added as columns `e164` and `error`."""
    phones = normalise_phones(frame[column], default_region=default_region)
    return frame.with_columns(phones[E164].alias(e164), phones[PHONE_ERROR].alias(error))


def normalise_phones_with_stats(numbers: pl.Series, *, default_region: str | None) -> tuple[pl.DataFrame, PhoneStats]:
    """`normalise_phones`, and how much of it needed phonenumbers value by value."""
    region = _checked_region(default_region)
    frame = pl.DataFrame({_TEXT: numbers.cast(pl.String)}).with_row_index(_I)
    sorted_ = _Sorted()
    simple = _sort_texts(frame, sorted_)
    _sort_numbers(simple, region, sorted_)
    _check_numbers(region, sorted_)
    fallback = pl.concat(sorted_.fallback) if sorted_.fallback else frame.clear()
    values = fallback[_TEXT].unique()
    sorted_.verdicts.append(fallback.join(_decide_each(values, region), on=_TEXT, how="left").drop(_TEXT))
    result = pl.concat(sorted_.verdicts).sort(_I).drop(_I)
    stats = PhoneStats(rows=frame.height, fallback_rows=fallback.height, fallback_values=values.len())
    return result, stats


def _checked_region(default_region: str | None) -> str | None:
    if default_region is None:
        return None
    region = default_region.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown default region {default_region!r}: use a two-letter region code such as US or GB")
    return region


def _decide_each(values: pl.Series, region: str | None) -> pl.DataFrame:
    # Without its own cache phonenumbers compiles its metadata patterns through `re`'s, which holds 512: numbers
    # from many countries then cost ~1 ms each instead of ~40 us (measured). The cache is bounded by the metadata.
    phonenumbers.enable_pattern_cache()
    e164: list[str | None] = []
    errors: list[str | None] = []
    for text in values:
        number, error = decide_phone(text, region)
        e164.append(number)
        errors.append(error)
    return pl.DataFrame(
        {_TEXT: values, E164: pl.Series(e164, dtype=pl.String), PHONE_ERROR: pl.Series(errors, dtype=pl.String)}
    )


# --- libphonenumber's metadata as polars regular expressions --------------------------------------------------


def _full(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _prefix(pattern: str) -> str:
    return f"^(?:{pattern})"


@functools.cache
def _compiles(pattern: str) -> bool:
    """Whether polars' regex engine (Rust's `regex`) takes the pattern: libphonenumber's patterns are written for
    Java's engine and would lose a region to the fallback if one used, say, a look-ahead."""
    try:
        pl.select(pl.lit("0").str.contains(pattern))
    except pl.exceptions.ComputeError:
        return False
    return True


class _Unsupported(Exception):
    """Some pattern of a region's metadata does not compile in polars: its numbers go to the fallback."""


def _checked(pattern: str) -> str:
    """The pattern for polars, preferably with ASCII-only classes: the texts it sees are ASCII digits, and polars
    compiles each pattern again on every call (its cache holds 32 per thread), which for libphonenumber's long
    patterns with Unicode `\\d` costs about four times as much (measured)."""
    for candidate in (f"(?-u){pattern}", pattern):
        if _compiles(candidate):
            return candidate
    raise _Unsupported(pattern)


def _within(length: pl.Expr, lengths: tuple[int, ...]) -> pl.Expr:
    # no possible lengths on a description means "those of the general description", already checked
    return length.is_in(list(lengths)) if lengths else pl.lit(value=True)


@dataclass(frozen=True)
class _Validity:
    """What `_number_type_helper` accepts for one region: a number that matches the general description and at
    least one number type, each with its possible lengths. Types that share their lengths share one regex."""

    general_lengths: tuple[int, ...]
    general: str | None
    typed: tuple[tuple[tuple[int, ...], str], ...]

    def expr(self, nsn: pl.Expr) -> pl.Expr:
        if self.general is None or not self.typed:
            return pl.lit(value=False)
        length = nsn.str.len_bytes()
        types = (_within(length, lengths) & nsn.str.contains(pattern) for lengths, pattern in self.typed)
        return (
            _within(length, self.general_lengths)
            & nsn.str.contains(self.general)
            & functools.reduce(operator.or_, types)
        )


_TYPES_BUT_MOBILE = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


def _validity(metadata: PhoneMetadata) -> _Validity:
    types = list(_TYPES_BUT_MOBILE)
    # with identical fixed-line and mobile patterns libphonenumber never looks at the mobile description (whose
    # lengths may differ), so neither may we
    if not metadata.same_mobile_and_fixed_line_pattern:
        types.append("mobile")
    patterns: dict[tuple[int, ...], list[str]] = {}
    for name in types:
        desc = getattr(metadata, name)
        if desc is None or not desc.national_number_pattern:
            continue
        patterns.setdefault(tuple(desc.possible_length), []).append(desc.national_number_pattern)
    general = metadata.general_desc
    if general is None or not general.national_number_pattern:
        return _Validity((), None, ())
    return _Validity(
        general_lengths=tuple(general.possible_length),
        general=_checked(_full(general.national_number_pattern)),
        typed=tuple((lengths, _checked(_full("|".join(group)))) for lengths, group in patterns.items()),
    )


@dataclass(frozen=True)
class _NationalPrefix:
    """`national_prefix_for_parsing` (anchored) and, for the few regions that rewrite rather than strip, its
    `national_prefix_transform_rule` in polars' replacement syntax and the group whose presence triggers it."""

    pattern: str
    transform: str | None
    last_group: int


def _national_prefix(metadata: PhoneMetadata) -> _NationalPrefix | None:
    pattern = metadata.national_prefix_for_parsing
    if not pattern:
        return None
    anchored = _checked(_prefix(pattern))
    rule = metadata.national_prefix_transform_rule
    if not rule:
        return _NationalPrefix(anchored, None, 0)
    groups = re.compile(pattern).groups
    if groups == 0:  # phonenumbers would fail on such metadata; let it
        raise _Unsupported(pattern)
    transform = re.sub(r"\\(\d)", r"${\1}", rule.replace("$", "$$"))
    return _NationalPrefix(anchored, transform, groups)


@dataclass(frozen=True)
class _Region:
    """One region's metadata, reduced to the parsing and validation steps."""

    country_code: str
    general: str | None  # a "viable" national number to `_maybe_strip_national_prefix_carrier_code`
    lengths: tuple[int, ...]
    local_lengths: tuple[int, ...]
    national_prefix: _NationalPrefix | None
    international_prefix: str | None
    leading_digits: str | None
    validity: _Validity


def _region_rules(metadata: PhoneMetadata) -> _Region:
    general = metadata.general_desc
    pattern = general.national_number_pattern if general is not None else None
    idd = metadata.international_prefix
    return _Region(
        country_code=str(metadata.country_code),
        general=_checked(_full(pattern)) if pattern else None,
        lengths=tuple(general.possible_length) if general is not None else (),
        local_lengths=tuple(general.possible_length_local_only) if general is not None else (),
        national_prefix=_national_prefix(metadata),
        international_prefix=_checked(_prefix(idd)) if idd else None,
        leading_digits=_checked(_prefix(metadata.leading_digits)) if metadata.leading_digits else None,
        validity=_validity(metadata),
    )


@functools.cache
def _default_region(region: str) -> _Region | None:
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return None
    try:
        return _region_rules(metadata)
    except _Unsupported:
        return None


@dataclass(frozen=True)
class _Country:
    """A country calling code: its main region (whose national prefix is stripped from numbers with this code,
    as `parse` does) and all its regions in libphonenumber's order, which `region_code_for_number` tries in turn."""

    main: _Region
    regions: tuple[_Region, ...]


@functools.cache
def _country(code: int) -> _Country | None:
    """None when any of the code's regions cannot be expressed in polars."""
    names = COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    try:
        regions = [
            (name, _region_rules(metadata))
            for name in names
            if (metadata := PhoneMetadata.metadata_for_region_or_calling_code(code, name)) is not None
        ]
    except _Unsupported:
        return None
    if not regions or regions[0][0] != names[0]:
        return None
    return _Country(main=regions[0][1], regions=tuple(region for _, region in regions))


# --- the steps of phonenumbers.parse, as expressions ----------------------------------------------------------


def _viable(number: pl.Expr, region: _Region) -> pl.Expr:
    return number.str.contains(region.general) if region.general is not None else pl.lit(value=False)


def _strip_national_prefix(number: pl.Expr, region: _Region) -> pl.Expr:
    """`_maybe_strip_national_prefix_carrier_code`: the number without its national prefix (and carrier code),
    unless only the original was a viable number for the region."""
    rule = region.national_prefix
    if rule is None:
        return number
    match = number.str.extract(rule.pattern, 0)
    stripped = number.str.slice(match.str.len_bytes())
    if rule.transform is not None:
        transformed = number.str.replace(rule.pattern, rule.transform, n=1)
        stripped = (
            pl.when(number.str.extract(rule.pattern, rule.last_group).is_null()).then(stripped).otherwise(transformed)
        )
    keep = match.is_null() | (number == "") | (_viable(number, region) & ~_viable(stripped, region))
    return pl.when(keep).then(number).otherwise(stripped)


def _usable_length(number: pl.Expr, region: _Region) -> pl.Expr:
    """`_test_number_length` says IS_POSSIBLE or TOO_LONG: parse keeps the number with its prefix stripped."""
    length = number.str.len_bytes()
    possible = length.is_in(list(region.lengths)) | (length > max(region.lengths, default=0))
    return possible & ~length.is_in(list(region.local_lengths))


def _too_long(number: pl.Expr, region: _Region) -> pl.Expr:
    length = number.str.len_bytes()
    return (length > max(region.lengths, default=0)) & ~length.is_in(list(region.local_lengths))


@functools.cache
def _calling_codes() -> dict[str, str | None]:
    """`_extract_country_code` for every three digits that can follow a `+`: the shortest leading 1-3 of them that
    are a known calling code (none starts with 0). Looking it up is one hash per row instead of three."""
    table: dict[str, str | None] = {}
    for start in range(1000):
        digits = f"{start:03d}"
        found = [digits[:size] for size in (1, 2, 3) if int(digits[:size]) in COUNTRY_CODE_TO_REGION_CODE]
        table[digits] = found[0] if found and digits[0] != "0" else None
    return table


@functools.cache
def _second_pass(code: int, own_region: str | None) -> tuple[pl.Expr, list[pl.Expr]] | None:
    """For numbers with calling code `code` (national ones parsed with `own_region`'s rules): the national
    significant number `_nsn`, then whether parse accepted its length (`_ok`), whether `region_code_for_number`
    would pick the code's main region (`_claimed`, always for a code with one region) and whether it is valid
    there (`_valid`). None if polars cannot express the code's metadata."""
    country = _country(code)
    parsing = _default_region(own_region) if own_region is not None else (country.main if country else None)
    if country is None or parsing is None:
        return None
    nnn, nsn = pl.col(_NNN), pl.col(_NSN)
    stripped = _strip_national_prefix(nnn, parsing)
    national = pl.when(_usable_length(stripped, parsing)).then(stripped).otherwise(nnn)
    ok = (nnn.str.len_bytes() >= _MIN_NSN) & (nsn.str.len_bytes() <= _MAX_NSN)  # TOO_SHORT_NSN, TOO_LONG
    main = country.main
    valid = main.validity.expr(nsn)
    if len(country.regions) == 1:
        claimed = pl.lit(value=True)
    elif main.leading_digits is None:
        claimed = valid
    else:
        claimed = nsn.str.contains(main.leading_digits)
    return national.alias(_NSN), [ok.alias(_OK), claimed.alias(_CLAIMED), valid.alias(_VALID)]


class _Sorted:
    """Where the rows went: verdicts (`_i`, `e164`, `phone_error`), rows for the fallback (`_i`, `_text`) and
    rows to parse with one calling code's rules (`_i`, `_text`, `_cc`, `_nnn`, `_own_rules`)."""

    def __init__(self) -> None:
        self.verdicts: list[pl.DataFrame] = []
        self.fallback: list[pl.DataFrame] = []
        self.to_parse: list[pl.DataFrame] = []

    def decide(self, rows: pl.DataFrame, *, e164: pl.Expr | None = None, error: pl.Expr | str | None) -> None:
        if rows.height == 0:
            return
        reason = pl.lit(error, dtype=pl.String) if error is None or isinstance(error, str) else error
        number = pl.lit(None, dtype=pl.String) if e164 is None else e164
        self.verdicts.append(rows.select(_I, number.alias(E164), reason.alias(PHONE_ERROR)))

    def give_up(self, rows: pl.DataFrame) -> None:
        if rows.height:
            self.fallback.append(rows.select(_I, _TEXT))

    def parse(self, rows: pl.DataFrame, *, cc: pl.Expr, nnn: pl.Expr, own_rules: bool) -> None:
        if rows.height:
            self.to_parse.append(
                rows.select(_I, _TEXT, cc.alias(_CC), nnn.alias(_NNN), pl.lit(own_rules).alias(_OWN_RULES))
            )


def _split(rows: pl.DataFrame, condition: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows where `condition` holds, and the others."""
    mask = rows.select(condition.fill_null(value=False)).to_series()
    return rows.filter(mask), rows.filter(~mask)


# what the first look says of a text
_EMPTY_TEXT, _PLAIN_TEXT, _FORMATTED_TEXT, _OTHER_TEXT = range(4)
_PLAIN = r"^\+?[0-9]+$"  # E.164 as written, or digits alone: their digits need no regex to find


def _sort_texts(frame: pl.DataFrame, sorted_: _Sorted) -> pl.DataFrame:
    """Empty texts and those the expressions cannot parse are sorted out; the rest come back with their ASCII
    `_digits` and whether they start with a `+` (`_plus`)."""
    text, trimmed = pl.col(_TEXT), pl.col(_TRIMMED)
    kind = (
        pl.when(text.is_null() | (trimmed == ""))
        .then(_EMPTY_TEXT)
        .when(text.str.len_chars() > _MAX_INPUT_CHARS)
        .then(_OTHER_TEXT)
        .when(trimmed.str.contains(_PLAIN))
        .then(_PLAIN_TEXT)
        .when(trimmed.str.contains(_SIMPLE))
        .then(_FORMATTED_TEXT)
        .otherwise(_OTHER_TEXT)
    )
    rows = frame.with_columns(text.str.strip_chars().alias(_TRIMMED))
    groups = rows.with_columns(kind.alias(_KIND)).partition_by(_KIND, as_dict=True, include_key=False)
    empty = pl.DataFrame(schema=rows.schema)
    sorted_.decide(groups.get((_EMPTY_TEXT,), empty), error=EMPTY)
    sorted_.give_up(groups.get((_OTHER_TEXT,), empty))
    plain = groups.get((_PLAIN_TEXT,), empty).select(
        _I, _TEXT, trimmed.str.strip_prefix("+").alias(_DIGITS), trimmed.str.starts_with("+").alias(_PLUS)
    )
    formatted = groups.get((_FORMATTED_TEXT,), empty).select(
        _I,
        _TEXT,
        trimmed.str.replace_all("[^0-9]+", "").alias(_DIGITS),
        trimmed.str.contains("+", literal=True).alias(_PLUS),
    )
    simple, few_digits = _split(pl.concat([plain, formatted]), pl.col(_DIGITS).str.len_bytes() >= _MIN_SIMPLE_DIGITS)
    sorted_.give_up(few_digits)
    return simple


def _sort_numbers(simple: pl.DataFrame, region: str | None, sorted_: _Sorted) -> None:
    """The start of `phonenumbers.parse`, up to and including `_maybe_extract_country_code`: each number gets its
    calling code and national number, or a verdict."""
    digits = pl.col(_DIGITS)
    international, national = _split(simple, pl.col(_PLUS))
    international = international.with_columns(digits.alias(_REST))
    rules = _default_region(region) if region is not None else None
    if region is None:
        sorted_.decide(national, error=NEEDS_COUNTRY)
    elif rules is None:
        sorted_.give_up(national)
    else:
        if rules.international_prefix is not None:
            # `_maybe_strip_i18n_prefix_and_normalize`: the default region's international prefix counts unless
            # a 0 follows it
            match = digits.str.extract(rules.international_prefix, 0)
            after = digits.str.slice(match.str.len_bytes())
            national = national.with_columns(
                pl.when(match.is_not_null() & ~after.str.starts_with("0")).then(after).alias(_REST)
            )
            dialled, national = _split(national, pl.col(_REST).is_not_null())
            international = pl.concat([international, dialled])
        _sort_national(national, rules, sorted_)
    _sort_international(international, sorted_)


def _sort_international(international: pl.DataFrame, sorted_: _Sorted) -> None:
    """`_maybe_extract_country_code` after a `+` or an international prefix."""
    rest = pl.col(_REST)
    long_enough, short = _split(international, rest.str.len_bytes() > _MIN_NSN)
    sorted_.decide(short, error=INVALID)  # TOO_SHORT_AFTER_IDD
    coded = long_enough.with_columns(
        rest.str.slice(0, 3).replace_strict(_calling_codes(), default=None, return_dtype=pl.String).alias(_CC)
    )
    known, unknown = _split(coded, pl.col(_CC).is_not_null())
    # after an unknown `+CC` phonenumbers tries again without the `+`: that is left to it
    retried, unknown = _split(unknown, pl.col(_PLUS))
    sorted_.give_up(retried)
    sorted_.decide(unknown, error=UNKNOWN_COUNTRY)
    sorted_.parse(known, cc=pl.col(_CC), nnn=rest.str.slice(pl.col(_CC).str.len_bytes()), own_rules=False)


def _sort_national(national: pl.DataFrame, rules: _Region, sorted_: _Sorted) -> None:
    """The rest of `_maybe_extract_country_code`: a national number that starts with the default region's own
    calling code loses it if only then is it viable, or if it was too long with it."""
    digits = pl.col(_DIGITS)
    code = rules.country_code
    starting, others = _split(national, digits.str.starts_with(code))
    sorted_.parse(others, cc=pl.lit(code), nnn=digits, own_rules=True)
    without_code = _strip_national_prefix(digits.str.slice(len(code)), rules)
    had_code = (~_viable(digits, rules) & _viable(without_code, rules)) | _too_long(digits, rules)
    lost, kept = _split(starting.with_columns(without_code.alias(_NNN)), had_code)
    sorted_.parse(lost, cc=pl.lit(code), nnn=pl.col(_NNN), own_rules=False)
    sorted_.parse(kept, cc=pl.lit(code), nnn=digits, own_rules=True)


_CHUNK_ROWS = 200_000  # a calling code's numbers are checked in pieces this big, so both cores take part


def _check_numbers(region: str | None, sorted_: _Sorted) -> None:
    """The end of `parse` and `is_valid_number`, per calling code, for the numbers `_sort_numbers` parsed."""
    if not sorted_.to_parse:
        return
    rows = pl.concat(sorted_.to_parse)
    queries = []
    for (code, own_rules), part in rows.partition_by(_CC, _OWN_RULES, as_dict=True).items():
        steps = _second_pass(int(str(code)), region if own_rules else None)
        if steps is None:
            sorted_.give_up(part)
            continue
        national, checks = steps
        for start in range(0, part.height, _CHUNK_ROWS):
            chunk = part.slice(start, _CHUNK_ROWS).lazy()
            queries.append(chunk.with_columns(national).select(_I, _CC, _NSN, *checks))
    if not queries:
        return
    checked = pl.concat(pl.collect_all(queries))
    ok, claimed, valid = pl.col(_OK), pl.col(_CLAIMED), pl.col(_VALID)
    decided, unclaimed = _split(checked, ~ok | claimed)
    sorted_.decide(decided, e164=pl.when(ok & valid).then(_e164()), error=pl.when(~ok | ~valid).then(pl.lit(INVALID)))
    for (code,), part in unclaimed.partition_by(_CC, as_dict=True).items():
        country = _country(int(str(code)))
        assert country is not None  # it had a second pass
        _check_other_regions(part, country.regions[1:], sorted_)


def _e164() -> pl.Expr:
    return pl.concat_str(pl.lit("+"), pl.col(_CC), pl.col(_NSN))


def _check_other_regions(pending: pl.DataFrame, regions: Iterable[_Region], sorted_: _Sorted) -> None:
    """The rest of `is_valid_number` for numbers the main region did not claim: valid for the first of the other
    regions whose leading digits match (or, if it has none, for which it is valid); invalid if none claims it."""
    nsn = pl.col(_NSN)
    for region in regions:
        if region.leading_digits is None:
            claimed, pending = _split(pending, region.validity.expr(nsn))
            sorted_.decide(claimed, e164=_e164(), error=None)
        else:
            claimed, pending = _split(pending, nsn.str.contains(region.leading_digits))
            valid = region.validity.expr(nsn)
            sorted_.decide(claimed, e164=pl.when(valid).then(_e164()), error=pl.when(~valid).then(pl.lit(INVALID)))
    sorted_.decide(pending, error=INVALID)
