"""The product's cost per message with its state in SQLite and in a local PostgreSQL, side by side.

`python bench/state.py [--rows 20000] [--repeats 3] [--concurrency 64]`: the v1 zero-latency scenario of compare.py
(the same mock, inputs and spec), run with the default SQLite state and with `output.state` a URL of a PostgreSQL
server started for the benchmark with its default durability (fsync on, synchronous commits). Prints medians: the
product process's CPU per message, messages/s, and the PostgreSQL server's own CPU per message (its processes'
CPU over the run), and the ratio the issue's target is about (PostgreSQL over SQLite client CPU, at most 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg
from compare import PYTHON, REPO, Inputs, Mock, child_env, run_measured, write_spec

sys.path.insert(0, str(REPO))
from tests.postgres_server import running_postgres  # the tests' server, started with production settings

_TICKS = 100  # clock ticks per second in /proc/*/stat on Linux


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its live children and the children it has reaped."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="bench-state-") as tmp, running_postgres(settings=()) as server:
        work = Path(tmp)
        with psycopg.connect(server, autocommit=True) as db:
            row = db.execute("SHOW data_directory").fetchone()
            assert row is not None
            postmaster = int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])
        mock = Mock(work / "mock.log")
        try:
            inputs = Inputs(work, env)
            csv_path = inputs.csv(args.rows)
            found: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "postgresql": []}
            for repeat in range(args.repeats):
                for store in found:  # interleaved: a noisy moment hurts both alike
                    folder = work / f"{store}-{repeat}"
                    spec = write_spec(folder, csv_path, mock.url, args.concurrency)
                    if store == "postgresql":
                        name = f"bench_{repeat}"
                        with psycopg.connect(server, autocommit=True) as db:
                            db.execute(f'CREATE DATABASE "{name}"'.encode())
                        spec.write_text(spec.read_text() + f"  state: {server.rsplit('/', 1)[0]}/{name}\n")
                    mock.reset(0)
                    before = server_cpu_s(postmaster)
                    measured = run_measured(
                        [PYTHON, "-m", "pipeline", "run", str(spec), "--quiet"],
                        env=env,
                        cwd=REPO,
                        log_dir=folder / "logs",
                        timeout_s=600,
                    )
                    if measured.exit_code != 0:
                        print(f"{store}: exit {measured.exit_code}: {measured.stderr_tail}", file=sys.stderr)
                        return 1
                    served = server_cpu_s(postmaster) - before
                    found[store].append((measured.cpu_s, measured.wall_s, served))
                    print(
                        f"{store} #{repeat}: cpu {measured.cpu_s:.2f} s, wall {measured.wall_s:.2f} s", file=sys.stderr
                    )
        finally:
            mock.stop()
    rows = args.rows
    print(f"| state ({rows:,} rows, zero latency, C={args.concurrency}) | CPU us/msg | msg/s | server CPU us/msg |")
    print("|---|---|---|---|")
    medians = {}
    for store, runs in found.items():
        cpu = statistics.median(r[0] for r in runs) / rows * 1e6
        rate = rows / statistics.median(r[1] for r in runs)
        served = statistics.median(r[2] for r in runs) / rows * 1e6
        medians[store] = cpu
        print(f"| {store} | {cpu:.0f} | {rate:,.0f} | {served:.0f} |")
    print(
        f"PostgreSQL / SQLite client CPU per message: {medians['postgresql'] / medians['sqlite']:.2f}x (target <= 1.5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
