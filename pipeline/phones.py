"""Phone numbers -> E.164, in bulk: every input element's normalised number or the reason it has none.

What a number becomes is what `phonenumbers` (the Python port of Google's libphonenumber) decides: `parse(text,
default_region)`, then `is_valid_number`, then `format_number(..., E164)`. `decide_phone` is exactly that, for one
value. This module owns doing the same for a million values without a million Python calls:

- the common shapes of input (digits with spaces, dots, hyphens, parentheses, a leading `+`, a `tel:` prefix, an
  extension such as " ext. 12") are
  parsed with polars expressions built from libphonenumber's own metadata - the default region's international
  and national prefixes, the country calling codes, each region's national prefix and number patterns - following
  the steps of `phonenumbers.parse` and `is_valid_number` one by one;
- anything else (letters, unusual extensions, other scripts' digits, a `+` the metadata cannot place, a region
  whose patterns polars' regex engine would not take) goes to `decide_phone`, once per distinct text.

Reasons never contain the number: values are people's data; the caller adds the column name.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
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

# Inputs the expressions parse. Everything before the first digit or `+` is dropped by phonenumbers (so a `tel:`
# prefix is harmless); the separators are all in its "valid punctuation", which it ignores; a `+` may only lead.
# With at least three digits such a text is always a "viable" number to phonenumbers, and none of its extension
# patterns can match (each needs a letter, `#`, `,`, `;` or `~`).
_SEPARATORS = " \u00a0().\\-/"
_SIMPLE = f"^(?:[Tt][Ee][Ll]:)?[{_SEPARATORS}]*\\+?[0-9{_SEPARATORS}]*$"
# An extension after such a text ("... ext. 12", "... x12"): phonenumbers strips it before parsing (the number
# before it is viable) and E.164 has no place for it, so the number is that of the text before it. Only these
# labels, only up to 6 digits (it takes 9 after "x", 20 after "ext"), and only after a digit or ")": after "/"
# phonenumbers would read " x" as the start of a second number.
_EXTENSION = "[ \u00a0]*(?:[Ee][Xx][Tt]|[Xx])\\.?[ \u00a0]*[0-9]{1,6}$"
_WITH_EXTENSION = f"{_SIMPLE[:-1]}[0-9)]{_EXTENSION}"
_PLAIN = r"^\+?[0-9]+$"  # E.164 as written, or digits alone: finding their digits needs no regex
_MIN_SIMPLE_DIGITS = 3  # with fewer, phonenumbers' rules for what is a number at all get subtle

# working columns
_I = "_i"
_TEXT = "_text"
_TRIMMED = "_trimmed"
_KIND = "_kind"
_DIGITS = "_digits"
_PLUS = "_plus"
_REST = "_rest"  # the digits after a `+` or an international prefix
_CC = "_cc"
_NNN = "_nnn"  # the national number before parse strips a national prefix
_PARSING = "_parsing"  # key of the region whose national prefix parse strips
_NSN = "_nsn"
_MAIN = "_main"  # key of the calling code's main region
_ZONE = "_zone"  # first digit of the calling code
_KEYED = "_keyed"  # a region's key, ":" and a number: the text the keyed patterns match
_MATCH = "_match"
_CANDIDATE = "_candidate"  # the national number with its national prefix stripped, if parse allows it
_OK = "_ok"
_CLAIMED = "_claimed"
_UNCLAIMED = "_unclaimed"
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
    numbers with a leading `+` can be valid. An unknown region is a ValueError."""
    return normalise_phones_with_stats(numbers, default_region=default_region)[0]


def add_phone_columns(
    frame: pl.DataFrame, column: str, *, default_region: str | None, e164: str = E164, error: str = PHONE_ERROR
) -> pl.DataFrame:
    """`frame` with the normalised number and the reason for `frame[column]` added as columns `e164` and `error`."""
    phones = normalise_phones(frame[column], default_region=default_region)
    return frame.with_columns(phones[E164].alias(e164), phones[PHONE_ERROR].alias(error))


def normalise_phones_with_stats(
    numbers: pl.Series, *, default_region: str | None, own_query_rows: int | None = None
) -> tuple[pl.DataFrame, PhoneStats]:
    """`normalise_phones`, and how much of it needed phonenumbers value by value. `own_query_rows` overrides how
    many numbers of one calling code get a query of their own (a tuning knob; tests use it to take either path)."""
    region = _checked_region(default_region)
    frame = pl.DataFrame({_TEXT: numbers.cast(pl.String)}).with_row_index(_I)
    sorted_ = _Sorted()
    simple = _sort_texts(frame, sorted_)
    _sort_numbers(simple, region, sorted_)
    _check_numbers(sorted_, _OWN_QUERY_ROWS if own_query_rows is None else own_query_rows)
    indices = pl.concat(sorted_.fallback) if sorted_.fallback else pl.Series(_I, [], dtype=pl.UInt32)
    fallback = pl.DataFrame({_I: indices, _TEXT: frame[_TEXT].gather(indices)})
    values = fallback[_TEXT].unique()
    sorted_.verdicts.append(fallback.join(_decide_each(values, region), on=_TEXT, how="left").drop(_TEXT))
    result = pl.concat(sorted_.verdicts).sort(_I).drop(_I)
    return result, PhoneStats(rows=frame.height, fallback_rows=fallback.height, fallback_values=values.len())


def _checked_region(default_region: str | None) -> str | None:
    if default_region is None:
        return None
    region = default_region.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown default region {default_region!r}: use a two-letter region code such as US or GB")
    return region


# From this many distinct texts the fallback shares them out among processes, one per core: starting them (each
# imports polars and phonenumbers) takes ~0.4 s; a text costs 20-60 us (measured: 100,000 texts with extensions,
# 5.7 s in one process, 3.2 s in two).
_PROCESSES_FROM = 20_000


def _decide_each(values: pl.Series, region: str | None) -> pl.DataFrame:
    texts = values.to_list()
    workers = os.cpu_count() or 1
    if len(texts) < _PROCESSES_FROM or workers < 2:
        decided = _decide_all(texts, region)
    else:
        # spawned, not forked: a fork of a process running polars' thread pool can deadlock
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pieces = [texts[start :: workers * 4] for start in range(workers * 4)]
            done = list(pool.map(_decide_all, pieces, [region] * len(pieces)))
        # piece k holds texts k, k + n, k + 2n...: put them back in order
        decided = [done[n % len(pieces)][n // len(pieces)] for n in range(len(texts))]
    return pl.DataFrame(
        {_TEXT: values, E164: [d[0] for d in decided], PHONE_ERROR: [d[1] for d in decided]},
        schema={_TEXT: pl.String, E164: pl.String, PHONE_ERROR: pl.String},
    )


def _decide_all(texts: list[str | None], region: str | None) -> list[tuple[str | None, str | None]]:
    # Without its own cache phonenumbers compiles its metadata patterns through `re`'s, which holds 512: numbers
    # from many countries then cost ~1 ms each instead of ~40 us (measured). The cache is bounded by the metadata.
    phonenumbers.enable_pattern_cache()
    return [decide_phone(text, region) for text in texts]


# --- libphonenumber's metadata, reduced to what parse and is_valid_number use ------------------------------------


class UnsupportedPattern(Exception):
    """A metadata pattern polars' regex engine does not take: the numbers it concerns go to the fallback."""


@functools.cache
def _compiles(pattern: str) -> bool:
    try:
        pl.select(pl.lit("0").str.contains(pattern))
    except pl.exceptions.ComputeError:
        return False
    return True


@functools.cache
def polars_regex(pattern: str) -> str:
    """`pattern` for polars (Rust's `regex`), preferably with ASCII classes: the texts it sees are ASCII digits,
    and libphonenumber's patterns with Unicode `\\d` take about four times as long to compile (measured)."""
    for candidate in (f"(?-u){pattern}", pattern):
        if _compiles(candidate):
            return candidate
    raise UnsupportedPattern(pattern)


def _full(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _prefix(pattern: str) -> str:
    return f"^(?:{pattern})"


@dataclass(frozen=True)
class _Region:
    """One region's metadata (raw patterns as libphonenumber writes them)."""

    key: str  # calling code and region, e.g. "1/US" or "800/001": unique, unlike region codes alone
    country_code: str
    general: str | None  # general_desc: a "viable" number when parsing; the first test of validity
    lengths: tuple[int, ...]
    local_lengths: tuple[int, ...]
    # the number types `_number_type_helper` tries, grouped by their possible lengths (empty: any length)
    typed: tuple[tuple[tuple[int, ...], str], ...]
    national_prefix: str | None  # national_prefix_for_parsing
    transform: str | None  # national_prefix_transform_rule, in polars' replacement syntax
    transform_group: int  # the group whose presence makes parse rewrite rather than strip
    international_prefix: str | None
    leading_digits: str | None


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


def _typed(metadata: PhoneMetadata) -> tuple[tuple[tuple[int, ...], str], ...]:
    names = list(_TYPES_BUT_MOBILE)
    # with identical fixed-line and mobile patterns libphonenumber never looks at the mobile description (whose
    # lengths may differ), so neither may we
    if not metadata.same_mobile_and_fixed_line_pattern:
        names.append("mobile")
    groups: dict[tuple[int, ...], list[str]] = {}
    for name in names:
        desc = getattr(metadata, name)
        if desc is not None and desc.national_number_pattern:
            groups.setdefault(tuple(desc.possible_length), []).append(desc.national_number_pattern)
    return tuple((lengths, "|".join(patterns)) for lengths, patterns in groups.items())


@functools.cache
def _region(code: int, name: str) -> _Region | None:
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, name)
    if metadata is None:
        return None
    general = metadata.general_desc
    rule = metadata.national_prefix_transform_rule or None
    prefix = metadata.national_prefix_for_parsing or None
    return _Region(
        key=f"{code}/{name}",
        country_code=str(code),
        general=general.national_number_pattern or None if general is not None else None,
        lengths=tuple(general.possible_length) if general is not None else (),
        local_lengths=tuple(general.possible_length_local_only) if general is not None else (),
        typed=_typed(metadata),
        national_prefix=prefix,
        # Python's \1 is polars' ${1}
        transform=re.sub(r"\\(\d)", r"${\1}", rule.replace("$", "$$")) if rule and prefix else None,
        transform_group=re.compile(prefix).groups if rule and prefix else 0,
        international_prefix=metadata.international_prefix or None,
        leading_digits=metadata.leading_digits or None,
    )


@functools.cache
def _regions(code: int) -> tuple[_Region, ...]:
    """The code's regions in libphonenumber's order (the first is its main region), those with metadata."""
    found = (_region(code, name) for name in COUNTRY_CODE_TO_REGION_CODE.get(code, ()))
    return tuple(region for region in found if region is not None)


def _main_region(code: int) -> _Region | None:
    regions = _regions(code)
    names = COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    # parse takes the first region's metadata; if that is missing, phonenumbers' behaviour is its own business
    return regions[0] if regions and regions[0].key == f"{code}/{names[0]}" else None


@dataclass(frozen=True)
class _Patterns:
    """The rules of one world zone's regions (calling codes that start with one digit) as a few regular
    expressions over keyed texts ("44/GB:2079460958"): one pass of each over the zone's numbers, whatever their
    countries. A query per country would cost more in polars' fixed cost per expression and query than in matching
    whenever the countries are many and their numbers few; one expression for the whole world would match slowly,
    its lazy DFA outgrowing its cache (measured: 2 us per number, against 0.3 us per zone)."""

    national_prefix: str  # prefix match on "key:number", for regions without a transform rule
    viable: str  # full match on "key:number"
    general: str  # full match on "key:LL:number" (LL: the length in two digits)
    typed: str  # full match on "key:LL:number"


@dataclass(frozen=True)
class _World:
    """Every region's rules. The texts of the patterns stay the same from call to call, so polars (which keeps 32
    compiled patterns per thread) compiles them once per thread."""

    main: dict[str, str]  # calling code -> its main region's key
    shared: frozenset[str]  # calling codes with more than one region
    rewriting: frozenset[str]  # region keys with a national prefix transform rule
    unsupported: frozenset[str]  # region keys polars cannot check: their numbers go to the fallback
    usable: dict[str, int]  # region key -> bit n set if `_test_number_length` lets parse strip to n digits
    zones: dict[str, _Patterns]  # first digit of the calling code -> its regions' patterns


_USABLE_UP_TO = 20  # longer numbers are TOO_LONG for every region: usable
_ZONES = "123456789"


def _lengths(lengths: tuple[int, ...]) -> str:
    return "|".join(f"{n:02d}" for n in lengths) if lengths else "[0-9]+"


def _branches(region: _Region) -> dict[str, list[str]]:
    """The region's share of each keyed pattern."""
    key = region.key
    shares: dict[str, list[str]] = {name: [] for name in _FULL}
    if region.national_prefix is not None and region.transform is None:
        shares["national_prefix"].append(f"{key}:(?:{region.national_prefix})")
    if region.general is not None:
        shares["viable"].append(f"{key}:(?:{region.general})")
        if region.typed:
            shares["general"].append(f"{key}:(?:{_lengths(region.lengths)}):(?:{region.general})")
    shares["typed"] += [f"{key}:(?:{_lengths(lengths)}):(?:{pattern})" for lengths, pattern in region.typed]
    return shares


def _keyed(branches: list[str], *, full: bool) -> str:
    body = "|".join(branches) if branches else "-"  # never matches: keys start with a digit
    return "(?-u)" + (_full(body) if full else _prefix(body))


# each keyed pattern, and whether it must match the whole text
_FULL = {"national_prefix": False, "viable": True, "general": True, "typed": True}


def _zone_patterns(regions: list[_Region], unsupported: set[str]) -> _Patterns:
    """Adds to `unsupported` the regions whose patterns polars does not take (none, in phonenumbers 9.0)."""
    shares = {region.key: _branches(region) for region in regions}
    patterns: dict[str, str] = {}
    for name, full in _FULL.items():
        pattern = _keyed([b for region in regions for b in shares[region.key][name]], full=full)
        if not _compiles(pattern):
            # find the regions at fault: a slow path, one compilation per region
            unsupported.update(r.key for r in regions if not _compiles(_keyed(shares[r.key][name], full=full)))
            pattern = _keyed([b for r in regions if r.key not in unsupported for b in shares[r.key][name]], full=full)
        patterns[name] = pattern
    return _Patterns(**patterns)


@functools.cache
def _world() -> _World:
    """Built on first use, from all ~250 regions, once per process: about 0.2 s (measured, with loading the
    metadata). Building it from only the countries in a batch would change the patterns, and so recompile them,
    from batch to batch."""
    regions = [region for code in COUNTRY_CODE_TO_REGION_CODE for region in _regions(code)]
    unsupported: set[str] = set()
    zones = {zone: _zone_patterns([r for r in regions if r.country_code[0] == zone], unsupported) for zone in _ZONES}
    mains = {str(code): main for code in COUNTRY_CODE_TO_REGION_CODE if (main := _main_region(code)) is not None}
    return _World(
        main={code: main.key for code, main in mains.items()},
        shared=frozenset(str(code) for code in COUNTRY_CODE_TO_REGION_CODE if len(_regions(code)) > 1),
        rewriting=frozenset(region.key for region in regions if region.transform is not None),
        unsupported=frozenset(unsupported),
        usable={region.key: sum(1 << n for n in range(_USABLE_UP_TO + 1) if _usable(n, region)) for region in regions},
        zones=zones,
    )


def _usable(length: int, region: _Region) -> bool:
    """`_test_number_length` (for any type) says IS_POSSIBLE or TOO_LONG."""
    if length in region.local_lengths:
        return False
    return length in region.lengths or length > max(region.lengths, default=0)


# --- the steps of phonenumbers.parse and is_valid_number, as expressions --------------------------------------


def _matches(number: pl.Expr, pattern: str | None) -> pl.Expr:
    return number.str.contains(polars_regex(_full(pattern))) if pattern is not None else pl.lit(False)


def _strip_national_prefix(number: pl.Expr, region: _Region) -> pl.Expr:
    """`_maybe_strip_national_prefix_carrier_code` with one region's rules: the number without its national
    prefix (and carrier code), or rewritten by the transform rule, unless only the original was viable."""
    if region.national_prefix is None:
        return number
    pattern = polars_regex(_prefix(region.national_prefix))
    match = number.str.extract(pattern, 0)
    stripped = number.str.slice(match.str.len_bytes())
    if region.transform is not None:
        transformed = number.str.replace(pattern, region.transform, n=1)
        rewrite = number.str.extract(pattern, region.transform_group).is_not_null()
        stripped = pl.when(rewrite).then(transformed).otherwise(stripped)
    keep = match.is_null() | (number == "") | (_matches(number, region.general) & ~_matches(stripped, region.general))
    return pl.when(keep).then(number).otherwise(stripped)


# Steps are lists of columns added in turn: a column used twice is computed once.
_Steps = list[list[pl.Expr]]


def _zone_steps(zone: str) -> _Steps:
    """The end of `parse` and `is_valid_number` for numbers of the zone's calling codes that have one region and
    no transform rule, all at once: `_parsing`, their region's key, selects the branch of each keyed pattern."""
    patterns = _world().zones[zone]
    nnn, region, keyed, match = pl.col(_NNN), pl.col(_PARSING), pl.col(_KEYED), pl.col(_MATCH)
    # `_maybe_strip_national_prefix_carrier_code`
    stripped = nnn.str.slice(match.str.len_bytes() - region.str.len_bytes() - 1)
    still_viable = pl.concat_str(region, pl.lit(":"), stripped).str.contains(patterns.viable)
    keep = match.is_null() | (nnn == "") | (keyed.str.contains(patterns.viable) & ~still_viable)
    # `_test_number_length`, as a bit per length
    candidate = pl.col(_CANDIDATE)
    length = candidate.str.len_bytes()
    mask = region.replace_strict(_world().usable, default=0, return_dtype=pl.Int64)
    bit = pl.lit(2, dtype=pl.Int64).pow(length.clip(upper_bound=_USABLE_UP_TO).cast(pl.Int64))
    usable = (length > _USABLE_UP_TO) | ((mask // bit) % 2 == 1)
    # `_number_type_helper`, for the only region
    nsn, sized = pl.col(_NSN), pl.col(_KEYED)
    size = nsn.str.len_bytes().cast(pl.String).str.zfill(2)
    return [
        [pl.concat_str(region, pl.lit(":"), nnn).alias(_KEYED)],
        [keyed.str.extract(patterns.national_prefix, 0).alias(_MATCH)],
        [pl.when(keep).then(nnn).otherwise(stripped).alias(_CANDIDATE)],
        [pl.when(usable).then(candidate).otherwise(nnn).alias(_NSN)],
        [pl.concat_str(region, pl.lit(":"), size, pl.lit(":"), nsn).alias(_KEYED), _ok()],
        [(sized.str.contains(patterns.general) & sized.str.contains(patterns.typed)).alias(_VALID)],
        [pl.lit(True).alias(_CLAIMED)],
    ]


def _ok() -> pl.Expr:
    """parse accepted the lengths: else TOO_SHORT_NSN or TOO_LONG."""
    return ((pl.col(_NNN).str.len_bytes() >= _MIN_NSN) & (pl.col(_NSN).str.len_bytes() <= _MAX_NSN)).alias(_OK)


@functools.cache
def _country_steps(code: int, parsing: str) -> _Steps:
    """The end of `parse` and `is_valid_number` for numbers of one calling code whose national prefix is that of
    region `parsing`, with that region's and the code's main region's own patterns. Cheaper per number than the
    keyed patterns, but a query costs a few milliseconds whatever its size (measured): for codes with many numbers,
    more than one region or a transform rule. `_claimed`: `region_code_for_number` picks the main region."""
    region, main = _region(code, parsing.split("/")[1]), _main_region(code)
    if region is None or main is None:
        raise UnsupportedPattern(parsing)
    nnn, candidate, nsn, valid = pl.col(_NNN), pl.col(_CANDIDATE), pl.col(_NSN), pl.col(_VALID)
    length = candidate.str.len_bytes()
    usable = (length.is_in(list(region.lengths)) | (length > max(region.lengths, default=0))) & ~length.is_in(
        list(region.local_lengths)
    )
    if len(_regions(code)) == 1:
        claimed = pl.lit(True)
    elif main.leading_digits is None:
        claimed = valid
    else:
        claimed = nsn.str.contains(polars_regex(_prefix(main.leading_digits)))
    return [
        [_strip_national_prefix(nnn, region).alias(_CANDIDATE)],
        [pl.when(usable).then(candidate).otherwise(nnn).alias(_NSN)],
        [_valid_in(main, nsn).alias(_VALID), _ok()],
        [claimed.alias(_CLAIMED)],
    ]


def _run(rows: pl.DataFrame, steps: _Steps) -> pl.LazyFrame:
    """The verdicts (`_i`, `e164`, `phone_error`) of the numbers the main region claims, and for the others,
    whose `phone_error` is null, what `_check_other_regions` needs (`_cc`, `_nsn`)."""
    query = rows.lazy()
    for step in steps:
        query = query.with_columns(step)
    ok, claimed, valid = pl.col(_OK), pl.col(_CLAIMED), pl.col(_VALID)
    return query.select(
        _I,
        _CC,
        _NSN,
        pl.when(ok & claimed & valid).then(_e164()).alias(E164),
        pl.when(~ok | (claimed & ~valid)).then(pl.lit(INVALID)).alias(PHONE_ERROR),
        (ok & ~claimed).alias(_UNCLAIMED),
    )


def _valid_in(region: _Region, nsn: pl.Expr) -> pl.Expr:
    """`_number_type_helper` is not UNKNOWN, with one region's patterns."""
    if region.general is None or not region.typed:
        return pl.lit(False)
    length = nsn.str.len_bytes()
    typed = [_within(length, lengths) & _matches(nsn, pattern) for lengths, pattern in region.typed]
    return _within(length, region.lengths) & _matches(nsn, region.general) & pl.any_horizontal(typed)


def _within(length: pl.Expr, lengths: tuple[int, ...]) -> pl.Expr:
    # no possible lengths on a description means "those of the general description", checked before
    return length.is_in(list(lengths)) if lengths else pl.lit(True)


def _e164() -> pl.Expr:
    return pl.concat_str(pl.lit("+"), pl.col(_CC), pl.col(_NSN))


class _Sorted:
    """Where the rows went: verdicts (`_i`, `e164`, `phone_error`), the row numbers of texts for the fallback, and
    numbers to check (`_i`, `_cc`, `_nnn`, `_parsing`, `_main`)."""

    def __init__(self) -> None:
        self.verdicts: list[pl.DataFrame] = []
        self.fallback: list[pl.Series] = []
        self.to_parse: list[pl.DataFrame] = []

    def decide(self, rows: pl.DataFrame, *, e164: pl.Expr | None = None, error: pl.Expr | str | None) -> None:
        if rows.height == 0:
            return
        reason = error if isinstance(error, pl.Expr) else pl.lit(error, dtype=pl.String)
        number = pl.lit(None, dtype=pl.String) if e164 is None else e164
        self.verdicts.append(rows.select(_I, number.alias(E164), reason.alias(PHONE_ERROR)))

    def decide_validity(self, rows: pl.DataFrame, valid: pl.Expr) -> None:
        self.decide(rows, e164=pl.when(valid).then(_e164()), error=pl.when(~valid).then(pl.lit(INVALID)))

    def give_up(self, rows: pl.DataFrame) -> None:
        if rows.height:
            self.fallback.append(rows[_I])

    def parse(self, rows: pl.DataFrame, *, cc: pl.Expr, nnn: pl.Expr, parsing: pl.Expr, main: pl.Expr) -> None:
        """Rows whose calling code and national number parse found; `parsing` is the key of the region whose
        national prefix it strips next (the default region's for a national number, else the code's main one),
        `main` the key of the code's main region (null if it has no metadata)."""
        if rows.height:
            columns = [cc.alias(_CC), nnn.alias(_NNN), parsing.alias(_PARSING), main.alias(_MAIN)]
            self.to_parse.append(rows.select(_I, *columns))


def _split(rows: pl.DataFrame, condition: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows where `condition` holds, and the others."""
    mask = rows.select(condition.fill_null(False)).to_series()
    return rows.filter(mask), rows.filter(~mask)


# what a first look says of a text
_EMPTY_TEXT, _PLAIN_TEXT, _FORMATTED_TEXT, _EXTENDED_TEXT, _OTHER_TEXT = range(5)


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
        .when(trimmed.str.contains(_WITH_EXTENSION))
        .then(_EXTENDED_TEXT)
        .otherwise(_OTHER_TEXT)
    )
    # the text itself is left behind: the fallback finds it again by its row number
    rows = frame.lazy().with_columns(text.str.strip_chars().alias(_TRIMMED)).select(_I, _TRIMMED, kind.alias(_KIND))
    groups = rows.collect().partition_by(_KIND, as_dict=True, include_key=False)
    none = pl.DataFrame(schema={_I: pl.UInt32, _TRIMMED: pl.String})
    sorted_.decide(groups.get((_EMPTY_TEXT,), none), error=EMPTY)
    sorted_.give_up(groups.get((_OTHER_TEXT,), none))
    plain = groups.get((_PLAIN_TEXT,), none).select(
        _I, trimmed.str.strip_prefix("+").alias(_DIGITS), trimmed.str.starts_with("+").alias(_PLUS)
    )
    formatted = pl.concat(
        [
            groups.get((_FORMATTED_TEXT,), none),
            groups.get((_EXTENDED_TEXT,), none).with_columns(trimmed.str.replace(_EXTENSION, "")),
        ]
    ).select(
        _I,
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
    if region is None:
        sorted_.decide(national, error=NEEDS_COUNTRY)
    else:
        try:
            international, national = _dialled_abroad(international, national, region)
            _sort_national(national, region, sorted_)
        except UnsupportedPattern:
            sorted_.give_up(national)
    _sort_international(international, sorted_)


def _dialled_abroad(
    international: pl.DataFrame, national: pl.DataFrame, region: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`_maybe_strip_i18n_prefix_and_normalize`: numbers that start with the default region's international
    prefix (not followed by a 0) join those with a `+`."""
    rules = _region(phonenumbers.country_code_for_region(region), region)
    if rules is None or rules.international_prefix is None:
        return international, national
    digits = pl.col(_DIGITS)
    match = digits.str.extract(polars_regex(_prefix(rules.international_prefix)), 0)
    after = digits.str.slice(match.str.len_bytes())
    national = national.with_columns(
        pl.when(match.is_not_null() & ~after.str.starts_with("0")).then(after).alias(_REST)
    )
    dialled, national = _split(national, pl.col(_REST).is_not_null())
    return pl.concat([international, dialled]), national


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
    cc = pl.col(_CC)
    main = cc.replace_strict(_world().main, default=None, return_dtype=pl.String)
    sorted_.parse(known, cc=cc, nnn=rest.str.slice(cc.str.len_bytes()), parsing=main, main=main)


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


def _sort_national(national: pl.DataFrame, region: str, sorted_: _Sorted) -> None:
    """The rest of `_maybe_extract_country_code`: a national number that starts with the default region's own
    calling code loses it if only then is it viable, or if it was too long with it."""
    rules = _region(phonenumbers.country_code_for_region(region), region)
    if rules is None:
        raise UnsupportedPattern(region)
    digits = pl.col(_DIGITS)
    code = rules.country_code
    without_code = _strip_national_prefix(digits.str.slice(len(code)), rules)
    length = digits.str.len_bytes()
    too_long = (length > max(rules.lengths, default=0)) & ~length.is_in(list(rules.local_lengths))
    had_code = (~_matches(digits, rules.general) & _matches(without_code, rules.general)) | too_long
    own, main = pl.lit(rules.key), pl.lit(_world().main.get(code), dtype=pl.String)
    starting, others = _split(national, digits.str.starts_with(code))
    sorted_.parse(others, cc=pl.lit(code), nnn=digits, parsing=own, main=main)
    lost, kept = _split(starting.with_columns(without_code.alias(_NNN)), had_code)
    sorted_.parse(lost, cc=pl.lit(code), nnn=pl.col(_NNN), parsing=main, main=main)
    sorted_.parse(kept, cc=pl.lit(code), nnn=digits, parsing=own, main=main)


# collect_all runs queries side by side: a big code's numbers are checked in pieces this big, not in one long query
_CHUNK_ROWS = 250_000
# A calling code with this many numbers to check gets its own query; the others share one per zone.
_OWN_QUERY_ROWS = 5_000


def _check_numbers(sorted_: _Sorted, own_query_rows: int) -> None:
    """The end of `parse` (national prefix, lengths) and `is_valid_number`, for the numbers `_sort_numbers`
    parsed."""
    if not sorted_.to_parse:
        return
    world = _world()
    rows = pl.concat(sorted_.to_parse).with_columns(pl.col(_CC).str.slice(0, 1).alias(_ZONE))
    if world.unsupported or rows[_MAIN].null_count():
        unsupported = list(world.unsupported)
        supported = ~pl.col(_PARSING).is_in(unsupported) & ~pl.col(_MAIN).is_in(unsupported)
        rows, unsupported_rows = _split(rows, supported & pl.col(_MAIN).is_not_null())
        sorted_.give_up(unsupported_rows)
    # some calling codes get queries of their own (see `_country_steps`); the others share one per zone
    counts = rows[_CC].value_counts()
    big = counts.filter(pl.col("count") >= own_query_rows)[_CC].to_list()
    alone = pl.col(_CC).is_in(big + list(world.shared)) | pl.col(_PARSING).is_in(list(world.rewriting))
    apart, together = _split(rows, alone)
    shared: list[pl.LazyFrame] = []  # numbers their code's main region may not claim
    single: list[pl.LazyFrame] = []
    for (code, parsing), part in apart.partition_by(_CC, _PARSING, as_dict=True).items():
        try:
            steps = _country_steps(int(str(code)), str(parsing))
        except UnsupportedPattern:
            sorted_.give_up(part)
            continue
        queries = shared if str(code) in world.shared else single
        queries += [_run(part.slice(start, _CHUNK_ROWS), steps) for start in range(0, part.height, _CHUNK_ROWS)]
    for (zone,), part in together.partition_by(_ZONE, as_dict=True).items():
        steps = _zone_steps(str(zone))
        single += [_run(part.slice(start, _CHUNK_ROWS), steps) for start in range(0, part.height, _CHUNK_ROWS)]
    checked = pl.collect_all(shared + single)
    sorted_.verdicts += [part.select(_I, E164, PHONE_ERROR) for part in checked[len(shared) :]]
    if not shared:
        return
    unclaimed, decided = _split(pl.concat(checked[: len(shared)]), pl.col(_UNCLAIMED))
    sorted_.verdicts.append(decided.select(_I, E164, PHONE_ERROR))
    for (code,), part in unclaimed.partition_by(_CC, as_dict=True).items():
        try:
            _check_other_regions(part, int(str(code)), sorted_)
        except UnsupportedPattern:
            sorted_.give_up(part)


def _check_other_regions(pending: pl.DataFrame, code: int, sorted_: _Sorted) -> None:
    """The rest of `is_valid_number` for numbers their code's main region did not claim: valid for the first
    other region whose leading digits match (or, if it has none, for which it is valid); invalid if none claims
    it."""
    world = _world()
    nsn = pl.col(_NSN)
    regions = _regions(code)[1:]
    claims = [
        nsn.str.contains(polars_regex(_prefix(r.leading_digits))) if r.leading_digits is not None else _valid_in(r, nsn)
        for r in regions
    ]
    first = pl.coalesce([pl.when(claim).then(pl.lit(n, dtype=pl.UInt8)) for n, claim in enumerate(claims)])
    keys = {n: region.key for n, region in enumerate(regions)}
    claimant = first.replace_strict(keys, default=None, return_dtype=pl.String)
    rows = pending.select(_I, _CC, _NSN, claimant.alias(_MAIN))
    claimed, unclaimed = _split(rows, pl.col(_MAIN).is_not_null() & ~pl.col(_MAIN).is_in(list(world.unsupported)))
    unsupported, unclaimed = _split(unclaimed, pl.col(_MAIN).is_not_null())
    sized = pl.concat_str(
        pl.col(_MAIN), pl.lit(":"), nsn.str.len_bytes().cast(pl.String).str.zfill(2), pl.lit(":"), nsn
    )
    zone = world.zones[str(code)[0]]
    sorted_.decide_validity(claimed, sized.str.contains(zone.general) & sized.str.contains(zone.typed))
    sorted_.decide(unclaimed, error=INVALID)
    sorted_.give_up(unsupported)
