"""Test servers run as child processes (moto's S3 server, Azurite): finding the address one prints once it listens,
and stopping it."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def wait_for_address(log_path: Path, process: subprocess.Popen[bytes], pattern: str, name: str) -> str:
    """The URL the server wrote to its log (group 1 of `pattern`), polled with a deadline."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(pattern, log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"{name} stopped: {log_path.read_text(errors='replace')}")
        time.sleep(0.05)  # polling the log for the address, with a deadline
    raise RuntimeError(f"{name} did not start within 60 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
