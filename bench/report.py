"""How long `python -m pipeline report` takes on a large results file: writes a synthetic results CSV (result columns
as a v3 run and `track` write them, tests/report_data.py) of --rows rows, then times the text report and the HTML
report as real subprocesses and records their peak memory. Prints one markdown table.

    .venv/bin/python bench/report.py                 # 1,000,000 rows
    .venv/bin/python bench/report.py --rows 100000
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.report_data import add_delivery, synthetic_results  # noqa: E402 - after the path is set


def _timed(argv: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak_kb, before) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as folder:
        work = Path(folder)
        results = work / "results.csv"
        add_delivery(synthetic_results(args.rows)).write_csv(results)
        (work / "contacts.csv").write_text("phone\n+14155550123\n", encoding="utf-8")
        spec = work / "campaign.yaml"
        spec.write_text(
            "version: 1\nname: bench-report\ninput: {path: contacts.csv}\n"
            "message: {to: {column: phone}, template_name: {value: t}}\n"
            "api: {version: v3, base_url: sandbox}\noutput: {results: results.csv}\n",
            encoding="utf-8",
        )
        size_mb = results.stat().st_size / 1e6
        python = sys.executable
        text_s, text_mb = _timed([python, "-m", "pipeline", "report", str(spec)])
        html_s, html_mb = _timed([python, "-m", "pipeline", "report", str(spec), "--html", str(work / "r.html")])
        html_kb = (work / "r.html").stat().st_size / 1024
    print("| results rows | CSV size | text report | HTML report | peak RSS | HTML size |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.rows:,} | {size_mb:.0f} MB | {text_s:.1f} s | {html_s:.1f} s | {max(text_mb, html_mb):.0f} MB "
        f"| {html_kb:.0f} KB |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
