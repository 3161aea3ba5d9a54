"""Phone numbers -> E.164, in bulk: every input element's normalised number or the reason it has none.

What a number becomes is what `phonenumbers` (the Python port of Google's libphonenumber) decides: `parse(text,
default_region)`, then `is_valid_number`, then `format_number(..., E164)`. `decide_phone` is exactly that, for one
value. This module owns doing the same for a million values without a million Python calls:

- the common shapes of input (digits with spaces, dots, hyphens, parentheses, a leading `+`, a `tel:` prefix, an
  extension such as " ext. 12") are
  parsed with polars expressions built from libphonenumber's own metadata - the default region's international
  and national prefixes, the country calling codes, each region's national prefix - and its number patterns,
  compiled into automata (`digit_automata`), following the steps of `phonenumbers.parse` and `is_valid_number` one
  by one, each over all numbers at once whatever their countries;
- anything else (letters, unusual extensions, other scripts' digits, a `+` the metadata cannot place, a region
  whose patterns could not be compiled) goes to `decide_phone`, once per distinct text.

Reasons never contain the number: values are people's data; the caller adds the column name.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import phonenumbers
import polars as pl
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, PhoneMetadata, PhoneNumberFormat

from pipeline import digit_automata, rules_cache
from pipeline.digit_automata import UnsupportedPattern

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
_PARSING = "_parsing"  # number of the region whose national prefix parse strips
_NSN = "_nsn"
_MAIN = "_main"  # number of the calling code's main region (or of the region that claims the number)
_MATCH = "_match"
_CANDIDATE = "_candidate"  # the national number with its national prefix stripped, if parse allows it
_VALID = "_valid"
_LEAD = "_lead"  # position among its code's regions of the first whose leading digits the number starts with
_POSITION = "_position"
_TAKEN = "_taken"


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


def normalise_phones_with_stats(numbers: pl.Series, *, default_region: str | None) -> tuple[pl.DataFrame, PhoneStats]:
    """`normalise_phones`, and how much of it needed phonenumbers value by value."""
    region = _checked_region(default_region)
    frame = pl.DataFrame({_TEXT: numbers.cast(pl.String)}).with_row_index(_I)
    sorted_ = _decide_in_bulk(frame, region)
    indices = pl.concat(sorted_.fallback) if sorted_.fallback else pl.Series(_I, [], dtype=pl.UInt32)
    fallback = pl.DataFrame({_I: indices, _TEXT: frame[_TEXT].gather(indices)})
    values = fallback[_TEXT].unique()
    sorted_.verdicts.append(fallback.join(_decide_each(values, region), on=_TEXT, how="left").drop(_TEXT))
    result = pl.concat(sorted_.verdicts).sort(_I).drop(_I)
    return result, PhoneStats(rows=frame.height, fallback_rows=fallback.height, fallback_values=values.len())


def _decide_in_bulk(frame: pl.DataFrame, region: str | None) -> _Sorted:
    """The verdicts of the expressions for `frame` (`_i`, `_text`), and the rows they leave to phonenumbers."""
    sorted_ = _Sorted()
    simple = _sort_texts(frame, sorted_)
    _sort_numbers(simple, region, sorted_)
    _check_numbers(sorted_)
    return sorted_


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
class _World:
    """Every region's rules, regions numbered (`index`) so that a row carries a small integer and its rules are
    looked up by gathers. National prefixes that are plain digits are compared per row; the few that are patterns
    make one regular expression over keyed texts ("44/GB:02079460958"), whose text stays the same from call to
    call, so polars (which keeps a few dozen compiled patterns per thread) seldom compiles it again. The number
    patterns are automata (`digit_automata`)."""

    keys: list[str]  # region number -> its key, e.g. "44/GB" ("calling code/region")
    index: dict[str, int]  # region key -> its number
    main: dict[str, int]  # calling code -> its main region's number
    rewriting: frozenset[int]  # regions with a national prefix transform rule
    unsupported: frozenset[str]  # region keys the expressions cannot check: their numbers go to the fallback
    usable: pl.Series  # per region, bit n set if `_test_number_length` lets parse strip to n digits
    literal_prefix: pl.Series  # per region, its national prefix if that is plain digits (and not rewritten)
    patterned: frozenset[int]  # regions whose national prefix is a pattern (and not rewritten)
    national_prefixes: str  # the patterned national prefixes, keyed
    automata: digit_automata.Automata
    checks: pl.Series  # per region, its automaton (null: none): bit 0 general pattern, bit n its n-th typed group
    lengths: pl.Series  # per check automaton and length 0-18: the bits of its patterns that allow that length
    claims: dict[str, int]  # calling code with several regions -> prefix automaton: bit n, its n-th region's
    # leading digits (regions without leading digits have no bit)
    # calling code with several regions (every one of them is a key) -> [position, region number] of each of its
    # regions without leading digits
    claimants: dict[str, list[list[int]]]
    positions: dict[str, int]  # "code#n" -> the number of the code's n-th region
    unchecked: frozenset[str]  # calling codes with a region the expressions cannot check


_USABLE_UP_TO = 20  # longer numbers are TOO_LONG for every region: usable


def _national_prefixes(regions: list[_Region], unsupported: set[str]) -> str:
    """The keyed pattern of the regions' national prefixes (prefix match on "key:number"); adds to `unsupported`
    the regions whose patterns polars does not take (none, in phonenumbers 9.0)."""

    def keyed(chosen: list[_Region]) -> str:
        branches = [f"{r.key}:(?:{r.national_prefix})" for r in chosen]
        return "(?-u)" + _prefix("|".join(branches) if branches else "-")  # "-" never matches: keys start with a digit

    pattern = keyed(regions)
    if not _compiles(pattern):
        # find the regions at fault: a slow path, one compilation per region
        unsupported.update(r.key for r in regions if not _compiles(keyed([r])))
        pattern = keyed([r for r in regions if r.key not in unsupported])
    return pattern


def _is_literal(prefix: str | None) -> bool:
    return prefix is not None and prefix.isascii() and prefix.isdigit()


def _allowed_lengths(region: _Region) -> list[int]:
    """Per length 0-18, the bits of the region's check automaton whose pattern allows numbers of that length
    (`_within`: no possible lengths on a type means those of the general description, checked by bit 0)."""
    groups = [region.lengths, *(lengths for lengths, _ in region.typed)]
    return [
        sum(1 << bit for bit, lengths in enumerate(groups) if not lengths or length in lengths)
        for length in range(digit_automata.DIGITS + 1)
    ]


_WORLD_LOCK = threading.Lock()


def _world() -> _World:
    with _WORLD_LOCK:  # built once, whichever thread asks first
        return _built_world()


@functools.cache
def _built_world() -> _World:
    """Built on first use, from all ~250 regions: about 0.7 s (measured, with loading the metadata), so it is kept
    on disk (`rules_cache`) and later processes load it in ~20 ms. Building it from only the countries in a batch
    would change the keyed pattern, and so compile it again, from batch to batch."""
    versions = (f"phonenumbers{phonenumbers.__version__}", f"polars{pl.__version__}")
    where = rules_cache.folder(_World, "phone-rules", *versions)
    world = rules_cache.load(_World, where)
    if world is None:
        world = _build_world()
        rules_cache.save(world, where)
    return world


def _build_world() -> _World:
    regions = [region for code in COUNTRY_CODE_TO_REGION_CODE for region in _regions(code)]
    unsupported: set[str] = set()
    plain = [r for r in regions if r.transform is None]
    patterned = [r for r in plain if r.national_prefix is not None and not _is_literal(r.national_prefix)]
    prefixes = _national_prefixes(patterned, unsupported)
    builder = digit_automata.Builder()
    checks: list[int | None] = []
    claims: dict[str, int] = {}
    lengths: list[int] = []
    for region in regions:  # the check automata first: their numbers index `lengths`
        try:
            checks.append(builder.add([region.general, *(pattern for _, pattern in region.typed)]))
        except UnsupportedPattern:
            unsupported.add(region.key)
            checks.append(None)
            continue
        lengths += _allowed_lengths(region)
    for code in COUNTRY_CODE_TO_REGION_CODE:
        if len(_regions(code)) > 1:
            try:
                claims[str(code)] = builder.add([r.leading_digits for r in _regions(code)], prefix=True)
            except UnsupportedPattern:
                unsupported.update(r.key for r in _regions(code))
    index = {region.key: n for n, region in enumerate(regions)}
    mains = {str(code): main for code in COUNTRY_CODE_TO_REGION_CODE if (main := _main_region(code)) is not None}
    return _World(
        keys=[region.key for region in regions],
        index=index,
        main={code: index[main.key] for code, main in mains.items()},
        rewriting=frozenset(index[region.key] for region in regions if region.transform is not None),
        unsupported=frozenset(unsupported),
        usable=pl.Series(
            [sum(1 << n for n in range(_USABLE_UP_TO + 1) if _usable(n, region)) for region in regions], dtype=pl.Int64
        ),
        literal_prefix=pl.Series(
            [r.national_prefix if r.transform is None and _is_literal(r.national_prefix) else None for r in regions],
            dtype=pl.String,
        ),
        patterned=frozenset(index[region.key] for region in patterned),
        national_prefixes=prefixes,
        automata=builder.freeze(),
        checks=pl.Series(checks, dtype=pl.UInt32),
        lengths=pl.Series(lengths, dtype=pl.UInt32),
        claims=claims,
        claimants={
            str(code): [[n, index[r.key]] for n, r in enumerate(_regions(code)) if r.leading_digits is None]
            for code in COUNTRY_CODE_TO_REGION_CODE
            if len(_regions(code)) > 1
        },
        positions={
            f"{code}#{n}": index[r.key]
            for code in COUNTRY_CODE_TO_REGION_CODE
            if len(_regions(code)) > 1
            for n, r in enumerate(_regions(code))
        },
        unchecked=frozenset(
            str(code) for code in COUNTRY_CODE_TO_REGION_CODE if any(r.key in unsupported for r in _regions(code))
        ),
    )


def _usable(length: int, region: _Region) -> bool:
    """`_test_number_length` (for any type) says IS_POSSIBLE or TOO_LONG."""
    if length in region.local_lengths:
        return False
    return length in region.lengths or length > max(region.lengths, default=0)


# --- the steps of phonenumbers.parse and is_valid_number, on whole columns -------------------------------------


def _checks(regions: pl.Series) -> pl.Series:
    """The check automaton of each region (by number; null for none)."""
    return _world().checks.gather(regions)


def _general(numbers: pl.Series, checks: pl.Series | int | None) -> pl.Series:
    """Each whole number matches the general pattern of its region (given by its check automaton)."""
    if checks is None:
        return pl.repeat(False, numbers.len(), eager=True)
    return _world().automata.run(numbers, checks) % 2 == 1


def _valid(nsn: pl.Series, regions: pl.Series) -> pl.Series:
    """`_number_type_helper` is not UNKNOWN with the patterns of each number's region (by number): the length is
    one of the general description's, the general pattern matches, and so does the pattern of a type that allows
    the length."""
    world = _world()
    checks = _checks(regions)
    length = nsn.str.len_bytes().clip(upper_bound=digit_automata.DIGITS).cast(pl.UInt32)
    bits = world.automata.run(nsn, checks) & world.lengths.gather(checks * (digit_automata.DIGITS + 1) + length)
    return ((bits % 2 == 1) & (bits >= 2)).fill_null(False)


def _strip_national_prefix(numbers: pl.Series, region: _Region) -> pl.Series:
    """`_maybe_strip_national_prefix_carrier_code` with one region's rules: each number without its national
    prefix (and carrier code), or rewritten by the transform rule, unless only the original was viable."""
    if region.national_prefix is None:
        return numbers
    pattern = polars_regex(_prefix(region.national_prefix))
    number = pl.col(_NNN)
    match = number.str.extract(pattern, 0)
    stripped = number.str.slice(match.str.len_bytes())
    if region.transform is not None:
        transformed = number.str.replace(pattern, region.transform, n=1)
        rewrite = number.str.extract(pattern, region.transform_group).is_not_null()
        stripped = pl.when(rewrite).then(transformed).otherwise(stripped)
    found = numbers.to_frame(_NNN).select(match.is_not_null().alias(_MATCH), stripped.alias(_CANDIDATE))
    world = _world()
    return _stripped_unless_viable(numbers, found[_MATCH], found[_CANDIDATE], world.checks[world.index[region.key]])


def _stripped_unless_viable(
    numbers: pl.Series, matched: pl.Series, stripped: pl.Series, checks: pl.Series | int | None
) -> pl.Series:
    """The numbers with a national prefix (`matched`) become `stripped`, unless only the original is viable."""
    # only the numbers with a prefix whose stripping changes them are looked at again
    chosen = (matched & (numbers != "") & (stripped != numbers)).fill_null(False)
    if not chosen.any():
        return numbers
    if isinstance(checks, pl.Series):
        checks = checks.filter(chosen)
    # the numbers with and without their prefixes, in one pass
    before = numbers.filter(chosen)
    both = _general(
        pl.concat([before, stripped.filter(chosen)]),
        pl.concat([checks, checks]) if isinstance(checks, pl.Series) else checks,
    )
    strip = (~both.head(before.len()) | both.tail(before.len())).fill_null(False)
    # scatter the decisions back: the chosen rows, in order
    decided = pl.repeat(False, numbers.len(), eager=True).scatter(chosen.arg_true(), strip)
    return stripped.zip_with(decided, numbers)


def _strip_literal(rows: pl.DataFrame) -> pl.Series:
    """`_strip_national_prefix` for numbers of regions whose national prefix is plain digits, or who have none,
    whatever their regions: one comparison per row."""
    world = _world()
    nnn = pl.col(_NNN)
    literal = pl.lit(world.literal_prefix).gather(pl.col(_PARSING))
    length = pl.when(nnn.str.starts_with(literal)).then(literal.str.len_bytes())
    found = rows.select(length.is_not_null().alias(_MATCH), nnn.str.slice(length.fill_null(0)).alias(_CANDIDATE))
    return _stripped_unless_viable(rows[_NNN], found[_MATCH], found[_CANDIDATE], _checks(rows[_PARSING]))


def _strip_patterned(rows: pl.DataFrame) -> pl.Series:
    """`_strip_national_prefix` for numbers of regions whose national prefix is a pattern (and not rewritten),
    whatever their regions: one pass of the keyed pattern."""
    world = _world()
    key = pl.lit(pl.Series(world.keys, dtype=pl.String)).gather(pl.col(_PARSING))
    length = pl.concat_str(key, pl.lit(":"), pl.col(_NNN)).str.extract(world.national_prefixes, 0).str.len_bytes()
    stripped = pl.col(_NNN).str.slice(length - key.str.len_bytes() - 1)
    found = rows.select(length.is_not_null().alias(_MATCH), stripped.alias(_CANDIDATE))
    return _stripped_unless_viable(rows[_NNN], found[_MATCH], found[_CANDIDATE], _checks(rows[_PARSING]))


def _usable_lengths(rows: pl.DataFrame) -> pl.Series:
    """`_test_number_length` with the `_parsing` region's lengths lets parse keep the stripped `_candidate`."""
    length = pl.col(_CANDIDATE).str.len_bytes()
    mask = pl.lit(_world().usable).gather(pl.col(_PARSING))
    bit = pl.lit(2, dtype=pl.Int64).pow(length.clip(upper_bound=_USABLE_UP_TO).cast(pl.Int64))
    return rows.select((length > _USABLE_UP_TO) | ((mask // bit) % 2 == 1)).to_series()


def _claimants(rows: pl.DataFrame) -> pl.DataFrame:
    """`region_code_for_number` for each number (`_nsn`) of a calling code with several regions: the first of the
    code's regions whose leading digits it starts with or, for a region without leading digits, for which it is
    valid. Returns `_i`, `_cc`, `_nsn`, `_main` (the region's number, null if none claims it) and `_valid` (true
    if the region claimed it by validity, null if that is still to be checked, false if no region claims it)."""
    world = _world()
    cc = pl.col(_CC)
    found: list[pl.DataFrame] = []
    pending = rows.select(_I, _CC, _NSN)
    # Where a code's first region has no leading digits (+1's US, +44's GB...), most numbers are valid there:
    # only the others need the leading digits of the rest.
    first_valid = [code for code, claimants in world.claimants.items() if claimants and claimants[0][0] == 0]
    first, pending = _split(pending, cc.is_in(first_valid))
    first = first.with_columns(cc.replace_strict(world.main, default=None, return_dtype=pl.UInt32).alias(_MAIN))
    valid = _valid(first[_NSN], first[_MAIN])
    found.append(first.filter(valid).with_columns(pl.lit(True).alias(_VALID)))
    pending = pl.concat([pending, first.filter(~valid).drop(_MAIN)])
    claims = pending[_CC].replace_strict(world.claims, default=None, return_dtype=pl.UInt32)
    # the position of the first region whose leading digits the number starts with (32: none does)
    lead = world.automata.run(pending[_NSN], claims).bitwise_trailing_zeros()
    pending = pending.with_columns(lead.alias(_LEAD))
    ranks = max(len(claimants) for claimants in world.claimants.values())
    for rank in range(ranks):
        # each code's `rank`-th region without leading digits: the number is valid there, or was claimed before
        ranked = {code: c[rank] for code, c in world.claimants.items() if len(c) > rank}
        position = cc.replace_strict({code: p for code, (p, _) in ranked.items()}, default=None, return_dtype=pl.UInt32)
        region = cc.replace_strict({code: n for code, (_, n) in ranked.items()}, default=None, return_dtype=pl.UInt32)
        pending = pending.with_columns(position.alias(_POSITION), region.alias(_MAIN))
        # a region at position 0 was asked above
        done = (pl.col(_POSITION) == 0) & cc.is_in(first_valid)
        earlier, pending = _split(pending, pl.col(_POSITION).is_null() | (pl.col(_LEAD) < pl.col(_POSITION)))
        found.append(_claimed_by_leading_digits(earlier))
        asked, pending = _split(pending, ~done)
        valid = _valid(asked[_NSN], asked[_MAIN])
        found.append(asked.filter(valid).select(_I, _CC, _NSN, _MAIN, pl.lit(True).alias(_VALID)))
        pending = pl.concat([pending, asked.filter(~valid)])
    found.append(_claimed_by_leading_digits(pending))
    return pl.concat([part.select(_I, _CC, _NSN, _MAIN, _VALID) for part in found])


def _claimed_by_leading_digits(rows: pl.DataFrame) -> pl.DataFrame:
    """`_i`, `_cc`, `_nsn`, `_main` and `_valid` for numbers no region without leading digits claimed before their
    `_lead`."""
    region = pl.concat_str(pl.col(_CC), pl.lit("#"), pl.col(_LEAD).cast(pl.String)).replace_strict(
        _world().positions, default=None, return_dtype=pl.UInt32
    )
    return rows.select(_I, _CC, _NSN, region.alias(_MAIN), pl.when(region.is_null()).then(False).alias(_VALID))


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
        """Rows whose calling code and national number parse found; `parsing` is the number of the region whose
        national prefix it strips next (the default region's for a national number, else the code's main one),
        `main` the number of the code's main region (null if it has no metadata)."""
        if rows.height:
            columns = [cc.alias(_CC), nnn.alias(_NNN), parsing.alias(_PARSING), main.alias(_MAIN)]
            self.to_parse.append(rows.select(_I, *columns))


def _split(rows: pl.DataFrame, condition: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows where `condition` holds, and the others."""
    taken = rows.with_columns(condition.fill_null(False).alias(_TAKEN))
    parts = taken.partition_by(_TAKEN, as_dict=True, include_key=False)
    taken_rows, other_rows = parts.get((True,)), parts.get((False,))
    empty = rows.clear() if taken_rows is None or other_rows is None else rows
    return (empty if taken_rows is None else taken_rows), (empty if other_rows is None else other_rows)


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
    prefix = rules.international_prefix
    match: pl.Expr
    if _is_literal(prefix):  # most are: a comparison instead of a regular expression
        match = pl.when(digits.str.starts_with(prefix)).then(pl.lit(prefix))
    else:
        match = digits.str.extract(polars_regex(_prefix(prefix)), 0)
    after = digits.str.slice(match.str.len_bytes().fill_null(0))
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
    main = cc.replace_strict(_world().main, default=None, return_dtype=pl.UInt32)
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
    if rules is None or rules.key in _world().unsupported:
        raise UnsupportedPattern(region)
    code = rules.country_code
    own, main = pl.lit(_world().index[rules.key], dtype=pl.UInt32), pl.lit(_world().main.get(code), dtype=pl.UInt32)
    starting, others = _split(national, pl.col(_DIGITS).str.starts_with(code))
    sorted_.parse(others, cc=pl.lit(code), nnn=pl.col(_DIGITS), parsing=own, main=main)
    digits = starting[_DIGITS]
    without_code = _strip_national_prefix(digits.str.slice(len(code)), rules)
    length = digits.str.len_bytes()
    too_long = (length > max(rules.lengths, default=0)) & ~length.is_in(list(rules.local_lengths))
    check = _world().checks[_world().index[rules.key]]
    had_code = (~_general(digits, check) & _general(without_code, check)) | too_long
    lost, kept = starting.with_columns(without_code.alias(_NNN)).filter(had_code), starting.filter(~had_code)
    sorted_.parse(lost, cc=pl.lit(code), nnn=pl.col(_NNN), parsing=main, main=main)
    sorted_.parse(kept, cc=pl.lit(code), nnn=pl.col(_DIGITS), parsing=own, main=main)


def _check_numbers(sorted_: _Sorted) -> None:
    """The end of `parse` (national prefix, lengths) and `is_valid_number`, for the numbers `_sort_numbers`
    parsed: a few passes over all of them, whatever their countries."""
    if not sorted_.to_parse:
        return
    world = _world()
    rows = pl.concat(sorted_.to_parse)
    # a calling code with a region the automata cannot check (none, in phonenumbers 9.0) is phonenumbers' to decide
    rows, unsupported = _split(rows, pl.col(_MAIN).is_not_null() & ~pl.col(_CC).is_in(list(world.unchecked)))
    sorted_.give_up(unsupported)
    # `_maybe_strip_national_prefix_carrier_code`: transform rules region by region, the other regions at once
    rewriting, rows = _split(rows, pl.col(_PARSING).is_in(list(world.rewriting)))
    patterned, literal = _split(rows, pl.col(_PARSING).is_in(list(world.patterned)))
    parts = [
        literal.with_columns(_strip_literal(literal).alias(_CANDIDATE)),
        patterned.with_columns(_strip_patterned(patterned).alias(_CANDIDATE)),
    ]
    for (number,), part in rewriting.partition_by(_PARSING, as_dict=True).items():
        code, name = world.keys[int(str(number))].split("/")
        region = _region(int(code), name)
        if region is None:
            sorted_.give_up(part)
            continue
        parts.append(part.with_columns(_strip_national_prefix(part[_NNN], region).alias(_CANDIDATE)))
    rows = pl.concat(parts)
    nnn, nsn = pl.col(_NNN), pl.col(_NSN)
    rows = rows.with_columns(pl.when(_usable_lengths(rows)).then(pl.col(_CANDIDATE)).otherwise(nnn).alias(_NSN))
    # parse accepted the lengths (else TOO_SHORT_NSN or TOO_LONG)
    ok = (nnn.str.len_bytes() >= _MIN_NSN) & (nsn.str.len_bytes() <= _MAX_NSN)
    rejected, rows = _split(rows, ~ok)
    sorted_.decide(rejected, error=INVALID)
    # `region_code_for_number`: a calling code's only region, or the first of its regions to claim the number
    shared, single = _split(rows, pl.col(_CC).is_in(list(world.claimants)))
    rows = pl.concat(
        [single.select(_I, _CC, _NSN, _MAIN, pl.lit(None, dtype=pl.Boolean).alias(_VALID)), _claimants(shared)]
    )
    # `is_valid_number_for_region` (unless the region claimed the number by its validity)
    to_check, known = _split(rows, pl.col(_VALID).is_null())
    sorted_.decide_validity(known, pl.col(_VALID))
    sorted_.decide_validity(to_check, pl.lit(_valid(to_check[_NSN], to_check[_MAIN])))
