"""No command may destroy the input or another output: an output that is the input (by path, through a symbolic link
or as a hard link), two outputs that are one file, and an existing file that the tool did not write are refused
before anything is read or sent, with both paths named."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.sandbox import SandboxServer
from tests.conftest import api_section

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]

pytestmark = pytest.mark.usefixtures("credentials")


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(record_bodies=True) as box:
        yield box


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(cli: Cli, spec: Path, server: SandboxServer, *extra: str, command: str = "run") -> str:
    """Run the command; assert it exits 2, sends nothing and changes no file; return its stderr."""
    before = _snapshot(spec.parent)
    code, out, err = cli(command, spec, *extra)
    assert code == 2, (out, err)
    assert server.requests_total == 0
    assert _snapshot(spec.parent) == before
    assert "Traceback" not in err
    return err


def test_results_path_equal_to_the_input_is_refused(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "contacts.csv"})
    err = _refused(cli, spec, server)
    contacts = spec.parent / "contacts.csv"
    assert f"{contacts}: output.results is the same file as input.path ({contacts})" in err
    assert "Hint: point output.results at another file." in err


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_results_path_that_is_the_input_behind_a_link_is_refused(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer, link: str
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "out/results.csv"})
    (spec.parent / "out").mkdir()
    target = spec.parent / "out" / "results.csv"
    if link == "symlink":
        target.symlink_to(spec.parent / "contacts.csv")
    else:
        os.link(spec.parent / "contacts.csv", target)
    err = _refused(cli, spec, server)
    assert "output.results is the same file as input.path" in err


def test_state_path_equal_to_the_input_or_the_results_is_refused(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "out/r.csv", "state": "contacts.csv"})
    assert "output.state is the same file as input.path" in _refused(cli, spec, server)
    spec = make_campaign(api=api_section(server.url), output={"results": "out/r.csv", "state": "out/r.csv"})
    assert "output.state and output.results are the same file" in _refused(cli, spec, server)


def test_summary_json_over_the_input_results_or_spec_is_refused(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url))
    for target, what in [
        (spec.parent / "contacts.csv", "input.path"),
        (spec, "the job spec"),
    ]:
        err = _refused(cli, spec, server, "--summary-json", str(target))
        assert f"--summary-json is the same file as {what}" in err
    (spec.parent / "out").mkdir()
    (spec.parent / "out" / "results.csv").write_text("result_row,result_status\n", encoding="utf-8")
    err = _refused(cli, spec, server, "--summary-json", str(spec.parent / "out" / "results.csv"))
    assert "--summary-json and output.results are the same file" in err


def test_dry_run_results_and_validate_output_never_overwrite_the_input(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "results.csv"})
    (spec.parent / "contacts.csv").rename(spec.parent / "results.dry-run.csv")
    data = spec.read_text(encoding="utf-8").replace("path: contacts.csv", "path: results.dry-run.csv")
    spec.write_text(data, encoding="utf-8")
    err = _refused(cli, spec, server, "--dry-run")
    assert "the dry run's results is the same file as input.path" in err
    err = _refused(cli, spec, server, "--output", str(spec.parent / "results.dry-run.csv"), command="validate")
    assert "--output is the same file as input.path" in err


def test_shard_results_path_equal_to_the_input_is_refused(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "people.csv"})
    (spec.parent / "contacts.csv").rename(spec.parent / "people.shard-1-of-2.csv")
    data = spec.read_text(encoding="utf-8").replace("path: contacts.csv", "path: people.shard-1-of-2.csv")
    spec.write_text(data, encoding="utf-8")
    err = _refused(cli, spec, server, "--shard", "1/2")
    assert "the shard's results is the same file as input.path" in err


def test_an_existing_file_that_is_not_a_results_file_is_not_overwritten(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "report.csv"})
    (spec.parent / "report.csv").write_text("region,revenue\nnorth,10\n", encoding="utf-8")
    err = _refused(cli, spec, server)
    report = spec.parent / "report.csv"
    assert (
        f"{report}: output.results would overwrite an existing file that is not a results file "
        "(found a table with columns 'region', 'revenue' and no result_* columns). "
        "Hint: choose another path, or move that file away if it may go."
    ) in err


def test_a_results_file_of_an_earlier_run_is_replaced(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url))
    assert cli("run", spec)[0] == 0
    assert cli("run", spec)[0] == 0  # the second run rewrites the results file it wrote
    assert server.accepted_total == 5


def test_existing_summary_and_state_files_must_be_the_tools_own(
    cli: Cli, make_campaign: MakeCampaign, server: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "out/r.csv", "state": "notes.txt"})
    (spec.parent / "notes.txt").write_text("my notes\n", encoding="utf-8")
    err = _refused(cli, spec, server)
    assert "output.state would overwrite an existing file that is not a campaign state database" in err

    spec = make_campaign(api=api_section(server.url))
    (spec.parent / "summary.json").write_text("[1, 2, 3]\n", encoding="utf-8")
    err = _refused(cli, spec, server, "--summary-json", str(spec.parent / "summary.json"))
    assert "--summary-json would overwrite an existing file that is not a run summary" in err

    (spec.parent / "summary.json").unlink()
    assert cli("run", spec, "--summary-json", str(spec.parent / "summary.json"))[0] == 0
    assert json.loads((spec.parent / "summary.json").read_text(encoding="utf-8"))["campaign"] == "test-campaign"
    assert cli("run", spec, "--summary-json", str(spec.parent / "summary.json"))[0] == 0  # its own: replaced


def test_merge_refuses_to_write_over_the_input(cli: Cli, make_campaign: MakeCampaign, server: SandboxServer) -> None:
    spec = make_campaign(api=api_section(server.url), output={"results": "people.csv"})
    for index in range(2):
        assert cli("run", spec, "--shard", f"{index}/2")[0] == 0
    sent = server.accepted_total
    (spec.parent / "contacts.csv").rename(spec.parent / "people.csv")
    data = spec.read_text(encoding="utf-8").replace("path: contacts.csv", "path: people.csv")
    spec.write_text(data, encoding="utf-8")
    before = (spec.parent / "people.csv").read_bytes()
    code, _, err = cli("merge", spec)
    assert code == 2
    assert "output.results is the same file as input.path" in err
    assert (spec.parent / "people.csv").read_bytes() == before
    assert server.accepted_total == sent
