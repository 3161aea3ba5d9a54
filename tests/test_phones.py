"""Phone numbers: `normalise_phones` must decide every input exactly as phonenumbers does, value by value."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

import phonenumbers
import polars as pl
import pytest
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

from pipeline.phones import (
    E164,
    EMPTY,
    INVALID,
    NEEDS_COUNTRY,
    PHONE_ERROR,
    UNKNOWN_COUNTRY,
    add_phone_columns,
    normalise_phones,
    normalise_phones_with_stats,
)

REGIONS = [None, "US", "GB", "DE", "FR", "IN", "BR", "AU"]
# regions whose rules are the unusual ones: a national prefix rewritten (AR, JP), a region that is not its calling
# code's main one (CA, JE; KZ, which shares +7 with RU), no national prefix (IT)
UNUSUAL_REGIONS = ["AR", "JP", "CA", "JE", "KZ", "IT"]

TRAILING = [" ", "  ", "#", ")", "-", "\t", "\r"]
EXTENSIONS = [" x12", "x1", " X 55", " ext. 7", " Ext.12", " EXT 123456"]  # parsed in bulk
ODD_EXTENSIONS = [" ext 1234567", " x1234567890", "/ x12", " #12", " ext", ",,12", ";ext=12"]  # left to phonenumbers


def reference(text: str | None, region: str | None) -> tuple[str | None, str | None]:
    """The contract, written out: phonenumbers parses, validates and formats; its failures read as our reasons."""
    if text is None or not text.strip():
        return None, EMPTY
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as error:
        if error.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            return None, NEEDS_COUNTRY if "default region" in str(error) else UNKNOWN_COUNTRY
        return None, INVALID
    if not phonenumbers.is_valid_number(number):
        return None, INVALID
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), None


@functools.cache
def example_numbers() -> list[phonenumbers.PhoneNumber]:
    """libphonenumber's example number of every type in every region and non-geographic entity."""
    found = [
        phonenumbers.example_number_for_type(region, kind)
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        for kind in PhoneNumberType.values()
    ]
    found += [
        phonenumbers.example_number_for_non_geo_entity(code) for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    ]
    return [number for number in found if number is not None]


def perturbations(rng: random.Random) -> list[Callable[[str], str]]:
    def digit_positions(text: str) -> list[int]:
        return [i for i, c in enumerate(text) if c.isdigit()] or [0]

    def drop(text: str) -> str:
        i = rng.choice(digit_positions(text))
        return text[:i] + text[i + 1 :]

    def add(text: str) -> str:
        i = rng.choice(digit_positions(text))
        return text[:i] + str(rng.randrange(10)) + text[i:]

    def change(text: str) -> str:
        i = rng.choice(digit_positions(text))
        return text[:i] + str(rng.randrange(10)) + text[i + 1 :]

    def prefix(text: str) -> str:
        return rng.choice(
            ["011 ", "00 ", "0", "8 10 ", "+", "++", "1 ", "tel:", "(", "0011 ", "810", " "]
        ) + text.lstrip("+")

    def suffix(text: str) -> str:
        return text + rng.choice(TRAILING + EXTENSIONS + ODD_EXTENSIONS)

    def digits_only(text: str) -> str:
        return "".join(c for c in text if c.isdigit() or c == "+")

    def separators(text: str) -> str:
        return text.replace(" ", rng.choice([".", "-", "", "\u00a0", "/", "  "]))

    def random_digits(text: str) -> str:
        return rng.choice(["", "+", "0", "00", "011 "]) + "".join(
            str(rng.randrange(10)) for _ in range(rng.randrange(1, 20))
        )

    def truncate(text: str) -> str:
        return text[: rng.randrange(len(text) + 1)]

    def letters(text: str) -> str:
        return rng.choice([text.replace("1", "l"), text + "ABC", "call " + text, text[:-4] + "CALL"])

    return [drop, add, change, prefix, suffix, digits_only, separators, random_digits, truncate, letters]


@functools.cache
def generated_inputs(seed: int = 10) -> tuple[str | None, ...]:
    """Example numbers in every format, and each perturbed a few times: thousands of texts, most of them valid
    somewhere, many of them not."""
    rng = random.Random(seed)
    changes = perturbations(rng)
    texts: list[str | None] = []
    for number in example_numbers():
        for style in (PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL):
            text = phonenumbers.format_number(number, style)
            texts.append(text)
            texts += [rng.choice(changes)(text) for _ in range(2)]
        texts.append(
            rng.choice(changes)(rng.choice(changes)(phonenumbers.format_number(number, PhoneNumberFormat.RFC3966)))
        )
    texts += [None, "", " ", "\t", "\x1c", "+", "0000000000", "+0000000", "12", "+12", "1 2", "n/a", "٤١٥٥٥٥٠١٢٣"]
    texts += ["\uff0b\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13", "9" * 300]
    return tuple(texts)


@functools.cache
def expected(region: str | None) -> list[tuple[str | None, str | None]]:
    return [reference(text, region) for text in generated_inputs()]


def decided(texts: tuple[str | None, ...], region: str | None) -> list[tuple[object, ...]]:
    return normalise_phones(pl.Series(texts, dtype=pl.String), default_region=region).rows()


@pytest.mark.slow
@pytest.mark.parametrize("region", REGIONS + UNUSUAL_REGIONS)
def test_every_generated_input_is_decided_as_phonenumbers_decides_it(
    region: str | None,
) -> None:
    got = decided(generated_inputs(), region)
    mismatches = [
        (text, want, have)
        for text, want, have in zip(generated_inputs(), expected(region), got, strict=True)
        if want != have
    ]
    assert len(got) > 5_000
    assert mismatches == []


@pytest.mark.parametrize(
    ("text", "region", "e164"),
    [
        ("+1 415 555 0123", None, "+14155550123"),
        ("+1 415 555 0123", "US", "+14155550123"),
        ("(415) 555-0123", "US", "+14155550123"),
        ("415.555.0123", "US", "+14155550123"),
        ("1-415-555-0123", "US", "+14155550123"),
        ("14155550123", "US", "+14155550123"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("+44 20 7946 0958", None, "+442079460958"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("+44 (0)20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("00 44 20 7946 0958", "DE", "+442079460958"),
        ("tel:+1-415-555-0123", None, "+14155550123"),
        ("+1 415 555 0123   ", None, "+14155550123"),
        ("\t(415) 555-0123\r", "us", "+14155550123"),
        ("06 12 34 56 78", "FR", "+33612345678"),
        ("(11) 91234-5678", "BR", "+5511912345678"),
    ],
)
def test_formats_people_keep_are_normalised(text: str, region: str | None, e164: str) -> None:
    assert normalise_phones(pl.Series([text]), default_region=region).row(0) == (e164, None)


@pytest.mark.parametrize(
    ("text", "region", "reason"),
    [
        (None, "US", EMPTY),
        ("", None, EMPTY),
        ("   ", "US", EMPTY),
        ("(415) 555-0123", None, NEEDS_COUNTRY),
        ("020 7946 0958", None, NEEDS_COUNTRY),
        ("+999 1234 5678", None, UNKNOWN_COUNTRY),
        ("011 999 1234 5678", "US", UNKNOWN_COUNTRY),
        ("+1 415 555", "US", INVALID),
        ("(415) 555-01234", "US", INVALID),
        ("020 7946 0958", "US", INVALID),
        ("call me", "US", INVALID),
    ],
)
def test_a_number_that_is_not_valid_gets_a_reason_without_its_digits(
    text: str | None, region: str | None, reason: str
) -> None:
    assert normalise_phones(pl.Series([text], dtype=pl.String), default_region=region).row(0) == (None, reason)


def test_letters_and_extensions_are_what_phonenumbers_makes_of_them() -> None:
    texts = ["415-555-CALL", "415 555 0123 ext. 7", "(415) 555-0123 x12", "415 555 0123 #"]
    got = normalise_phones(pl.Series(texts), default_region="US").rows()
    assert got == [reference(text, "US") for text in texts]
    assert got[1] == ("+14155550123", None)  # E.164 has no extension


def test_one_person_written_two_ways_has_one_number() -> None:
    phones = normalise_phones(pl.Series(["+1 415-555-0123", "(415) 555-0123"]), default_region="US")
    assert phones[E164].n_unique() == 1
    assert phones[E164][0] == "+14155550123"


def test_results_keep_the_input_order_and_repeats_are_parsed_once() -> None:
    texts = ["call me", "+44 20 7946 0958", None, "call me", "(415) 555-0123", "call me"] * 500
    phones, stats = normalise_phones_with_stats(pl.Series(texts), default_region="US")
    assert phones.rows() == [reference(text, "US") for text in texts]
    assert stats.fallback_rows == 1_500
    assert stats.fallback_values == 1


def test_an_unknown_default_region_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown default region 'XX'"):
        normalise_phones(pl.Series(["+14155550123"]), default_region="XX")


def test_columns_of_other_types_and_empty_series_are_handled() -> None:
    assert normalise_phones(pl.Series([14155550123, None]), default_region="US").rows() == [
        ("+14155550123", None),
        (None, EMPTY),
    ]
    empty = normalise_phones(pl.Series([], dtype=pl.String), default_region=None)
    assert empty.schema == pl.Schema({E164: pl.String, PHONE_ERROR: pl.String})
    assert empty.height == 0


def test_phone_columns_are_added_to_a_frame_under_the_names_asked_for() -> None:
    frame = pl.DataFrame({"id": [1, 2], "mobile": ["(415) 555-0123", "nope"]})
    out = add_phone_columns(frame, "mobile", default_region="US", e164="to", error="mobile_error")
    assert out.columns == ["id", "mobile", "to", "mobile_error"]
    assert out.rows() == [(1, "(415) 555-0123", "+14155550123", None), (2, "nope", None, INVALID)]


def typical_numbers(rows: int, seed: int) -> pl.Series:
    """Numbers as a US file holds them: US numbers in the usual ways of writing them, some from abroad in E.164
    or dialled with 011, some with an extension, and a few mistakes."""
    rng = random.Random(seed)
    areas = [npa for npa in range(200, 1000) if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{npa}2345678"))]
    abroad = [
        phonenumbers.format_number(number, PhoneNumberFormat.E164)[:-3]
        for number in example_numbers()
        if number.country_code != 1
    ]
    texts = []
    for _ in range(rows):
        area, exchange, line = rng.choice(areas), rng.randrange(200, 1000), rng.randrange(10_000)
        style = rng.randrange(20)
        if style < 6:
            texts.append(f"+1{area}{exchange}{line:04d}")
        elif style < 10:
            texts.append(f"({area}) {exchange}-{line:04d}")
        elif style < 12:
            texts.append(f"{area}.{exchange}.{line:04d}")
        elif style < 14:
            texts.append(f"1-{area}-{exchange}-{line:04d}")
        elif style < 16:
            texts.append(f"+1 {area} {exchange} {line:04d} ")
        elif style < 18:
            texts.append(rng.choice(abroad) + f"{rng.randrange(1000):03d}")
        elif style < 19:
            texts.append("011 " + rng.choice(abroad)[1:] + f"{rng.randrange(1000):03d}")
        else:
            texts.append(
                rng.choice([f"{area}-{exchange}", f"({area}) {exchange}-{line:04d} ext {line % 100}", "", "n/a"])
            )
    return pl.Series(texts)


def test_the_expressions_decide_nearly_all_of_a_typical_file() -> None:
    numbers = typical_numbers(100_000, seed=3)
    phones, stats = normalise_phones_with_stats(numbers, default_region="US")
    assert stats.rows == 100_000
    assert stats.fallback_rows == (numbers == "n/a").sum()  # not a phone number at all: about 1% of the rows
    assert stats.fallback_values == 1
    assert phones[E164].is_not_null().mean() > 0.9
    sample = random.Random(4).sample(range(100_000), 2_000)
    assert [phones.row(i) for i in sample] == [reference(numbers[i], "US") for i in sample]


@pytest.mark.slow
def test_many_distinct_texts_for_phonenumbers_are_shared_out_among_processes_in_order() -> None:
    texts = [f"({200 + n % 700}) 555-{n % 10_000:04d} extension {n}" for n in range(21_000)] + ["call me", None]
    phones, stats = normalise_phones_with_stats(pl.Series(texts), default_region="US")
    assert stats.fallback_values == 21_001
    assert phones.rows() == [reference(text, "US") for text in texts]
