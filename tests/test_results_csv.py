"""Results CSVs give people's data back as it came: a `'` only before cells a spreadsheet could run as a formula,
the input's separator, an optional byte order mark, and an exact round trip when a results CSV is read back."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import SpecError
from pipeline.formulas import could_run, quote_cells, unquote_cells
from pipeline.results import CsvOptions, ResultsWriter
from pipeline.source import read_contacts
from pipeline.spec import InputSpec, load_spec, parse_separator
from tests.conftest import contact_rows, spec_data

Cli = Callable[..., tuple[int, str, str]]
MakeCampaign = Callable[..., Path]

# what the issue lists, and what a phone or number column holds in practice: never touched
LEFT_ALONE = [
    "+14155550123",
    "+44 20 7946 0958",
    "(415) 555-0123",
    "-3.20",
    "-3,20",
    "-0",
    "-1",
    "+1 (415) 555-0123",
    "+1-415-555-0123",
    "+1.415.555.0123",
    "+44 (0)20 7946 0958",
    "+(44) 20 7946 0958",
    "-1,234.56",
    "-1.234,56",
    "-1 234,56",
    "-.5",
    "+3,5",
    "plain",
    "a=b",
    " =1",  # a leading space makes it text in a spreadsheet
    "'plain",
    "'",
    "''",
    "'+14155550123",
    "'-3,20",
    "\u22125",  # a Unicode minus sign is not a formula start
    "+1 (415) 555-0123  ",
    "-3,20 ",
    "",
]
# each could call a function, reach another program, or compute: a `'` goes before it
GUARDED = [
    "=1+1",
    "@SUM(A1)",
    "\t=1",
    "\rx",
    "+SUM(A1)",
    "-2+3+cmd|' /C calc'!A0",
    "-1-1",
    "-2+3",
    "+",
    "-",
    "--1",
    "-1.",
    "+1--1",
    "+1 - 1",
    "-1e5",
    "+1 ext 5",
    "-A1",
    "+\u0663",  # an Arabic-Indic digit: not a plain number to every spreadsheet
    "-(1)",
]
# a cell a person wrote with a leading `'` before a formula start gets one more, so reading it back is exact
QUOTED_FORMULAS = ["'=x", "''@x", "'-1-1", "'\t"]


def written_cells(frame: pl.DataFrame, options: CsvOptions, tmp_path: Path) -> tuple[list[str], int]:
    """The first column's cells as a spreadsheet or Python's csv module reads the written file."""
    path = tmp_path / "results.csv"
    writer = ResultsWriter(path, csv=options)
    writer.write(frame)
    writer.close()
    text = path.read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=options.separator))
    return [row[0] for row in rows[1:]], writer.guarded_cells


@pytest.mark.parametrize("cell", LEFT_ALONE)
def test_numbers_phone_numbers_and_text_are_written_exactly_as_given(cell: str, tmp_path: Path) -> None:
    cells, guarded = written_cells(pl.DataFrame({"v": [cell]}), CsvOptions(), tmp_path)
    assert (cells, guarded) == ([cell], 0)


@pytest.mark.parametrize("cell", GUARDED + QUOTED_FORMULAS)
def test_cells_a_spreadsheet_could_run_get_one_quote(cell: str, tmp_path: Path) -> None:
    cells, guarded = written_cells(pl.DataFrame({"v": [cell]}), CsvOptions(), tmp_path)
    assert (cells, guarded) == (["'" + cell], 1)


def test_with_the_guard_off_only_quote_led_formulas_get_a_quote(tmp_path: Path) -> None:
    every = LEFT_ALONE + GUARDED + QUOTED_FORMULAS
    cells, guarded = written_cells(pl.DataFrame({"v": every}), CsvOptions(formula_guard=False), tmp_path)
    assert cells == LEFT_ALONE + GUARDED + ["'" + c for c in QUOTED_FORMULAS]
    assert guarded == len(QUOTED_FORMULAS)


def test_guarded_cells_are_counted_over_columns_and_batches_and_nulls_pass(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path / "r.csv")
    writer.write(pl.DataFrame({"a": ["=1", "-3,20", None], "b": ["+SUM(A1)", "@x", "ok"], "n": [-1, -2, 3]}))
    writer.write(pl.DataFrame({"a": ["-1-1", None, "x"], "b": [None, "+1 415", "'=q"], "n": [1, 2, 3]}))
    writer.close()
    assert writer.guarded_cells == 5
    assert (tmp_path / "r.csv").read_text() == (
        "a,b,n\n'=1,'+SUM(A1),-1\n\"-3,20\",'@x,-2\n,ok,3\n'-1-1,,1\n,+1 415,2\nx,''=q,3\n"
    )


@given(st.lists(st.text(alphabet="'=+-@\t\r0123456789 .,()aE|!\u0663", max_size=8), min_size=1, max_size=20))
def test_reading_back_what_was_written_gives_every_cell_exactly(cells: list[str]) -> None:
    frame = pl.DataFrame({"v": cells}, schema={"v": pl.String})
    for guard in (True, False):
        written, _ = quote_cells(frame, formula_guard=guard)
        assert unquote_cells(written)["v"].to_list() == cells
        if not guard:  # off means verbatim, but for the one shape that would otherwise read back wrong
            changed = [c for c, w in zip(cells, written["v"], strict=True) if c != w]
            assert all(re.match(r"'+[=+\-@\t\r]", c) for c in changed)


@given(st.text(alphabet="=+-@0123456789 .,()aE|!'", max_size=10))
def test_a_cell_left_alone_after_a_sign_holds_only_digits_and_grouping(cell: str) -> None:
    runs = pl.DataFrame({"v": [cell]}).select(could_run(pl.col("v"))).item()
    if cell[:1] in ("+", "-") and not runs:
        # nothing a spreadsheet could call or refer to: no letters, no operators after the sign
        assert re.fullmatch(r"-[0-9 .,]+|\+[0-9 .,()\-]+", cell)


def test_a_results_file_read_back_gets_its_cells_exactly(tmp_path: Path) -> None:
    cells = LEFT_ALONE + GUARDED + QUOTED_FORMULAS
    frame = pl.DataFrame({"contact_id": [str(i) for i in range(len(cells))], "v": cells, "result_status": "sent"})
    for guard in (True, False):
        path = tmp_path / f"results-{guard}.csv"
        writer = ResultsWriter(path, csv=CsvOptions(separator=";", bom=True, formula_guard=guard))
        writer.write(frame)
        writer.close()
        read = read_contacts(InputSpec(path=path, separator=";"), "csv", required=("v",))
        # polars reads an empty cell as null, as it does in any input
        assert read["v"].fill_null("").to_list() == cells


# --- the spec ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "separator"),
    [(";", ";"), ("semicolon", ";"), ("tab", "\t"), ("TAB", "\t"), ("\t", "\t"), ("\\t", "\t"), ("pipe", "|"),
     ("comma", ","), (" ", " ")],
)  # fmt: skip
def test_csv_separator_takes_a_character_or_its_name(written: str, separator: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec_data(output={"results": "r.csv", "csv_separator": written})), encoding="utf-8")
    spec = load_spec(path, environ={})[0]
    assert spec.output.csv_separator == separator
    assert CsvOptions.of(spec) == CsvOptions(separator=separator)


def test_csv_options_default_to_the_inputs_separator_no_bom_and_the_guard_on(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec_data(input={"path": "c.csv", "separator": ";"})), encoding="utf-8")
    assert CsvOptions.of(load_spec(path, environ={})[0]) == CsvOptions(separator=";", bom=False, formula_guard=True)


@pytest.mark.parametrize("written", ["", ";;", "\n", "\u00a7", "semi"])
def test_a_separator_that_cannot_be_written_is_refused(written: str) -> None:
    with pytest.raises(ValueError, match="must be one character") as caught:
        parse_separator(written)
    assert str(caught.value) == (
        f"must be one character, or one of tab, comma, semicolon, pipe (got {written!r}). "
        'Hint: write `separator: tab` or `separator: ";"`'
    )
    with pytest.raises(ValueError, match="the double quote cannot separate fields: it quotes them"):
        parse_separator('"')


def test_spec_errors_for_a_bad_separator_and_csv_options_on_other_formats(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec_data(output={"results": "r.csv", "csv_separator": "::"})), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(path, environ={})
    assert str(caught.value) == (
        f"{path}: the job spec is invalid:\n  output.csv_separator: must be one character, or one of tab, comma, "
        "semicolon, pipe (got '::'). Hint: write `separator: tab` or `separator: \";\"`"
    )
    output = {"results": "r.parquet", "csv_bom": True, "csv_formula_guard": True}
    path.write_text(json.dumps(spec_data(output=output)), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(path, environ={})
    assert str(caught.value) == (
        f"{path}: the job spec is invalid:\n  output: csv_bom, csv_formula_guard apply only to .csv results, "
        "not 'r.parquet'"
    )


# --- runs and merges -----------------------------------------------------------------------------------------------


AMOUNTS = ["-3,20", "+44 20 7946 0958", '=HYPERLINK("x")', "'=x", "1.234,56", "-0"]


def semicolon_campaign(tmp_path: Path, **output: object) -> Path:
    """A `;` contacts file as a European spreadsheet saves it: decimal commas, phone numbers, one formula."""
    with open(tmp_path / "contacts.csv", "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter=";")
        writer.writerow(["contact_id", "first_name", "order_id", "amount"])
        writer.writerows([*row.values(), amount] for row, amount in zip(contact_rows(6), AMOUNTS, strict=True))
    spec = tmp_path / "spec.yaml"
    data = spec_data(input={"path": "contacts.csv", "separator": ";"}, output={"results": "out/results.csv", **output})
    spec.write_text(json.dumps(data), encoding="utf-8")
    return spec


def test_a_semicolon_file_comes_back_a_semicolon_file_with_the_guard_counted(cli: Cli, tmp_path: Path) -> None:
    spec = semicolon_campaign(tmp_path)
    code, out, err = cli("run", spec, "--summary-json", tmp_path / "summary.json")
    assert code == 0, err
    text = (tmp_path / "out" / "results.csv").read_text(encoding="utf-8")
    assert text.startswith("contact_id;first_name;order_id;amount;result_row;result_status;")
    amounts = [line.split(";")[3] for line in text.splitlines()[1:]]
    assert amounts == ["-3,20", "+44 20 7946 0958", '"\'=HYPERLINK(""x"")"', "''=x", "1.234,56", "-0"]
    assert (
        "Spreadsheet safety: 2 cell(s) a spreadsheet could run as a formula (= @ + - ...) were prefixed with ' "
        "(output.csv_formula_guard; reading the file back as input removes it)"
    ) in out
    assert json.loads((tmp_path / "summary.json").read_text())["guarded_cells"] == 2
    # fed back as input with the same spec's separator, every cell is what it was
    again = read_contacts(InputSpec(path=tmp_path / "out" / "results.csv", separator=";"), "csv", required=())
    assert again["amount"].to_list() == AMOUNTS


def test_bom_separator_and_guard_off_apply_to_the_results_csv(cli: Cli, tmp_path: Path) -> None:
    spec = semicolon_campaign(tmp_path, csv_separator="pipe", csv_bom=True, csv_formula_guard=False)
    code, out, err = cli("run", spec)
    assert code == 0, err
    raw = (tmp_path / "out" / "results.csv").read_bytes()
    assert raw.startswith(codecs.BOM_UTF8 + b"contact_id|first_name|order_id|amount|result_row|")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter="|"))
    assert [row[3] for row in rows[1:]] == [*AMOUNTS[:3], "''=x", *AMOUNTS[4:]]
    assert "Spreadsheet safety: 1 cell(s)" in out
    again = read_contacts(InputSpec(path=tmp_path / "out" / "results.csv", separator="|"), "csv", required=())
    assert again["amount"].to_list() == AMOUNTS


def test_the_summary_says_nothing_of_the_guard_when_no_cell_was_guarded(cli: Cli, make_campaign: MakeCampaign) -> None:
    code, out, _ = cli("run", make_campaign())
    assert code == 0
    assert "Spreadsheet safety" not in out


def test_validate_output_follows_the_results_csv_options(cli: Cli, tmp_path: Path) -> None:
    spec = semicolon_campaign(tmp_path, csv_bom=True)
    code, _, err = cli("validate", spec, "--output", tmp_path / "checked.csv")
    assert code == 0, err
    raw = (tmp_path / "checked.csv").read_bytes()
    assert raw.startswith(codecs.BOM_UTF8 + b"contact_id;first_name;")
    assert b";-3,20;1;valid;" in raw


def test_merging_shards_keeps_the_separator_and_bom_and_guards_each_cell_once(cli: Cli, tmp_path: Path) -> None:
    spec = semicolon_campaign(tmp_path, csv_bom=True)
    for i in range(2):
        assert cli("run", spec, "--shard", f"{i}/2")[0] == 0
    code, _, err = cli("merge", spec)
    assert code == 0, err
    raw = (tmp_path / "out" / "results.csv").read_bytes()
    assert raw.startswith(codecs.BOM_UTF8 + b"contact_id;first_name;order_id;amount;result_row;")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline=""), delimiter=";"))
    assert [row[3] for row in rows[1:]] == ["-3,20", "+44 20 7946 0958", '\'=HYPERLINK("x")', "''=x", "1.234,56", "-0"]
    again = read_contacts(InputSpec(path=tmp_path / "out" / "results.csv", separator=";"), "csv", required=())
    assert again["amount"].to_list() == AMOUNTS
