"""Streaming: the input is read in blocks of whole records, and nothing about the result may depend on where the
blocks are cut. The block size is shrunk to a few hundred bytes so that every test crosses many boundaries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline import source
from pipeline.errors import InputError
from pipeline.source import open_contacts, read_contacts
from pipeline.spec import InputSpec
from pipeline.validate import SeenKeys
from tests.conftest import api_section, contact_rows, guid

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "BLOCK_BYTES", 97)
    monkeypatch.setattr(source, "PARQUET_BATCH_ROWS", 7)


def test_quoted_newlines_and_quotes_survive_block_boundaries(tmp_path: Path) -> None:
    names = [f'N{i} "q" line\nsecond, part' if i % 3 == 0 else f"plain{i}" for i in range(60)]
    frame = pl.DataFrame({"contact_id": [guid(i) for i in range(60)], "first_name": names})
    frame.write_csv(tmp_path / "c.csv")
    read = read_contacts(InputSpec(path=tmp_path / "c.csv"), "csv", required=("contact_id",))
    assert read["first_name"].to_list() == names
    assert read["result_row"].to_list() == list(range(1, 61))
    batches = list(open_contacts(InputSpec(path=tmp_path / "c.csv"), "csv", required=()).batches())
    assert len(batches) > 10


def test_a_ragged_row_far_into_the_file_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = ["contact_id,first_name"] + [f"{guid(i)},Name{i}" for i in range(200)]
    lines[150] += ",extra"
    path = tmp_path / "c.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as caught:
        read_contacts(InputSpec(path=path), "csv", required=())
    assert str(caught.value).startswith(f"{path}: line 151: 3 field(s) where the header has 2.")


def test_bad_utf8_far_into_the_file_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = [b"contact_id,first_name"] + [f"{guid(i)},Name{i}".encode() for i in range(100)]
    lines[80] += b"\xff"
    path = tmp_path / "c.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=r": line 81: not valid UTF-8 text"):
        read_contacts(InputSpec(path=path), "csv", required=())


def test_parquet_is_read_in_batches_with_its_row_count(tmp_path: Path) -> None:
    pl.DataFrame({"contact_id": [guid(i) for i in range(50)], "n": list(range(50))}).write_parquet(tmp_path / "c.pq")
    contacts = open_contacts(InputSpec(path=tmp_path / "c.pq"), "parquet", required=())
    assert contacts.total_rows == 50
    batches = list(contacts.batches())
    assert [b.height for b in batches] == [7] * 7 + [1]
    assert pl.concat(batches)["result_row"].to_list() == list(range(1, 51))


def test_duplicates_are_found_across_batches_and_results_keep_input_order(
    cli: Cli, make_campaign: Callable[..., Path]
) -> None:
    rows = contact_rows(40)
    rows.append(dict(rows[0]))  # a repeat of row 1, many blocks later
    rows.append(dict(rows[39]))  # a repeat of row 40 (adjacent: maybe in the same block)
    code, out, _ = cli("validate", make_campaign(rows))
    assert code == 0
    assert "  valid       40\n  invalid      0\n  duplicates   2\n" in out


def test_seen_keys_are_exact_and_survive_merges() -> None:
    seen = SeenKeys()
    seen._MAX_RUN = 64  # force many runs and merges
    keys = [f"row content {i}" for i in range(1000)]
    for start in range(0, 1000, 50):
        batch = pl.DataFrame(
            {
                "result_row": list(range(start, start + 50)),
                "content": keys[start : start + 50],
                "result_status": [None] * 50,
                "result_error": [None] * 50,
            },
            schema={
                "result_row": pl.Int64,
                "content": pl.String,
                "result_status": pl.String,
                "result_error": pl.String,
            },
        )
        assert seen.mark_duplicates(batch)["result_status"].null_count() == 50
    assert len(seen) == 1000
    again = pl.DataFrame(
        {
            "result_row": [1, 2],
            "content": [keys[500], "f" * 32],
            "result_status": [None, None],
            "result_error": [None, None],
        },
        schema={
            "result_row": pl.Int64,
            "content": pl.String,
            "result_status": pl.String,
            "result_error": pl.String,
        },
    )
    marked = seen.mark_duplicates(again)
    assert marked["result_status"].to_list() == ["duplicate", None]
    assert marked["result_error"].to_list() == ["duplicate of an earlier row", None]


@pytest.mark.usefixtures("credentials")
def test_a_broken_line_found_while_sending_stops_the_run_and_a_fixed_rerun_finishes_it(
    cli: Cli, make_campaign: Callable[..., Path]
) -> None:
    from pipeline.sandbox import SandboxServer

    with SandboxServer() as server:
        spec = make_campaign(
            contact_rows(60),
            api=api_section(server.url),
        )
        contacts = spec.parent / "contacts.csv"
        good = contacts.read_text()
        lines = good.splitlines()
        lines[50] += ",extra"
        contacts.write_text("\n".join(lines) + "\n")
        code, _, err = cli("run", spec)
        assert code == 3
        assert f"{contacts}: line 51: 4 field(s) where the header has 3." in err
        assert "row(s) before that line were sent; fix the file and run again" in err
        sent_before = server.accepted_total
        assert 0 < sent_before < 50

        contacts.write_text(good)
        code, out, _ = cli("run", spec)
        assert code == 0, out
        assert server.accepted_total == 60
        assert sorted(set(server.accepted_by_key.values())) == [1]
        assert f"Resumed: {sent_before} row(s)" in out


def test_seen_keys_tell_apart_contents_whose_first_hash_collides() -> None:
    seen = SeenKeys()
    seen._add(pl.DataFrame({"hi": [5, 9, 5, 5], "lo": [1, 1, 2, 3]}, schema={"hi": pl.UInt64, "lo": pl.UInt32}))
    probe = pl.DataFrame({"hi": [5, 5, 7, 9], "lo": [3, 4, 1, 1]}, schema={"hi": pl.UInt64, "lo": pl.UInt32})
    assert seen._contains(probe).to_list() == [True, False, False, True]


def test_a_batch_of_nothing_but_repeats_leaves_the_set_usable_for_the_next() -> None:
    seen = SeenKeys()
    schema = {"result_row": pl.Int64, "content": pl.String, "result_status": pl.String, "result_error": pl.String}

    def batch(first_row: int, contents: list[str]) -> pl.DataFrame:
        rows = range(first_row, first_row + len(contents))
        return pl.DataFrame(
            {"result_row": rows, "content": contents, "result_status": None, "result_error": None}, schema=schema
        )

    seen.mark_duplicates(batch(1, ["a", "b"]))
    assert seen.mark_duplicates(batch(3, ["a", "b"]))["result_status"].to_list() == ["duplicate"] * 2
    assert seen.mark_duplicates(batch(5, ["b", "c"]))["result_status"].to_list() == ["duplicate", None]
