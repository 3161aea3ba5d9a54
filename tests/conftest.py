"""Shared fixtures: campaigns written to real files in a temp folder, and the CLI called in-process through its
`main(argv)` seam."""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from pipeline.cli import main
from pipeline.state_location import PostgresState, StateLocation
from tests.postgres_server import OPT_OUT, PostgresMissing, find_bin, running_postgres

TEMPLATE = "7ba7b820-9dad-11d1-80b4-00c04fd430c8"
SENDER = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
API_KEY = "sk-test-DO-NOT-LEAK-7f3c9a1e"


class FakeClock:
    """A clock tests move by hand (`clock.now += 5`): time-based logic checked instantly and exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guid(n: int) -> str:
    """A valid, distinct contact GUID for row n."""
    return f"00000000-0000-4000-8000-{n:012d}"


def contact_rows(count: int, *, start: int = 1) -> list[dict[str, str]]:
    return [
        {"contact_id": guid(i), "first_name": f"Name{i}", "order_id": f"{i:06d}"} for i in range(start, start + count)
    ]


def write_csv(path: Path, rows: Sequence[dict[str, str]], *, fieldnames: Sequence[str] | None = None) -> Path:
    names = list(fieldnames or (rows[0].keys() if rows else ["contact_id", "first_name", "order_id"]))
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def api_section(url: str, **extra: object) -> dict[str, object]:
    """A spec's `api:` pointing at a test server, credentials read from the environment (see `credentials`)."""
    return {"base_url": url, "sender_id": "${SENT_DM_SENDER_ID}", "api_key": "${SENT_DM_API_KEY}", **extra}


def spec_data(**overrides: Any) -> dict[str, Any]:
    """A complete spec as a dict; top-level sections in `overrides` are merged one level deep."""
    data: dict[str, Any] = {
        "version": 1,
        "name": "test-campaign",
        "input": {"path": "contacts.csv"},
        "message": {
            "contact_id": {"column": "contact_id"},
            "template_id": {"value": TEMPLATE},
            "variables": {"name": {"column": "first_name"}, "order_id": {"column": "order_id"}},
        },
        "api": {"base_url": "sandbox"},
        "send": {"concurrency": 4},
        "output": {"results": "out/results.csv"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


@pytest.fixture
def make_campaign(tmp_path: Path) -> Callable[..., Path]:
    """Write contacts.csv and spec.yaml into tmp_path; returns the spec's path."""

    def make(rows: Sequence[dict[str, str]] | None = None, **overrides: Any) -> Path:
        write_csv(tmp_path / "contacts.csv", contact_rows(5) if rows is None else rows)
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec_data(**overrides), sort_keys=False), encoding="utf-8")
        return spec_path

    return make


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def run(*argv: str | Path) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables a spec's `${SENT_DM_SENDER_ID}` and `${SENT_DM_API_KEY}` read."""
    monkeypatch.setenv("SENT_DM_SENDER_ID", SENDER)
    monkeypatch.setenv("SENT_DM_API_KEY", API_KEY)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server started for the session (see tests/postgres_server.py)."""
    try:
        find_bin()
    except PostgresMissing as exc:
        if os.environ.get(OPT_OUT) == "1":
            pytest.skip(str(exc))
        pytest.fail(str(exc))
    with running_postgres() as url:
        yield url


_DATABASES = itertools.count()


@pytest.fixture
def new_database(postgres_server: str) -> Callable[[], str]:
    """Makes an empty database on the session's server and returns its URL: every test starts from no tables."""

    def make() -> str:
        name = f"test_{next(_DATABASES)}"
        with psycopg.connect(postgres_server, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"'.encode())
        return f"{postgres_server.rsplit('/', 1)[0]}/{name}"

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def new_state(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StateLocation]:
    """Makes a fresh, empty state location: a SQLite file, or (second run of the test) a PostgreSQL database."""
    count = itertools.count()
    if request.param == "sqlite":
        return lambda: tmp_path / f"state-{next(count)}.sqlite"
    # asked for only here, so the SQLite variants run without the server
    make_database: Callable[[], str] = request.getfixturevalue("new_database")
    return lambda: PostgresState(make_database())
