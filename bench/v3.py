"""The v3 side of the benchmark (`POST /v3/messages`: phone numbers, not contact GUIDs): customer files, job specs,
and a shortcut that runs only the v3 scenarios of `bench/compare.py`.

    .venv/bin/python bench/v3.py [--quick] [--rows 20000] [--contenders ...]   # = compare.py --scenarios v3zero,...
    .venv/bin/python bench/v3.py customers PATH ROWS [--us-share 0.8] [--seed 11]   # write one customer file

A customer file has `phone,first_name,order_id,carrier`, every phone number distinct and valid (so every row is
sent, and `validate` exits 0), written as people keep them (bench/phones.py's mix). `us_share` of them (80%) are US
numbers: E.164, `+1 415-555-0123`, `(415) 555-0123`, `415.555.0123`, `1-415-555-0123`, `tel:+1...` and
` 4155550123 `; the rest come from every other region libphonenumber knows (some 240), written as E.164, `+CC rest`
or dialled from the US with `011`. Specs read them with `default_region: US`.

The files are written by a helper process (this file run as `customers`), so that compare.py itself never loads
polars: a child's peak RSS from `wait4` would otherwise count pages it carried over from the parent until exec.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TEMPLATE_ID = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"  # the sandbox's order_shipped, which the mock also describes
US_SHARE = 0.8
SEED = 11
# the v3 scenarios of compare.py, run by `python bench/v3.py`
SCENARIOS = "v3zero,v3latency,v3validate"
VALIDATE_RUNS = 5  # the median of this many `validate` runs: these machines are noisy
VALIDATE_INPUT = f"distinct phone numbers in mixed formats, {US_SHARE:.0%} US, the rest international (v3)"


def write_customers(path: Path, rows: int, *, us_share: float = US_SHARE, seed: int = SEED) -> None:
    """`rows` customers with distinct phone numbers (see the module docstring). Loads polars: run it in a helper
    process (`make_customers`)."""
    import polars as pl
    from phones import make_numbers  # bench/phones.py: this folder is sys.path[0] when run as a script

    from pipeline.phones import E164, normalise_phones

    # about 1% of the generated numbers are not valid (random digits in another region's example number): make
    # more, keep the valid ones, each number once
    numbers = make_numbers(int(rows * 1.03) + 100, seed, us_share=us_share)
    numbers = numbers.with_columns(normalise_phones(numbers["text"], default_region="US")[E164].alias("sent_as"))
    numbers = numbers.drop_nulls("sent_as").unique("sent_as", keep="first", maintain_order=True).head(rows)
    if numbers.height < rows:
        raise RuntimeError(f"made only {numbers.height:,} valid distinct numbers of {rows:,}")
    names = pl.Series(["Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Dennis", "Frances", "Ken", "Radia"])
    carriers = pl.Series(["UPS", "FedEx", "DHL", "USPS", "Royal Mail"])
    index = pl.int_range(0, numbers.height, eager=True)
    frame = pl.DataFrame(
        {
            "phone": numbers["text"],
            "first_name": names.gather(index % names.len()),
            "order_id": (index + 2_000_000).cast(pl.String),
            "carrier": carriers.gather(index % carriers.len()),
        }
    )
    frame.write_csv(path)


def make_customers(path: Path, rows: int, *, env: dict[str, str], us_share: float = US_SHARE) -> Path:
    """Write the customer file in a helper process (this file, `customers` command); returns `path`."""
    command = [sys.executable, str(Path(__file__)), "customers", str(path), str(rows), "--us-share", str(us_share)]
    subprocess.run(command, env=env, check=True, timeout=600)
    return path


def spec_text(
    name: str, csv_path: Path, base_url: str, concurrency: int, rate: str | None = None, burst: int | None = None
) -> str:
    """A v3 job spec sending `csv_path` to `base_url` (results beside the spec): the sample campaign's message."""
    send = [f"  concurrency: {concurrency}"]
    if rate is not None:
        send.append(f'  rate: "{rate}"')
    if burst is not None:
        send.append(f"  burst: {burst}")
    return "\n".join(
        [
            "version: 1",
            f"name: {name}",
            "input:",
            f"  path: {csv_path}",
            "message:",
            "  to: {column: phone}",
            "  default_region: US",
            f"  template_id: {{value: {TEMPLATE_ID}}}",
            "  variables:",
            "    name: {column: first_name}",
            "    order_id: {column: order_id}",
            "    carrier: {column: carrier}",
            "  channel: {value: sms}",
            "api:",
            "  version: v3",
            f"  base_url: {base_url}",
            "  api_key: ${SENT_DM_API_KEY}",
            "  timeout_s: 30",
            "send:",
            *send,
            "output:",
            "  results: results.csv",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["customers"]:
        parser = argparse.ArgumentParser(prog="bench/v3.py customers", description="write one customer file")
        parser.add_argument("path", type=Path)
        parser.add_argument("rows", type=int)
        parser.add_argument("--us-share", type=float, default=US_SHARE)
        parser.add_argument("--seed", type=int, default=SEED)
        options = parser.parse_args(args[1:])
        write_customers(options.path, options.rows, us_share=options.us_share, seed=options.seed)
        return 0
    import compare  # bench/compare.py

    if not any(a == "--scenarios" or a.startswith("--scenarios=") for a in args):
        args += ["--scenarios", SCENARIOS]
    return compare.main(args)


if __name__ == "__main__":
    sys.path.insert(1, str(REPO))  # bench/phones.py imports pipeline.phones from this work tree
    sys.exit(main())
