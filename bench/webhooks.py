"""How many signed webhook events per second the receiver takes with its store durable, and how fast it answers.

    .venv/bin/python bench/webhooks.py [--events 20000] [--connections 64] [--server aiohttp|starlette] [--runs 3]

Starts the receiver (`python -m pipeline webhooks`, or the uvicorn + Starlette contender in webhook_starlette.py) as
a subprocess on 127.0.0.1, fires the events from this process - a minimal asyncio HTTP/1.1 client, so that the load
generator takes as little of the 2 cores as possible - over many keep-alive connections, and prints events/s (all
events / the time from the first request to the last answer) and p50/p99 latency. The events are status updates of
events/4 messages in shuffled order, 5% of them sent twice (as Sent.dm's retries do). After each run the receiver is
stopped with SIGTERM (it must exit 0) and the store must hold exactly the distinct events. Nothing leaves 127.0.0.1;
each run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.webhooks.signature import sign  # noqa: E402 - after the path is set

STATUSES = ("QUEUED", "SENT", "DELIVERED", "READ")
KEY = b"bench-webhook-signing-key-32byte"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def make_requests(events: int, *, duplicates: float, seed: int) -> tuple[list[bytes], int]:
    """Whole signed HTTP requests, ready to write, and the number of distinct events among them."""
    rng = random.Random(seed)
    distinct = int(events / (1 + duplicates))
    bodies = []
    for i in range(distinct):
        message, status = divmod(i, len(STATUSES))
        payload = {
            "account_id": "acc_bench",
            "message_id": f"00000000-0000-4000-8000-{message:012d}",
            "message_status": STATUSES[status],
            "channel": "sms",
            "inbound_number": "+14155550123",
            "outbound_number": "+14155550100",
            "template_id": "7ba7b820-9dad-11d1-80b4-00c04fd430c8",
        }
        body = {
            "field": "message",
            "sub_type": f"message.{STATUSES[status].lower()}",
            "timestamp": "2026-12-03T10:00:00Z",
            "payload": payload,
        }
        bodies.append(json.dumps(body).encode())
    bodies += [rng.choice(bodies) for _ in range(events - distinct)]
    rng.shuffle(bodies)
    timestamp = str(int(time.time()))
    requests = []
    for body in bodies:
        head = (
            "POST /webhooks/sent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Webhook-ID: ep_bench\r\nX-Webhook-Timestamp: {timestamp}\r\n"
            f"X-Webhook-Signature: {sign(KEY, 'ep_bench', timestamp, body)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests, distinct


async def fire(port: int, requests: list[bytes], connections: int) -> tuple[float, list[float], dict[int, int]]:
    """Send every request, `connections` at a time over keep-alive connections; (wall s, latencies, statuses)."""
    pending = iter(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for request in pending:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started, latencies, statuses


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, from the kernel (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_receiver(server: str, port: int, store: Path, log: Path) -> subprocess.Popen[bytes]:
    if server == "aiohttp":
        argv = [sys.executable, "-m", "pipeline", "webhooks", "--listen", f"127.0.0.1:{port}", "--store", str(store)]
    else:
        http = "h11" if server == "starlette-h11" else "httptools"
        argv = [
            sys.executable,
            str(REPO / "bench" / "webhook_starlette.py"),
            "--port",
            str(port),
            "--store",
            str(store),
            "--http",
            http,
        ]
    env = {**os.environ, "SENT_DM_WEBHOOK_SECRET": SECRET}
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"the receiver did not start; see {log}")


def run_once(server: str, events: int, connections: int, timeout_s: float, seed: int) -> dict[str, float]:
    requests, distinct = make_requests(events, duplicates=0.05, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        store, log, port = Path(folder) / "events.db", Path(folder) / "receiver.log", free_port()
        receiver = start_receiver(server, port, store, log)
        try:
            wall_s, latencies, statuses = asyncio.run(asyncio.wait_for(fire(port, requests, connections), timeout_s))
            cpu_s = process_cpu_s(receiver.pid)
        finally:
            receiver.terminate()
            code = receiver.wait(30)
        # uvicorn re-raises the signal it caught once it has shut down gracefully, so its -15 is a clean stop
        if code != 0 and not (server != "aiohttp" and code == -15):
            raise SystemExit(f"the receiver exited {code} on SIGTERM; log:\n{log.read_text()}")
        with sqlite3.connect(store) as db:
            stored = db.execute("SELECT count(*) FROM events").fetchone()[0]
            messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        if statuses != {200: events} or stored != distinct:
            raise SystemExit(f"answers {statuses}, stored {stored} events of {distinct} distinct")
    latencies.sort()
    return {
        "events_per_s": events / wall_s,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "cpu_us": cpu_s / events * 1e6,  # the receiver's CPU (all its threads, start-up included) per event
        "stored": stored,
        "messages": messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server", default="aiohttp", choices=("aiohttp", "starlette", "starlette-h11"))
    parser.add_argument("--runs", type=int, default=3, help="report each run and the median")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on a run after this many seconds")
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        result = run_once(args.server, args.events, args.connections, args.timeout, seed=run)
        results.append(result)
        print(
            f"{args.server} run {run + 1}: {result['events_per_s']:,.0f} events/s, p50 {result['p50_ms']:.1f} ms, "
            f"p99 {result['p99_ms']:.1f} ms, receiver CPU {result['cpu_us']:.0f} us/event; "
            f"stored {result['stored']:,} distinct events of {result['messages']:,} messages (exact)",
            flush=True,
        )
    median = statistics.median(r["events_per_s"] for r in results)
    p50 = statistics.median(r["p50_ms"] for r in results)
    p99 = statistics.median(r["p99_ms"] for r in results)
    cpu = statistics.median(r["cpu_us"] for r in results)
    print(
        f"{args.server}: median of {args.runs}: {median:,.0f} signed events/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"receiver CPU {cpu:.0f} us/event "
        f"({args.events:,} events, {args.connections} connections, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]})"
    )


if __name__ == "__main__":
    main()
