"""Reading contacts files: text-preserving CSV, Parquet, and a clear error for every way a file can be broken."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.errors import InputError
from pipeline.source import read_contacts
from pipeline.spec import InputSpec

REQUIRED = ("contact_id", "first_name")


def read(path: Path, fmt: str = "csv", required: tuple[str, ...] = REQUIRED, **options: str) -> pl.DataFrame:
    return read_contacts(InputSpec(path=path, **options), fmt, required=required)


def read_error(path: Path, fmt: str = "csv", **options: str) -> str:
    with pytest.raises(InputError) as caught:
        read(path, fmt, **options)
    return str(caught.value)


def csv_file(tmp_path: Path, content: bytes | str, name: str = "c.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_csv_is_read_as_text_with_row_positions(tmp_path: Path) -> None:
    frame = read(csv_file(tmp_path, "contact_id,first_name,zip\nA,Ann,000123\nB,Bob,1.50\n"))
    assert frame.columns == ["result_row", "contact_id", "first_name", "zip"]
    assert frame.schema["zip"] == pl.String
    assert frame["zip"].to_list() == ["000123", "1.50"]
    assert frame["result_row"].to_list() == [1, 2]


def test_quoted_separators_newlines_quotes_and_unicode_survive(tmp_path: Path) -> None:
    content = 'contact_id,first_name\nA,"Smith, Jr."\nB,"two\nlines"\nC,"say ""hi"""\nD,李雷 Zoë\n'
    frame = read(csv_file(tmp_path, content))
    assert frame["first_name"].to_list() == ["Smith, Jr.", "two\nlines", 'say "hi"', "李雷 Zoë"]


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    frame = read(csv_file(tmp_path, b"\xef\xbb\xbfcontact_id,first_name\nA,Ann\n"))
    assert frame["contact_id"].to_list() == ["A"]


def test_separator_and_encoding_are_configurable(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "contact_id;first_name\nA;José\n".encode("latin-1"))
    frame = read(path, separator=";", encoding="latin-1")
    assert frame["first_name"].to_list() == ["José"]


def test_missing_empty_and_header_only_files(tmp_path: Path) -> None:
    missing = tmp_path / "none.csv"
    assert read_error(missing) == (
        f"{missing}: input file not found. Hint: input.path is relative to the spec file's folder."
    )
    empty = csv_file(tmp_path, "")
    assert read_error(empty) == f"{empty}: input file is empty. Hint: it needs a header line and at least one row."
    header_only = csv_file(tmp_path, "contact_id,first_name\n")
    assert read_error(header_only) == f"{header_only}: input file has a header but no rows. Nothing to send."


def test_a_row_with_too_many_fields_is_reported_with_its_line(tmp_path: Path) -> None:
    path = csv_file(tmp_path, 'contact_id,first_name\nA,"x\ny"\nB,Bob,extra\n')
    assert read_error(path) == (
        f"{path}: line 4: 3 field(s) where the header has 2. "
        "Hint: quote fields that contain the separator, or fix the row."
    )


def test_a_row_with_too_few_fields_is_not_padded_silently(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "contact_id,first_name,order\nA,Ann,1\nB,Bob\nC,Cy,3\n")
    assert read_error(path) == (
        f"{path}: line 3: 2 field(s) where the header has 3. "
        "Hint: quote fields that contain the separator, or fix the row."
    )


def test_bad_quoting_is_reported_with_its_line(tmp_path: Path) -> None:
    path = csv_file(tmp_path, 'contact_id,first_name\nA,Ann\nB,"Bo"b\n')
    assert read_error(path) == (
        f"{path}: line 3: malformed CSV (',' expected after '\"'). "
        'Hint: a field with quotes must be quoted whole, with inner quotes doubled ("").'
    )


def test_invalid_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = csv_file(tmp_path, b"contact_id,first_name\nA,Ann\nB,Jos\xe9\n")
    assert read_error(path) == (
        f"{path}: line 3: not valid UTF-8 text. Hint: set input.encoding (e.g. latin-1 or cp1252)."
    )


def test_a_missing_column_lists_the_columns_the_file_has(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "id,first_name,phone\nA,Ann,1\n")
    assert read_error(path) == (
        f"{path}: column(s) 'contact_id' named in the spec are not in the file. "
        "The file has: 'id', 'first_name', 'phone'. "
        "Hint: fix the `column:` names under `message:` in the spec, or the file's header line."
    )


def test_repeated_header_names_are_errors_but_blank_ones_are_not_repeats(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "contact_id,first_name,first_name\nA,B,C\n")
    assert read_error(path) == f"{path}: line 1: the header names column(s) 'first_name' more than once."
    path = csv_file(tmp_path, "contact_id,,first_name,\nA,B,C,D\n")
    assert read(path).columns == ["result_row", "contact_id", "first_name"]
    path = csv_file(tmp_path, ",,\nA,B,C\n")
    assert read_error(path) == (
        f"{path}: line 1: the header line is blank. Hint: the first line must name the columns; "
        "remove any blank lines above it."
    )


def test_parquet_keeps_its_types_and_rejects_nested_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pl.DataFrame({"contact_id": ["A"], "first_name": [7], "tags": [["x"]]}).write_parquet(path)
    frame = read(path, "parquet")
    assert frame.schema["first_name"] == pl.Int64
    with pytest.raises(InputError, match=r"column 'tags' has type List\(String\)"):
        read(path, "parquet", required=("contact_id", "tags"))


def test_a_corrupt_parquet_file_is_an_input_error(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "this is not parquet", name="c.parquet")
    assert read_error(path, "parquet").startswith(f"{path}: not a readable Parquet file: ")


def test_a_results_file_read_back_drops_old_result_columns_and_unescapes_formulas(tmp_path: Path) -> None:
    content = (
        "contact_id,first_name,result_row,result_status,result_error\n"
        "A,'=SUM(1),7,failed,HTTP 500\n"
        "B,''@x,8,failed,HTTP 500\n"
        "C,'plain,9,failed,HTTP 500\n"
    )
    frame = read(csv_file(tmp_path, content))
    assert frame.columns == ["result_row", "contact_id", "first_name"]
    assert frame["first_name"].to_list() == ["=SUM(1)", "'@x", "'plain"]
    assert frame["result_row"].to_list() == [1, 2, 3]
