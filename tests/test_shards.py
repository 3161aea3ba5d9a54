"""Sharding: the assignment is disjoint, complete and stable; shards run separately; merge restores the campaign
in input order and refuses incomplete or mixed sets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline import payload
from pipeline.campaign import prepare_campaign
from pipeline.sandbox import SandboxServer
from pipeline.shard import Shard
from pipeline.spec import load_spec
from tests.conftest import api_section, contact_rows, write_csv

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]


pytestmark = pytest.mark.usefixtures("credentials")


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(record_bodies=True) as server:
        yield server


def shard_rows(spec: Path, shard: Shard) -> list[int]:
    return prepare_campaign(load_spec(spec)[0], shard).frame[payload.ROW].to_list()


def test_shards_are_disjoint_complete_and_independent_of_row_order(make_campaign: MakeCampaign) -> None:
    rows = contact_rows(500)
    rows[7]["contact_id"] = "invalid"  # invalid rows belong to a shard too
    rows[9] = dict(rows[3])  # a duplicate lands with its original
    spec = make_campaign(rows)
    parts = [shard_rows(spec, Shard(i, 4)) for i in range(4)]
    flat = [r for part in parts for r in part]
    assert sorted(flat) == list(range(1, 501))
    assert all(len(part) > 60 for part in parts)  # roughly even
    assert any(4 in part and 10 in part for part in parts)
    contacts = [[rows[r - 1]["contact_id"] for r in part] for part in parts]

    write_csv(spec.parent / "contacts.csv", rows[::-1])
    reversed_parts = [shard_rows(spec, Shard(i, 4)) for i in range(4)]
    assert [sorted(rows[::-1][r - 1]["contact_id"] for r in part) for part in reversed_parts] == [
        sorted(c) for c in contacts
    ]


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1/0", "x", "1/2/3"])
def test_bad_shard_options_are_usage_errors(cli: Cli, text: str) -> None:
    code, _, err = cli("run", "configs/campaign.yaml", "--shard", text)
    assert code == 2
    assert "--shard" in err


def test_sharded_run_then_merge_gives_the_campaign_in_input_order(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    rows = contact_rows(40)
    rows[5]["first_name"] = "=cmd"
    rows[6]["contact_id"] = "bad"
    spec = make_campaign(rows, api=api_section(sandbox.url), send={"concurrency": 4, "rate": "1000/s"})
    code, _, err = cli("merge", spec)
    assert code == 2
    assert "no shard results of results.csv to merge" in err

    for i in range(3):
        code, out, _ = cli("run", spec, "--shard", f"{i}/3")
        assert code in (0, 1)
        assert f"(shard-{i}-of-3)" in out
        if i == 1:
            code, _, err = cli("merge", spec)
            assert code == 2
            assert "shard(s) 2 of 3 have no results yet" in err
    assert sandbox.accepted_total == 39
    assert sorted(sandbox.accepted_by_key.values()) == [1] * 39

    code, out, _ = cli("merge", spec)
    assert code == 1
    assert "Merged 3 shard(s) of campaign test-campaign: 40 row(s)" in out
    merged = pl.read_csv(spec.parent / "out" / "results.csv", infer_schema=False)
    assert merged["result_row"].to_list() == [str(i) for i in range(1, 41)]
    assert merged["first_name"][5] == "'=cmd"  # escaped once, not twice
    assert merged["result_status"].value_counts().sort("result_status").rows() == [("invalid", 1), ("sent", 39)]
    manifest = json.loads((spec.parent / "out" / "results.shard-0-of-3.csv.manifest.json").read_text())
    assert manifest["campaign"] == "test-campaign"
    assert manifest["shards"] == 3


def test_each_shard_gets_a_share_of_the_rate(make_campaign: MakeCampaign) -> None:
    from pipeline.campaign import shard_spec

    spec = load_spec(make_campaign(send={"rate": "300/min"}))[0]
    assert shard_spec(spec, Shard(0, 4)).send.rate_per_s == pytest.approx(1.25)
    assert shard_spec(spec, Shard(0, 4)).output.results.name == "results.shard-0-of-4.csv"


def test_changing_the_shard_count_of_a_campaign_is_refused(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(sandbox.url))
    assert cli("run", spec, "--shard", "0/2")[0] == 0
    code, _, err = cli("run", spec, "--shard", "0/3")
    assert code == 2
    assert "was run before with 2 shards" in err
    code, _, err = cli("run", spec)
    assert code == 2
    assert "running it now with no shards would send rows again" in err


def test_merge_refuses_shards_of_another_campaign(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    spec = make_campaign(api=api_section(sandbox.url))
    for i in range(2):
        cli("run", spec, "--shard", f"{i}/2")
    manifest = spec.parent / "out" / "results.shard-1-of-2.csv.manifest.json"
    manifest.write_text(json.dumps({"campaign": "other", "shard": 1, "shards": 2, "rows": 1}))
    code, _, err = cli("merge", spec)
    assert code == 2
    assert "belong to campaign 'other', not 'test-campaign'" in err


def test_a_bad_rate_override_is_a_usage_error(cli: Cli) -> None:
    code, out, err = cli("run", "configs/campaign.yaml", "--rate", "fast")
    assert (code, out) == (2, "")
    assert err == "error: --rate: rate 'fast' is not like '300/min' or '5/s'\n"


def test_retry_within_a_shard_touches_only_that_shards_rows(
    cli: Cli, make_campaign: MakeCampaign, sandbox: SandboxServer
) -> None:
    spec = make_campaign(contact_rows(12), api=api_section(sandbox.url))
    for i in range(2):
        assert cli("run", spec, "--shard", f"{i}/2")[0] == 0
    before = sandbox.accepted_total
    assert cli("retry", spec, "--shard", "0/2")[0] == 0  # nothing failed: nothing to resend
    assert sandbox.accepted_total == before
    shard0 = pl.read_csv(spec.parent / "out" / "results.shard-0-of-2.csv", infer_schema=False)
    assert set(shard0["result_status"]) == {"sent"}
