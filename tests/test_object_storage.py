"""Files in object storage, against a real S3-compatible server on 127.0.0.1 (moto's, in its own process, checking
signatures): the input read from a bucket, results, shard results, manifests and summaries written to it, merge
reading the shards from it, file:// URLs, atomic uploads, and the errors for a missing object or bucket, wrong
credentials and an unreachable endpoint. The product's own code reads the credentials from the environment."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest
import yaml

from pipeline import objects
from pipeline.sandbox import SandboxServer
from tests.azurite_server import ACCOUNT, AzuriteMissing, AzuriteServer, find_azurite, running_azurite
from tests.azurite_server import KEY as AZURITE_KEY
from tests.azurite_server import OPT_OUT as AZURITE_OPT_OUT
from tests.conftest import API_KEY, api_section, contact_rows, guid, spec_data, write_csv
from tests.s3_server import S3Server, running_s3

Cli = Callable[..., tuple[int, str, str]]
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("credentials")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3(authenticated=True) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def prefix() -> str:
    """A folder of the bucket of this test's own."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


def put(s3: S3Server, key: str, body: bytes) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body)  # type: ignore[attr-defined]


def get(s3: S3Server, key: str) -> bytes | None:
    client: Any = s3.client()
    try:
        return bytes(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:
        return None


def keys(s3: S3Server, prefix: str) -> list[str]:
    client: Any = s3.client()
    found = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix + "/").get("Contents", [])
    return sorted(item["Key"].removeprefix(prefix + "/") for item in found)


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    buffer = io.StringIO()
    write_csv_to(buffer, rows)
    return buffer.getvalue().encode()


def write_csv_to(out: io.StringIO, rows: list[dict[str, str]]) -> None:
    names = list(rows[0])
    out.write(",".join(names) + "\n")
    for row in rows:
        out.write(",".join(row[name] for name in names) + "\n")


def write_spec(folder: Path, **overrides: Any) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_data(**overrides), sort_keys=False), encoding="utf-8")
    return path


def bucket_campaign(
    s3: S3Server, prefix: str, folder: Path, url: str, rows: int = 12, **output: object
) -> tuple[Path, str]:
    """Contacts in the bucket, results to the bucket, state in a local file: the spec's path and the bucket URL."""
    put(s3, f"{prefix}/in/contacts.csv", csv_bytes(contact_rows(rows)))
    base = f"s3://{s3.bucket}/{prefix}"
    spec = write_spec(
        folder,
        input={"path": f"{base}/in/contacts.csv"},
        api=api_section(url),
        send={"concurrency": 4, "rate": "1000/s"},
        output={"results": f"{base}/out/results.csv", "state": str(folder / "state.sqlite"), **output},
    )
    return spec, base


def results_of(body: bytes | None) -> pl.DataFrame:
    assert body is not None, "no results object"
    return pl.read_csv(io.BytesIO(body), infer_schema=False)


def test_run_reads_the_input_from_s3_and_writes_results_and_summary_there(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url)
    code, out, err = cli("run", spec, "--summary-json", f"{base}/out/summary.json")
    assert code == 0, err
    assert sandbox.accepted_total == 12
    table = results_of(get(s3_env, f"{prefix}/out/results.csv"))
    assert table["result_row"].to_list() == [str(i) for i in range(1, 13)]
    assert set(table["result_status"]) == {"sent"}
    summary = json.loads(get(s3_env, f"{prefix}/out/summary.json") or b"{}")
    assert summary["campaign"] == "test-campaign"
    assert summary["results_path"] == f"{base}/out/results.csv"
    assert f"{base}/out/results.csv" in out
    assert "sentdm-batch-objects" not in out + err  # the local mirror is never what the user sees
    assert keys(s3_env, prefix) == ["in/contacts.csv", "out/results.csv", "out/summary.json"]
    assert s3_env.secret_access_key not in out + err

    # a second run sends nothing again and rewrites the results object
    code, _, err = cli("run", spec)
    assert code == 0, err
    assert sandbox.accepted_total == 12
    assert set(results_of(get(s3_env, f"{prefix}/out/results.csv"))["result_status"]) == {"sent"}


def test_shards_write_to_the_bucket_and_merge_reads_them_from_it(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=30)
    for i in range(3):
        code, _, err = cli("run", spec, "--shard", f"{i}/3", "--summary-json", f"{base}/out/summary-{i}.json")
        assert code == 0, err
    written = keys(s3_env, prefix)
    for i in range(3):
        assert f"out/results.shard-{i}-of-3.csv" in written
        manifest = json.loads(get(s3_env, f"{prefix}/out/results.shard-{i}-of-3.csv.manifest.json") or b"{}")
        assert manifest["shard"] == i
        assert manifest["shards"] == 3
    assert "out/results.csv" not in written
    code, out, err = cli("merge", spec)
    assert code == 0, err
    assert f"Results: {base}/out/results.csv" in out
    table = results_of(get(s3_env, f"{prefix}/out/results.csv"))
    assert table["result_row"].to_list() == [str(i) for i in range(1, 31)]
    assert set(table["result_status"]) == {"sent"}
    assert sandbox.accepted_total == 30


def test_dry_run_and_validate_write_their_files_to_the_bucket(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=4)
    code, out, err = cli("run", spec, "--dry-run")
    assert code == 0, err
    code, out, err = cli("validate", spec, "--offline", "--output", f"{base}/check/validation.parquet")
    assert code == 0, err
    assert f"Campaign test-campaign: {base}/in/contacts.csv" in out
    assert sandbox.accepted_total == 0
    assert keys(s3_env, prefix) == ["check/validation.parquet", "in/contacts.csv", "out/results.dry-run.csv"]
    validation = pl.read_parquet(io.BytesIO(get(s3_env, f"{prefix}/check/validation.parquet") or b""))
    assert validation.height == 4
    assert results_of(get(s3_env, f"{prefix}/out/results.dry-run.csv")).height == 4


def test_file_urls_are_local_paths(cli: Cli, tmp_path: Path, sandbox: SandboxServer) -> None:
    write_csv(tmp_path / "contacts.csv", contact_rows(3))
    spec = write_spec(
        tmp_path,
        input={"path": (tmp_path / "contacts.csv").as_uri()},
        api=api_section(sandbox.url),
        output={"results": (tmp_path / "out" / "results.csv").as_uri()},
    )
    code, _, err = cli("run", spec, "--summary-json", (tmp_path / "summary.json").as_uri())
    assert code == 0, err
    assert pl.read_csv(tmp_path / "out" / "results.csv")["result_status"].to_list() == ["sent"] * 3
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == 3
    assert (tmp_path / "out" / "test-campaign.state.sqlite").exists()  # the default state, beside local results


def test_results_in_a_bucket_need_a_state_that_outlives_the_machine(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    put(s3_env, f"{prefix}/contacts.csv", csv_bytes(contact_rows(2)))
    spec = write_spec(
        tmp_path, api=api_section(sandbox.url), output={"results": f"s3://{s3_env.bucket}/{prefix}/results.csv"}
    )
    code, _, err = cli("run", spec)
    assert code == 2
    assert "output.state: output.results is in object storage" in err
    assert "postgresql://" in err
    assert sandbox.accepted_total == 0

    spec = write_spec(
        tmp_path,
        api=api_section(sandbox.url),
        output={"results": "out/results.csv", "state": f"s3://{s3_env.bucket}/{prefix}/state.sqlite"},
    )
    code, _, err = cli("run", spec)
    assert code == 2
    assert "output.state" in err
    assert "cannot be in object storage" in err


def test_a_missing_input_object_stops_before_sending(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url)
    s3_env.client().delete_object(Bucket=s3_env.bucket, Key=f"{prefix}/in/contacts.csv")  # type: ignore[attr-defined]
    code, _, err = cli("run", spec)
    assert code == 2
    assert f"error: input.path: {base}/in/contacts.csv: not found. Hint:" in err
    assert "Traceback" not in err
    assert sandbox.accepted_total == 0
    assert keys(s3_env, prefix) == []


def test_a_missing_bucket_for_the_results_stops_before_sending(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, _ = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url)
    data = yaml.safe_load(spec.read_text())
    data["output"]["results"] = "s3://no-such-bucket-here/results.csv"
    spec.write_text(yaml.safe_dump(data))
    code, _, err = cli("run", spec)
    assert code == 2
    assert (
        "output.results: s3://no-such-bucket-here/results.csv: the bucket 'no-such-bucket-here' does not exist" in err
    )
    assert sandbox.accepted_total == 0


def test_wrong_credentials_are_refused_before_sending_and_never_printed(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-5d1e")
    code, out, err = cli("run", spec, "--log-format", "json")
    assert code == 2
    message = json.loads(err.strip().splitlines()[-1])["message"]
    # the results' bucket is checked first, before the input is read
    assert message.startswith(f"output.results: {base}/out/results.csv: access refused")
    assert "AWS_SECRET_ACCESS_KEY" in message  # the fix names the variable...
    assert "not-the-secret-5d1e" not in out + err  # ...never its value
    assert API_KEY not in out + err
    assert sandbox.accepted_total == 0


@pytest.mark.slow
def test_an_unreachable_endpoint_stops_before_sending(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens there
    code, _, err = cli("run", spec)
    assert code == 2
    assert f"output.results: {base}/out/results.csv: cannot reach the storage" in err
    assert "Hint: check the network and the endpoint" in err
    assert sandbox.accepted_total == 0


def test_outputs_in_the_bucket_never_overwrite_the_input_or_a_foreign_object(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=3)
    data = yaml.safe_load(spec.read_text())
    data["output"]["results"] = data["input"]["path"]
    spec.write_text(yaml.safe_dump(data))
    code, _, err = cli("run", spec)
    assert code == 2
    assert f"{base}/in/contacts.csv: output.results is the same file as input.path" in err

    put(s3_env, f"{prefix}/out/results.csv", b"name,phone\nAda,+14155550123\n")
    data["output"]["results"] = f"{base}/out/results.csv"
    spec.write_text(yaml.safe_dump(data))
    code, _, err = cli("run", spec)
    assert code == 2
    assert "output.results would overwrite an existing file that is not a results file" in err
    assert "'name', 'phone'" in err
    assert sandbox.accepted_total == 0
    assert get(s3_env, f"{prefix}/out/results.csv") == b"name,phone\nAda,+14155550123\n"


def test_object_urls_with_credentials_in_them_are_refused_without_showing_them(cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, input={"path": "s3://AKIAEXAMPLE:hunter2secret@bucket/contacts.csv"})
    code, out, err = cli("validate", spec, "--offline")
    assert code == 2
    assert "input.path" in err
    assert "belong in the environment" in err
    assert "hunter2secret" not in out + err


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling with a deadline


@pytest.mark.slow
def test_kill_9_during_a_run_leaves_the_earlier_results_object_whole(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path
) -> None:
    with SandboxServer(latency_ms=50) as sandbox:
        spec, _ = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=200)
        data = yaml.safe_load(spec.read_text())
        data["send"] = {"concurrency": 2}
        spec.write_text(yaml.safe_dump(data))
        code, _, err = cli("run", spec, "--limit", "5")
        assert code == 1, err
        before = get(s3_env, f"{prefix}/out/results.csv")
        assert before is not None
        assert results_of(before).height == 200
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(spec), "--quiet"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: sandbox.accepted_total >= 20, "the run to send 20 rows")
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        assert get(s3_env, f"{prefix}/out/results.csv") == before
        killed_mirror = objects.mirror_root().with_name(f"sentdm-batch-objects-{process.pid}")
        assert (killed_mirror / "s3" / s3_env.bucket / prefix / "in" / "contacts.csv").exists()
        # the rerun replaces the object whole, with every row (rows in flight at the kill may stay `unknown`)
        code, _, err = cli("run", spec)
        assert code in (0, 1), err
        after = results_of(get(s3_env, f"{prefix}/out/results.csv"))
        assert after["result_row"].to_list() == [str(i) for i in range(1, 201)]
        assert after.filter(pl.col("result_status") == "sent").height >= 20
        assert not killed_mirror.exists()  # the killed run's copy of the input is deleted by the next command


_UPLOADER = """
import sys
from pathlib import Path
from pipeline import objects
objects.upload(Path(sys.argv[1]), objects.ObjectUrl.parse(sys.argv[2]))
"""


@pytest.mark.slow
def test_an_upload_killed_half_way_leaves_the_earlier_object(s3_env: S3Server, prefix: str, tmp_path: Path) -> None:
    key = f"{prefix}/big/results.csv"
    put(s3_env, key, b"result_row,result_status\n1,sent\n")
    big = tmp_path / "results.csv"
    with open(big, "wb") as out:  # several parts of a multipart upload
        out.write(b"result_row,result_status\n")
        out.write(b"2,sent\n" * (6 << 20))
    client: Any = s3_env.client()
    process = subprocess.Popen(
        [sys.executable, "-c", _UPLOADER, str(big), f"s3://{s3_env.bucket}/{key}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                bool(client.list_multipart_uploads(Bucket=s3_env.bucket, Prefix=key).get("Uploads"))
                or process.poll() is not None
            ),
            "the multipart upload to start",
        )
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the upload finished before it could be killed"
    assert get(s3_env, key) == b"result_row,result_status\n1,sent\n"


def test_gs_and_az_urls_go_to_their_own_stores_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from obstore.store import AzureStore, GCSStore, S3Store

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "campaignsaccount")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5LWZvci10ZXN0cy1vbmx5")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    gs = objects.open_store(objects.ObjectUrl.parse("gs://gs-bucket/in/contacts.csv"))
    assert isinstance(gs, GCSStore)
    assert gs.config["bucket"] == "gs-bucket"
    az = objects.open_store(objects.ObjectUrl.parse("az://container/in/contacts.csv"))
    assert isinstance(az, AzureStore)
    assert az.config["container_name"] == "container"
    s3 = objects.open_store(objects.ObjectUrl.parse("s3://s3-bucket/in/contacts.csv"))
    assert isinstance(s3, S3Store)
    assert s3.config["bucket"] == "s3-bucket"
    # the library reads the rest of the environment itself (the S3 tests above check that for real); an http://
    # endpoint, the user's explicit choice, is allowed
    assert str(s3.client_options.get("allow_http")).lower() == "true"

    for url in ("gs://gs-bucket/in/contacts.csv", "az://container/in/contacts.csv"):
        path = objects.local_path(url)
        assert objects.url_of(path) == objects.ObjectUrl.parse(url)
        assert objects.display(path) == url
    assert objects.local_path((tmp_path / "x.csv").as_uri()) == tmp_path / "x.csv"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("s3://bucket", "must name a bucket and an object"),
        ("s3://bucket/folder/", "must name a bucket and an object"),
        ("s3://bucket/a/../b.csv", "no empty, `.` or `..` parts"),
        ("http://example.org/contacts.csv", "only s3://, gs://, az:// and file:// URLs"),
        ("file://otherhost/contacts.csv", "a file:// URL names a path on this machine"),
    ],
)
def test_malformed_urls_are_spec_errors(cli: Cli, tmp_path: Path, text: str, problem: str) -> None:
    spec = write_spec(tmp_path, input={"path": text})
    code, _, err = cli("validate", spec, "--offline")
    assert code == 2
    assert "input.path" in err
    assert problem in err


@pytest.mark.slow
def test_shards_that_share_only_a_bucket_and_postgresql_resume_and_merge(
    s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer, new_database: Callable[[], str]
) -> None:
    # each command runs as a fresh process in a folder of its own, deleted after it: nothing is shared but the
    # bucket and the database, as on workers of Celery or Kubernetes executors
    put(s3_env, f"{prefix}/in/contacts.csv", csv_bytes(contact_rows(24)))
    base = f"s3://{s3_env.bucket}/{prefix}"
    data = spec_data(
        input={"path": f"{base}/in/contacts.csv"},
        api=api_section(sandbox.url),
        send={"concurrency": 4, "rate": "1000/s"},
        output={"results": f"{base}/out/results.csv", "state": new_database()},
    )

    def run_fresh(*argv: str) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            spec = Path(folder) / "spec.yaml"
            spec.write_text(yaml.safe_dump(data), encoding="utf-8")
            return subprocess.run(
                [sys.executable, "-m", "pipeline", argv[0], str(spec), *argv[1:], "--quiet"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    for i in range(2):
        done = run_fresh("run", "--shard", f"{i}/2")
        assert done.returncode == 0, done.stderr
    again = run_fresh("run", "--shard", "1/2")  # a retried task on another worker: the state says all was sent
    assert again.returncode == 0, again.stderr
    assert sandbox.accepted_total == 24
    assert sorted(sandbox.accepted_by_key.values()) == [1] * 24
    merged = run_fresh("merge")
    assert merged.returncode == 0, merged.stderr
    table = results_of(get(s3_env, f"{prefix}/out/results.csv"))
    assert table["result_row"].to_list() == [str(i) for i in range(1, 25)]
    assert set(table["result_status"]) == {"sent"}


def test_plan_and_retry_read_the_input_from_the_bucket(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=6)
    code, out, err = cli("plan", spec, "--json")
    assert code == 0, err
    assert json.loads(out)["input"] == f"{base}/in/contacts.csv"
    code, _, err = cli("run", spec)
    assert code == 0, err
    code, out, err = cli("retry", spec)
    assert code == 0, err
    assert sandbox.accepted_total == 6
    assert results_of(get(s3_env, f"{prefix}/out/results.csv")).height == 6


def test_a_suppression_list_in_the_bucket_is_read_from_it(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=5)
    put(s3_env, f"{prefix}/lists/opt-outs.csv", f"contact_id\n{guid(2)}\n".encode())
    data = yaml.safe_load(spec.read_text())
    data["suppress"] = [f"{base}/lists/opt-outs.csv"]
    spec.write_text(yaml.safe_dump(data))
    code, _, err = cli("run", spec)
    assert code == 0, err
    table = results_of(get(s3_env, f"{prefix}/out/results.csv"))
    assert table["result_status"].to_list() == ["sent", "suppressed", "sent", "sent", "sent"]
    assert sandbox.accepted_total == 4

    data["suppress"] = [f"{base}/lists/missing.csv"]
    spec.write_text(yaml.safe_dump(data))
    code, _, err = cli("run", spec)
    assert code == 2
    assert f"suppress[0]: {base}/lists/missing.csv: not found" in err


_READ_ONLY = (
    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
    '"Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}'
)


def test_a_refused_upload_after_sending_exits_3_and_a_rerun_writes_the_results_without_sending(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=5)
    iam: Any = boto3.client("iam", endpoint_url=s3_env.endpoint, region_name="us-east-1", **_admin(s3_env))
    user = f"reader-{prefix}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=_READ_ONLY)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    code, _, err = cli("run", spec)
    assert code == 3
    assert f"error: {base}/out/results.csv: access refused" in err
    assert "The object was not written" in err
    assert "running the same command again writes it without sending again" in err
    assert key["SecretAccessKey"] not in err
    assert sandbox.accepted_total == 5
    assert get(s3_env, f"{prefix}/out/results.csv") is None

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_access_key)
    code, _, err = cli("run", spec)
    assert code == 0, err
    assert sandbox.accepted_total == 5
    assert set(results_of(get(s3_env, f"{prefix}/out/results.csv"))["result_status"]) == {"sent"}


def _admin(s3: S3Server) -> dict[str, str]:
    return {"aws_access_key_id": s3.access_key_id, "aws_secret_access_key": s3.secret_access_key}


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteServer]:
    try:
        find_azurite()
    except AzuriteMissing as exc:
        if os.environ.get(AZURITE_OPT_OUT) == "1":
            pytest.skip(str(exc))
        pytest.fail(str(exc))
    with running_azurite() as server:
        yield server


@pytest.fixture
def azure_env(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> AzuriteServer:
    for name, value in azurite.env().items():
        monkeypatch.setenv(name, value)
    return azurite


def test_az_urls_work_end_to_end_against_azurite(
    cli: Cli, azure_env: AzuriteServer, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    container = azure_env.client().get_container_client(azure_env.container)
    container.upload_blob(f"{prefix}/in/contacts.csv", csv_bytes(contact_rows(7)))
    base = f"az://{azure_env.container}/{prefix}"
    spec = write_spec(
        tmp_path,
        input={"path": f"{base}/in/contacts.csv"},
        api=api_section(sandbox.url),
        output={"results": f"{base}/out/results.parquet", "state": str(tmp_path / "state.sqlite")},
    )
    for i in range(2):
        code, _, err = cli("run", spec, "--shard", f"{i}/2")
        assert code == 0, err
    code, out, err = cli("merge", spec)
    assert code == 0, err
    assert f"Results: {base}/out/results.parquet" in out
    merged = pl.read_parquet(io.BytesIO(container.download_blob(f"{prefix}/out/results.parquet").readall()))
    assert merged["result_row"].to_list() == list(range(1, 8))
    assert set(merged["result_status"]) == {"sent"}
    assert sandbox.accepted_total == 7

    data = yaml.safe_load(spec.read_text())
    data["output"]["results"] = f"az://no-such-container/{prefix}/results.csv"
    spec.write_text(yaml.safe_dump(data))
    code, _, err = cli("run", spec)
    assert code == 2
    assert "the container 'no-such-container' does not exist" in err


def test_a_wrong_azure_key_is_refused_before_sending_and_never_printed(
    cli: Cli,
    azure_env: AzuriteServer,
    prefix: str,
    tmp_path: Path,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "d3Jvbmcta2V5LWZvci10ZXN0cy1vbmx5LTQy"
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", wrong)
    base = f"az://{azure_env.container}/{prefix}"
    spec = write_spec(
        tmp_path,
        input={"path": f"{base}/in/contacts.csv"},
        api=api_section(sandbox.url),
        output={"results": f"{base}/out/results.csv", "state": str(tmp_path / "state.sqlite")},
    )
    code, out, err = cli("run", spec)
    assert code == 2
    assert f"output.results: {base}/out/results.csv: access refused" in err
    assert "AZURE_STORAGE_ACCOUNT_KEY" in err
    assert wrong not in out + err
    assert sandbox.accepted_total == 0


def test_an_existing_parquet_object_is_told_by_its_footer(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=3)
    data = yaml.safe_load(spec.read_text())
    data["output"]["results"] = f"{base}/out/results.parquet"
    spec.write_text(yaml.safe_dump(data))
    noise = [uuid.uuid4().hex for _ in range(20_000)]  # more than the 64 KiB head, incompressible

    def parquet(frame: pl.DataFrame) -> bytes:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="uncompressed")
        return buffer.getvalue()

    foreign = parquet(pl.DataFrame({"name": noise, "phone": noise}))
    assert len(foreign) > 1 << 17
    put(s3_env, f"{prefix}/out/results.parquet", foreign)
    code, _, err = cli("run", spec)
    assert code == 2
    assert "found a table with columns 'name', 'phone' and no result_* columns" in err
    assert get(s3_env, f"{prefix}/out/results.parquet") == foreign

    put(s3_env, f"{prefix}/out/results.parquet", parquet(pl.DataFrame({"result_row": noise, "result_status": noise})))
    code, _, err = cli("run", spec)
    assert code == 0, err
    written = pl.read_parquet(io.BytesIO(get(s3_env, f"{prefix}/out/results.parquet") or b""))
    assert written["result_status"].to_list() == ["sent"] * 3


@pytest.mark.slow
def test_no_aws_credentials_at_all_is_said_so(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # where the library asks for an instance role when no key is set: here, a port nothing listens on
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
    code, _, err = cli("run", spec)
    assert code == 2
    assert "no credentials: AWS_ACCESS_KEY_ID is not set, and no instance or pod role answered" in err
    assert sandbox.accepted_total == 0


def test_a_read_only_sas_token_is_refused_on_upload_and_never_printed(
    cli: Cli,
    azure_env: AzuriteServer,
    prefix: str,
    tmp_path: Path,
    sandbox: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    container = azure_env.client().get_container_client(azure_env.container)
    container.upload_blob(f"{prefix}/in/contacts.csv", csv_bytes(contact_rows(3)))
    sas = generate_container_sas(
        ACCOUNT,
        azure_env.container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    base = f"az://{azure_env.container}/{prefix}"
    spec = write_spec(
        tmp_path,
        input={"path": f"{base}/in/contacts.csv"},
        api=api_section(sandbox.url),
        output={"results": f"{base}/out/results.csv", "state": str(tmp_path / "state.sqlite")},
    )
    code, out, err = cli("run", spec)
    assert code == 3, err
    assert f"error: {base}/out/results.csv: access refused" in err
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    assert signature not in out + err
    assert sandbox.accepted_total == 3


def test_a_rehearsal_and_a_test_send_write_their_results_beside_the_campaigns_in_the_bucket(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    from tests.test_v3 import people, v3_data

    put(s3_env, f"{prefix}/in/customers.csv", csv_bytes(people("+14155550123", "+14155550124", "+14155550125")))
    base = f"s3://{s3_env.bucket}/{prefix}"
    data = v3_data(
        sandbox.url,
        input={"path": f"{base}/in/customers.csv"},
        output={"results": f"{base}/out/results.csv", "state": str(tmp_path / "state.sqlite")},
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data), encoding="utf-8")
    code, _, err = cli("run", spec, "--server-dry-run")
    assert code == 0, err
    code, _, err = cli("run", spec, "--test-to", "+14155550199")
    assert code == 0, err
    assert keys(s3_env, prefix) == ["in/customers.csv", "out/results.server-dry-run.csv", "out/results.test-send.csv"]
    rehearsal = results_of(get(s3_env, f"{prefix}/out/results.server-dry-run.csv"))
    assert rehearsal["result_status"].to_list() == ["valid"] * 3
    assert results_of(get(s3_env, f"{prefix}/out/results.test-send.csv")).height >= 1
    assert sandbox.accepted_total == 1  # the test send; the rehearsal sent nothing


def test_the_report_reads_the_results_from_the_bucket_and_writes_its_html_there(
    cli: Cli, s3_env: S3Server, prefix: str, tmp_path: Path, sandbox: SandboxServer
) -> None:
    spec, base = bucket_campaign(s3_env, prefix, tmp_path, sandbox.url, rows=4)
    code, _, err = cli("report", spec)
    assert code == 2
    assert f"{base}/out/results.csv: no results file to report on. Hint: run the campaign first" in err
    code, _, err = cli("run", spec)
    assert code == 0, err
    code, out, err = cli("report", spec, "--json")
    assert code == 0, err
    found = json.loads(out)
    assert found["results"] == f"{base}/out/results.csv"
    assert "sentdm-batch-objects" not in out
    code, out, err = cli("report", spec, "--html", f"{base}/out/report.html")
    assert code == 0, err
    assert out == f"Report: {base}/out/report.html\n"
    assert b"<html" in (get(s3_env, f"{prefix}/out/report.html") or b"")
