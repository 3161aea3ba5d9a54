"""The shipped samples run as the README says, on a fresh machine: `python -m pipeline validate|run SPEC` from a copy
of the project folder, against the embedded sandbox, with no credentials in the environment and no network."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # a few Python processes per sample


@dataclass(frozen=True)
class Sample:
    spec: str
    data: str
    results: str
    name: str
    rows: int
    http_status: str
    invalid_rows: tuple[int, ...]
    duplicates: dict[int, int]  # row -> the row it repeats
    numbers: dict[str, str]  # v3: how numbers as written are sent

    @property
    def sent(self) -> int:
        return self.rows - len(self.invalid_rows) - len(self.duplicates)


SAMPLES = [
    Sample(
        spec="configs/campaign.yaml",
        data="sample_data/contacts.csv",
        results="out/order-shipped-results.csv",
        name="order-shipped-2026-11",
        rows=50,
        http_status="200",
        invalid_rows=(8, 20, 27, 42),
        duplicates={46: 3},
        numbers={},
    ),
    Sample(
        spec="configs/campaign-v3.yaml",
        data="sample_data/customers.csv",
        results="out/order-shipped-v3-results.csv",
        name="order-shipped-v3-2026-11",
        rows=40,
        http_status="202",
        # too short, words, empty, and (415) 123-4567 (no US exchange starts with 1)
        invalid_rows=(12, 20, 26, 32),
        duplicates={30: 1},  # 415.555.0123 is row 1's +1 415 555 0123
        numbers={
            "+1 415 555 0123": "+14155550123",
            "(212) 555-0100": "+12125550100",
            "646.555.0147": "+16465550147",
            "2025550199": "+12025550199",
            "1-305-555-0110": "+13055550110",
            " 303 555 0104 ": "+13035550104",
            "tel:+1-718-555-0119": "+17185550119",
            "(503) 555-0126 ext. 12": "+15035550126",
            "011 44 161 496 0123": "+441614960123",  # 011: the US international prefix
            "+44 20 7946 0958": "+442079460958",
            "+44 (0)113 496 0456": "+441134960456",
            "+61 491 570 110": "+61491570110",
            "+33 1 99 00 12 34": "+33199001234",
            "415.555.0123": "+14155550123",  # the duplicate of row 1
        },
    ),
]


def copy_project(folder: Path) -> Path:
    """The samples' files in a fresh folder laid out as the project is, so the specs' relative paths hold."""
    for name in ("configs", "sample_data"):
        shutil.copytree(ROOT / name, folder / name)
    return folder


def pipeline(folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENT_DM_", "SENTDM_"))}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_counts(sample: Sample) -> str:
    """The run summary's counts, as printed."""
    invalid, duplicate = len(sample.invalid_rows), len(sample.duplicates)
    return f"  sent           {sample.sent}\n  invalid        {invalid}\n  duplicate      {duplicate}\n"


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: Path(s.spec).stem)
def test_sample_validates_then_runs_against_the_sandbox_from_a_fresh_copy(sample: Sample, tmp_path: Path) -> None:
    folder = copy_project(tmp_path)

    done = pipeline(folder, "validate", sample.spec)
    assert done.returncode == 1, done.stderr  # the samples hold invalid rows on purpose
    assert done.stdout.startswith(
        f"Campaign {sample.name}: {folder / sample.data} (csv)\n"
        f"  rows read   {sample.rows}\n  valid       {sample.sent}\n"
        f"  invalid      {len(sample.invalid_rows)}\n  duplicates   {len(sample.duplicates)}\n"
    ), done.stdout
    assert not (folder / "out").exists()

    done = pipeline(folder, "run", sample.spec, "--quiet", "--summary-json", "summary.json")
    assert done.returncode == 1, done.stderr
    assert f"Run of campaign {sample.name}: {sample.rows} row(s)\n" in done.stdout
    assert run_counts(sample) in done.stdout
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counts"] == {
        "sent": sample.sent,
        "failed": 0,
        "invalid": len(sample.invalid_rows),
        "duplicate": len(sample.duplicates),
        "unknown": 0,
        "not_attempted": 0,
    }
    table = pl.read_csv(folder / sample.results, infer_schema=False)
    data = pl.read_csv(ROOT / sample.data, infer_schema=False)
    assert table.height == sample.rows
    assert table.select(data.columns).equals(data)
    statuses = dict(zip(map(int, table["result_row"]), table["result_status"], strict=True))
    assert {row for row, status in statuses.items() if status == "invalid"} == set(sample.invalid_rows)
    assert {row for row, status in statuses.items() if status == "duplicate"} == set(sample.duplicates)
    errors = dict(zip(map(int, table["result_row"]), table["result_error"], strict=True))
    assert {row: errors[row] for row in sample.duplicates} == {
        row: f"duplicate of row {first}" for row, first in sample.duplicates.items()
    }
    sent = table.filter(pl.col("result_status") == "sent")
    assert sent["result_http_status"].unique().to_list() == [sample.http_status]
    assert all(re.fullmatch(r"[0-9a-f-]{36}", m) for m in sent["result_message_id"])
    if sample.numbers:  # v3: each number went out in E.164, and no number twice
        written = dict(zip(table["phone"], table["result_to"], strict=True))
        assert {text: written[text] for text in sample.numbers} == sample.numbers
        assert sent["result_to"].is_unique().all()
        assert all(re.fullmatch(r"\+[1-9][0-9]{7,14}", number) for number in sent["result_to"])

    again = pipeline(folder, "run", sample.spec, "--quiet")
    assert again.returncode == 1, again.stderr
    assert f"Resumed: {sample.sent} row(s) already had an outcome" in again.stdout
    assert run_counts(sample) in again.stdout


def test_plan_on_the_v3_sample_prints_its_summary(tmp_path: Path) -> None:
    folder = copy_project(tmp_path)
    done = pipeline(folder, "plan", "configs/campaign-v3.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Plan for campaign order-shipped-v3-2026-11 (v3): ")
    for line in ("rows              40", "valid             35", "invalid            4", "duplicates         1"):
        assert f"\n  {line}\n" in done.stdout
    assert "\n  messages to send  35\n  requests          35\n" in done.stdout
    assert "Starter (60 requests/min) 35 s, Growth (300 requests/min) 7 s" in done.stdout
    assert not (folder / "out").exists()  # a plan writes nothing


def test_the_guarded_sample_suppresses_its_opt_outs_and_accounts_for_every_row(tmp_path: Path) -> None:
    """What it sends now depends on the hour in each customer's zone; what is suppressed, invalid or a duplicate
    does not, and every other row is either sent or deferred to its window."""
    folder = copy_project(tmp_path)
    done = pipeline(folder, "plan", "configs/campaign-v3-guarded.yaml", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert (plan["rows"], plan["suppressed"], plan["invalid"], plan["duplicates"]) == (40, 2, 4, 1)
    assert plan["messages"] == 33 == plan["send_now"] + plan["deferred_now"]
    assert plan["max_messages"] == 100
    assert plan["window"] == "09:00-20:00 mon-sat"

    done = pipeline(folder, "run", "configs/campaign-v3-guarded.yaml", "--quiet")
    table = pl.read_csv(folder / "out/order-shipped-v3-guarded-results.csv", infer_schema=False)
    counts = dict(table.group_by("result_status").len().iter_rows())
    assert counts.get("suppressed") == 2
    assert counts.get("sent", 0) + counts.get("deferred", 0) == 33
    suppressed = table.filter(pl.col("result_status") == "suppressed")
    assert sorted(suppressed["result_to"]) == ["+12125550100", "+442079460958"]
    assert set(suppressed["result_error"]) == {"on suppression list opt-outs.csv"}
    assert done.returncode == 1, done.stderr  # the sample's invalid rows win over deferred ones (4)
