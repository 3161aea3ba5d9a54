"""Runs examples/airflow/campaign_dag.py end to end under `dag.test()`: a real Airflow (the version that
scripts/check-airflow pins) with a throwaway SQLite metadata database, sending the sample campaign to the embedded
sandbox in 3 shards. No network: the sandbox listens on 127.0.0.1 inside each shard's process, and the one other
server here (an API that answers 401) too.

Run with `bash scripts/check-airflow`, which installs Airflow into .venv-airflow; the main suite does not collect this
folder, because Airflow is a large install that the tool itself does not need.
"""

from __future__ import annotations

import csv
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONTACTS = REPO / "sample_data" / "contacts.csv"

# Airflow and its dependencies raise deprecation warnings of their own; the project's warnings-are-errors setting
# (pyproject.toml) is meant for its own code, so here they are shown, not turned into errors.
pytestmark = pytest.mark.filterwarnings("default")


def write_spec(folder: Path, **changes: Any) -> Path:
    """configs/campaign.yaml, with the input at the repository's sample contacts and the results in `folder`."""
    spec = yaml.safe_load((REPO / "configs" / "campaign.yaml").read_text(encoding="utf-8"))
    spec["input"]["path"] = str(CONTACTS)
    spec["output"]["results"] = str(folder / "results.csv")
    spec.update(changes)
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def run_dag(module: ModuleType, **conf: Any) -> tuple[Any, dict[tuple[str, int], str]]:
    """One dag.test() run; returns the DAG run and the state of each task instance by (task_id, map_index)."""
    run = module.campaign_dag.test(run_conf=conf)
    return run, {key: str(ti.state) for key, ti in task_instances(run).items()}


def task_instances(run: Any) -> dict[tuple[str, int], Any]:
    from airflow import settings

    with settings.Session() as session:
        return {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances(session=session)}


def xcom(run: Any, task_id: str) -> list[Any]:
    """The return values a task pushed in this run, in map-index order."""
    from airflow import settings
    from airflow.models.xcom import XComModel

    query = XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key="return_value")
    with settings.Session() as session:
        rows = session.scalars(query).all()  # newest first; sorted here by map index
        return [XComModel.deserialize_value(row) for row in sorted(rows, key=lambda row: row.map_index)]


def test_three_shards_send_merge_and_report_the_invalid_rows(airflow_dag: ModuleType, tmp_path: Path) -> None:
    run, states = run_dag(airflow_dag, spec=str(write_spec(tmp_path)), shards=3)

    # every task ran; only `report` failed - on purpose, because 4 rows are invalid
    assert states == {
        ("validate", -1): "success",
        ("shard_numbers", -1): "success",
        ("run_shard", 0): "success",
        ("run_shard", 1): "success",
        ("run_shard", 2): "success",
        ("merge", -1): "success",
        ("report", -1): "failed",
    }
    assert str(run.state) == "failed"

    # each shard pushed its run summary; together they are the whole campaign, each row in exactly one shard
    summaries = xcom(run, "run_shard")
    assert [s["shard"] for s in summaries] == ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    assert sum(s["rows"] for s in summaries) == 50
    totals: Counter[str] = Counter()
    for summary in summaries:
        totals.update(summary["counts"])
    assert +totals == {"sent": 45, "invalid": 4, "duplicate": 1}

    # the merged results: all 50 rows, in input order, with their outcomes
    with CONTACTS.open(encoding="utf-8", newline="") as source:
        contacts = list(csv.DictReader(source))
    with (tmp_path / "results.csv").open(encoding="utf-8", newline="") as merged:
        results = list(csv.DictReader(merged))
    assert [r["result_row"] for r in results] == [str(n) for n in range(1, 51)]
    assert [r["contact_id"] for r in results] == [c["contact_id"] for c in contacts]
    assert Counter(r["result_status"] for r in results) == {"sent": 45, "invalid": 4, "duplicate": 1}
    assert xcom(run, "merge") == [{"exit_code": 1, "results_path": str(tmp_path / "results.csv")}]


def test_unsent_rows_only_warn_when_fail_on_unsent_is_off(airflow_dag: ModuleType, tmp_path: Path) -> None:
    run, states = run_dag(airflow_dag, spec=str(write_spec(tmp_path)), shards=2, fail_on_unsent=False)

    assert set(states.values()) == {"success"}
    assert str(run.state) == "success"
    [totals] = xcom(run, "report")
    assert totals["rows"] == 50
    assert totals["not_sent"] == {"invalid": 4}


def test_a_spec_error_fails_at_validate_without_retry_or_sending(airflow_dag: ModuleType, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, version=2)  # exit 2: a spec error

    run, states = run_dag(airflow_dag, spec=str(spec), shards=3)

    assert states == {
        ("validate", -1): "failed",  # AirflowFailException: failed, not up_for_retry
        ("shard_numbers", -1): "upstream_failed",
        ("run_shard", -1): "upstream_failed",  # never expanded: no shard ran
        ("merge", -1): "skipped",  # all_done, but there was nothing to merge
        ("report", -1): "upstream_failed",
    }
    assert str(run.state) == "failed"
    assert not list(tmp_path.glob("results*"))


class Unauthorized(http.server.BaseHTTPRequestHandler):
    """An API that refuses every request with 401: the tool aborts the run at the first answer (exit 3)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"code": "AUTH-001", "message": "invalid API key"}}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output to the DAG's own logs
        pass


@pytest.fixture
def unauthorized_api() -> Iterator[str]:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


def test_an_aborted_shard_is_retried_then_merged_and_fails_the_run(
    airflow_dag: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unauthorized_api: str
) -> None:
    monkeypatch.setenv("SENT_DM_API_KEY", "revoked-key")
    api = {"base_url": unauthorized_api, "sender_id": "7ba7b820-9dad-11d1-80b4-00c04fd430c8"}
    api["api_key"] = "${SENT_DM_API_KEY}"
    # two requests at a time: each attempt uses up at most two rows, so the retry still has rows to send and
    # aborts the same way
    spec = write_spec(tmp_path, api=api, send={"concurrency": 2})
    # one retry, a second later, instead of the DAG's three, minutes apart
    shard_task = airflow_dag.campaign_dag.get_task("run_shard")
    monkeypatch.setattr(shard_task, "retries", 1)
    monkeypatch.setattr(shard_task, "retry_delay", timedelta(seconds=1))

    run, states = run_dag(airflow_dag, spec=str(spec), shards=2)

    assert states == {
        ("validate", -1): "success",
        ("shard_numbers", -1): "success",
        ("run_shard", 0): "failed",  # exit 3, retried once (it resumed), exit 3 again
        ("run_shard", 1): "failed",
        ("merge", -1): "success",  # all_done: it merges what the aborted shards wrote
        ("report", -1): "upstream_failed",  # the one leaf: the run fails
    }
    assert str(run.state) == "failed"
    tis = task_instances(run)
    assert [tis["run_shard", i].try_number for i in (0, 1)] == [2, 2]
    with (tmp_path / "results.csv").open(encoding="utf-8", newline="") as merged:
        statuses = Counter(row["result_status"] for row in csv.DictReader(merged))
    assert statuses.total() == 50
    assert statuses["sent"] == 0
    assert statuses["not_attempted"] > 0
    assert statuses["invalid"] == 4


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0, None),
        (1, None),  # finished with rows not sent: the shard succeeds, `report` makes it visible
        (2, "AirflowFailException"),  # spec/input/usage error: no retry
        (70, "AirflowFailException"),  # a bug: no retry
        (3, "AirflowException"),  # aborted: retried, and the retry resumes
        (130, "AirflowException"),
        (143, "AirflowException"),
        (-9, "AirflowException"),  # killed (e.g. out of memory): resuming is safe
    ],
)
def test_exit_codes_map_to_task_outcomes(airflow_dag: ModuleType, code: int, outcome: str | None) -> None:
    if outcome is None:
        airflow_dag._check_exit("shard 0/3", code, [])
        return
    with pytest.raises(airflow_dag.AirflowException) as raised:
        airflow_dag._check_exit("shard 0/3", code, ["last line of output"])
    assert type(raised.value) is getattr(airflow_dag, outcome)  # exactly: AirflowFailException is a subclass
    assert "last line of output" in str(raised.value)


def test_a_lock_still_held_is_retried_rather_than_failed(airflow_dag: ModuleType, tmp_path: Path) -> None:
    # exit 2 is "fix it, do not retry", except when the lock is held: a vanished worker's lock frees within a minute
    from pipeline.spec import load_spec
    from pipeline.state import open_state, state_path_for

    spec = write_spec(tmp_path)
    campaign, _ = load_spec(spec)
    settings = {"python": sys.executable, "project_dir": str(REPO)}
    with open_state(state_path_for(campaign.output.results, campaign.name), campaign.name):
        code, tail, _ = airflow_dag._cli(settings, "run", str(spec), "--quiet", "--log-format", "json")
    assert code == 2
    with pytest.raises(airflow_dag.AirflowException) as raised:
        airflow_dag._check_exit("shard 0/3", code, tail)
    assert type(raised.value) is airflow_dag.AirflowException  # retried, unlike any other exit 2
    assert "lock is still held" in str(raised.value)
    assert not (tmp_path / "results.csv").exists()  # nothing was sent


class Stop(Exception):
    """Stands in for the exception Airflow raises in a task it stops (KeyboardInterrupt, AirflowTaskTerminated)."""


def test_a_stopped_task_stops_the_tool_with_one_sigterm(
    airflow_dag: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slow enough (one request at a time, 0.5 s each) to be mid-campaign when the task is stopped
    api = {"base_url": "sandbox", "sandbox": {"latency_ms": 500}}
    spec = write_spec(tmp_path, api=api, send={"concurrency": 1})
    settings = {"project_dir": str(REPO), "spec": str(spec), "python": sys.executable, "shards": 1}
    started: list[subprocess.Popen[str]] = []

    class RecordingPopen(subprocess.Popen[str]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    def stop(signum: int, frame: object) -> None:
        raise Stop

    monkeypatch.setattr(airflow_dag.subprocess, "Popen", RecordingPopen)
    previous = signal.signal(signal.SIGUSR1, stop)
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        with pytest.raises(Stop):
            airflow_dag._cli(settings, "run", str(spec), "--quiet")
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)

    # the tool got exactly one SIGTERM: it let the request in flight finish, wrote every row, and exited 143
    [tool] = started
    assert tool.returncode == 143
    with (tmp_path / "results.csv").open(encoding="utf-8", newline="") as file:
        statuses = Counter(row["result_status"] for row in csv.DictReader(file))
    assert statuses["sent"] >= 1
    assert statuses["not_attempted"] >= 1
    assert statuses["unknown"] == 0  # nothing was cut off mid-request
    assert statuses.total() == 50
