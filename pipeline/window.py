"""Sending hours in each recipient's own time (`send.window`): which time zones a row is in, whether its window is
open at a given moment, when it opens next, and the text that says so.

A row's zones: the IANA zone its `send.timezone` cell names; else (v3) the zones of its phone number in phonenumbers'
time-zone data; else `send.default_timezone`; else none is known. A number may be in several zones (a US toll-free
number is in all 42 of +1) and is then sendable only while its window is open in every one of them.

Everything is done in bulk. The numbers' zones: a longest-prefix match of phonenumbers' prefix table in polars (one
join per prefix length), once per distinct number, with the number's type - which decides, as in
`phonenumbers.timezone.time_zones_for_number`, between the prefix's zones and the whole country's - found with
libphonenumber's own patterns as polars expressions. The windows: computed with zoneinfo once per distinct set of
zones (a few hundred at most), then joined back to the rows.

Daylight-saving time is zoneinfo's: a window is open while the local wall-clock time is inside it, so a `from` that
does not exist on the day clocks go forward (02:30 in New York on a March Sunday) opens at the jump (03:00), a
`from` in the repeated hour opens at its first occurrence, and a window opens or closes again where the clock jumps
back into or out of it.
"""

from __future__ import annotations

import bisect
import functools
import math
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import phonenumbers
import polars as pl
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, PhoneNumberType
from phonenumbers.phonemetadata import PhoneNumberDesc
from phonenumbers.timezone import UNKNOWN_TIMEZONE
from phonenumbers.tzdata import TIMEZONE_DATA

from pipeline import fields
from pipeline.digit_automata import UnsupportedPattern
from pipeline.phones import polars_regex
from pipeline.spec import WindowSpec

DEFERRED = "deferred"  # result_status of a row that is not sent now because its window is closed

# output columns (named in fields.py)
ZONES = fields.ZONES
ZONE_ERROR = fields.ZONE_ERROR
OPEN = fields.WINDOW_OPEN
OPENS_AT = fields.OPENS_AT
CLOSES_AT = fields.CLOSES_AT
REASON = fields.DEFERRED_REASON

HORIZON = timedelta(days=14)  # how far ahead an opening is looked for: any `days` rule opens within a week
UNKNOWN_REASON = "time zone unknown: set send.default_timezone, or name each row's zone with send.timezone"
_SHOWN_ZONES = 3  # zones a reason names before "and N more"
_SEPARATOR = "|"  # joins a set of zones into one key; no IANA name holds it

# working columns
_E164 = "_e164"
_DIGITS = "_digits"
_CC = "_cc"
_NSN = "_nsn"
_USE = "_use"
_KEY = "_key"

# What the number's type says about its zones (`time_zones_for_number`): a geographical number (fixed line; mobile in
# the countries whose mobile numbers have area codes) is in its prefix's zones, any other in its country's, and a
# number of no type in none.
_PREFIX = "prefix"
_COUNTRY = "country"
_NONE = "none"
# the types `_number_type_helper` tries before fixed line and mobile: none of them is geographical
_OTHER_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager", "uan", "voicemail")


# --- time zones of phone numbers -----------------------------------------------------------------------------------


def zones_for_numbers(numbers: pl.Series, *, default_timezone: str | None = None) -> pl.Series:
    """The time zones of each valid E.164 number (`+14155550123`, as `phones.normalise_phones` writes them), as
    `phonenumbers.timezone.time_zones_for_number` gives them and in its order, as a List[String] series named
    `time_zones`, one element per number. A null, or a number phonenumbers cannot place (Etc/Unknown), gets
    `[default_timezone]`, or null without one. The work is done once per distinct number."""
    texts = numbers.cast(pl.String).alias(_E164)
    distinct = texts.drop_nulls().unique().to_frame()
    ids = texts.to_frame().join(_zone_ids(distinct), on=_E164, how="left", maintain_order="left")[_ID]
    found = _zone_data().sets.gather(ids).alias(ZONES)
    if default_timezone is not None:
        found = found.to_frame().select(pl.col(ZONES).fill_null(pl.lit([default_timezone], dtype=_ZONE_LIST)))[ZONES]
    return found


_ZONE_LIST = pl.List(pl.String)
_ID = "_id"
_COUNTRY_ID = "_country_id"


def _null_zones() -> pl.Expr:
    return pl.lit(None, dtype=_ZONE_LIST)


@dataclass(frozen=True)
class _ZoneData:
    """phonenumbers' time-zone data as polars tables. Zone lists are numbered (`_id`), so the per-length joins carry
    one integer, not a list."""

    sets: pl.Series  # List[String] by id: each distinct list of zones in the data; null for Etc/Unknown
    prefixes: dict[int, pl.DataFrame]  # prefix length -> (`_key`: prefix of the E.164 digits, `_id`)
    countries: pl.DataFrame  # `_cc` -> `_country_id`: a calling code's own zones, for numbers not geographical


@functools.cache
def _zone_data() -> _ZoneData:
    numbered: dict[tuple[str, ...], int] = {}

    def number(zones: tuple[str, ...]) -> int:
        return numbered.setdefault(zones, len(numbered))

    by_length: dict[int, tuple[list[str], list[int]]] = {}
    for prefix, zones in TIMEZONE_DATA.items():
        keys, ids = by_length.setdefault(len(prefix), ([], []))
        keys.append(prefix)
        ids.append(number(zones))
    codes = [str(code) for code in COUNTRY_CODE_TO_REGION_CODE]
    country_ids = [number(_country_zones(code)) for code in codes]
    sets = [None if zones == (UNKNOWN_TIMEZONE,) else list(zones) for zones in numbered]
    return _ZoneData(
        sets=pl.Series(ZONES, sets, dtype=_ZONE_LIST),
        prefixes={
            length: pl.DataFrame({_KEY: keys, _ID: ids}, schema={_KEY: pl.String, _ID: pl.UInt32})
            for length, (keys, ids) in by_length.items()
        },
        countries=pl.DataFrame({_CC: codes, _COUNTRY_ID: country_ids}, schema={_CC: pl.String, _COUNTRY_ID: pl.UInt32}),
    )


def _zone_ids(numbers: pl.DataFrame) -> pl.DataFrame:
    """`_e164` -> `_id` (of `_ZoneData.sets`) for distinct numbers: the longest prefix's zones for a geographical
    number, its calling code's for any other, none for a number of no type."""
    data = _zone_data()
    digits = pl.col(_E164).str.strip_prefix("+")
    codes = _calling_codes()
    # calling codes are prefix-free: at most one of a number's first 1, 2 or 3 digits is one
    cc = pl.coalesce(
        [pl.when(digits.str.slice(0, n).is_in(codes[n])).then(digits.str.slice(0, n)) for n in sorted(codes)]
    )
    frame = numbers.with_columns(digits.alias(_DIGITS), cc.alias(_CC)).with_columns(
        pl.col(_DIGITS).str.slice(pl.col(_CC).str.len_chars()).alias(_NSN)
    )
    by_prefix = []
    for length, table in sorted(data.prefixes.items(), reverse=True):
        name = f"{_ID}{length}"
        frame = (
            frame.with_columns(pl.col(_DIGITS).str.slice(0, length).alias(_KEY))
            .join(table.rename({_ID: name}), on=_KEY, how="left")
            .drop(_KEY)
        )
        by_prefix.append(pl.col(name))
    frame = frame.join(data.countries, on=_CC, how="left")
    frame = frame.join(_uses(frame.select(_E164, _CC, _NSN)), on=_E164, how="left")
    chosen = (
        pl.when(pl.col(_USE) == _PREFIX)
        .then(pl.coalesce(by_prefix))
        .when(pl.col(_USE) == _COUNTRY)
        .then(pl.col(_COUNTRY_ID))
    )
    return frame.select(_E164, chosen.alias(_ID))


@functools.cache
def _calling_codes() -> dict[int, list[str]]:
    """Every calling code as text, by its number of digits."""
    codes: dict[int, list[str]] = {}
    for code in COUNTRY_CODE_TO_REGION_CODE:
        codes.setdefault(len(str(code)), []).append(str(code))
    return codes


def _country_zones(code: str) -> tuple[str, ...]:
    # `_country_level_time_zones_for_number` looks up the code itself and, for a 3-digit code, its first two
    # digits (it slices the code with the prefix lengths it tries); never one digit of a longer code
    for key in (code, code[:2]):
        if key in TIMEZONE_DATA:
            return TIMEZONE_DATA[key]
    return (UNKNOWN_TIMEZONE,)


@functools.cache
def _typed_codes() -> frozenset[str]:
    """The calling codes where a number's type can change its zones: those with a longer prefix whose zones differ
    from the country's. Elsewhere every valid number is in the country's zones whatever its type."""
    typed = set()
    for prefix, zones in TIMEZONE_DATA.items():
        code = next((prefix[:n] for n in (1, 2, 3) if int(prefix[:n]) in COUNTRY_CODE_TO_REGION_CODE), None)
        if code is not None and len(prefix) > len(code) and zones != _country_zones(code):
            typed.add(code)
    return frozenset(typed)


def _uses(numbers: pl.DataFrame) -> pl.DataFrame:
    """`_e164` -> `_use` (`_PREFIX`, `_COUNTRY` or `_NONE`), from each number's type."""
    typed = numbers.filter(pl.col(_CC).is_in(sorted(_typed_codes())))
    other = numbers.filter(~pl.col(_CC).is_in(sorted(_typed_codes())) | pl.col(_CC).is_null())
    # a valid number of an untyped code: prefix and country agree, so either will do
    parts = [other.select(_E164, pl.when(pl.col(_CC).is_not_null()).then(pl.lit(_PREFIX)).alias(_USE))]
    for (code,), rows in typed.partition_by(_CC, as_dict=True).items():
        number = int(str(code))
        try:
            parts.append(_uses_for_code(rows, number))
        except UnsupportedPattern:
            parts.append(_uses_one_by_one(rows, number))
    return pl.concat(parts).with_columns(pl.col(_USE).fill_null(_NONE))


def _matches(nsn: pl.Expr, desc: PhoneNumberDesc | None) -> pl.Expr:
    """`_is_number_matching_desc`: one of the description's possible lengths, and its whole pattern."""
    if desc is None or not desc.national_number_pattern:
        return pl.lit(False)
    hit = nsn.str.contains(polars_regex(f"^(?:{desc.national_number_pattern})$"))
    lengths = list(desc.possible_length or ())
    return nsn.str.len_chars().is_in(lengths) & hit if lengths else hit


def _matches_any(nsn: pl.Expr, descs: list[PhoneNumberDesc | None]) -> list[pl.Expr]:
    """`_matches` of any of `descs`, with one pattern per set of possible lengths rather than one per description:
    each call's patterns are compiled again once polars' cache of 32 per thread is full, so fewer is faster."""
    by_lengths: dict[tuple[int, ...], list[str]] = {}
    for desc in descs:
        if desc is not None and desc.national_number_pattern:
            by_lengths.setdefault(tuple(desc.possible_length or ()), []).append(desc.national_number_pattern)
    found = []
    for lengths, patterns in by_lengths.items():
        hit = nsn.str.contains(polars_regex("^(?:" + "|".join(f"(?:{p})" for p in patterns) + ")$"))
        found.append(nsn.str.len_chars().is_in(list(lengths)) & hit if lengths else hit)
    return found or [pl.lit(False)]


def _use_in(metadata: PhoneMetadata, *, mobile_is_geographical: bool) -> pl.Expr:
    """What the type of a number of this region (`_number_type_helper`) says of its zones."""
    nsn = pl.col(_NSN)
    other = pl.any_horizontal(_matches_any(nsn, [getattr(metadata, name) for name in _OTHER_TYPES]))
    # with identical fixed-line and mobile patterns a number that is either is "fixed line or mobile": geographical
    mobile = pl.lit(False) if metadata.same_mobile_and_fixed_line_pattern else _matches(nsn, metadata.mobile)
    return (
        pl.when(~_matches(nsn, metadata.general_desc))
        .then(pl.lit(_NONE))
        .when(other)
        .then(pl.lit(_COUNTRY))
        .when(_matches(nsn, metadata.fixed_line))
        .then(pl.lit(_PREFIX))
        .when(mobile)
        .then(pl.lit(_PREFIX if mobile_is_geographical else _COUNTRY))
        .otherwise(pl.lit(_NONE))
    )


def _uses_for_code(rows: pl.DataFrame, code: int) -> pl.DataFrame:
    """`_uses` for the numbers of one calling code, region by region in libphonenumber's order: a region with
    leading digits claims the numbers that start with them, one without claims the numbers of a type it knows
    (`_region_code_for_number_from_list`); a code with one region claims all its numbers."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    geographical = phonenumbers.is_number_type_geographical(PhoneNumberType.MOBILE, code)
    pending, decided = rows, []
    for name in regions:
        metadata = PhoneMetadata.metadata_for_region(name, None)
        if metadata is None or pending.height == 0:
            continue
        use = _use_in(metadata, mobile_is_geographical=geographical).alias(_USE)
        if len(regions) > 1 and metadata.leading_digits:
            claims = pl.col(_NSN).str.contains(polars_regex(f"^(?:{metadata.leading_digits})"))
            decided.append(pending.filter(claims).select(_E164, use))
            pending = pending.filter(~claims)
        else:
            typed = pending.with_columns(use)
            claims = pl.col(_USE) != _NONE if len(regions) > 1 else pl.lit(True)
            decided.append(typed.filter(claims).select(_E164, _USE))
            pending = typed.filter(~claims).drop(_USE)
    decided.append(pending.select(_E164, pl.lit(_NONE).alias(_USE)))
    return pl.concat(decided)


def _uses_one_by_one(rows: pl.DataFrame, code: int) -> pl.DataFrame:
    """`_uses` through phonenumbers itself, one call per distinct number: for a code whose patterns polars cannot
    run (none in the metadata this was written against)."""
    uses = []
    for text in rows[_E164]:
        number = phonenumbers.parse(text)
        kind = phonenumbers.number_type(number)
        if kind == PhoneNumberType.UNKNOWN:
            uses.append(_NONE)
        elif phonenumbers.is_number_type_geographical(kind, code):
            uses.append(_PREFIX)
        else:
            uses.append(_COUNTRY)
    return rows.select(_E164).with_columns(pl.Series(_USE, uses, dtype=pl.String))


# --- a row's zones -------------------------------------------------------------------------------------------------


def is_time_zone(name: str) -> bool:
    """Whether zoneinfo can load `name` as an IANA time zone."""
    return _zone(name) is not None


@functools.lru_cache(maxsize=4096)  # bounded: the names come from the input
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def row_zones(
    height: int,
    *,
    named: pl.Series | None = None,
    numbers: pl.Series | None = None,
    number_zones: pl.Series | None = None,
    default_timezone: str | None = None,
) -> pl.DataFrame:
    """Each of `height` rows' zones, in order: `time_zones` (List[String], null when none is known) and
    `time_zone_error` (null unless the row names a zone that does not exist).

    `named` is the text of `send.timezone` (a column, or the literal repeated), trimmed; a blank cell names no zone.
    Otherwise `numbers` (v3: E.164, null when invalid) gives the zones of the number, or `default_timezone` when it
    is not known; without numbers (v1/v2) every row is in `default_timezone`. `number_zones`: the numbers' zones
    found already (`zones_for_numbers` with the same default), instead of `numbers`. A zone name that does not exist
    is an error of the row, never replaced by another zone: the row said where its person is."""
    if number_zones is not None:
        found = number_zones.alias(ZONES)
    elif numbers is not None:
        found = zones_for_numbers(numbers, default_timezone=default_timezone)
    elif default_timezone is not None:
        found = pl.Series(ZONES, [[default_timezone]] * height, dtype=_ZONE_LIST)
    else:
        found = pl.Series(ZONES, [None] * height, dtype=_ZONE_LIST)
    frame = pl.DataFrame({ZONES: found})
    if named is None:
        return frame.with_columns(pl.lit(None, dtype=pl.String).alias(ZONE_ERROR))
    text = named.cast(pl.String).str.strip_chars()
    valid = _known_zones(text)
    where = f" (column {named.name})" if named.name else ""
    given = pl.Series("_named", text)
    return frame.with_columns(given, valid).select(
        pl.when(pl.col("_named").is_null() | (pl.col("_named") == ""))
        .then(pl.col(ZONES))
        .when(pl.col("_valid"))
        .then(pl.concat_list(pl.col("_named")))
        .otherwise(_null_zones())
        .alias(ZONES),
        pl.when(pl.col("_valid").not_()).then(pl.lit(f"timezone: not an IANA time zone{where}")).alias(ZONE_ERROR),
    )


def _known_zones(names: pl.Series) -> pl.Series:
    """`_valid` per element: whether it is a zone zoneinfo knows; null for null or blank. Once per distinct name."""
    distinct = names.drop_nulls().unique()
    distinct = distinct.filter(distinct != "")
    table = pl.DataFrame(
        {"_name": distinct, "_valid": [is_time_zone(name) for name in distinct]},
        schema={"_name": pl.String, "_valid": pl.Boolean},
    )
    return names.to_frame("_name").join(table, on="_name", how="left", maintain_order="left")["_valid"]


# --- the window ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """The window of one set of zones seen from `now`: open now in all of them, or when it next is.

    `opens_at` (UTC) is None when it is open now, when a zone is not known, or when it is not open in all the zones
    at once within HORIZON. `closes_at` (UTC) is when the open spell - the current one, or the one at `opens_at` -
    ends in one of the zones; None when it never opens, or stays open to the end of HORIZON."""

    zones: tuple[str, ...]  # empty: the row's zone is not known
    now: datetime
    open_now: bool
    opens_at: datetime | None
    closes_at: datetime | None


class _Clock:
    """One zone's window over a span of time: whether a moment is inside it, and the moments its state can change.

    A window opens only where the local wall-clock time reaches `from` (each time it does: twice in a repeated hour)
    or where the clock jumps (into the window, or over a `from` that does not exist that day); it closes only where
    the time reaches `to` or the clock jumps. Both sets of moments are listed once for the span."""

    def __init__(self, zone: zoneinfo.ZoneInfo, window: WindowSpec, start: datetime, end: datetime) -> None:
        self.zone, self.window = zone, window
        jumps = _jumps(zone, start - timedelta(days=1), end + timedelta(days=1))
        first = (start - timedelta(days=1)).astimezone(zone).date()
        days = [first + timedelta(days=i) for i in range((end - start).days + 3)]
        self.opening_moments = sorted({*jumps, *(t for d in days for t in _moments(d, window.from_minute, zone))})
        self.closing_moments = sorted({*jumps, *(t for d in days for t in _moments(d, window.to_minute, zone))})

    def inside(self, moment: datetime) -> bool:
        local = moment.astimezone(self.zone)
        if local.weekday() not in self.window.days:
            return False
        seconds = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        return self.window.from_minute * 60 <= seconds < self.window.to_minute * 60

    def next_open(self, moment: datetime) -> datetime | None:
        """The first moment from `moment` on that is inside the window (None: not within the span)."""
        if self.inside(moment):
            return moment
        start = bisect.bisect_right(self.opening_moments, moment)
        return next((t for t in self.opening_moments[start:] if self.inside(t)), None)

    def next_close(self, moment: datetime) -> datetime | None:
        """The first moment from `moment` on that is outside the window (None: not within the span)."""
        if not self.inside(moment):
            return moment
        start = bisect.bisect_right(self.closing_moments, moment)
        return next((t for t in self.closing_moments[start:] if not self.inside(t)), None)


def _moments(day: date, minute: int, zone: zoneinfo.ZoneInfo) -> list[datetime]:
    """The UTC moments at which the wall clock of `zone` shows `minute` (after midnight) of `day`: one, two in a
    repeated hour, none in a gap (the jump over it is one of `_jumps`)."""
    wall = datetime(day.year, day.month, day.day) + timedelta(minutes=minute)
    found = []
    for fold in (0, 1):
        moment = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if moment.astimezone(zone).replace(tzinfo=None) == wall:  # a wall time in a gap comes back another
            found.append(moment)
    return found


_JUMP_SAMPLE = timedelta(hours=6)  # no zone changes its offset twice within 6 hours


def _jumps(zone: zoneinfo.ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The UTC moments in [start, end] at which the zone's offset from UTC changes: its wall clock jumps."""

    def offset(second: int) -> timedelta | None:
        return datetime.fromtimestamp(second, zone).utcoffset()

    found = []
    before = math.floor(start.timestamp())
    while before < end.timestamp():
        after = before + int(_JUMP_SAMPLE.total_seconds())
        old = offset(before)
        if offset(after) != old:
            low, high = before, after  # the old offset at low, the new one at high: halve down to the second
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if offset(middle) == old else (low, middle)
            found.append(datetime.fromtimestamp(high, UTC))
        before = after
    return found


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime (e.g. datetime.now(UTC))")
    return now.astimezone(UTC)


def next_opening(zones: Sequence[str], window: WindowSpec, *, now: datetime) -> Opening:
    """Whether the window is open at `now` (an aware datetime) in every one of `zones`, and if not, the first
    moment within HORIZON at which it is open in all of them at once. Zones zoneinfo does not know count as
    unknown. `next_opening((), ...)` is a row whose zone is not known: never open."""
    return _opening(tuple(zones), window, _utc(now), {})


def _opening(zones: tuple[str, ...], window: WindowSpec, now: datetime, clocks: dict[str, _Clock | None]) -> Opening:
    for name in zones:
        if name not in clocks:
            zone = _zone(name)
            clocks[name] = _Clock(zone, window, now, now + HORIZON) if zone is not None else None
    found = [clocks[name] for name in zones]
    usable = [clock for clock in found if clock is not None]
    if not zones or len(usable) < len(found):
        return Opening(zones=zones, now=now, open_now=False, opens_at=None, closes_at=None)
    # Each step moves to the latest of the zones' next openings: no moment before it is open in that zone, so none
    # is open in all; when every zone is open at the moment reached, it is the first such moment.
    moment: datetime | None = now
    while moment is not None and moment <= now + HORIZON:
        openings = [clock.next_open(moment) for clock in usable]
        if any(o is None for o in openings):
            moment = None
            break
        latest = max(o for o in openings if o is not None)
        if latest == moment:
            break
        moment = latest
    if moment is None or moment > now + HORIZON:
        return Opening(zones=zones, now=now, open_now=False, opens_at=None, closes_at=None)
    closings = [clock.next_close(moment) for clock in usable]
    closes_at = None if any(c is None for c in closings) else min(c for c in closings if c is not None)
    is_open = moment == now
    return Opening(zones=zones, now=now, open_now=is_open, opens_at=None if is_open else moment, closes_at=closes_at)


def deferred_reason(opening: Opening) -> str | None:
    """Why a row is not sent now (None when its window is open), for `result_error`:

    - `window opens 2027-03-08 14:00 UTC (09:00 America/New_York)`: the UTC moment, then the local time in each
      zone, in the row's order, with the local date when it is not the UTC date
      (`window opens 2027-04-03 23:30 UTC (2027-04-04 09:00 Australia/Adelaide)`); seconds only when the moment
      has some; after three zones, `and N more`;
    - `window not open in all 2 time zones at once within 14 days (Pacific/Kiritimati, Pacific/Pago_Pago)`;
    - `time zone unknown: ...` (UNKNOWN_REASON) for a row whose zone is not known.
    """
    if opening.open_now:
        return None
    if not opening.zones or any(_zone(name) is None for name in opening.zones):
        return UNKNOWN_REASON
    if opening.opens_at is None:
        names = _some(opening.zones)
        several = f"all {len(opening.zones)} time zones at once" if len(opening.zones) > 1 else "its time zone"
        return f"window not open in {several} within {HORIZON.days} days ({names})"
    utc = opening.opens_at
    local = []
    for name in opening.zones[:_SHOWN_ZONES]:
        zone = _zone(name)
        assert zone is not None  # checked above
        there = utc.astimezone(zone)
        local.append(f"{_clock_text(there, with_date=there.date() != utc.date())} {name}")
    more = len(opening.zones) - _SHOWN_ZONES
    listed = ", ".join(local) + (f" and {more} more" if more > 0 else "")
    return f"window opens {_clock_text(utc, with_date=True)} UTC ({listed})"


def _some(zones: tuple[str, ...]) -> str:
    more = len(zones) - _SHOWN_ZONES
    return ", ".join(zones[:_SHOWN_ZONES]) + (f" and {more} more" if more > 0 else "")


def _clock_text(moment: datetime, *, with_date: bool) -> str:
    shown = moment.strftime("%H:%M:%S" if moment.second else "%H:%M")
    return f"{moment:%Y-%m-%d} {shown}" if with_date else shown


def window_status(
    zones: pl.Series, window: WindowSpec, *, now: datetime, cache: dict[str, Opening] | None = None
) -> pl.DataFrame:
    """For each element of `zones` (List[String], null or empty when not known), in order: `window_open`,
    `window_opens_at`, `window_closes_at` (UTC) and `window_reason` (`deferred_reason`; null when open), as
    `next_opening` says. Computed once per distinct set of zones and joined back; `cache` keeps the openings for
    the next call with the same `window` and `now` (a pass over the input calls once per batch)."""
    moment = _utc(now)
    keys = zones.cast(_ZONE_LIST).list.join(_SEPARATOR).fill_null("").alias(_KEY)
    clocks: dict[str, _Clock | None] = {}
    known = cache if cache is not None else {}
    distinct = keys.unique().to_list()
    for key in distinct:
        if key not in known:
            known[key] = _opening(tuple(key.split(_SEPARATOR)) if key else (), window, moment, clocks)
    openings = [known[key] for key in distinct]
    when = pl.Datetime("us", "UTC")
    table = pl.DataFrame(
        {
            _KEY: distinct,
            OPEN: [o.open_now for o in openings],
            OPENS_AT: [o.opens_at for o in openings],
            CLOSES_AT: [o.closes_at for o in openings],
            REASON: [deferred_reason(o) for o in openings],
        },
        schema={_KEY: pl.String, OPEN: pl.Boolean, OPENS_AT: when, CLOSES_AT: when, REASON: pl.String},
    )
    return keys.to_frame().join(table, on=_KEY, how="left", maintain_order="left").drop(_KEY)


def zone_sets(zones: pl.Series) -> list[tuple[str, ...]]:
    """The distinct sets of zones in `zones` (a List[String] series), e.g. for a plan's per-zone openings."""
    keys = zones.cast(_ZONE_LIST).list.join(_SEPARATOR).drop_nulls().unique().sort()
    return [tuple(key.split(_SEPARATOR)) for key in keys if key]
