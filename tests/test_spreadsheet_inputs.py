"""Files as spreadsheets export them: `;` and tab separators, CRLF, a byte order mark, cp1252, blank and
separator-only lines, unnamed columns, workbooks saved under the wrong name, and Parquet values that must read as
a person would write them. Each is a real file on disk, read through the real CLI where the CLI shows it."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from pipeline import source
from pipeline.errors import InputError
from pipeline.payload import as_text
from pipeline.source import open_contacts, read_contacts
from pipeline.spec import InputSpec
from tests.conftest import guid, spec_data

Cli = Callable[..., tuple[int, str, str]]
HEADER = ["contact_id", "first_name", "order_id"]


def campaign(tmp_path: Path, content: bytes, name: str = "contacts.csv", **input_options: Any) -> Path:
    """`content` written byte for byte as the input, and a spec reading it; returns the spec's path."""
    (tmp_path / name).write_bytes(content)
    spec = tmp_path / "spec.yaml"
    data = spec_data(input={"path": name, **input_options})
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec


def lines(*rows: str, newline: str = "\n") -> bytes:
    return newline.join(rows).encode() + newline.encode()


def contacts(separator: str, count: int = 3) -> list[str]:
    return [separator.join(HEADER)] + [separator.join((guid(i), f"Name{i}", f"{i:06d}")) for i in range(1, count + 1)]


def rows_read(out: str) -> int:
    return int(out.split("rows read")[1].split()[0])


def example_payload(out: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(out.split("Example payload:\n", 1)[1])
    return payload


# --- item 4: tab-separated files --------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ['"\\t"', "tab", "TAB", "'\\t'"])
def test_a_tab_separated_file_reads_with_the_separator_written_any_usual_way(
    cli: Cli, tmp_path: Path, written: str
) -> None:
    spec = campaign(tmp_path, lines(*contacts("\t")))
    spec.write_text(spec.read_text().replace("path: contacts.csv", f"path: contacts.csv\n  separator: {written}"))
    code, out, err = cli("validate", spec)
    assert (code, err) == (0, "")
    assert rows_read(out) == 3


def test_a_tsv_file_is_tab_separated_unless_the_spec_says_otherwise(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli("validate", campaign(tmp_path, lines(*contacts("\t")), name="contacts.tsv"))
    assert (code, err) == (0, "")
    assert rows_read(out) == 3
    code, out, _ = cli("validate", campaign(tmp_path, lines(*contacts("|")), name="piped.tsv", separator="pipe"))
    assert (code, rows_read(out)) == (0, 3)


# --- item 5: what a missing column most likely means ------------------------------------------------------------


def test_a_semicolon_file_read_with_commas_says_to_set_the_separator(cli: Cli, tmp_path: Path) -> None:
    spec = campaign(tmp_path, lines(*contacts(";")))
    code, out, err = cli("validate", spec)
    assert (code, out) == (2, "")
    assert err == (
        f"error: {tmp_path / 'contacts.csv'}: column(s) 'contact_id', 'first_name', 'order_id' named in the spec are "
        "not in the file. Its header line is one column, 'contact_id;first_name;order_id'. "
        'Hint: this looks `;`-separated: set `input.separator: ";"`.\n'
    )


def test_a_tab_file_read_with_commas_says_to_set_the_separator_to_tab(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("validate", campaign(tmp_path, lines(*contacts("\t"))))
    assert code == 2
    assert err.endswith("Hint: this looks tab-separated: set `input.separator: tab`.\n")


def test_a_missing_column_gets_a_did_you_mean_and_the_files_columns_quoted(cli: Cli, tmp_path: Path) -> None:
    content = lines("Contact_ID, first_name,order_no,zip", f"{guid(1)},Ann,1,2")
    code, _, err = cli("validate", campaign(tmp_path, content))
    assert code == 2
    assert err == (
        f"error: {tmp_path / 'contacts.csv'}: column(s) 'contact_id', 'first_name', 'order_id' named in the spec are "
        "not in the file. For 'contact_id', did you mean 'Contact_ID' (only the case differs)? "
        "For 'first_name', did you mean ' first_name' (the file's name has spaces around it)? "
        "For 'order_id', did you mean 'order_no'? "
        "The file has: 'Contact_ID', ' first_name', 'order_no', 'zip'. "
        "Hint: fix the `column:` names under `message:` in the spec, or the file's header line.\n"
    )


# --- item 6: blank and separator-only lines ---------------------------------------------------------------------


def excel_export(encoding: str) -> bytes:
    """What Excel's semicolon CSV of a sheet with gaps looks like: CRLF, blank lines and separator-only lines in the
    middle and at the end, some wider than the header; "CSV UTF-8" starts with a byte order mark, the older
    "CSV (MS-DOS)" is cp1252."""
    rows = contacts(";", 4)
    rows[2] = rows[2].replace("Name2", "José")
    text = "\r\n".join([rows[0], rows[1], ";;", "", rows[2], ";;;;;;;;", rows[3], rows[4], ";;", ";;;;;;", "", ""])
    return text.encode("utf-8-sig" if encoding == "utf-8" else encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_blank_and_separator_only_lines_are_skipped_not_rows(cli: Cli, tmp_path: Path, encoding: str) -> None:
    spec = campaign(tmp_path, excel_export(encoding), separator="semicolon", encoding=encoding)
    output = tmp_path / "check.csv"
    code, out, err = cli("validate", spec, "--output", output)
    assert (code, err) == (0, "")
    assert "  rows read   4\n  valid       4\n  invalid     0\n" in out
    results = pl.read_csv(output, infer_schema=False, separator=";")  # results follow the input's separator
    # row numbers are positions of data rows: the skipped lines get no results row and take no number
    assert results["result_row"].to_list() == ["1", "2", "3", "4"]
    assert results["first_name"].to_list() == ["Name1", "José", "Name3", "Name4"]


def test_the_source_counts_the_lines_it_skipped(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(excel_export("cp1252"))
    contacts = open_contacts(InputSpec(path=tmp_path / "c.csv", separator=";", encoding="cp1252"), "csv", required=())
    assert contacts.skipped_blank_lines == 0
    assert sum(frame.height for frame in contacts.batches()) == 4
    assert contacts.skipped_blank_lines == 6
    list(contacts.batches())  # a second pass counts afresh
    assert contacts.skipped_blank_lines == 6


def test_blank_lines_are_skipped_wherever_the_blocks_are_cut(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(source, "BLOCK_BYTES", 61)
    body = contacts(",", 40)
    text = [body[0]]
    for i, row in enumerate(body[1:]):
        text += [row, *([""] * (i % 3)), *([",,"] * (i % 2))]
    (tmp_path / "c.csv").write_bytes(lines(*text, newline="\r\n"))
    contacts_source = open_contacts(InputSpec(path=tmp_path / "c.csv"), "csv", required=())
    frame = pl.concat(contacts_source.batches())
    assert frame["result_row"].to_list() == list(range(1, 41))
    assert frame["first_name"].to_list() == [f"Name{i}" for i in range(1, 41)]
    assert contacts_source.skipped_blank_lines == sum(i % 3 + i % 2 for i in range(40))


def test_a_file_of_only_blank_lines_after_the_header_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(lines(";".join(HEADER), ";;", "", ";;"))
    with pytest.raises(InputError) as caught:
        read_contacts(InputSpec(path=path, separator=";"), "csv", required=())
    assert str(caught.value) == (
        f"{path}: input file has a header but no rows (and 3 blank or separator-only line(s), skipped). "
        "Nothing to send."
    )


def test_a_row_with_some_values_is_still_a_ragged_row(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(lines(*contacts(";"), "", f"{guid(9)};Zed", ";;"))
    with pytest.raises(InputError) as caught:
        read_contacts(InputSpec(path=path, separator=";"), "csv", required=())
    assert str(caught.value).startswith(f"{path}: line 6: 2 field(s) where the header has 3.")


def test_an_unclosed_quote_is_reported_where_it_opened(cli: Cli, tmp_path: Path) -> None:
    body = contacts(",", 6)
    body[2] = body[2].replace("Name2", '"Name2')
    code, out, err = cli("validate", campaign(tmp_path, lines(*body)))
    assert (code, out) == (2, "")
    assert err == (
        f'error: {tmp_path / "contacts.csv"}: line 3: a quote (") opened on this line is never closed, so '
        "everything after it would be one field. Hint: close the quote; a quote inside a field needs the whole field "
        'quoted and the quote doubled: "12"" pizza".\n'
    )


def test_a_quote_closed_lines_later_is_reported_where_it_opened(tmp_path: Path) -> None:
    body = contacts(",", 6)
    body[2] = body[2].replace("Name2", '"Name2')
    body[5] = body[5].replace("Name5", 'Name"5')
    path = tmp_path / "c.csv"
    path.write_bytes(lines(*body))
    with pytest.raises(InputError) as caught:
        read_contacts(InputSpec(path=path), "csv", required=())
    assert str(caught.value).startswith(
        f"{path}: line 3: a quote opened on this line is not closed where the field ends (the reader gave up at line 6"
    )


def test_an_unclosed_quote_in_a_large_file_stops_early_instead_of_reading_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(source, "BLOCK_BYTES", 64)
    body = [row.encode() for row in contacts(",", 3000)]
    body[101] = body[101].replace(b"Name101", b'"Name101')
    body[2900] += b"\xff"  # were the rest of the file read, this bad byte would be the error
    path = tmp_path / "c.csv"
    path.write_bytes(b"\n".join(body) + b"\n")
    read: list[int] = []

    def read_all() -> None:
        read.extend(frame.height for frame in open_contacts(InputSpec(path=path), "csv", required=()).batches())

    with pytest.raises(InputError, match=r": line 102: a quote \(\"\) opened on this line is never closed"):
        read_all()
    assert sum(read) == 100


# --- item 7: unnamed columns and workbooks ------------------------------------------------------------------------


def test_an_unnamed_trailing_column_is_ignored_with_a_note(cli: Cli, tmp_path: Path) -> None:
    content = lines(*(row + ";;" for row in contacts(";")), newline="\r\n")
    spec = campaign(tmp_path, content, separator=";")
    code, out, err = cli("validate", spec, "--output", tmp_path / "check.csv")
    assert (code, err) == (0, "")
    assert rows_read(out) == 3
    assert pl.read_csv(tmp_path / "check.csv", separator=";").columns[:4] == [*HEADER, "result_row"]
    opened = open_contacts(InputSpec(path=tmp_path / "contacts.csv", separator=";"), "csv", required=HEADER)
    assert opened.columns == HEADER
    assert opened.notes == [
        f"{tmp_path / 'contacts.csv'}: columns 4-5 have no name; unused by the spec, ignored and left out of the "
        "results."
    ]


def test_an_unnamed_column_with_values_is_ignored_and_rows_missing_it_are_not_ragged(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(lines("contact_id,,first_name,", "A,x,Ann,", "B,y,Bob", "C,,Cy,z"))
    contacts_source = open_contacts(InputSpec(path=path), "csv", required=("contact_id", "first_name"))
    frame = pl.concat(contacts_source.batches())
    assert frame.columns == ["result_row", "contact_id", "first_name"]
    assert frame["first_name"].to_list() == ["Ann", "Bob", "Cy"]
    assert contacts_source.notes == [
        f"{path}: columns 2, 4 have no name; unused by the spec, ignored and left out of the results."
    ]


def test_an_unnamed_parquet_column_is_ignored_with_a_note_too(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pl.DataFrame({"contact_id": [guid(1)], "": ["x"], "first_name": ["Ann"]}).write_parquet(path)
    contacts_source = open_contacts(InputSpec(path=path), "parquet", required=("contact_id", "first_name"))
    assert pl.concat(contacts_source.batches()).columns == ["result_row", "contact_id", "first_name"]
    assert contacts_source.notes == [
        f"{path}: column 2 has no name; unused by the spec, ignored and left out of the results."
    ]


def test_an_unnamed_column_the_spec_needs_is_an_error_naming_its_position(cli: Cli, tmp_path: Path) -> None:
    content = lines("contact_id,first_name,,", f"{guid(1)},Ann,000001,")
    code, _, err = cli("validate", campaign(tmp_path, content))
    assert code == 2
    assert err == (
        f"error: {tmp_path / 'contacts.csv'}: column(s) 'order_id' named in the spec are not in the file. "
        "The file has: 'contact_id', 'first_name'. Columns 3-4 have no name: if the spec means one of them, write its "
        "name in the header. Hint: fix the `column:` names under `message:` in the spec, or the file's header line.\n"
    )


def xlsx_bytes() -> bytes:
    """The skeleton of an .xlsx: a zip holding the workbook parts."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return buffer.getvalue()


WORKBOOK_ERROR = (
    ": this is a spreadsheet workbook, not a CSV or Parquet file. Hint: export it as CSV or Parquet (in Excel: "
    "File > Save As > CSV UTF-8) and point input.path at the exported file.\n"
)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("contacts.xlsx", xlsx_bytes()),
        ("contacts.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)),
        ("contacts.ods", b"PK\x03\x04 not even a readable zip"),
        ("renamed.csv", xlsx_bytes()),  # saved as .xlsx, renamed by hand
        ("renamed.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)),
        ("renamed.parquet", xlsx_bytes()),
    ],
)
def test_a_spreadsheet_workbook_is_refused_with_the_way_out(
    cli: Cli, tmp_path: Path, name: str, content: bytes
) -> None:
    code, out, err = cli("validate", campaign(tmp_path, content, name=name))
    assert (code, out) == (2, "")
    assert err == f"error: {tmp_path / name}{WORKBOOK_ERROR}"


def test_a_zip_archive_that_is_not_a_workbook_says_to_unzip_it(cli: Cli, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("contacts.csv", "contact_id\n")
    code, _, err = cli("validate", campaign(tmp_path, buffer.getvalue()))
    assert code == 2
    assert err == (
        f"error: {tmp_path / 'contacts.csv'}: this is a zip archive, not a CSV or Parquet file. Hint: unzip it and "
        "point input.path at the file inside.\n"
    )


# --- item 8: Parquet values as text -------------------------------------------------------------------------------


def typed_parquet(tmp_path: Path) -> Path:
    when = datetime.datetime(2026, 3, 1, 9, 30)
    frame = pl.DataFrame(
        {
            "contact_id": [guid(1)],
            "computed": [0.1 + 0.2],
            "tiny": [1e-7],
            "whole": [3.0],
            "single": pl.Series([0.3], dtype=pl.Float32),
            "at": [when],
            "at_ms": pl.Series([when.replace(second=5, microsecond=120_000)], dtype=pl.Datetime("ms")),
            "at_paris": pl.Series([when]).dt.replace_time_zone("Europe/Paris"),
            "day": [when.date()],
            "clock": [datetime.time(9, 30, 5, 500_000)],
            "flag": [True],
            "price": pl.Series([decimal.Decimal("12.50")], dtype=pl.Decimal(10, 2)),
        }
    )
    frame.write_parquet(tmp_path / "typed.parquet")
    spec = tmp_path / "spec.yaml"
    data = spec_data(input={"path": "typed.parquet"})
    data["message"]["variables"] = {name: {"column": name} for name in frame.columns[1:]}
    spec.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return spec


def test_parquet_values_are_sent_as_a_person_would_write_them(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli("validate", typed_parquet(tmp_path))
    assert (code, err) == (0, "")
    assert example_payload(out)["messageBody"] == {
        "computed": "0.3",
        "tiny": "0.0000001",
        "whole": "3",
        "single": "0.3",
        "at": "2026-03-01 09:30:00",
        "at_ms": "2026-03-01 09:30:05.12",
        "at_paris": "2026-03-01 09:30:00+01:00",
        "day": "2026-03-01",
        "clock": "09:30:05.5",
        "flag": "true",
        "price": "12.50",
    }


def test_value_text_cast_keeps_the_old_text_for_campaigns_begun_with_it(cli: Cli, tmp_path: Path) -> None:
    spec = typed_parquet(tmp_path)
    spec.write_text(spec.read_text().replace("message:\n", "message:\n  value_text: cast\n"))
    code, out, _ = cli("validate", spec)
    assert code == 0
    body = example_payload(out)["messageBody"]
    assert (body["computed"], body["tiny"], body["whole"]) == ("0.30000000000000004", "1e-7", "3.0")
    assert body["at"] == "2026-03-01 09:30:00.000000"


def test_floats_keep_the_digits_their_type_holds_and_never_use_an_exponent() -> None:
    values = [0.1 + 0.2, 1.5e-7, -1.25e-5, 1e20, 2.0**53, 1234567890123456.0, 0.9999999999999999, 12.5, -0.0]
    frame = pl.DataFrame({"x": [*values, float("nan"), float("inf"), None]})
    assert as_text(frame, ["x"])["x"].to_list() == [
        "0.3",
        "0.00000015",
        "-0.0000125",
        "100000000000000000000",
        "9007199254740992",
        "1234567890123456",
        "1",
        "12.5",
        "0",
        None,  # NaN is a missing value, as pandas writes one: the row is invalid, not sent with "NaN"
        "inf",
        None,
    ]
    single = pl.DataFrame({"x": pl.Series([0.1, 16777216.0, 1234.5677, 3.4e38], dtype=pl.Float32)})
    assert as_text(single, ["x"])["x"].to_list() == [
        "0.1",
        "16777216",
        "1234.568",
        "340000000000000000000000000000000000000",
    ]


def test_validate_and_run_summaries_count_skipped_lines_and_carry_the_notes(cli: Cli, tmp_path: Path) -> None:
    spec = campaign(tmp_path, excel_export("utf-8"), separator="semicolon")
    code, out, err = cli("validate", spec)
    assert (code, err) == (0, "")
    assert "  skipped 6 blank or separator-only line(s) (not rows)\n" in out
    code, out, _ = cli("run", spec)
    assert code == 0
    assert "Skipped 6 blank or separator-only line(s) of the input (not rows)\n" in out
    unnamed = lines(*(row + ";;" for row in contacts(";")), newline="\r\n")
    spec = campaign(tmp_path, unnamed, separator=";")
    code, out, _ = cli("validate", spec)
    assert code == 0
    assert "Note: " in out
    assert "no name" in out
