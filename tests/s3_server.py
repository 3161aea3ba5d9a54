"""A real S3-compatible HTTP server on 127.0.0.1 for the object-storage tests: moto's standalone server, started as
a subprocess on a free port. With `authenticated`, it checks every request's signature against its own IAM users
after the set-up calls (a user, an access key that may do anything, a bucket), so wrong credentials are refused as
S3 refuses them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3

from tests import server_process

REGION = "us-east-1"
# what the set-up sends before the server starts checking signatures: create user, create key, put policy, bucket
_SETUP_CALLS = 4
_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str  # made at start
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        """The environment a client of this server needs, as the AWS tools read it."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> object:
        """A boto3 client, for the tests' own looking and arranging (the product uses its own library)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )


def _moto_server() -> str:
    found = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server is not installed: pip install -e '.[dev]'")
    return found


@contextlib.contextmanager
def running_s3(*, authenticated: bool = False, bucket: str = "campaigns") -> Iterator[S3Server]:
    with tempfile.TemporaryDirectory(prefix="s3-server-") as folder:
        log_path = Path(folder) / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if authenticated:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_CALLS)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [_moto_server(), "-H", "127.0.0.1", "-p", "0"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            endpoint = server_process.wait_for_address(
                log_path, process, r"Running on (http://127\.0\.0\.1:\d+)", "moto_server"
            )
            yield _set_up(endpoint, bucket, authenticated=authenticated)
        finally:
            server_process.stop(process)


def _set_up(endpoint: str, bucket: str, *, authenticated: bool) -> S3Server:
    fake = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup", "region_name": REGION}
    key_id, secret = "AKIAIOSFODNN7EXAMPLE", "fake-secret-for-tests-only"
    if authenticated:
        iam = boto3.client("iam", endpoint_url=endpoint, **fake)
        iam.create_user(UserName="sender")
        key = iam.create_access_key(UserName="sender")["AccessKey"]
        iam.put_user_policy(UserName="sender", PolicyName="all", PolicyDocument=_POLICY)
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    boto3.client("s3", endpoint_url=endpoint, **fake).create_bucket(Bucket=bucket)
    return S3Server(endpoint, bucket, key_id, secret)
