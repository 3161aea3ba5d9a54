"""`python -m pipeline run` end to end against real HTTP servers on 127.0.0.1: the embedded sandbox, and the
fault-injecting test server for every kind of answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline.sandbox import SandboxServer
from tests.conftest import API_KEY, SENDER, TEMPLATE, api_section, contact_rows, guid

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, sender_id=SENDER, record_bodies=True) as server:
        yield server


pytestmark = pytest.mark.usefixtures("credentials")


def results_of(spec: Path, name: str = "out/results.csv") -> pl.DataFrame:
    path = spec.parent / name
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".jsonl":
        return pl.read_ndjson(path)
    return pl.read_csv(path, infer_schema=False)


def test_sample_campaign_runs_against_the_embedded_sandbox(cli: Cli, tmp_path: Path) -> None:
    text = Path("configs/campaign.yaml").read_text().replace("../sample_data", str(Path("sample_data").resolve()))
    spec = tmp_path / "campaign.yaml"
    spec.write_text(text.replace("../out/", "out/"))
    code, out, err = cli("run", spec, "--summary-json", tmp_path / "summary.json")
    assert code == 1, err  # the sample has invalid rows on purpose
    assert out.startswith(
        "Run of campaign order-shipped-2026-11: 50 row(s)\n"
        "  sent           45\n  invalid        4\n  duplicate      1\n"
    )
    assert f"Results: {tmp_path / 'out' / 'order-shipped-results.csv'}" in out
    table = pl.read_csv(tmp_path / "out" / "order-shipped-results.csv", infer_schema=False)
    assert table.height == 50
    assert table["result_row"].to_list() == [str(i) for i in range(1, 51)]
    sample = pl.read_csv("sample_data/contacts.csv", infer_schema=False)
    assert table.select(sample.columns).equals(sample)
    sent = table.filter(pl.col("result_status") == "sent")
    assert sent.height == 45
    assert sent["result_http_status"].unique().to_list() == ["200"]
    assert all(re.fullmatch(r"[0-9a-f-]{36}", m) for m in sent["result_message_id"])
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t) for t in sent["result_sent_at"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"] == {
        "sent": 45,
        "failed": 0,
        "invalid": 4,
        "duplicate": 1,
        "unknown": 0,
        "not_attempted": 0,
    }
    assert summary["latency_p50_ms"] > 0


def test_the_server_receives_exactly_the_seed_request(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    rows = [*contact_rows(3), contact_rows(1)[0]]  # the 4th row repeats the 1st
    spec = make_campaign(rows, api=api_section(sandbox.url))
    code, _, err = cli("run", spec)
    assert code == 0, err
    expected = [
        {"contactId": guid(i), "templateId": TEMPLATE, "messageBody": {"name": f"Name{i}", "order_id": f"{i:06d}"}}
        for i in (1, 2, 3)
    ]
    # four workers: the arrival order is not fixed
    assert sorted(sandbox.accepted_bodies, key=json.dumps) == sorted(expected, key=json.dumps)
    headers = sandbox.last_headers
    assert headers is not None
    assert headers["x-api-key"] == API_KEY
    assert headers["x-sender-id"] == SENDER
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("sentdm-batch/")
    assert re.fullmatch(r"[0-9a-f]{32}", headers["idempotency-key"])
    assert sorted(sandbox.accepted_by_key.values()) == [1, 1, 1]
    table = results_of(spec)
    assert table["result_status"].to_list() == ["sent", "sent", "sent", "duplicate"]
    assert table["result_error"].to_list()[3] == "duplicate of row 1"


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_results_in_every_format_have_one_row_per_input_row(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer, suffix: str
) -> None:
    rows = [*contact_rows(4), {"contact_id": "nope", "first_name": "X", "order_id": "1"}]
    spec = make_campaign(rows, api=api_section(sandbox.url), output={"results": f"out/results{suffix}"})
    code, _, _ = cli("run", spec)
    assert code == 1
    table = results_of(spec, f"out/results{suffix}")
    assert table.columns == [
        "contact_id",
        "first_name",
        "order_id",
        "result_row",
        "result_status",
        "result_http_status",
        "result_message_id",
        "result_error",
        "result_attempts",
        "result_sent_at",
        "result_latency_ms",
    ]
    assert [str(r) for r in table["result_row"]] == ["1", "2", "3", "4", "5"]
    assert table["result_status"].to_list() == ["sent"] * 4 + ["invalid"]
    assert not list((spec.parent / "out").glob(".*tmp"))


def test_dry_run_sends_nothing_and_never_overwrites_real_results(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(sandbox.url))
    code, out, _ = cli("run", spec, "--dry-run")
    assert code == 0
    assert sandbox.requests_total == 0
    assert out.startswith("Dry run of campaign test-campaign: 5 row(s)\n  would send     5\n")
    assert not (spec.parent / "out" / "results.csv").exists()
    table = results_of(spec, "out/results.dry-run.csv")
    assert table["result_status"].to_list() == ["valid"] * 5
    assert table["result_error"].to_list() == [None] * 5


def test_dry_run_after_a_partial_run_counts_only_what_a_run_would_send(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    spec = make_campaign(contact_rows(10), api=api_section(sandbox.url))
    assert cli("run", spec, "--limit", "4")[0] == 1
    code, out, _ = cli("run", spec, "--dry-run")
    assert code == 0
    assert "  sent           4\n  would send     6\n" in out
    assert sandbox.accepted_total == 4
    table = results_of(spec, "out/results.dry-run.csv")
    assert table["result_status"].to_list() == ["sent"] * 4 + ["valid"] * 6


def test_limit_sends_only_the_first_n_valid_rows(cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer) -> None:
    spec = make_campaign(contact_rows(10), api=api_section(sandbox.url))
    code, _, _ = cli("run", spec, "--limit", "3")
    assert code == 1
    assert sandbox.accepted_total == 3
    table = results_of(spec)
    assert table["result_status"].to_list() == ["sent"] * 3 + ["not_attempted"] * 7
    assert table["result_error"][5] == "not sent: beyond --limit 3"


def test_failed_rows_of_a_results_file_are_a_valid_input_for_the_same_spec(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    rows = contact_rows(4)
    rows[1]["first_name"] = "=HYPERLINK(evil)"
    rows[2]["first_name"] = "-minus"
    spec = make_campaign(rows, api=api_section(sandbox.url))
    cli("run", spec, "--limit", "2")
    raw = (spec.parent / "out" / "results.csv").read_text()
    assert ",'=HYPERLINK(evil)," in raw
    assert ",'-minus," in raw
    table = results_of(spec)
    table.filter(pl.col("result_status") == "not_attempted").write_csv(spec.parent / "retry.csv")
    spec.write_text(spec.read_text().replace("path: contacts.csv", "path: retry.csv"))
    code, _, err = cli("run", spec)
    assert code == 0, err
    sent = sorted(b["messageBody"]["name"] for b in sandbox.accepted_bodies)
    assert sent == ["-minus", "=HYPERLINK(evil)", "Name1", "Name4"]
