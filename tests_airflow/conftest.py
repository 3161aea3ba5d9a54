"""What the Airflow tests share: an initialised Airflow home with the example DAG loaded, a PostgreSQL server and
an S3-compatible server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.postgres_server import OPT_OUT, PostgresMissing, find_bin, running_postgres
from tests.s3_server import S3Server, running_s3

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "examples" / "airflow" / "campaign_dag.py"


@pytest.fixture(scope="session")
def airflow_dag(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """An initialised Airflow home in a temp folder, and the DAG module loaded in it."""
    home = tmp_path_factory.mktemp("airflow-home")
    with pytest.MonkeyPatch.context() as env:
        # Airflow reads its configuration when it is first imported, so all of this comes before any airflow import
        env.setenv("AIRFLOW_HOME", str(home))
        env.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
        env.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        # dag.test() registers the DAG from its bundle (the DAGs folder) before it creates the run
        env.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAG_FILE.parent))
        # the DAG's defaults, not the caller's
        for name in ("SPEC", "PYTHON", "PROJECT_DIR", "STATE", "BUCKET", "SHARD_RATE"):
            env.delenv(f"SENTDM_{name}", raising=False)
        # the real command an operator runs; in a subprocess so that its logging setup stays out of this process
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=300)
        spec = importlib.util.spec_from_file_location("campaign_dag", DAG_FILE)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server started for the session (tests/postgres_server.py; scripts/install-postgresql
    installs its binaries, and .ci/run runs that first)."""
    try:
        find_bin()
    except PostgresMissing as exc:  # fails loudly, as in the main suite, unless the developer opted out
        if os.environ.get(OPT_OUT) == "1":
            pytest.skip(str(exc))
        pytest.fail(str(exc))
    with running_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server on 127.0.0.1 (tests/s3_server.py), checking every request's credentials."""
    with running_s3(authenticated=True) as server:
        yield server
