"""Suppression lists: read from real CSV and Parquet files, normalised like the input, matched by one join; a list
that cannot be used stops everything with a message naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline import api, payload, validate
from pipeline.campaign import prepare_campaign
from pipeline.errors import InputError
from pipeline.spec import CampaignSpec, SuppressSpec, load_spec
from pipeline.suppress import (
    SUPPRESSED,
    VALUE,
    ListStats,
    load_campaign_suppressions,
    load_list,
    load_suppressions,
    mark_suppressed,
    normalise_recipients,
    recipient_column,
)
from tests.conftest import TEMPLATE, guid, spec_data, write_csv

STATUS, ERROR = validate.STATUS, validate.ERROR


def v3_campaign(tmp_path: Path, rows: list[dict[str, str]], suppress: object) -> CampaignSpec:
    write_csv(tmp_path / "customers.csv", rows)
    data = spec_data(input={"path": "customers.csv"}, api={"base_url": "sandbox", "version": "v3"}, suppress=suppress)
    data["message"] = {
        "to": {"column": "phone"},
        "default_region": "US",
        "template_id": {"value": TEMPLATE},
        "variables": {"name": {"column": "first_name"}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_spec(path, environ={})[0]


def customer(phone: str, name: str = "Ann") -> dict[str, str]:
    return {"phone": phone, "first_name": name}


def outcomes(spec: CampaignSpec) -> list[tuple[object, ...]]:
    checked = prepare_campaign(spec).checked
    marked = mark_suppressed(checked, load_campaign_suppressions(spec), recipient=recipient_column("v3"))
    assert marked.columns == checked.columns
    return list(marked.select(payload.ROW, STATUS, ERROR).iter_rows())


def at(path: Path, column: str | None = None) -> SuppressSpec:
    return SuppressSpec(path=path, column=column)


def error_of(entry: SuppressSpec, version: str = "v3", position: int = 0) -> str:
    with pytest.raises(InputError) as caught:
        load_list(entry, version=version, default_region="US", position=position)
    assert caught.value.exit_code == 2  # before anything was sent
    return str(caught.value)


def test_a_suppressed_number_written_another_way_is_suppressed(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    write_csv(tmp_path / "lists/opt-outs.csv", [{"phone": "(415) 555-0123", "reason": "STOP"}])
    rows = [
        customer("+1 415 555 0123"),  # the listed person
        customer("+1 212 555 1234"),
        customer("415.555.0123", ""),  # listed, but invalid anyway (empty variable): stays invalid
        customer("tel:+14155550123"),  # listed, and a duplicate of row 1: stays a duplicate
    ]
    spec = v3_campaign(tmp_path, rows, ["lists/opt-outs.csv"])

    assert outcomes(spec) == [
        (1, SUPPRESSED, "on suppression list opt-outs.csv"),
        (2, None, None),
        (3, "invalid", "variable name is empty (column first_name)"),
        (4, "duplicate", "duplicate of row 1"),
    ]


def test_a_parquet_list_with_a_named_column_of_typed_numbers(tmp_path: Path) -> None:
    # a list exported by a database: the numbers as integers, under a column name of its own
    pl.DataFrame({"msisdn": [14155550123, 12125551234], "added": ["2026-01-02", "2026-02-03"]}).write_parquet(
        tmp_path / "bounced.parquet"
    )
    rows = [customer("(212) 555-1234"), customer("+1 646 555 0100"), customer("1-415-555-0123")]
    spec = v3_campaign(tmp_path, rows, [{"path": "bounced.parquet", "column": "msisdn"}])

    assert outcomes(spec) == [
        (1, SUPPRESSED, "on suppression list bounced.parquet"),
        (2, None, None),
        (3, SUPPRESSED, "on suppression list bounced.parquet"),
    ]


def test_several_lists_csv_and_parquet_distinct_values_and_the_first_list_named(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", [{"phone": "+14155550123"}, {"phone": "415 555 0123"}, {"phone": "+12125551234"}])
    pl.DataFrame({"phone": ["(212) 555-1234", "+44 20 7946 0958", None]}).write_parquet(tmp_path / "b.pq")
    found = load_suppressions([at(tmp_path / "a.csv"), at(tmp_path / "b.pq")], version="v3", default_region="US")

    assert found.values.rows() == [("+14155550123", "a.csv"), ("+12125551234", "a.csv"), ("+442079460958", "b.pq")]
    assert found.count == 3
    assert found.lists == (
        ListStats(path=tmp_path / "a.csv", column="phone", rows=3, blank=0, unusable=0),
        ListStats(path=tmp_path / "b.pq", column="phone", rows=3, blank=1, unusable=0),
    )


def test_values_that_do_not_normalise_are_counted_never_shown(tmp_path: Path) -> None:
    rows = [{"phone": p} for p in ("+14155550123", "call me", "", "555-0199", "  ")]
    write_csv(tmp_path / "opt-outs.csv", rows)
    values, stats = load_list(at(tmp_path / "opt-outs.csv"), version="v3", default_region="US")

    assert values[VALUE].to_list() == ["+14155550123"]
    assert (stats.rows, stats.blank, stats.unusable) == (5, 2, 2)
    note = stats.note("v3")
    assert note == (
        f"{tmp_path / 'opt-outs.csv'}: 2 of 5 values in column 'phone' are not valid phone numbers; they can match "
        "no row and are ignored."
    )
    assert "call me" not in note
    assert "555-0199" not in note
    clean = ListStats(path=tmp_path, column="phone", rows=1, blank=0, unusable=0)
    assert clean.note("v3") is None


def test_csv_lists_from_spreadsheets_semicolons_tabs_and_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "excel.csv").write_bytes(b'\xef\xbb\xbfName;"Phone"\r\nAnn;(415) 555-0123\r\nBob;+1 212 555 1234\r\n')
    (tmp_path / "export.tsv").write_text("phone\tname\n+1 646 555 0100\tCy\n", encoding="utf-8")

    excel, _ = load_list(at(tmp_path / "excel.csv", "Phone"), version="v3", default_region="US")
    tabbed, _ = load_list(at(tmp_path / "export.tsv"), version="v3", default_region="US")
    assert excel[VALUE].to_list() == ["+14155550123", "+12125551234"]
    assert tabbed[VALUE].to_list() == ["+16465550100"]


def test_contact_ids_are_compared_trimmed_and_in_lower_case_as_the_input_sends_them(tmp_path: Path) -> None:
    listed = [{"contact_id": f"  {guid(2).upper()} "}, {"contact_id": "not-a-guid"}, {"contact_id": guid(9)}]
    write_csv(tmp_path / "opt-outs.csv", listed)
    write_csv(tmp_path / "contacts.csv", [{"contact_id": guid(i), "first_name": "A", "order_id": "1"} for i in (1, 2)])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_data(suppress=["opt-outs.csv"])), encoding="utf-8")
    spec = load_spec(tmp_path / "spec.yaml", environ={})[0]
    generation = api.generation("v1")
    frame = pl.read_csv(tmp_path / "contacts.csv", infer_schema=False).with_row_index(payload.ROW, offset=1)
    checked = validate.check_rows(payload.message_fields(frame, spec.message, generation), spec.message, generation)

    suppressions = load_campaign_suppressions(spec)
    marked = mark_suppressed(checked, suppressions, recipient=recipient_column("v1"))

    assert marked[STATUS].to_list() == [None, SUPPRESSED]
    assert marked[ERROR].to_list() == [None, "on suppression list opt-outs.csv"]
    assert suppressions.lists[0].unusable == 1
    assert suppressions.lists[0].note("v1") == (
        f"{tmp_path / 'opt-outs.csv'}: 1 of 3 values in column 'contact_id' are not GUIDs; they can match no row and "
        "are ignored."
    )


def test_normalise_recipients_is_the_inputs_rule() -> None:
    assert normalise_recipients(
        pl.Series(["(415) 555-0123", "+44 20 7946 0958", "x", None]), version="v3", default_region="US"
    ).to_list() == ["+14155550123", "+442079460958", None, None]
    assert normalise_recipients(
        pl.Series([" ABC", f" {TEMPLATE.upper()}\t"]), version="v2", default_region=None
    ).to_list() == [
        None,
        TEMPLATE,
    ]


def test_an_empty_list_suppresses_nothing(tmp_path: Path) -> None:
    (tmp_path / "none-yet.csv").write_text("phone\n", encoding="utf-8")
    found = load_suppressions([at(tmp_path / "none-yet.csv")], version="v3", default_region="US")
    checked = pl.DataFrame({payload.ROW: [1], "to": ["+14155550123"], STATUS: [None], ERROR: [None]})

    assert found.count == 0
    assert mark_suppressed(checked, found, recipient="to")[STATUS].to_list() == [None]


# --- lists that cannot be used ---------------------------------------------------------------------------------------


def test_a_missing_list_names_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "opt-outs.csv"
    assert error_of(at(missing), position=1) == (
        f"{missing}: suppression list (suppress[1]) not found. Hint: its path is relative to the spec file's folder; "
        "nothing is sent while a list cannot be read, so fix the path or remove the entry."
    )
    assert error_of(at(tmp_path)) == (
        f"{tmp_path}: suppression list (suppress[0]) is not a file. Hint: name the CSV or Parquet file itself."
    )


def test_an_unreadable_parquet_file(tmp_path: Path) -> None:
    broken = tmp_path / "opt-outs.parquet"
    broken.write_bytes(b"PAR1 this is not really parquet")
    message = error_of(at(broken))

    assert message.startswith(f"{broken}: suppression list (suppress[0]) is not a readable Parquet file: ")
    assert message.endswith("Hint: nothing is sent while a list cannot be read: replace the file or remove the entry.")


def test_a_malformed_csv_says_where_without_quoting_it(tmp_path: Path) -> None:
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("phone,name\n+14155550123,Ann\n+12125551234,Smith, Bob\n", encoding="utf-8")
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('phone,name\n+14155550123,Ann\n"+12125551234,Bob\n+16465550100,Cy\n', encoding="utf-8")
    fix = (
        "(more fields than the header, or a quote that is never closed). Hint: nothing is sent while a list cannot "
        "be read: fix the file or remove the entry."
    )

    assert (
        error_of(at(ragged))
        == f"{ragged}: suppression list (suppress[0]) is not a well-formed CSV file at line 3 {fix}"
    )
    assert error_of(at(unclosed)) == (
        f"{unclosed}: suppression list (suppress[0]) is not a well-formed CSV file at line 3 {fix}"
    )


def test_a_missing_column_lists_the_columns_and_suggests_one(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "opt-outs.csv", [{"Phone_Number": "+14155550123", "name": "Ann"}])
    assert error_of(at(path)) == (
        f"{path}: suppression list (suppress[0]) has no column 'phone' (its columns: 'Phone_Number', 'name'). "
        "Hint: did you mean 'Phone_Number'? Name it in the spec: `suppress: [{path: opt-outs.csv, column: NAME}]`."
    )
    assert error_of(at(path), version="v2") == (
        f"{path}: suppression list (suppress[0]) has no column 'contact_id' (its columns: 'Phone_Number', 'name'). "
        "Hint: name the column: `suppress: [{path: opt-outs.csv, column: NAME}]`."
    )
    pl.DataFrame({"tel": ["+14155550123"]}).write_parquet(tmp_path / "l.parquet")
    assert error_of(at(tmp_path / "l.parquet", "phone")) == (
        f"{tmp_path / 'l.parquet'}: suppression list (suppress[0]) has no column 'phone' (its columns: 'tel'). "
        "Hint: name the column: `suppress: [{path: l.parquet, column: NAME}]`."
    )


def test_an_empty_file_and_a_workbook_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("\n", encoding="utf-8")
    assert error_of(at(empty)) == (
        f"{empty}: suppression list (suppress[0]) is empty. Hint: it needs a header line naming the column "
        "('phone'), then one recipient per line."
    )
    workbook = tmp_path / "opt-outs.xlsx"
    workbook.write_bytes(b"PK\x03\x04")
    assert error_of(at(workbook)) == (
        f"{workbook}: suppression list (suppress[0]) is a spreadsheet workbook. Hint: export it as CSV or Parquet "
        "and name that file."
    )


def test_a_campaign_with_a_bad_list_stops_before_reading_a_row(tmp_path: Path) -> None:
    spec = v3_campaign(tmp_path, [customer("+14155550123")], ["opt-outs.csv", "missing.csv"])
    (tmp_path / "opt-outs.csv").write_text("phone\n+12125551234\n", encoding="utf-8")

    with pytest.raises(InputError, match=r"missing\.csv: suppression list \(suppress\[1\]\) not found"):
        load_campaign_suppressions(spec)


# --- a million entries --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_million_entry_list_is_one_join(tmp_path: Path) -> None:
    count = 1_000_000
    areas = ["212", "415", "646", "718", "917", "312", "213", "305", "617", "206"]
    numbers = pl.select(
        area=pl.lit(pl.Series(areas)).gather(pl.int_range(count) % len(areas)),
        line=(pl.int_range(count) // len(areas) + 2_000_000).cast(pl.String),
    ).select(
        # people write numbers in every way: half as "(415) 200-0001", half as "+1 415 200 0001"
        pl.when(pl.int_range(count) % 2 == 0)
        .then(pl.format("({}) {}-{}", "area", pl.col("line").str.slice(0, 3), pl.col("line").str.slice(3)))
        .otherwise(pl.format("+1 {} {} {}", "area", pl.col("line").str.slice(0, 3), pl.col("line").str.slice(3)))
        .alias("phone")
    )
    numbers.write_csv(tmp_path / "opt-outs.csv")
    found = load_suppressions([at(tmp_path / "opt-outs.csv")], version="v3", default_region="US")
    assert found.count == count
    assert found.lists[0].unusable == 0

    # 20,000 rows to send: every other one is listed, as the input writes it in E.164
    rows = 20_000
    listed = pl.int_range(rows) % 2 == 0
    checked = pl.select(
        pl.int_range(1, rows + 1).alias(payload.ROW),
        pl.when(listed)
        .then(
            pl.format(
                "+1{}{}",
                pl.lit(pl.Series(areas)).gather(pl.int_range(rows) % len(areas)),
                pl.int_range(rows) // len(areas) + 2_000_000,
            )
        )
        .otherwise(pl.format("+1808{}", pl.int_range(rows) + 2_000_000))
        .alias("to"),
        pl.lit(None, dtype=pl.String).alias(STATUS),
        pl.lit(None, dtype=pl.String).alias(ERROR),
    )
    marked = mark_suppressed(checked, found, recipient="to")

    assert marked.height == rows
    assert marked[payload.ROW].to_list() == list(range(1, rows + 1))
    assert marked[STATUS].to_list() == [SUPPRESSED if i % 2 == 0 else None for i in range(rows)]
    assert marked.filter(pl.col(STATUS) == SUPPRESSED)[ERROR].unique().to_list() == ["on suppression list opt-outs.csv"]
