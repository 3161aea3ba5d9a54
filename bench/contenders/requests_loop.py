"""Contender: the seed document's own Python example, `requests.request("POST", url, json=body, headers=...)`,
in a plain loop, one row after another - what a user who copies the docs gets. CONCURRENCY is ignored: the loop is
sequential by construction. Each `requests.request` call makes (and closes) its own session, so every row also pays
for a new TCP connection, exactly as the example does.

    python bench/contenders/requests_loop.py BASE_URL CSV CONCURRENCY ROWS [--api v1|v3]
"""

from __future__ import annotations

import sys
import time

import requests
from common import Tally, parse_args, read_bodies, report


def main() -> int:
    job = parse_args(__doc__ or "")
    bodies = read_bodies(job)
    tally = Tally()
    started = time.perf_counter()
    for body in bodies:
        try:
            response = requests.request("POST", job.url, json=body, headers=job.headers, timeout=30)
        except requests.RequestException as exc:
            tally.fail(type(exc).__name__)
            continue
        if 200 <= response.status_code < 300:
            tally.ok()
        else:
            tally.fail(f"HTTP {response.status_code}")
    return report(job, tally, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
