"""Sending windows in each recipient's local time: the zones of phone numbers must be phonenumbers' own, and the
window's openings must be right across daylight-saving changes, with real tz data and an injected clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import polars as pl
import pytest
from phonenumbers import PhoneMetadata, PhoneNumberFormat, PhoneNumberType
from phonenumbers.timezone import UNKNOWN_TIMEZONE, time_zones_for_number
from phonenumbers.tzdata import TIMEZONE_DATA

from pipeline import window
from pipeline.digit_automata import UnsupportedPattern
from pipeline.spec import WindowSpec
from pipeline.window import (
    CLOSES_AT,
    OPEN,
    OPENS_AT,
    REASON,
    UNKNOWN_REASON,
    ZONE_ERROR,
    ZONES,
    deferred_reason,
    next_opening,
    row_zones,
    window_status,
    zone_sets,
    zones_for_numbers,
)

NEW_YORK = "America/New_York"
LOS_ANGELES = "America/Los_Angeles"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def spec_window(start: str = "09:00", end: str = "20:00", days: str = "mon-sun") -> WindowSpec:
    return WindowSpec.model_validate({"from": start, "to": end, "days": days})


def reason_at(zones: list[str], now: datetime, **window_keys: str) -> str | None:
    return deferred_reason(next_opening(zones, spec_window(**window_keys), now=now))


def offset_hours(zone: str, moment: datetime) -> float:
    offset = moment.astimezone(ZoneInfo(zone)).utcoffset()
    assert offset is not None
    return offset.total_seconds() / 3600


# --- the zones of phone numbers ------------------------------------------------------------------------------------

# regions where a number's zones depend on its prefix and its type (several zones; mobiles without area codes; the
# Crown Dependencies inside +44; Canada and the Caribbean inside +1; Kazakhstan inside +7)
MAIN_REGIONS = ["US", "CA", "AU", "RU", "BR", "ID", "GB"]
OTHER_REGIONS = ["MX", "AR", "CN", "NZ", "KZ", "JE", "GG", "IM", "IT", "ES", "PT", "FI", "NO", "PR", "JM", "CC", "RE"]


def e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def random_valid_numbers(region: str, tries: int, rng: random.Random) -> set[str]:
    """Valid numbers of `region` made of random digits of its possible lengths: every type, every area."""
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None
    assert metadata.country_code is not None
    lengths = [n for n in metadata.general_desc.possible_length if n > 0]  # type: ignore[union-attr]
    found = set()
    for _ in range(tries):
        digits = str(rng.randrange(1, 10)) + "".join(rng.choices("0123456789", k=rng.choice(lengths) - 1))
        number = phonenumbers.PhoneNumber(country_code=metadata.country_code, national_number=int(digits))
        if phonenumbers.is_valid_number(number):
            found.add(e164(number))
    return found


def varied_numbers() -> list[str]:
    """libphonenumber's example number of every type in every region and non-geographic entity, and random valid
    numbers: many of the multi-zone regions, some of a few others."""
    examples = [
        phonenumbers.example_number_for_type(region, kind)
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        for kind in PhoneNumberType.values()
    ]
    examples += [
        phonenumbers.example_number_for_non_geo_entity(code) for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    ]
    numbers = {e164(n) for n in examples if n is not None}
    rng = random.Random(13)
    for region in MAIN_REGIONS:
        numbers |= random_valid_numbers(region, 2000, rng)
    for region in OTHER_REGIONS:
        numbers |= random_valid_numbers(region, 300, rng)
    # and numbers that start with each prefix of the time-zone data, the longest-prefix match's hard cases
    for prefix in TIMEZONE_DATA:
        code = next(int(prefix[:n]) for n in (1, 2, 3) if int(prefix[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(
            code, phonenumbers.region_code_for_country_code(code)
        )
        assert metadata is not None
        for length in [n for n in metadata.general_desc.possible_length if n > 0] * 2:  # type: ignore[union-attr]
            fill = max(0, len(str(code)) + length - len(prefix))
            number = phonenumbers.parse("+" + prefix + "".join(rng.choices("0123456789", k=fill)))
            if phonenumbers.is_valid_number(number):
                numbers.add(e164(number))
    return sorted(numbers)


@pytest.fixture(scope="module")
def sample() -> list[str]:
    return varied_numbers()


def test_zones_of_numbers_are_phonenumbers_own_on_a_large_varied_sample(sample: list[str]) -> None:
    expected = [list(time_zones_for_number(phonenumbers.parse(n))) for n in sample]
    got = zones_for_numbers(pl.Series(sample)).to_list()

    assert [g if g is not None else [UNKNOWN_TIMEZONE] for g in got] == expected
    # the sample has what makes the rule hard, and many of each
    count = {size: sum(len(e) == size for e in expected) for size in (1, 4, 8, 16, 42)}
    assert all(n >= 40 for n in count.values()), count
    assert sum(e == [UNKNOWN_TIMEZONE] for e in expected) >= 8  # +800, +808, +870, +881, +882, +883, +888, +979
    by_region = {phonenumbers.region_code_for_number(phonenumbers.parse(n)) for n in sample}
    assert set(MAIN_REGIONS) <= by_region


def test_numbers_that_phonenumbers_cannot_place_get_the_default_zone_or_none() -> None:
    numbers = pl.Series(["+80012345678", "+882345678901", None, "+12125551234"])
    assert time_zones_for_number(phonenumbers.parse("+80012345678")) == (UNKNOWN_TIMEZONE,)

    assert zones_for_numbers(numbers).to_list() == [None, None, None, [NEW_YORK]]
    with_default = zones_for_numbers(numbers, default_timezone="Europe/Berlin")
    assert with_default.name == ZONES
    assert with_default.to_list() == [["Europe/Berlin"], ["Europe/Berlin"], ["Europe/Berlin"], [NEW_YORK]]


def test_a_number_in_several_zones_keeps_them_all_in_phonenumbers_order() -> None:
    toll_free, uk_mobile, guernsey = "+18002345678", "+447781123456", "+441481256789"
    got = zones_for_numbers(pl.Series([toll_free, uk_mobile, guernsey, toll_free])).to_list()

    assert len(got[0]) == 42
    assert got[0] == got[3] == sorted(got[0])
    assert got[1] == ["Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey", "Europe/London"]  # not geographical
    assert got[2] == ["Europe/Guernsey"]  # a Guernsey fixed line


def test_codes_whose_patterns_polars_cannot_run_are_typed_by_phonenumbers(
    sample: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = window.polars_regex
    refused = {"7", "61"}  # stand in for a future metadata pattern Rust's regex engine would refuse

    def regex(pattern: str) -> str:
        if current[0] in refused:
            raise UnsupportedPattern(pattern)
        return real(pattern)

    current = [""]
    real_for_code = window._uses_for_code

    def uses_for_code(rows: pl.DataFrame, code: int) -> pl.DataFrame:
        current[0] = str(code)
        return real_for_code(rows, code)

    monkeypatch.setattr(window, "polars_regex", regex)
    monkeypatch.setattr(window, "_uses_for_code", uses_for_code)
    chosen = [n for n in sample if n.startswith(("+7", "+61", "+1"))]
    got = zones_for_numbers(pl.Series(chosen)).to_list()

    assert [g or [UNKNOWN_TIMEZONE] for g in got] == [
        list(time_zones_for_number(phonenumbers.parse(n))) for n in chosen
    ]


def test_a_named_zone_wins_and_a_blank_cell_falls_back_to_the_number() -> None:
    named = pl.Series("tz", ["Asia/Kolkata", " ", None, "Mars/Olympus_Mons", " Europe/Paris "])
    numbers = pl.Series(["+12125551234", "+12125551234", "+80012345678", "+12125551234", None])
    zones = row_zones(5, named=named, numbers=numbers, default_timezone="UTC")

    assert zones.columns == [ZONES, ZONE_ERROR]
    assert zones[ZONES].to_list() == [["Asia/Kolkata"], [NEW_YORK], ["UTC"], None, ["Europe/Paris"]]
    assert zones[ZONE_ERROR].to_list() == [None, None, None, "timezone: not an IANA time zone (column tz)", None]


def test_without_numbers_every_row_is_in_the_default_zone_or_unknown() -> None:
    assert row_zones(2, default_timezone="Europe/Berlin")[ZONES].to_list() == [["Europe/Berlin"], ["Europe/Berlin"]]
    assert row_zones(2)[ZONES].to_list() == [None, None]
    assert row_zones(2)[ZONE_ERROR].to_list() == [None, None]


# --- the window ----------------------------------------------------------------------------------------------------


def test_open_now_inside_the_window_and_closing_at_its_end() -> None:
    opening = next_opening([NEW_YORK], spec_window(), now=utc(2027, 3, 8, 15, 0))  # Monday 10:00 EST

    assert opening.open_now
    assert opening.opens_at is None
    assert opening.closes_at == utc(2027, 3, 9, 1, 0)  # 20:00 EST
    assert deferred_reason(opening) is None


def test_the_window_includes_from_and_excludes_to() -> None:
    assert next_opening([NEW_YORK], spec_window(), now=utc(2027, 3, 8, 14, 0)).open_now  # 09:00 EST
    at_end = next_opening([NEW_YORK], spec_window(), now=utc(2027, 3, 9, 1, 0))  # 20:00 EST
    assert not at_end.open_now
    assert at_end.opens_at == utc(2027, 3, 9, 14, 0)


def test_a_saturday_night_with_days_mon_fri_opens_on_monday() -> None:
    saturday_night = utc(2027, 3, 7, 2, 0)  # Saturday 21:00 EST
    assert saturday_night.astimezone(ZoneInfo(NEW_YORK)).strftime("%a %H:%M") == "Sat 21:00"

    assert reason_at([NEW_YORK], saturday_night, days="mon-fri") == (
        "window opens 2027-03-08 14:00 UTC (09:00 America/New_York)"
    )
    assert reason_at([NEW_YORK], saturday_night, days="sat-sun") == (
        "window opens 2027-03-07 14:00 UTC (09:00 America/New_York)"
    )


def test_us_march_change_a_window_opening_at_nine_on_the_day_clocks_go_forward() -> None:
    # 2027-03-14: 02:00 EST -> 03:00 EDT in New York (07:00 UTC)
    assert (offset_hours(NEW_YORK, utc(2027, 3, 14, 6, 59)), offset_hours(NEW_YORK, utc(2027, 3, 14, 7))) == (-5, -4)
    opening = next_opening([NEW_YORK], spec_window(), now=utc(2027, 3, 14, 6, 0))  # 01:00 EST

    assert opening.opens_at == utc(2027, 3, 14, 13, 0)  # 09:00 EDT, not 14:00 UTC as the day before
    assert opening.closes_at == utc(2027, 3, 15, 0, 0)  # 20:00 EDT
    assert deferred_reason(opening) == "window opens 2027-03-14 13:00 UTC (09:00 America/New_York)"


def test_us_march_change_a_from_that_does_not_exist_opens_at_the_jump() -> None:
    # 02:30 does not exist on 2027-03-14 in New York: the clock shows 03:00 right after 01:59:59
    opening = next_opening([NEW_YORK], spec_window("02:30", "05:00"), now=utc(2027, 3, 14, 5, 0))  # 00:00 EST

    assert opening.opens_at == utc(2027, 3, 14, 7, 0)
    assert deferred_reason(opening) == "window opens 2027-03-14 07:00 UTC (03:00 America/New_York)"
    assert opening.closes_at == utc(2027, 3, 14, 9, 0)  # 05:00 EDT
    # a window wholly inside the missing hour is not open that day at all
    skipped = next_opening([NEW_YORK], spec_window("02:10", "02:50"), now=utc(2027, 3, 14, 5, 0))
    assert skipped.opens_at == utc(2027, 3, 15, 6, 10)  # Monday 02:10 EDT
    # and inside the window after the jump, it is open
    assert next_opening([NEW_YORK], spec_window("02:30", "05:00"), now=utc(2027, 3, 14, 7, 30)).open_now


def test_us_november_change_the_repeated_hour_opens_twice() -> None:
    # 2027-11-07: 02:00 EDT -> 01:00 EST in New York (06:00 UTC): 01:00-01:59 happens twice
    assert (offset_hours(NEW_YORK, utc(2027, 11, 7, 5, 59)), offset_hours(NEW_YORK, utc(2027, 11, 7, 6))) == (-4, -5)
    assert reason_at([NEW_YORK], utc(2027, 11, 7, 5, 0)) == (  # 01:00 EDT: nine o'clock will be EST
        "window opens 2027-11-07 14:00 UTC (09:00 America/New_York)"
    )
    first_pass = next_opening([NEW_YORK], spec_window("01:30", "20:00"), now=utc(2027, 11, 7, 5, 0))  # 01:00 EDT
    assert first_pass.opens_at == utc(2027, 11, 7, 5, 30)  # the first 01:30
    # the clock goes back to 01:00, before `from`: the window closes at the jump and opens again at the second 01:30
    assert first_pass.closes_at == utc(2027, 11, 7, 6, 0)
    second_pass = next_opening([NEW_YORK], spec_window("01:30", "20:00"), now=utc(2027, 11, 7, 6, 10))  # 01:10 EST
    assert not second_pass.open_now
    assert second_pass.opens_at == utc(2027, 11, 7, 6, 30)
    assert second_pass.closes_at == utc(2027, 11, 8, 1, 0)  # 20:00 EST
    # a window ending in the repeated hour opens again when the clock jumps back into it
    early = next_opening([NEW_YORK], spec_window("00:00", "01:30"), now=utc(2027, 11, 7, 5, 40))  # 01:40 EDT
    assert early.opens_at == utc(2027, 11, 7, 6, 0)
    assert deferred_reason(early) == "window opens 2027-11-07 06:00 UTC (01:00 America/New_York)"


def test_eu_march_change_opens_an_hour_earlier_in_utc_and_skips_the_missing_hour() -> None:
    berlin = "Europe/Berlin"
    # 2027-03-28: 02:00 CET -> 03:00 CEST (01:00 UTC)
    assert (offset_hours(berlin, utc(2027, 3, 28, 0, 59)), offset_hours(berlin, utc(2027, 3, 28, 1))) == (1, 2)
    saturday_evening = utc(2027, 3, 27, 20, 0)  # 21:00 CET
    assert reason_at([berlin], saturday_evening) == "window opens 2027-03-28 07:00 UTC (09:00 Europe/Berlin)"
    assert reason_at([berlin], saturday_evening, days="mon-sat") == (
        "window opens 2027-03-29 07:00 UTC (09:00 Europe/Berlin)"
    )
    assert reason_at([berlin], saturday_evening, start="02:30", end="06:00") == (
        "window opens 2027-03-28 01:00 UTC (03:00 Europe/Berlin)"
    )


def test_eu_october_change_the_repeated_hour_in_london() -> None:
    london = "Europe/London"
    # 2027-10-31: 02:00 BST -> 01:00 GMT (01:00 UTC)
    assert (offset_hours(london, utc(2027, 10, 31, 0, 59)), offset_hours(london, utc(2027, 10, 31, 1))) == (1, 0)
    first = next_opening([london], spec_window("01:30", "09:00"), now=utc(2027, 10, 31, 0, 0))  # 01:00 BST
    assert first.opens_at == utc(2027, 10, 31, 0, 30)
    second = next_opening([london], spec_window("01:30", "09:00"), now=utc(2027, 10, 31, 1, 10))  # 01:10 GMT
    assert second.opens_at == utc(2027, 10, 31, 1, 30)
    assert second.closes_at == utc(2027, 10, 31, 9, 0)
    # a window at nine opens at 09:00 UTC on the day, an hour later in UTC than the day before
    assert reason_at([london], utc(2027, 10, 30, 20, 0)) == "window opens 2027-10-31 09:00 UTC (09:00 Europe/London)"


def test_half_hour_zones_kolkata_and_adelaide() -> None:
    assert reason_at(["Asia/Kolkata"], utc(2027, 1, 4, 3, 0)) == (  # 08:30 IST
        "window opens 2027-01-04 03:30 UTC (09:00 Asia/Kolkata)"
    )
    adelaide = "Australia/Adelaide"
    # 2027-04-04: 03:00 ACDT (+10:30) -> 02:00 ACST (+09:30); the local date is ahead of UTC's
    assert (offset_hours(adelaide, utc(2027, 4, 3, 16, 29)), offset_hours(adelaide, utc(2027, 4, 3, 16, 30))) == (
        10.5,
        9.5,
    )
    opening = next_opening([adelaide], spec_window(), now=utc(2027, 4, 3, 12, 0))  # Saturday 22:30 ACDT
    assert opening.opens_at == utc(2027, 4, 3, 23, 30)
    assert deferred_reason(opening) == "window opens 2027-04-03 23:30 UTC (2027-04-04 09:00 Australia/Adelaide)"
    # 2027-10-03: 02:00 ACST -> 03:00 ACDT: nine o'clock is 22:30 UTC the day before
    assert next_opening([adelaide], spec_window(), now=utc(2027, 10, 2, 12, 0)).opens_at == utc(2027, 10, 2, 22, 30)


def test_several_zones_open_when_the_window_is_open_in_all_of_them() -> None:
    both = [NEW_YORK, LOS_ANGELES]
    opening = next_opening(both, spec_window(), now=utc(2027, 3, 8, 13, 0))  # Monday 08:00 EST, 05:00 PST

    assert opening.opens_at == utc(2027, 3, 8, 17, 0)  # 09:00 in Los Angeles, 12:00 in New York
    assert opening.closes_at == utc(2027, 3, 9, 1, 0)  # 20:00 in New York
    assert deferred_reason(opening) == (
        "window opens 2027-03-08 17:00 UTC (12:00 America/New_York, 09:00 America/Los_Angeles)"
    )
    # open in New York alone is not enough
    assert not next_opening(both, spec_window(), now=utc(2027, 3, 8, 15, 0)).open_now
    assert next_opening(both, spec_window(), now=utc(2027, 3, 8, 18, 0)).open_now


def test_zones_whose_windows_never_meet_are_never_open_and_say_so() -> None:
    # 25 hours apart: 09:00-10:00 in Kiritimati (+14) ends as 09:00 in Pago Pago (-11) begins
    apart = ["Pacific/Kiritimati", "Pacific/Pago_Pago"]
    opening = next_opening(apart, spec_window("09:00", "10:00"), now=utc(2027, 3, 8, 13, 0))

    assert (opening.open_now, opening.opens_at, opening.closes_at) == (False, None, None)
    assert deferred_reason(opening) == (
        "window not open in all 2 time zones at once within 14 days (Pacific/Kiritimati, Pacific/Pago_Pago)"
    )
    # with a longer window they meet
    assert next_opening(apart, spec_window("09:00", "12:00"), now=utc(2027, 3, 8, 13, 0)).opens_at is not None


def test_a_number_in_all_42_us_zones_opens_when_guam_and_adak_overlap() -> None:
    [zones] = zones_for_numbers(pl.Series(["+18002345678"])).to_list()
    opening = next_opening(zones, spec_window(), now=utc(2027, 3, 8, 13, 0))

    assert opening.opens_at is not None
    assert all(next_opening([zone], spec_window(), now=opening.opens_at).open_now for zone in zones)
    before = opening.opens_at - timedelta(minutes=1)
    assert not all(next_opening([zone], spec_window(), now=before).open_now for zone in zones)
    assert deferred_reason(opening) == (
        f"window opens {opening.opens_at:%Y-%m-%d %H:%M} UTC ("
        + ", ".join(
            f"{opening.opens_at.astimezone(ZoneInfo(z)):%H:%M} {z}"
            if opening.opens_at.astimezone(ZoneInfo(z)).date() == opening.opens_at.date()
            else f"{opening.opens_at.astimezone(ZoneInfo(z)):%Y-%m-%d %H:%M} {z}"
            for z in zones[:3]
        )
        + " and 39 more)"
    )


def test_a_window_of_whole_days_stays_open_across_midnight() -> None:
    opening = next_opening(["Europe/Berlin"], spec_window("00:00", "24:00", "mon-fri"), now=utc(2027, 3, 10, 13, 0))

    assert opening.open_now
    assert opening.closes_at == utc(2027, 3, 12, 23, 0)  # Saturday 00:00 CET


def test_an_unknown_zone_is_never_open() -> None:
    for zones in ([], ["Mars/Olympus_Mons"], [NEW_YORK, "Mars/Olympus_Mons"]):
        opening = next_opening(zones, spec_window(), now=utc(2027, 3, 8, 15, 0))
        assert (opening.open_now, opening.opens_at) == (False, None)
        assert deferred_reason(opening) == UNKNOWN_REASON


def test_now_must_be_an_aware_moment() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        next_opening([NEW_YORK], spec_window(), now=datetime(2027, 3, 8, 15, 0))
    # any zone will do: it is the moment that counts
    paris = datetime(2027, 3, 8, 16, 0, tzinfo=ZoneInfo("Europe/Paris"))
    assert next_opening([NEW_YORK], spec_window(), now=paris) == next_opening(
        [NEW_YORK], spec_window(), now=utc(2027, 3, 8, 15, 0)
    )


# --- in bulk -------------------------------------------------------------------------------------------------------


def test_window_status_is_computed_once_per_distinct_set_of_zones(monkeypatch: pytest.MonkeyPatch) -> None:
    sets = [[NEW_YORK], [LOS_ANGELES], [NEW_YORK, LOS_ANGELES], ["Asia/Kolkata"], None, []]
    rows = 120_000
    which = pl.select(pl.int_range(rows) % len(sets)).to_series()
    zones = pl.Series(sets, dtype=pl.List(pl.String)).gather(which)
    now = utc(2027, 3, 8, 15, 0)  # 10:00 in New York, 07:00 in Los Angeles, 20:30 in Kolkata
    computed: list[tuple[str, ...]] = []
    real = window._opening

    def counting(zones: tuple[str, ...], *args: object) -> window.Opening:
        computed.append(zones)
        return real(zones, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(window, "_opening", counting)
    status = window_status(zones, spec_window(), now=now)

    assert sorted(computed) == sorted([(NEW_YORK,), (LOS_ANGELES,), (NEW_YORK, LOS_ANGELES), ("Asia/Kolkata",), ()])
    assert status.height == rows
    assert status.columns == [OPEN, OPENS_AT, CLOSES_AT, REASON]
    assert status.schema[OPENS_AT] == pl.Datetime("us", "UTC")
    for i, zone_set in enumerate(sets):
        expected = next_opening(zone_set or [], spec_window(), now=now)
        row = status.row(i, named=True)
        assert row == {
            OPEN: expected.open_now,
            OPENS_AT: expected.opens_at,
            CLOSES_AT: expected.closes_at,
            REASON: deferred_reason(expected),
        }
        assert status[OPEN].gather_every(len(sets), offset=i).to_list() == [expected.open_now] * (rows // len(sets))
    assert status[OPEN].sum() == rows // len(sets)  # only New York is open at 10:00


def test_numbers_to_window_status_end_to_end() -> None:
    numbers = pl.Series(["+12125551234", "+14155550123", "+18002345678", "+80012345678", None])
    zones = row_zones(5, numbers=numbers, default_timezone="Europe/Berlin")[ZONES]
    status = window_status(zones, spec_window(), now=utc(2027, 3, 8, 15, 0))  # 16:00 in Berlin

    assert status[OPEN].to_list() == [True, False, False, True, True]
    assert status[REASON][1] == "window opens 2027-03-08 17:00 UTC (09:00 America/Los_Angeles)"
    assert [len(s) for s in zone_sets(zones)] == [42, 1, 1, 1]
    assert zone_sets(zones)[1:] == [(LOS_ANGELES,), (NEW_YORK,), ("Europe/Berlin",)]
