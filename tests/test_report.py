"""`python -m pipeline report`: the aggregates from real results files (CSV, Parquet, JSON Lines; with and without
track's delivery columns), the text summary and the HTML file through real subprocesses, and the HTML opened in a
real headless Chromium: it renders with no console error, loads nothing from anywhere, runs nothing from the data,
and shows the expected numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline.report.summary import MAX_BINS, mask_reason, read_results, summarize_results
from tests.chromium import OPT_OUT, Browser, ChromiumMissing, find_chromium, headless_chromium
from tests.report_data import add_delivery, synthetic_results

PHONE = "+14155550123"
# one row per line: status, error, delivery status, delivery error, channel; ten rows with known aggregates
_ROWS = [
    ("sent", None, "DELIVERED", None, "sms"),
    ("sent", None, "DELIVERED", None, "sms"),
    ("sent", None, "READ", None, "whatsapp"),
    ("sent", None, "FAILED", "ERR_CONSENT_BLOCKED", "sms"),
    ("sent", None, "SENT", None, "sms"),
    ("sent", None, None, None, "whatsapp"),
    ("invalid", "to: not a valid phone number (column phone)", None, None, None),
    ("invalid", "to: empty (column phone)", None, None, None),
    ("duplicate", "duplicate of row 1", None, None, None),
    ("failed", f"HTTP 400 VALIDATION_002: {PHONE} is not a valid E.164 number", None, None, None),
]


def _results(*, delivery: bool = True) -> pl.DataFrame:
    n = len(_ROWS)
    frame = pl.DataFrame(
        {
            # the input's own columns: people's data that must never reach a report
            "phone": [PHONE] * n,
            "first_name": ["Zebedee-Private"] * n,
            "result_row": list(range(1, n + 1)),
            "result_status": [r[0] for r in _ROWS],
            "result_to": [PHONE if r[0] == "sent" else None for r in _ROWS],
            "result_http_status": [202 if r[0] == "sent" else None for r in _ROWS],
            "result_message_id": [f"m-{i}" if r[0] == "sent" else None for i, r in enumerate(_ROWS)],
            "result_error": [r[1] for r in _ROWS],
            "result_attempts": [1 if r[0] in ("sent", "failed") else 0 for r in _ROWS],
            "result_sent_at": [
                f"2026-11-24T09:00:{i:02d}.250Z" if r[0] in ("sent", "failed") else None for i, r in enumerate(_ROWS)
            ],
            "result_latency_ms": [40.0 + i if r[0] in ("sent", "failed") else None for i, r in enumerate(_ROWS)],
        }
    )
    if not delivery:
        return frame
    return frame.with_columns(
        pl.Series("result_delivery_status", [r[2] for r in _ROWS], dtype=pl.String),
        pl.Series("result_delivery_error", [r[3] for r in _ROWS], dtype=pl.String),
        pl.Series(
            "result_delivery_at",
            [f"2026-11-24T09:01:{i:02d}.000Z" if r[2] else None for i, r in enumerate(_ROWS)],
            dtype=pl.String,
        ),
        pl.Series("result_delivery_channel", [r[4] for r in _ROWS], dtype=pl.String),
    )


def _campaign(folder: Path, results: pl.DataFrame, *, suffix: str = ".csv") -> Path:
    """A v3 spec whose output.results is `results`, written as CSV (the tool's own writer), Parquet or JSON Lines."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "contacts.csv").write_text(f"phone\n{PHONE}\n", encoding="utf-8")
    path = folder / f"results{suffix}"
    if suffix == ".csv":
        from pipeline.results import write_results

        write_results(results, path)
    elif suffix == ".parquet":
        results.write_parquet(path)
    else:
        results.write_ndjson(path)
    spec = folder / "campaign.yaml"
    spec.write_text(
        "version: 1\nname: spring-sale\ninput: {path: contacts.csv}\n"
        "message: {to: {column: phone}, template_name: {value: order_shipped}}\n"
        f"api: {{version: v3, base_url: sandbox}}\noutput: {{results: results{suffix}}}\n",
        encoding="utf-8",
    )
    return spec


def _report(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the aggregates ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_funnel_counts_every_step_from_each_results_format(tmp_path: Path, suffix: str) -> None:
    spec = _campaign(tmp_path, _results(), suffix=suffix)
    report = summarize_results(
        read_results(spec.parent / f"results{suffix}"), campaign="spring-sale", results_path="results"
    )
    steps = {s.name: (s.count, s.lost) for s in report.funnel}
    assert steps == {
        "rows": (10, {}),
        "valid": (7, {"invalid": 2, "duplicate": 1}),
        "accepted": (6, {"failed": 1}),
        "delivered": (3, {"FAILED": 1, "SENT": 1, "not yet known": 1}),
        "read": (1, {"delivered, not read": 2}),
    }
    assert report.delivery_known
    assert report.channels == {
        "sms": {"DELIVERED": 2, "FAILED": 1, "SENT": 1},
        "whatsapp": {"READ": 1, "not yet known": 1},
    }
    reasons = {(r.step, r.status, r.reason): r.count for r in report.reasons}
    assert reasons == {
        ("not sent", "invalid", "to: not a valid phone number (column phone)"): 1,
        ("not sent", "invalid", "to: empty (column phone)"): 1,
        ("not sent", "duplicate", "duplicate of row N"): 1,
        ("not sent", "failed", "HTTP 400 VALIDATION_002: [number] is not a valid E.164 number"): 1,
        ("delivery", "FAILED", "ERR_CONSENT_BLOCKED"): 1,
    }
    assert report.timing is not None
    assert report.timing.requests == 7
    assert report.timing.latency_ms["max"] == 49.0
    assert report.timing.delivery_delay_s == {
        "p50": 59.75,
        "p90": 59.75,
        "max": 59.75,
    }  # sent at :N.250, delivered at :N.000 a minute on


def test_without_track_columns_delivery_is_not_yet_known(tmp_path: Path) -> None:
    spec = _campaign(tmp_path, _results(delivery=False))
    report = summarize_results(read_results(spec.parent / "results.csv"), campaign="c", results_path="r")
    assert not report.delivery_known
    assert report.count("accepted") == 6
    assert report.delivery_statuses == {"not yet known": 6}
    assert report.channels == {}


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("HTTP 400 VALIDATION_002: +14155550123 is not E.164", "HTTP 400 VALIDATION_002: [number] is not E.164"),
        ("number (212) 555-0100 refused", "number [number] refused"),
        ("to 0044 20 7946 0958 denied", "to [number] denied"),
        (
            "outside sending hours: opens 2026-12-04T09:00:00Z (America/New_York)",
            "outside sending hours: opens 2026-12-04T09:00:00Z (America/New_York)",
        ),
        ("duplicate of row 1234567", "duplicate of row N"),
        ("HTTP 503 SERVICE_001: try again", "HTTP 503 SERVICE_001: try again"),
    ],
)
def test_reasons_never_show_a_phone_number(reason: str, shown: str) -> None:
    assert pl.select(mask_reason(pl.lit(reason))).item() == shown


def test_a_million_rows_make_at_most_max_bins_points(tmp_path: Path) -> None:
    results = add_delivery(synthetic_results(1_000_000))
    report = summarize_results(results, campaign="big", results_path="big.csv")
    assert report.rows == 1_000_000
    assert 10 < report.series.height <= MAX_BINS
    assert int(report.series["requests"].sum()) == report.timing.requests if report.timing else False
    assert report.count("valid") + report.statuses["invalid"] + report.statuses["duplicate"] == 1_000_000


# --- the command ---------------------------------------------------------------------------------------------------


def test_text_report_shows_the_funnel_and_masked_reasons_and_no_personal_data(tmp_path: Path) -> None:
    done = _report(_campaign(tmp_path, _results()))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["delivered", "3"] for line in lines), done.stdout
    assert any(line.split()[:2] == ["read", "1"] for line in lines), done.stdout
    assert "ERR_CONSENT_BLOCKED" in done.stdout
    assert "[number]" in done.stdout
    assert "4155550123" not in done.stdout
    assert "Zebedee" not in done.stdout


def test_json_report_holds_the_same_figures(tmp_path: Path) -> None:
    done = _report(_campaign(tmp_path, _results()), "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {step["name"]: step["count"] for step in found["funnel"]} == {
        "rows": 10,
        "valid": 7,
        "accepted": 6,
        "delivered": 3,
        "read": 1,
    }
    assert found["delivery_statuses"]["FAILED"] == 1
    assert found["timing"]["first_at"] == "2026-11-24T09:00:00.250Z"
    assert "4155550123" not in done.stdout


def test_html_without_matplotlib_says_what_to_install(tmp_path: Path) -> None:
    spec = _campaign(tmp_path, _results())
    code = (
        "import sys; sys.modules['matplotlib'] = None; from pipeline.cli import main; "
        f"sys.exit(main(['report', {str(spec)!r}, '--html', {str(tmp_path / 'r.html')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "pip install 'sentdm-batch[report]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.html").exists()
    assert _report(spec).returncode == 0  # the text report needs nothing more


def test_text_report_before_track_says_delivery_is_not_yet_known(tmp_path: Path) -> None:
    done = _report(_campaign(tmp_path, _results(delivery=False)))
    assert done.returncode == 0, done.stderr
    assert "Delivery: not yet known" in done.stdout
    assert "pipeline track SPEC" in done.stdout


def test_no_results_file_yet_is_a_usage_error_with_the_fix(tmp_path: Path) -> None:
    spec = _campaign(tmp_path, _results())
    (tmp_path / "results.csv").unlink()
    done = _report(spec, "--html", tmp_path / "r.html")
    assert done.returncode == 2
    assert "no results file to report on" in done.stderr
    assert "run the campaign first" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.html").exists()


def test_html_never_replaces_the_results_or_a_file_it_did_not_write(tmp_path: Path) -> None:
    spec = _campaign(tmp_path, _results())
    results = tmp_path / "results.csv"
    before = results.read_bytes()
    done = _report(spec, "--html", results)
    assert done.returncode == 2
    assert "same file as output.results" in done.stderr
    assert results.read_bytes() == before

    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>", encoding="utf-8")
    done = _report(spec, "--html", notes)
    assert done.returncode == 2
    assert "not a report made by this tool" in done.stderr
    assert notes.read_text(encoding="utf-8") == "<p>my notes</p>"


def test_html_is_replaced_atomically_and_holds_no_personal_data(tmp_path: Path) -> None:
    spec = _campaign(tmp_path, _results())
    target = tmp_path / "reports" / "spring.html"
    assert _report(spec, "--html", target).returncode == 0
    first = target.read_text(encoding="utf-8")
    done = _report(spec, "--html", target)  # a report it made is replaced
    assert done.returncode == 0, done.stderr
    assert f"Report: {target}" in done.stdout
    assert sorted(p.name for p in target.parent.iterdir()) == ["spring.html"]  # no temp file left behind
    html = target.read_text(encoding="utf-8")
    assert html.count("<svg") == 0  # the charts are data URIs, so nothing in them is markup of the page
    assert "4155550123" not in html
    assert "Zebedee" not in html
    assert "http://" not in html.replace("http://www.w3.org", "")  # no link out, beyond SVG's namespaces
    assert len(first) > 10_000


# --- in a real browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        find_chromium()
    except ChromiumMissing as exc:
        if os.environ.get(OPT_OUT) == "1":
            pytest.skip(str(exc))
        pytest.fail(str(exc))
    with headless_chromium() as running:
        yield running


_METRICS = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-metric]')].map(e => [e.dataset.metric, e.textContent])))"  # noqa: E501
_IMAGES = "JSON.stringify([...document.images].map(i => [i.className, i.complete && i.naturalWidth > 0]))"


@pytest.mark.slow
def test_html_report_renders_in_chromium_with_the_expected_numbers(tmp_path: Path, browser: Browser) -> None:
    spec = _campaign(tmp_path, _results())
    target = tmp_path / "report.html"
    assert _report(spec, "--html", target).returncode == 0
    page = browser.new_page()
    page.open(target.as_uri())
    assert page.errors() == []
    assert json.loads(page.evaluate(_METRICS)) == {
        "rows": "10",
        "valid": "7",
        "accepted": "6",
        "delivered": "3",
        "read": "1",
        "failed": "1",
    }
    images = json.loads(page.evaluate(_IMAGES))
    assert images == [["chart", True]] * 4  # funnel, channels, rate, latency: each drawn
    assert page.evaluate("document.scripts.length") == 0
    assert {url.split(":")[0] for url in page.requests} == {"file", "data"}  # nothing from any network
    channels = page.evaluate("[...document.querySelectorAll('tr[data-channel]')].map(r => r.dataset.channel)")
    assert channels == ["sms", "whatsapp"]
    body = page.evaluate("document.body.innerText")
    assert "ERR_CONSENT_BLOCKED" in body
    assert "4155550123" not in body


@pytest.mark.slow
def test_html_report_before_track_renders_and_says_delivery_is_not_yet_known(tmp_path: Path, browser: Browser) -> None:
    spec = _campaign(tmp_path, _results(delivery=False))
    target = tmp_path / "report.html"
    assert _report(spec, "--html", target).returncode == 0
    page = browser.new_page()
    page.open(target.as_uri())
    assert page.errors() == []
    metrics = json.loads(page.evaluate(_METRICS))
    assert metrics["accepted"] == "6"
    assert metrics["delivered"] == "not yet known"
    assert page.evaluate("!!document.querySelector('[data-notice=delivery-unknown]')") is True
    assert json.loads(page.evaluate(_IMAGES)) == [["chart", True]] * 3  # no channel chart without delivery data


@pytest.mark.slow
def test_markup_in_the_data_is_shown_as_text_and_never_runs(tmp_path: Path, browser: Browser) -> None:
    hostile = '<script>window.__ran = 1</script><img src=x onerror="window.__ran = 2">'
    results = _results().with_columns(
        pl.when(pl.col("result_status") == "invalid").then(pl.lit(hostile)).otherwise(pl.col("result_error"))
        .alias("result_error"),
        pl.when(pl.col("result_delivery_channel") == "whatsapp").then(pl.lit("<b>wa</b>$x^2$"))
        .otherwise(pl.col("result_delivery_channel")).alias("result_delivery_channel"),
    )  # fmt: skip
    target = tmp_path / "report.html"
    assert _report(_campaign(tmp_path, results), "--html", target).returncode == 0
    page = browser.new_page()
    page.open(target.as_uri())
    assert page.errors() == []
    assert page.evaluate("window.__ran === undefined") is True
    assert page.evaluate("document.querySelectorAll('img:not(.chart), b').length") == 0
    body = page.evaluate("document.body.innerText")
    assert "<script>window.__ran = 1</script>" in body
    assert "<b>wa</b>$x^2$" in body
