"""The DAG on workers that share no disk (README, "Running on several machines"): under `dag.test()`, every command
a task runs starts in a fresh folder of its own (its working directory, HOME and TMPDIR), deleted when the command
ends - a pod of its own - so nothing one task writes locally is there for the next. All the run shares is the state
in the test's PostgreSQL and the objects under the bucket prefix, in the test's S3 server (moto's, on 127.0.0.1,
checking every request's signature). One shard is killed with SIGKILL half-way, while it
sends, and retried in yet another fresh folder: the mock API sees every row accepted exactly once, and the merged
results under the bucket are complete and in input order.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import yaml

from tests.postgres_server import wait_until_session_gone
from tests.s3_server import S3Server

pytestmark = pytest.mark.filterwarnings("default")  # Airflow's own deprecation warnings are not the project's

API_KEY = "sk-test-airflow-DO-NOT-LEAK-51c2"
TEMPLATE = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"
ROWS = 40
KILL_AT = 8  # new acceptances before the first shard process that is sending is killed


def number(i: int) -> str:
    return f"+1415555{i:04d}"


class MockApi(http.server.ThreadingHTTPServer):
    """Sent.dm v3 as far as a run needs it: the template lookup, and sends that keep each Idempotency-Key's first
    answer (a repeat gets it again and sends nothing, as the real API does). Counts what it accepted per number, and
    after KILL_AT acceptances SIGKILLs the tool process that is sending, before answering it."""

    def __init__(self, sending: Callable[[], list[subprocess.Popen[str]]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sending = sending
        self.lock = threading.Lock()
        self.accepted: Counter[str] = Counter()
        self.kept: dict[str, bytes] = {}
        self.replays = 0
        self.killed: list[int] = []  # pids

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: MockApi

    def do_GET(self) -> None:
        if self.headers.get("x-api-key") != API_KEY:
            return self._answer(401, {"success": False, "error": {"code": "AUTH-001", "message": "bad key"}})
        if self.path != f"/v3/templates/{TEMPLATE}":
            return self._answer(404, {"success": False, "error": {"code": "RESOURCE_002", "message": "no template"}})
        template = {"id": TEMPLATE, "name": "order_shipped", "status": "APPROVED", "variables": ["name", "order_id"]}
        return self._answer(200, {"success": True, "data": template, "error": None})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.headers.get("x-api-key") != API_KEY or self.path != "/v3/messages":
            return self._answer(401, {"success": False, "error": {"code": "AUTH-001", "message": "bad key"}})
        key = self.headers["Idempotency-Key"]
        api = self.server
        with api.lock:
            if key in api.kept:
                api.replays += 1
                return self._send(202, api.kept[key])
            recipients = [{"message_id": str(uuid.uuid4()), "to": to, "channel": "sms"} for to in body["to"]]
            answer = json.dumps({"success": True, "data": {"status": "QUEUED", "recipients": recipients}}).encode()
            api.kept[key] = answer
            api.accepted.update(body["to"])
            if api.accepted.total() == KILL_AT and not api.killed:
                [process] = api.sending()
                os.kill(process.pid, signal.SIGKILL)  # accepted, never answered: this row is in flight
                api.killed.append(process.pid)
                return None
        return self._send(202, answer)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode())

    def _send(self, status: int, content: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Pods:
    """Each command the DAG starts runs in a fresh folder (cwd, HOME, TMPDIR), removed when the command ends."""

    def __init__(self, root: Path, state_url: str) -> None:
        self.root = root
        self.state_url = state_url
        self.started: list[subprocess.Popen[str]] = []
        self.folders: list[Path] = []

    def popen(self) -> type[subprocess.Popen[str]]:
        pods = self

        class FreshPod(subprocess.Popen[str]):
            def __init__(self, args: list[str], **kwargs: Any) -> None:
                folder = Path(tempfile.mkdtemp(prefix="pod-", dir=pods.root))
                kwargs["cwd"] = folder
                kwargs["env"] = {**(kwargs.get("env") or os.environ), "HOME": str(folder), "TMPDIR": str(folder)}
                super().__init__(args, **kwargs)
                self.folder = folder
                pods.started.append(self)
                pods.folders.append(folder)

            def __exit__(self, *exc: object) -> None:
                try:
                    super().__exit__(*exc)
                    if self.returncode == -signal.SIGKILL:
                        # the server frees the dead run's advisory lock when it reads the closed connection; the
                        # task ends (and its retry may start) only after that, as on a real worker that is a moment
                        wait_until_session_gone(pods.state_url, self.pid)
                finally:
                    shutil.rmtree(self.folder)

        return FreshPod

    def sending(self) -> list[subprocess.Popen[str]]:
        return [p for p in self.started if "run" in p.args and p.poll() is None]


class Bucket:
    """The bucket prefix the DAG is given (s3://BUCKET/PREFIX on the test's S3 server), and the test's own look at
    the objects under it (boto3; the tool uses its own library)."""

    def __init__(self, server: S3Server, prefix: str) -> None:
        self.server = server
        self.key_prefix = prefix
        self.prefix = f"s3://{server.bucket}/{prefix}"
        self.client: Any = server.client()

    def put(self, name: str, content: bytes) -> None:
        self.client.put_object(Bucket=self.server.bucket, Key=f"{self.key_prefix}/{name}", Body=content)

    def get(self, name: str) -> bytes:
        answer = self.client.get_object(Bucket=self.server.bucket, Key=f"{self.key_prefix}/{name}")
        content: bytes = answer["Body"].read()
        return content

    def names(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.server.bucket, Prefix=f"{self.key_prefix}/")
        return sorted(item["Key"].removeprefix(f"{self.key_prefix}/") for item in listed.get("Contents", []))


@pytest.fixture
def state_url(postgres_server: str) -> str:
    name = f"dag_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"'.encode())
    return f"{postgres_server.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh prefix in the test's S3 bucket; the workers' environment has the server's credentials and endpoint,
    as the AWS tools read them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL)."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return Bucket(s3_server, f"campaigns/{uuid.uuid4().hex[:8]}")


@pytest.fixture
def pods(tmp_path: Path, state_url: str) -> Pods:
    root = tmp_path / "pods"
    root.mkdir()
    return Pods(root, state_url)


@pytest.fixture
def mock_api(pods: Pods) -> Iterator[MockApi]:
    with MockApi(pods.sending) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()


def test_killed_shard_retried_on_another_pod_sends_each_row_once_and_merges_from_the_bucket(
    airflow_dag: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state_url: str,
    bucket: Bucket,
    pods: Pods,
    mock_api: MockApi,
) -> None:
    # the spec is deployed with the DAG (an image, a ConfigMap); its own input and results paths are never used
    image = tmp_path / "image"
    image.mkdir()
    spec = {
        "version": 1,
        "name": "no-shared-disk",
        "input": {"path": "data/people.csv"},
        "message": {
            "to": {"column": "phone"},
            "template_id": {"value": TEMPLATE},
            "variables": {"name": {"column": "first_name"}, "order_id": {"column": "order_id"}},
        },
        "api": {"version": "v3", "base_url": mock_api.url, "api_key": "${SENT_DM_API_KEY}"},
        "send": {"concurrency": 2},
        "output": {"results": "out/people-results.csv"},
    }
    (image / "campaign.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    people = [{"phone": number(i), "first_name": f"Name{i}", "order_id": f"{i:06d}"} for i in range(ROWS)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["phone", "first_name", "order_id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(people)
    bucket.put("people.csv", text.getvalue().encode())  # the input, uploaded before the run is triggered

    monkeypatch.setenv("SENT_DM_API_KEY", API_KEY)
    monkeypatch.setattr(airflow_dag.subprocess, "Popen", pods.popen())
    shard_task = airflow_dag.campaign_dag.get_task("run_shard")
    monkeypatch.setattr(shard_task, "retries", 1)
    monkeypatch.setattr(shard_task, "retry_delay", timedelta(seconds=1))

    run = airflow_dag.campaign_dag.test(
        run_conf={
            "spec": str(image / "campaign.yaml"),
            "shards": 2,
            "state": state_url,
            "bucket": bucket.prefix,
            "shard_rate": "500/s",
        }
    )

    tis = _task_instances(run)
    assert {key: str(ti.state) for key, ti in tis.items()} == {
        ("validate", -1): "success",
        ("shard_numbers", -1): "success",
        ("run_shard", 0): "success",
        ("run_shard", 1): "success",
        ("merge", -1): "success",
        ("report", -1): "success",
    }
    # one shard was killed while it sent, and succeeded on its second try
    assert len(mock_api.killed) == 1
    assert sorted(tis["run_shard", i].try_number for i in (0, 1)) == [1, 2]
    [killed] = [p for p in pods.started if p.pid == mock_api.killed[0]]
    assert killed.returncode == -signal.SIGKILL
    # the request it was killed in was resent under its key by the retry, and answered from the first acceptance
    assert mock_api.replays >= 1

    # every row accepted exactly once, across the kill and the retry
    assert mock_api.accepted == Counter({number(i): 1 for i in range(ROWS)})

    # each shard attempt was given the run's rate and places
    runs = [p.args for p in pods.started if "run" in p.args]
    assert len(runs) == 3
    for args in runs:
        assert args[args.index("--rate") + 1] == "500/s"
        assert args[args.index("--state") + 1] == state_url
        assert args[args.index("--results") + 1] == f"{bucket.prefix}/people-results.csv"
        assert args[args.index("--input") + 1] == f"{bucket.prefix}/people.csv"

    # every command ran in its own folder, gone after it; nothing was written beside the spec
    assert len({*pods.folders}) == 6  # --version, validate, 2 shards and 1 retry, merge
    assert not any(folder.exists() for folder in pods.folders)
    assert sorted(p.name for p in image.iterdir()) == ["campaign.yaml"]

    # the merged results in the bucket: complete, in input order, all sent
    merged = list(csv.DictReader(io.StringIO(bucket.get("people-results.csv").decode())))
    assert [r["result_row"] for r in merged] == [str(n) for n in range(1, ROWS + 1)]
    assert [r["result_to"] for r in merged] == [number(i) for i in range(ROWS)]
    assert {r["result_status"] for r in merged} == {"sent"}
    names = bucket.names()
    assert {
        "people.csv",
        "people-results.csv",
        "people-results.shard-0-of-2.csv",
        "people-results.shard-0-of-2.csv.manifest.json",
        "people-results.shard-1-of-2.csv",
        "people-results.shard-1-of-2.csv.manifest.json",
        "summaries/shard-0-of-2.json",
        "summaries/shard-1-of-2.json",
    } <= set(names)
    assert not any(API_KEY.encode() in bucket.get(name) for name in names)

    # the summaries in XCom came from the tools' output, not from files: they add up to the campaign
    summaries = _xcom(run, "run_shard")
    assert [s["shard"] for s in summaries] == ["shard-0-of-2", "shard-1-of-2"]
    assert sum(s["counts"].get("sent", 0) for s in summaries) == ROWS
    stored = [json.loads(bucket.get(f"summaries/shard-{i}-of-2.json")) for i in (0, 1)]
    assert [s["counts"] for s in stored] == [s["counts"] for s in summaries]
    # what XCom says names the objects, not some worker's local copy of them
    assert [s["results_path"] for s in summaries] == [
        f"{bucket.prefix}/people-results.shard-{i}-of-2.csv" for i in (0, 1)
    ]
    assert _xcom(run, "merge") == [{"exit_code": 0, "results_path": f"{bucket.prefix}/people-results.csv"}]
    [totals] = _xcom(run, "report")
    assert totals["rows"] == ROWS
    assert totals["not_sent"] == {}

    # the state the retry resumed from is in PostgreSQL, one per shard
    with psycopg.connect(state_url) as db:
        states = db.execute("SELECT state, count(*) FROM sentdm.messages GROUP BY state ORDER BY state").fetchall()
    assert [name for name, _ in states] == ["no-shared-disk/shard-0-of-2", "no-shared-disk/shard-1-of-2"]
    assert sum(n for _, n in states) == ROWS


def test_a_bucket_without_a_state_fails_at_validate(airflow_dag: ModuleType, bucket: Bucket, tmp_path: Path) -> None:
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump({"input": {"path": "a.csv"}, "output": {"results": "r.csv"}}), encoding="utf-8")

    run = airflow_dag.campaign_dag.test(run_conf={"spec": str(spec), "shards": 2, "bucket": bucket.prefix})

    assert {key: str(ti.state) for key, ti in _task_instances(run).items()} == {
        ("validate", -1): "failed",  # AirflowFailException: a setting does not fix itself, so no retry
        ("shard_numbers", -1): "upstream_failed",
        ("run_shard", -1): "upstream_failed",
        ("merge", -1): "skipped",
        ("report", -1): "upstream_failed",
    }
    assert bucket.names() == []


def test_a_bucket_takes_the_state_of_the_spec_when_the_run_names_none(airflow_dag: ModuleType, tmp_path: Path) -> None:
    spec = tmp_path / "campaign.yaml"
    output = {"results": "../out/results.parquet", "state": "postgresql://sentdm@db.internal/campaigns"}
    spec.write_text(yaml.safe_dump({"input": {"path": "data/people.csv"}, "output": output}), encoding="utf-8")

    settings = airflow_dag._settings({"shards": 4, "spec": str(spec), "bucket": "s3://acme/2026-12/"})

    assert settings["input"] == "s3://acme/2026-12/people.csv"
    assert settings["results"] == "s3://acme/2026-12/results.parquet"
    # the spec's own state is used: no --state, and the input and results under the bucket
    assert airflow_dag._locations(settings) == [
        "--input",
        "s3://acme/2026-12/people.csv",
        "--results",
        "s3://acme/2026-12/results.parquet",
    ]


def test_a_password_in_the_state_url_is_refused(airflow_dag: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(airflow_dag.AirflowFailException) as raised:
        airflow_dag._settings({"shards": 1, "state": "postgresql://sentdm:hunter2@db/campaigns"})
    assert "hunter2" not in str(raised.value)
    assert "PGPASSWORD" in str(raised.value)


def _task_instances(run: Any) -> dict[tuple[str, int], Any]:
    from airflow import settings

    with settings.Session() as session:
        return {(ti.task_id, ti.map_index): ti for ti in run.get_task_instances(session=session)}


def _xcom(run: Any, task_id: str) -> list[Any]:
    from airflow import settings
    from airflow.models.xcom import XComModel

    query = XComModel.get_many(run_id=run.run_id, dag_ids=run.dag_id, task_ids=task_id, key="return_value")
    with settings.Session() as session:
        rows = session.scalars(query).all()
        return [XComModel.deserialize_value(row) for row in sorted(rows, key=lambda row: row.map_index)]
