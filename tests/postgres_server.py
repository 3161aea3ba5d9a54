"""A real PostgreSQL server for the test session: `initdb` and `pg_ctl` from the Debian package, a throwaway data
folder and a free port on 127.0.0.1, trust authentication for one user. PostgreSQL refuses to run as root, so under
root (as in CI) the server runs as the `postgres` user the package creates.

Missing binaries fail the session loudly (CI must run the PostgreSQL variants); a developer without PostgreSQL may
set SENTDM_TESTS_WITHOUT_POSTGRES=1 to skip them instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg

OPT_OUT = "SENTDM_TESTS_WITHOUT_POSTGRES"
USER = "sentdm"


class PostgresMissing(Exception):
    pass


def find_bin() -> Path:
    """The folder of initdb and pg_ctl: on PATH, or the newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path is not None and shutil.which("initdb") is not None:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresMissing(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: the PostgreSQL state tests need them. "
            f"Install them (`apt-get install postgresql`; .ci/run does), or set {OPT_OUT}=1 to skip those tests."
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr}")


@contextmanager
def running_postgres(*, settings: Sequence[str] = ("fsync=off", "full_page_writes=off")) -> Iterator[str]:
    """Start a server, yield the URL of its `postgres` database (user `sentdm`, no password), stop it after.

    The tests' server skips fsync: they check what the store does, not the disk (the benchmark keeps the defaults)."""
    bin_dir = find_bin()
    folder = Path(tempfile.mkdtemp(prefix="sentdm-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses root: the server runs as the package's postgres user, in a folder it owns
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    port = _free_port()
    _run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8"])
    options = " ".join([f"-p {port}", f"-k {folder}", "-c listen_addresses=127.0.0.1", *(f"-c {s}" for s in settings)])
    _run([*as_user, str(bin_dir / "pg_ctl"), "start", "-w", "-D", str(data), "-l", str(folder / "log"), "-o", options])
    try:
        yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)


def wait_until_session_gone(url: str, pid: int) -> None:
    """The server ends a dead client's session once it reads the closed socket: wait for that, not for a time."""
    with psycopg.connect(url, autocommit=True) as db:
        name = f"sentdm-batch pid {pid} %"
        for _ in range(1000):
            row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (name,)).fetchone()
            if row is not None and row[0] == 0:
                return
            db.execute("SELECT pg_sleep(0.01)")
    raise AssertionError("the killed holder's session never ended")
