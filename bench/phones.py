"""Speed of `pipeline.phones.normalise_phones` on a million distinct numbers, next to a plain phonenumbers loop.

    python bench/phones.py [--rows 1000000] [--loop-sample 50000] [--repeat 3] [--seed 7]

All numbers are distinct and nearly all valid: 60% US numbers (a valid area code, then random digits), 40% from every
other region (libphonenumber's example number of each type, its last four digits random) - a harder mix than most
files, with some 240 countries. As the file holds them: US numbers as E.164 (30%), `+1 415-555-0123`, `(415) 555-0123`
(20%), `415.555.0123`, `1-415-555-0123`, `tel:+14155550123` and ` 4155550123 ` (10% each); the others as E.164 (60%),
`+CC rest` (20%) or dialled from the US with `011` (20%). Run with default region US, then without one (where the
national US numbers can only be "needs a country code").

Prints rows/s (best of --repeat, after one warm-up call that builds the metadata) with the CPU time of all threads, the
share of rows and distinct texts that went to phonenumbers one by one, and the rate of a plain `parse` +
`is_valid_number` + `format_number` loop on a sample: once as phonenumbers is installed, once with its pattern cache on
(which the fallback turns on). Exits 1 if the loop and normalise_phones disagree on the sample.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import phonenumbers
import polars as pl
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from pipeline.phones import PhoneStats, decide_phone, normalise_phones_with_stats


def seeds() -> dict[str, list[str]]:
    """E.164 example numbers per region, every type libphonenumber has one for."""
    found: dict[str, list[str]] = {}
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in PhoneNumberType.values():
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                found.setdefault(region, []).append(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    return found


def us_area_codes() -> list[str]:
    """Area codes phonenumbers accepts for an ordinary number in them."""
    return [str(npa) for npa in range(200, 1000) if phonenumbers.is_valid_number(phonenumbers.parse(f"+1{npa}2345678"))]


def _digits(rng: random.Random, count: int, size: int) -> pl.Series:
    return pl.Series([rng.randrange(10**size) for _ in range(count)]).cast(pl.String).str.zfill(size)


def make_numbers(rows: int, seed: int, *, us_share: float = 0.6) -> pl.DataFrame:
    """`rows` distinct numbers: `e164` (as generated), `region` and `text` (as written in the file); `us_share` of
    them US numbers, the rest from every other region."""
    rng = random.Random(seed)
    by_region = seeds()
    by_region.pop("US")
    others = [(region, n) for region, numbers in by_region.items() for n in numbers]
    us_rows = int(rows * us_share)
    other_rows = rows - us_rows
    areas = us_area_codes()
    more = int(us_rows * 1.1) + 1000
    exchange = pl.Series([rng.randrange(200, 1000) for _ in range(more)]).cast(pl.String)
    us = pl.DataFrame({"region": ["US"] * more, "e164": [f"+1{areas[rng.randrange(len(areas))]}" for _ in range(more)]})
    us = us.with_columns(pl.col("e164") + exchange + _digits(rng, more, 4))
    more = int(other_rows * 1.1) + 1000
    picks = [others[rng.randrange(len(others))] for _ in range(more)]
    # each example number with its last four digits replaced
    rest = pl.DataFrame({"region": [r for r, _ in picks], "e164": [n[:-4] for _, n in picks]})
    rest = rest.with_columns(pl.col("e164") + _digits(rng, more, 4))
    frames = [
        us.unique("e164", maintain_order=True).head(us_rows),
        rest.unique("e164", maintain_order=True).head(other_rows),
    ]
    numbers = pl.concat(frames)
    cc = pl.col("e164").str.slice(1)  # calling code and national number
    nsn = cc.str.slice(1)  # a US number's national number
    style = pl.Series([rng.randrange(10) for _ in range(numbers.height)])
    us_text = (
        pl.when(style < 3)
        .then(pl.col("e164"))
        .when(style < 4)
        .then(pl.format("+1 {}-{}-{}", nsn.str.slice(0, 3), nsn.str.slice(3, 3), nsn.str.slice(6)))
        .when(style < 6)
        .then(pl.format("({}) {}-{}", nsn.str.slice(0, 3), nsn.str.slice(3, 3), nsn.str.slice(6)))
        .when(style < 7)
        .then(pl.format("{}.{}.{}", nsn.str.slice(0, 3), nsn.str.slice(3, 3), nsn.str.slice(6)))
        .when(style < 8)
        .then(pl.format("1-{}-{}-{}", nsn.str.slice(0, 3), nsn.str.slice(3, 3), nsn.str.slice(6)))
        .when(style < 9)
        .then(pl.format("tel:{}", pl.col("e164")))
        .otherwise(pl.format(" {} ", nsn))
    )
    other_text = (
        pl.when(style < 6)
        .then(pl.col("e164"))
        .when(style < 8)
        .then(pl.format("+{} {}", cc.str.slice(0, 2), cc.str.slice(2)))
        .otherwise(pl.format("011 {}", cc))  # the US international prefix
    )
    return (
        numbers.with_columns(style.alias("style"))
        .with_columns(pl.when(pl.col("region") == "US").then(us_text).otherwise(other_text).alias("text"))
        .sample(fraction=1.0, shuffle=True, seed=seed)
    )


def best_of(repeat: int, texts: pl.Series, region: str | None) -> tuple[float, float, pl.DataFrame, PhoneStats]:
    """Fastest wall time of `repeat` calls, its CPU time (all threads), the result and its stats."""
    normalise_phones_with_stats(texts.head(1000), default_region=region)  # builds the metadata, once per process
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result, stats = normalise_phones_with_stats(texts, default_region=region)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = min(runs)
    return wall, cpu, result, stats


def loop(texts: list[str], region: str | None) -> tuple[float, list[tuple[str | None, str | None]]]:
    start = time.perf_counter()
    decided = [decide_phone(text, region) for text in texts]
    return time.perf_counter() - start, decided


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--loop-sample", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    start = time.perf_counter()
    numbers = make_numbers(args.rows, args.seed)
    texts = numbers["text"]
    print(
        f"{texts.len():,} distinct numbers ({texts.n_unique():,} distinct texts) made in "
        f"{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"polars {pl.__version__}, phonenumbers {phonenumbers.__version__}"
    )
    sample = texts.head(args.loop_sample).to_list()
    # first as phonenumbers comes, then with the pattern cache the fallback turns on
    for label, region in (("region US", "US"), ("no region", None)):
        seconds, _ = loop(sample, region)
        print(f"phonenumbers loop, {label}, as installed: {len(sample) / seconds:,.0f} rows/s on {len(sample):,} rows")
    phonenumbers.enable_pattern_cache()
    failures = 0
    for label, region in (("region US", "US"), ("no region", None)):
        wall, cpu, result, stats = best_of(args.repeat, texts, region)
        print(
            f"normalise_phones, {label}: {texts.len() / wall:,.0f} rows/s ({wall:.2f} s, CPU {cpu:.2f} s); "
            f"valid {result['e164'].is_not_null().mean():.1%}; fallback {stats.fallback_rows / stats.rows:.2%} "
            f"of rows ({stats.fallback_values:,} distinct texts)"
        )
        seconds, decided = loop(sample, region)
        print(f"phonenumbers loop, {label}, pattern cache on: {len(sample) / seconds:,.0f} rows/s")
        expected = pl.DataFrame(decided, schema={"e164": pl.String, "phone_error": pl.String}, orient="row")
        if not result.head(len(sample)).equals(expected):
            failures += 1
            print(f"MISMATCH with the loop, {label}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
