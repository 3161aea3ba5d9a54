"""Remakes docs/report.png, the README's picture of the HTML report: runs the sample v3 campaign
(configs/campaign-v3.yaml) against the embedded sandbox in a temp folder, adds delivery columns as `track` would
write them (made up, tests/report_data.py, with a WhatsApp share so reads show), makes the report and photographs
it in headless Chromium. Nothing leaves 127.0.0.1.

    .venv/bin/python docs/make_report_screenshot.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.results import write_results  # noqa: E402 - after the path is set
from pipeline.source import unescape_formulas  # noqa: E402
from tests.chromium import headless_chromium  # noqa: E402
from tests.report_data import add_delivery  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="report-shot-") as folder:
        work = Path(folder)
        shutil.copytree(ROOT / "configs", work / "configs")
        shutil.copytree(ROOT / "sample_data", work / "sample_data")
        spec = work / "configs" / "campaign-v3.yaml"
        pipeline = [sys.executable, "-m", "pipeline"]
        run = subprocess.run([*pipeline, "--quiet", "run", str(spec)], capture_output=True, text=True, check=False)
        if run.returncode not in (0, 1):  # 1: the sample's invalid rows, on purpose
            sys.exit(f"the sample campaign failed: {run.stderr}")
        results = work / "out" / "order-shipped-v3-results.csv"
        frame = unescape_formulas(pl.read_csv(results, infer_schema=False))
        write_results(add_delivery(frame), results)
        html = work / "out" / "report.html"
        subprocess.run([*pipeline, "report", str(spec), "--html", str(html)], check=True, stdout=subprocess.DEVNULL)
        with headless_chromium() as browser:
            page = browser.new_page()
            page.open(html.as_uri())
            if page.errors():
                sys.exit(f"the report has errors: {page.errors()}")
            page.screenshot(ROOT / "docs" / "report.png", width=1100)
    print(ROOT / "docs" / "report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
