"""--input, --results and --state: the command line says where a campaign's files and state are, in place of the
spec's own keys, so one spec serves a laptop and a deployment whose workers share no disk (README, "Running on
several machines")."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import contact_rows, write_csv
from tests.s3_server import S3Server, running_s3

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]


def statuses(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as file:
        return [row["result_status"] for row in csv.DictReader(file)]


def test_input_results_and_state_given_on_the_command_line_replace_the_specs(
    make_campaign: MakeCampaign, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_campaign(contact_rows(3))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_csv(elsewhere / "people.csv", contact_rows(7))
    monkeypatch.chdir(elsewhere)  # relative options are relative to the current folder, not to the spec

    code, out, _ = cli("run", spec, "--input", "people.csv", "--results", "r/out.csv", "--state", "s/state.sqlite")

    assert code == 0
    assert statuses(elsewhere / "r" / "out.csv") == ["sent"] * 7
    assert (elsewhere / "s" / "state.sqlite").exists()
    assert not (tmp_path / "out").exists()  # the spec's own results folder was never touched
    assert f"State: {elsewhere / 's' / 'state.sqlite'}" in out

    # the same options on a second run find the state: everything is skipped, nothing is sent again
    code, out, _ = cli("run", spec, "--input", "people.csv", "--results", "r/out.csv", "--state", "s/state.sqlite")
    assert code == 0
    assert "Resumed: 7 row(s) already had an outcome from an earlier run and were not sent again" in out


def test_report_reads_the_results_the_option_names(make_campaign: MakeCampaign, cli: Cli, tmp_path: Path) -> None:
    spec = make_campaign(contact_rows(4))
    results = tmp_path / "elsewhere" / "results.csv"
    assert cli("run", spec, "--results", results)[0] == 0

    code, _, err = cli("report", spec)
    assert code == 2, err  # the spec's own results file was never written

    code, out, err = cli("report", spec, "--results", results, "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["results"] == str(results)
    assert found["statuses"] == {"sent": 4}


def test_shards_and_merge_follow_the_results_option(make_campaign: MakeCampaign, cli: Cli, tmp_path: Path) -> None:
    spec = make_campaign(contact_rows(12))
    target = tmp_path / "bucket" / "merged.csv"
    for i in range(2):
        code, _, _ = cli("run", spec, "--shard", f"{i}/2", "--results", target)
        assert code == 0
    assert sorted(p.name for p in target.parent.glob("*.manifest.json")) == [
        "merged.shard-0-of-2.csv.manifest.json",
        "merged.shard-1-of-2.csv.manifest.json",
    ]

    code, out, _ = cli("merge", spec, "--results", target)

    assert code == 0
    assert f"Results: {target}" in out
    with target.open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["result_row"] for r in rows] == [str(n) for n in range(1, 13)]
    assert {r["result_status"] for r in rows} == {"sent"}


def test_a_postgresql_state_url_on_the_command_line(
    make_campaign: MakeCampaign, cli: Cli, tmp_path: Path, new_database: Callable[[], str]
) -> None:
    spec = make_campaign(contact_rows(5))
    url = new_database()

    code, out, _ = cli("run", spec, "--shard", "0/1", "--state", url, "--log-format", "json")

    assert code == 0
    summary = json.loads(out.splitlines()[-1])
    assert summary["event"] == "summary"
    assert summary["counts"]["sent"] == 5
    with psycopg.connect(url) as db:
        row = db.execute("SELECT count(*) FROM sentdm.messages").fetchone()
    assert row is not None
    assert row[0] == 5
    assert not list(tmp_path.glob("out/*.sqlite"))  # no SQLite state beside the results


def test_a_variable_the_replaced_key_reads_need_not_be_set(
    make_campaign: MakeCampaign, cli: Cli, tmp_path: Path
) -> None:
    spec = make_campaign(output={"results": "${UNSET_RESULTS_FOLDER}/results.csv"})

    code, _, err = cli("validate", spec)
    assert code == 2
    assert "UNSET_RESULTS_FOLDER" in err

    code, _, err = cli("validate", spec, "--results", tmp_path / "results.csv")
    assert code == 0, err


def test_a_bad_value_names_the_option_it_came_from(make_campaign: MakeCampaign, cli: Cli, tmp_path: Path) -> None:
    spec = make_campaign()

    code, _, err = cli("validate", spec, "--results", tmp_path / "results.txt")

    assert code == 2
    assert "output.results" in err
    assert "results file must end in .csv, .parquet or .jsonl" in err
    assert "given on the command line, not in the spec: output.results from --results" in err


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3(authenticated=True) as server:
        yield server


def test_object_urls_on_the_command_line_with_a_postgresql_state(
    make_campaign: MakeCampaign,
    cli: Cli,
    tmp_path: Path,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    new_database: Callable[[], str],
) -> None:
    """What the Airflow DAG runs on workers that share no disk: shards and merge meet only in the bucket and the
    database, each command in a folder of its own."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    client: Any = s3.client()
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    people = io.StringIO()
    writer = csv.DictWriter(people, fieldnames=["contact_id", "first_name", "order_id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(contact_rows(9))
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/people.csv", Body=people.getvalue().encode())
    spec = make_campaign(contact_rows(2))  # the spec's own input and results are never used
    bucket = f"s3://{s3.bucket}/{prefix}"
    places = ["--input", f"{bucket}/people.csv", "--results", f"{bucket}/out.csv", "--state", new_database()]

    for i in range(3):
        worker = tmp_path / f"worker-{i}"
        worker.mkdir()
        monkeypatch.chdir(worker)
        code, _, err = cli("run", spec, "--shard", f"{i}/3", *places)
        assert code == 0, err
    code, out, err = cli("merge", spec, *places)

    assert code == 0, err
    assert f"Results: {bucket}/out.csv" in out
    merged = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/out.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(merged)))
    assert [r["result_row"] for r in rows] == [str(n) for n in range(1, 10)]
    assert {r["result_status"] for r in rows} == {"sent"}
    assert not (tmp_path / "out").exists()
    assert not any(any(folder.iterdir()) for folder in tmp_path.glob("worker-*"))
