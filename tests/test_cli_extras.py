"""What a person or a scheduler sees: the progress bar on a terminal, progress lines in logs, the sandbox command,
and an internal error that is reported as a bug rather than as a result."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from pipeline import cli as cli_module
from pipeline.campaign import RunStart
from pipeline.progress import JsonProgress, LogProgress
from tests.conftest import SENDER, TEMPLATE, guid

Cli = Callable[..., tuple[int, str, str]]
ROOT = Path(__file__).resolve().parent.parent


START = RunStart("run", "spring-sale", "/specs/spring.yaml", "/data/contacts.parquet", 10)


def test_log_progress_writes_a_line_per_interval() -> None:
    out = io.StringIO()
    progress = LogProgress(out, every_s=0.0)
    progress.start(START)
    progress.update({"sent": 3, "failed": 1, "unknown": 0})
    progress.update({"sent": 3, "failed": 1, "unknown": 0}, "paused 2 s by the server, rate 4/s")
    progress.notice("SIGTERM: stopping")
    progress.warn("throughput fell")
    text = out.getvalue()
    assert text.startswith("sending campaign spring-sale: 10 row(s) from /data/contacts.parquet\nprogress: 4/10 rows (")
    assert "/s): sent 3, failed 1, unknown 0\nprogress: 4/10 rows (" in text
    assert "/s): sent 3, failed 1, unknown 0 - paused 2 s by the server, rate 4/s\n" in text
    assert text.endswith("SIGTERM: stopping\nwarning: throughput fell\n")


def test_log_progress_stays_quiet_between_intervals() -> None:
    out = io.StringIO()
    progress = LogProgress(out, every_s=3600)
    progress.start(RunStart("retry", "spring-sale", "/s.yaml", "/c.csv", None))
    for n in range(10):
        progress.update({"sent": n})
    assert out.getvalue() == (
        "retrying campaign spring-sale: rows from /c.csv as they are read (the count is known at the end)\n"
    )


def test_json_start_event_names_the_campaign_the_spec_and_the_row_count() -> None:
    out = io.StringIO()
    JsonProgress(out, every_s=3600).start(START)
    event = json.loads(out.getvalue())
    assert {k: v for k, v in event.items() if k != "time"} == {
        "event": "start",
        "command": "run",
        "campaign": "spring-sale",
        "spec": "/specs/spring.yaml",
        "input": "/data/contacts.parquet",
        "rows": 10,
    }


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    text = Path("configs/campaign.yaml").read_text().replace("../sample_data", str(ROOT / "sample_data"))
    spec = tmp_path / "campaign.yaml"
    spec.write_text(text.replace("../out/", "out/"))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a real terminal has a size
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(spec)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    process.wait(timeout=30)
    os.close(leader)
    screen = seen.decode("utf-8", "replace")
    assert re.search(r"50row \[.*row/s, sent=45, failed=0\]", screen), screen
    assert "\r" in screen  # a bar redrawn in place, not log lines
    assert screen.startswith("sending campaign order-shipped-2026-11: rows from ")  # what it is doing, once
    assert "progress: " not in screen


def test_an_internal_error_is_reported_as_a_bug_with_exit_70(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("something impossible")

    monkeypatch.setattr(cli_module, "validate_campaign", explode)
    code, out, err = cli("validate", "configs/campaign.yaml")
    assert code == 70
    assert out == ""
    assert err.startswith("internal error: RuntimeError: something impossible\nThis is a bug in sentdm-batch")
    assert "Traceback" not in err
    monkeypatch.setenv("SENTDM_BATCH_DEBUG", "1")
    code, _, err = cli("validate", "configs/campaign.yaml")
    assert code == 70
    assert "Traceback" in err


def test_the_sandbox_command_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox", "--latency-ms", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.match(r"Sandbox listening on (http://127\.0\.0\.1:\d+) ", line)
        assert match, line
        body = {"contactId": guid(1), "templateId": TEMPLATE, "messageBody": {"name": "Ann"}}
        answer = httpx.post(
            f"{match.group(1)}/v1/messages/contact",
            json=body,
            headers={"x-api-key": "k", "x-sender-id": SENDER},
            timeout=5,
        )
        assert answer.status_code == 200
        assert "messageId" in answer.json()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_sandbox_options_are_checked(cli: Cli) -> None:
    code, _, err = cli("sandbox", "--failure-rate", "2")
    assert code == 2
    assert err.startswith("error: sandbox: failure_rate")


def test_json_logs_are_one_object_per_line(cli: Cli, tmp_path: Path) -> None:
    text = Path("configs/campaign.yaml").read_text().replace("../sample_data", str(ROOT / "sample_data"))
    spec = tmp_path / "campaign.yaml"
    spec.write_text(text.replace("../out/", "out/"))
    code, out, err = cli("run", spec, "--log-format", "json")
    assert code == 1
    events = [json.loads(line) for line in (err + out).splitlines()]  # progress on stderr, summary on stdout
    assert [e["event"] for e in events] == ["start", "summary"]
    assert events[0]["rows"] is None  # a CSV file has no row count until it has been read
    assert events[1]["counts"]["sent"] == 45
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", e["time"]) for e in events)

    code, out, err = cli("run", tmp_path / "missing.yaml", "--log-format", "json")
    assert (code, out) == (2, "")
    error = json.loads(err)
    assert error["event"] == "error"
    assert error["exit_code"] == 2
    assert "job spec not found" in error["message"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "json", "--quiet", "validate", "configs/campaign.yaml"],
        ["validate", "configs/campaign.yaml", "--log-format", "json", "--quiet"],
        ["--quiet", "validate", "--log-format", "json", "configs/campaign.yaml"],
    ],
)
def test_global_options_work_before_or_after_the_command(cli: Cli, argv: list[str]) -> None:
    code, out, _ = cli(*argv)
    assert code == 1  # the sample has invalid rows on purpose
    assert json.loads(out)["event"] == "validation"


@pytest.mark.parametrize("command", ["validate", "run", "retry", "merge"])
def test_each_commands_help_ends_with_the_exit_codes_and_the_spec_reference(cli: Cli, command: str) -> None:
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "exit codes:\n  0    every row sent" in out
    assert "  3    aborted (authentication, service down, TLS or DNS failure, disk full)" in out
    assert out.rstrip().endswith('README.md, "The job spec".')
