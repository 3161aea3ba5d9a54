"""Peak memory and speed of `validate`, `run --dry-run` and `run` on large generated inputs.

    python bench/memory.py [--rows 100000 1000000 10000000] [--send-rows 1000000] [--out bench/out]

For each size it writes a CSV of that many contacts (generated in a helper process, never committed), then runs the
product as a child process and reads the child's own peak RSS from the kernel (wait4). This process never loads
polars: a forked child's peak RSS counts the parent's pages it carried until exec, which would inflate the figure.
`run` sends to the embedded sandbox at zero latency. Prints a markdown table; the target is under 300 MB at every size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"


def write_contacts(path: Path, rows: int) -> None:
    """Contacts in 1M-row chunks, so the generator's own memory stays modest. Runs in its own process."""
    import polars as pl  # only in the generator process: see the module docstring

    chunk = 1_000_000
    with open(path, "wb") as out:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ids = pl.int_range(start, start + n, eager=True)
            frame = pl.DataFrame(
                {
                    "contact_id": ids.map_elements(
                        lambda i: f"00000000-0000-4000-8000-{i:012d}", return_dtype=pl.String
                    ),
                    "first_name": pl.Series(["Ann", "Bob", "Chloé", "Dmitri"] * (n // 4 + 1))[:n],
                    "order_id": ids.cast(pl.String).str.zfill(8),
                }
            )
            frame.write_csv(out, include_header=start == 0)


def write_spec(folder: Path, csv_path: Path, *, name: str) -> Path:
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"""version: 1
name: {name}
input: {{path: {csv_path}}}
message:
  contact_id: {{column: contact_id}}
  template_id: {{value: {TEMPLATE}}}
  variables: {{name: {{column: first_name}}, order_id: {{column: order_id}}}}
api: {{base_url: sandbox}}
send: {{concurrency: 64}}
output: {{results: {folder / name}-results.csv}}
"""
    )
    return spec


def measure(args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one product process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--generate":
        write_contacts(Path(sys.argv[3]), int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--send-rows", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    lines = ["| command | rows | wall s | rows/s | peak RSS MB | exit |", "|---|---:|---:|---:|---:|---:|"]
    records = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        for rows in sorted(set(args.rows) | set(args.send_rows)):
            csv_path = folder / f"contacts-{rows}.csv"
            subprocess.run([sys.executable, __file__, "--generate", str(rows), str(csv_path)], check=True)
            commands = []
            if rows in args.rows:
                commands += [["validate"], ["run", "--dry-run", "--quiet"]]
            if rows in args.send_rows:
                commands.append(["run", "--quiet"])
            for command in commands:
                spec = write_spec(folder, csv_path, name=f"bench-{rows}-{command[-1].strip('-')}")
                wall, rss, code = measure([command[0], str(spec), *command[1:]])
                label = " ".join(command)
                lines.append(f"| {label} | {rows:,} | {wall:.1f} | {rows / wall:,.0f} | {rss:.0f} | {code} |")
                records.append({"command": label, "rows": rows, "wall_s": wall, "peak_rss_mb": rss, "exit": code})
                print(lines[-1], flush=True)
            csv_path.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.md").write_text("\n".join(lines) + "\n")
    (args.out / "memory.json").write_text(json.dumps(records, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
