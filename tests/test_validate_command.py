"""`python -m pipeline validate`: the report, the exit codes, and the per-row output file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline import __version__
from tests.conftest import guid

Cli = Callable[..., tuple[int, str, str]]


def test_help_lists_the_commands_and_version_works(cli: Cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("validate", "run", "sandbox"):
        assert command in out
    code, out, _ = cli("--version")
    assert (code, out.strip()) == (0, f"sentdm-batch {__version__}")


def test_python_dash_m_pipeline_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, f"sentdm-batch {__version__}")


def test_validate_on_the_sample_prints_the_report(cli: Cli) -> None:
    code, out, err = cli("validate", "configs/campaign.yaml")
    assert code == 1, err
    sample = Path("sample_data/contacts.csv").resolve()
    assert out.startswith(
        f"Campaign order-shipped-2026-11: {sample} (csv)\n"
        "  rows read   50\n"
        "  valid       45\n"
        "  invalid      4\n"
        "  duplicates   1\n"
        "Invalid rows by reason:\n"
        "   2  contact_id is not a GUID (column contact_id) (rows 8, 27)\n"
        "   2  variable name is empty (column first_name) (rows 20, 42)\n"
        "   1  variable order_id is empty (column order_id) (rows 27)\n"
        "Example payload:\n"
        "{\n"
        '  "contactId": "b8230159-e84c-5ba4-9297-403b4b603e24",\n'
    )


def test_parquet_sample_gives_the_same_report(cli: Cli, tmp_path: Path) -> None:
    spec = Path("configs/campaign.yaml").read_text().replace("contacts.csv", "contacts.parquet")
    (tmp_path / "spec.yaml").write_text(spec.replace("../sample_data", str(Path("sample_data").resolve())))
    code, out, _ = cli("validate", tmp_path / "spec.yaml")
    assert code == 1
    assert "  rows read   50\n  valid       45\n  invalid      4\n  duplicates   1\n" in out


def test_all_valid_exits_0_even_with_duplicates(cli: Cli, make_campaign: Callable[..., Path]) -> None:
    rows = [{"contact_id": guid(1), "first_name": "A", "order_id": "1"}] * 3
    code, out, _ = cli("validate", make_campaign(rows))
    assert code == 0
    assert "  duplicates  2\n" in out


def test_spec_and_input_errors_exit_2_with_one_message(cli: Cli, make_campaign: Callable[..., Path]) -> None:
    spec = make_campaign(send={"concurrency": 0})
    code, out, err = cli("validate", spec)
    assert (code, out) == (2, "")
    assert err == (
        f"error: {spec}: the job spec is invalid:\n"
        "  send.concurrency: Input should be greater than or equal to 1 (got 0)\n"
    )
    spec = make_campaign(input={"path": "missing.csv"})
    code, out, err = cli("validate", spec)
    assert code == 2
    assert "missing.csv: input file not found" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2(cli: Cli) -> None:
    code, _, err = cli("validate")
    assert code == 2
    assert "required: spec" in err
    code, _, err = cli("run", "x.yaml", "--limit", "0")
    assert code == 2
    assert "must be at least 1" in err


def test_output_writes_each_rows_validation_outcome(cli: Cli, tmp_path: Path) -> None:
    out_file = tmp_path / "check.parquet"
    code, out, _ = cli("validate", "configs/campaign.yaml", "--output", out_file)
    assert code == 1
    assert f"Per-row outcome written to {out_file}" in out
    table = pl.read_parquet(out_file)
    assert table.height == 50
    assert table["result_row"].to_list() == list(range(1, 51))
    assert table.group_by("result_status").len().sort("result_status").rows() == [
        ("duplicate", 1),
        ("invalid", 4),
        ("valid", 45),
    ]
    assert table.columns[:4] == ["contact_id", "first_name", "order_id", "carrier"]


def test_validate_and_dry_run_need_no_credentials_and_send_nothing(
    make_campaign: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SENT_DM_API_KEY", raising=False)
    monkeypatch.delenv("SENT_DM_SENDER_ID", raising=False)
    # nothing listens on this port: any request would fail the command
    api = {"base_url": "http://127.0.0.1:9", "sender_id": "${SENT_DM_SENDER_ID}", "api_key": "${SENT_DM_API_KEY}"}
    spec = make_campaign(api=api)
    code, out, err = cli("validate", spec)
    assert code == 0, err
    assert "note: " in err
    assert "SENT_DM_API_KEY is not set; this command sends nothing" in err
    assert "  valid       5\n" in out
    code, out, err = cli("run", spec, "--dry-run")
    assert code == 0, err
    assert "SENT_DM_SENDER_ID is not set; this command sends nothing" in err
    code, _, err = cli("run", spec)
    assert code == 2
    assert "2 environment variables are not set" in err
    assert "api.sender_id: SENT_DM_SENDER_ID" in err
    assert "api.api_key: SENT_DM_API_KEY" in err
