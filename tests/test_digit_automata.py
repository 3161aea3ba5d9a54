"""Digit automata: every automaton must report, bit by bit, what Python's `re` says of the same patterns and strings
(re.fullmatch, or re.match for prefix automata), and must compile every number pattern of phonenumbers' metadata."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence

import phonenumbers
import polars as pl
import pytest
from phonenumbers import PhoneMetadata, PhoneNumberType

from pipeline.digit_automata import DIGITS, Automata, Builder, UnsupportedPattern, parse

PATTERNS = [
    "",
    "\\d*",
    "1",
    "[2-9]",
    "[2-9]\\d{2}",
    "[^0-4]\\d?",
    "[^\\d]?",
    "[\\d]{3}",
    "[0-35-7]{2,4}",
    "[13579]+[02468]*",
    "0{3,}",
    "1{0}2",
    "1{2,}3*",
    "(?:1|23)+",
    "(?:12|1)*2",
    "((?:0|1)[2-3]){2,3}",
    "(?:(?:1|2)(?:3|45)?)*6",
    "(?:0|(?:1(?:2|3))*4)5?",
    "(1)(2)?",
    "(?:)",
    "1|",
    "|2",
    "(?:1?)*0",
    "(?:\\d{2})+",
    "9(?:[0-4]\\d|5[0-5]){1,3}",
    "0\\d*0",
    "[1-9]\\d{17}",
    "\\d{18}",
    "\\d{19}",
    "(?:[01]{2}(?:2|34){1,2})?5{0,2}",
]
EDGE_STRINGS = [
    "",
    "0",
    "00",
    "000",
    "0000000",
    "0012",
    "000000000000000001",
    "000000000000000000",
    "100000000000000000",
    "999999999999999999",
    "123456789012345678",
    "12",
    "1122",
    "1234",
    "955255",
    "112345",
    "121212",
    "0123",
    "55",
]


def reference(patterns: Sequence[str | None], text: str, *, prefix: bool = False) -> int:
    """The bits of the patterns that `re` matches against the whole text (or, with `prefix`, a leading part)."""
    match = re.match if prefix else re.fullmatch
    return sum(
        1 << bit
        for bit, pattern in enumerate(patterns)
        if pattern is not None and match(pattern, text, re.ASCII) is not None
    )


def random_strings(rng: random.Random, count: int) -> list[str]:
    """Digit strings of length 0-18, each drawn from a few digits so that repetitions and alternations match."""
    found = []
    for _ in range(count):
        alphabet = rng.sample("0123456789", rng.choice([1, 2, 2, 3, 3, 4, 10]))
        found.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, DIGITS))))
    return found


@functools.cache
def strings() -> list[str]:
    return EDGE_STRINGS + random_strings(random.Random(20240611), 4000)


def run(automata: Automata, texts: Sequence[str | None], which: pl.Series | int) -> list[int]:
    found = automata.run(pl.Series("text", texts, dtype=pl.String), which)
    assert found.dtype == pl.UInt32
    assert found.name == "text"
    assert found.len() == len(texts)
    return [int(bits) for bits in found]


def mismatches(texts: Sequence[str], got: Sequence[int], expected: Sequence[int]) -> list[tuple[str, int, int]]:
    return [(text, g, e) for text, g, e in zip(texts, got, expected, strict=True) if g != e][:10]


def test_the_strings_match_each_pattern_somewhere_and_miss_it_elsewhere() -> None:
    outcomes = {"\\d*": {True}, "\\d{19}": {False}}
    for pattern in PATTERNS:
        matched = {re.fullmatch(pattern, text) is not None for text in strings()}
        assert matched == outcomes.get(pattern, {True, False}), pattern


@pytest.mark.parametrize("prefix", [False, True], ids=["whole", "prefix"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_one_pattern_reports_bit_0_exactly_where_re_matches(pattern: str, prefix: bool) -> None:
    builder = Builder()
    number = builder.add([pattern], prefix=prefix)
    texts = strings()
    got = run(builder.freeze(), texts, number)
    expected = [reference([pattern], text, prefix=prefix) for text in texts]
    assert mismatches(texts, got, expected) == []


@pytest.mark.parametrize("prefix", [False, True], ids=["whole", "prefix"])
def test_several_patterns_in_one_automaton_report_each_bit_where_its_pattern_matches(prefix: bool) -> None:
    rng = random.Random(7)
    builder = Builder()
    groups: list[list[str | None]] = []
    for size in (2, 3, 5, 8):
        group: list[str | None] = list(rng.sample(PATTERNS, size))
        group.insert(rng.randrange(size + 1), None)
        groups.append(group)
    groups.append([None, None])
    groups.append([*PATTERNS, None, "(?:1|2)\\d"])  # 32 patterns: bit 31 is the last of a UInt32
    numbers = [builder.add(group, prefix=prefix) for group in groups]
    automata = builder.freeze()
    texts = strings()
    for group, number in zip(groups, numbers, strict=True):
        got = run(automata, texts, number)
        expected = [reference(group, text, prefix=prefix) for text in texts]
        assert mismatches(texts, got, expected) == [], group
    assert any(bits >> 31 for bits in run(automata, texts, numbers[-1]))


def test_a_none_pattern_never_sets_its_bit() -> None:
    builder = Builder()
    whole = builder.add([None, "\\d*", None])
    prefix = builder.add([None, "", None], prefix=True)
    automata = builder.freeze()
    texts = strings()
    assert set(run(automata, texts, whole)) == {2}
    assert set(run(automata, texts, prefix)) == {2}


def test_a_prefix_automaton_reports_every_pattern_that_matches_a_leading_part() -> None:
    patterns = ["1", "12", "123", "1\\d{2,}", "2|12", "(?:12)+3", "\\d{18}", "[^1]"]
    builder = Builder()
    number = builder.add(patterns, prefix=True)
    texts = ["", "1", "12", "123", "1234", "13", "2", "121212123", "1" * 18, "2" * 18, "0123"]
    got = run(builder.freeze(), texts, number)
    assert got == [reference(patterns, text, prefix=True) for text in texts]
    assert got[texts.index("1234")] == 0b111111
    assert got[texts.index("1" * 18)] == 0b1001001


def test_each_row_is_matched_by_the_automaton_its_row_names_in_one_shared_table() -> None:
    rng = random.Random(11)
    builder = Builder()
    chosen: list[tuple[list[str | None], bool]] = []
    for _ in range(40):
        group: list[str | None] = list(rng.sample(PATTERNS, rng.randint(1, 4)))
        if rng.random() < 0.3:
            group.insert(0, None)
        chosen.append((group, rng.random() < 0.5))
    numbers = [builder.add(group, prefix=prefix) for group, prefix in chosen]
    assert numbers == list(range(len(chosen)))
    automata = builder.freeze()
    texts = strings()
    rows = [rng.choice([*numbers, None]) for _ in texts]
    assert None in rows
    got = run(automata, texts, pl.Series(rows, dtype=pl.UInt32))
    expected = [
        0 if row is None else reference(chosen[row][0], text, prefix=chosen[row][1])
        for text, row in zip(texts, rows, strict=True)
    ]
    assert mismatches(texts, got, expected) == []
    assert len(set(expected)) > 10


def test_an_automaton_number_for_all_rows_and_a_series_of_that_number_agree() -> None:
    builder = Builder()
    builder.add(["1\\d*"])
    number = builder.add(["[2-9]\\d{2,5}", "\\d{3}"])
    automata = builder.freeze()
    texts = strings()
    one = run(automata, texts, number)
    assert one == run(automata, texts, pl.Series([number] * len(texts), dtype=pl.UInt32))
    assert one == [reference(["[2-9]\\d{2,5}", "\\d{3}"], text) for text in texts]


NOT_READABLE = [
    "12a",
    "a12",
    " 12",
    "12 ",
    "+1",
    "+12",
    "-1",
    "1.0",
    "1e3",
    "1_000",
    "0x1",
    "\u0661\u0662",
    "\uff11\uff12",
    "1" * (DIGITS + 1),
    "0" * (DIGITS + 1),
    "9" * 30,
    None,
]


@pytest.mark.parametrize("prefix", [False, True], ids=["whole", "prefix"])
def test_texts_not_of_at_most_18_ascii_digits_and_nulls_report_0(prefix: bool) -> None:
    patterns = ["", "\\d*", "1\\d*", "\\d{2}", "0*"]
    builder = Builder()
    number = builder.add(patterns, prefix=prefix)
    automata = builder.freeze()
    got = run(automata, NOT_READABLE, number)
    assert dict(zip(NOT_READABLE, got, strict=True)) == dict.fromkeys(NOT_READABLE, 0)
    assert run(automata, ["12", None, "1" * DIGITS], number) == [
        reference(patterns, "12", prefix=prefix),
        0,
        reference(patterns, "1" * DIGITS, prefix=prefix),
    ]


def test_a_null_automaton_number_reports_0() -> None:
    builder = Builder()
    number = builder.add(["\\d*", ""], prefix=True)
    got = run(
        builder.freeze(), ["", "1", "12", "", "1"], pl.Series([None, None, number, number, None], dtype=pl.UInt32)
    )
    assert got == [0, 0, 3, 3, 0]


DESCRIPTIONS = [
    "general_desc",
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
]
TYPES = {
    "fixed_line": PhoneNumberType.FIXED_LINE,
    "mobile": PhoneNumberType.MOBILE,
    "toll_free": PhoneNumberType.TOLL_FREE,
    "premium_rate": PhoneNumberType.PREMIUM_RATE,
    "shared_cost": PhoneNumberType.SHARED_COST,
    "personal_number": PhoneNumberType.PERSONAL_NUMBER,
    "voip": PhoneNumberType.VOIP,
    "pager": PhoneNumberType.PAGER,
    "uan": PhoneNumberType.UAN,
    "voicemail": PhoneNumberType.VOICEMAIL,
}


@functools.cache
def metadata() -> dict[str, PhoneMetadata]:
    """Every region's metadata and every non-geographic entity's ("001/800", ...)."""
    found = {
        region: PhoneMetadata.metadata_for_region_or_calling_code(0, region)
        for region in phonenumbers.SUPPORTED_REGIONS
    }
    for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        found[f"{phonenumbers.region_code_for_country_code(code)}/{code}"] = (
            PhoneMetadata.metadata_for_region_or_calling_code(code, phonenumbers.region_code_for_country_code(code))
        )
    return {key: value for key, value in found.items() if value is not None}


def number_patterns(region: PhoneMetadata) -> dict[str, str | None]:
    """The general pattern and each type's (None where the region has no such type)."""
    found: dict[str, str | None] = {}
    for name in DESCRIPTIONS:
        description = getattr(region, name)
        found[name] = None if description is None else description.national_number_pattern
    return found


def test_the_metadata_covers_every_region_and_non_geographic_entity() -> None:
    keys = metadata().keys()
    assert len(keys) == len(phonenumbers.SUPPORTED_REGIONS) + len(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)
    assert sum(1 for region in metadata().values() if region.leading_digits is not None) > 10


def test_every_number_and_leading_digits_pattern_of_phonenumbers_parses() -> None:
    failed = []
    count = 0
    for key, region in sorted(metadata().items()):
        for name, pattern in [*number_patterns(region).items(), ("leading_digits", region.leading_digits)]:
            if pattern is None:
                continue
            count += 1
            try:
                parse(pattern)
            except UnsupportedPattern:
                failed.append((key, name, pattern))
    assert failed == []
    assert count > 1000


SAMPLE_REGIONS = ["US", "GB", "DE", "FR", "IN", "BR", "AU", "AR", "JP", "IT", "RU", "KZ", "CN", "MX", "NG", "JE"]


def perturbed(rng: random.Random, number: str) -> list[str]:
    """The number with a digit dropped, added or changed, cut short, or its digits shuffled."""
    found = [number]
    for _ in range(6):
        i = rng.randrange(len(number) + 1)
        digit = str(rng.randrange(10))
        found += [
            number[:i] + number[i + 1 :],
            number[:i] + digit + number[i:],
            number[:i] + digit + number[i + 1 :],
            number[:i],
        ]
    found.append("".join(rng.sample(number, len(number))))
    return [text for text in found if len(text) <= DIGITS]


@pytest.mark.parametrize("region_code", SAMPLE_REGIONS)
def test_a_regions_automata_agree_with_re_on_its_example_numbers_and_their_perturbations(region_code: str) -> None:
    region = metadata()[region_code]
    patterns = list(number_patterns(region).values())
    leading = [region.leading_digits]
    builder = Builder()
    checks = builder.add(patterns)
    claims = builder.add(leading, prefix=True)
    automata = builder.freeze()
    rng = random.Random(region_code)
    examples = [
        phonenumbers.national_significant_number(number)
        for name, kind in TYPES.items()
        if (number := phonenumbers.example_number_for_type(region_code, kind)) is not None
    ]
    assert examples
    texts = sorted({text for example in examples for text in perturbed(rng, example)})
    got = run(automata, texts, checks)
    expected = [reference(patterns, text) for text in texts]
    assert mismatches(texts, got, expected) == []
    assert all(bits & 1 for bits in run(automata, examples, checks))
    assert any(bits == 0 for bits in got)
    got_leading = run(automata, texts, claims)
    assert mismatches(texts, got_leading, [reference(leading, text, prefix=True) for text in texts]) == []


@pytest.mark.parametrize("pattern", ["a", "\\s", "(?=1)", "1{2", "[1-", "(1", "1)", "$", "1{,2}", "[1-a]", "\\1"])
def test_syntax_outside_digits_classes_groups_and_repetition_raises_unsupported_pattern(pattern: str) -> None:
    with pytest.raises(UnsupportedPattern):
        parse(pattern)
    with pytest.raises(UnsupportedPattern):
        Builder().add(["1", pattern])
