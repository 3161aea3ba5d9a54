"""Issue 9's bar: a 100,000-row run's results CSV equals its input cell for cell in every input column. Cells are
read the way a person's tools read them (Python's csv module), where the only difference allowed is the `'` before a
cell a spreadsheet could run; read back through the tool's own reader, there is no difference at all."""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.source import read_contacts
from pipeline.spec import InputSpec
from tests.conftest import guid, spec_data

Cli = Callable[..., tuple[int, str, str]]
ROWS = 100_000
GUARD = True
KEEP = False
# (template, guarded): `#` becomes a random digit. Whether the `'` goes before a cell is fixed by its template, an
# oracle written from the examples, independent of the package's regexes.
PHONES = [
    ("+1##########", KEEP),
    ("+44 20 #### ####", KEEP),
    ("(###) ###-####", KEEP),
    ("+1 (###) ###-####", KEEP),
    ("+1-###-###-####", KEEP),
    ("+1.###.###.####", KEEP),
    ("+44 (0)20 #### ####", KEEP),
    ("+## ### ### ###  ", KEEP),
    ("00## ## #### ####", KEEP),
    ("###.###.####", KEEP),
    (" +1##########", KEEP),
    ("+1 ### ### #### ext. ##", GUARD),
    ("+1##########;ext=##", GUARD),
    ("-###-####", GUARD),
]
AMOUNTS = [
    ("-#,##", KEEP),
    ("-#.##", KEEP),
    ("-0", KEEP),
    ("-#", KEEP),
    ("+#", KEEP),
    ("#.###,##", KEEP),
    ("-#.###,##", KEEP),
    ("-#,###.##", KEEP),
    ("-# ###,##", KEEP),
    ("-.#", KEEP),
    ("+#,#", KEEP),
    ("#", KEEP),
    ("", KEEP),
    ("-#-#", GUARD),
    ("-#+#", GUARD),
    ("-#e#", GUARD),
    ("-#%", GUARD),
    ("--#", GUARD),
]
NOTES = [
    ("=1+1", GUARD),
    ('=HYPERLINK("http://x.example/?#","click")', GUARD),
    ("@SUM(A1:A#)", GUARD),
    ("+SUM(A1)", GUARD),
    ("-2+3+cmd|' /C calc'!A0", GUARD),
    ("\t=1+#", GUARD),
    ("\rcarriage #", GUARD),
    ("'=already quoted #", GUARD),
    ("''@twice", GUARD),
    ("'-#-#", GUARD),
    ("'plain #", KEEP),
    ("'", KEEP),
    ("'+1##########", KEEP),
    ("李雷 Zoë 🎉 #", KEEP),
    ('say "hi" #', KEEP),
    ('"', KEEP),
    ("a,b;c|d\t\u0435", KEEP),  # a Cyrillic e
    ("two\nlines #", KEEP),
    ("windows\r\nline #", KEEP),
    ("  leading and trailing  ", KEEP),
    (" =not a formula", KEEP),
    ("   ", KEEP),
    ("", KEEP),
    ("a=b", KEEP),
    ("\u2212#", KEEP),
    ("#", KEEP),
]
NAMES = [("Zoë", KEEP), ("=1+1", GUARD), ("+SUM(A1)", GUARD), ("'=x", GUARD), ("  Ann, Jr.  ", KEEP)]
ORDERS = [("000123", KEEP), ("-3,20", KEEP), ("-0", KEEP)]
COLUMNS = ["contact_id", "first_name", "order_id", "phone", "amount", "note"]


def _fill(template: str, rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") if ch == "#" else ch for ch in template)


def build_input(path: Path, separator: str) -> tuple[dict[str, list[str]], dict[str, list[bool]]]:
    """Write the contacts file as a spreadsheet or Python would; return its cells and which ones get a `'`."""
    rng = random.Random(9)
    cells: dict[str, list[str]] = {c: [] for c in COLUMNS}
    guarded: dict[str, list[bool]] = {c: [] for c in COLUMNS}
    for i in range(ROWS):
        # few distinct messages (contact x name x order), so the sandbox sees about 1,500 sends, not 100,000
        contact = (guid(i % 97 + 1), KEEP)
        if i % 1000 == 7:
            contact = ("=cmd|' /C calc'!A0", GUARD)  # invalid, and still given back
        elif i % 1000 == 8:
            contact = ("", KEEP)
        picks = {
            "contact_id": contact,
            "first_name": NAMES[(i // 97) % len(NAMES)],
            "order_id": ORDERS[(i // 485) % len(ORDERS)],
            "phone": rng.choice(PHONES),
            "amount": rng.choice(AMOUNTS),
            "note": rng.choice(NOTES),
        }
        for column, (template, guard) in picks.items():
            cells[column].append(_fill(template, rng))
            guarded[column].append(guard)
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter=separator)
        writer.writerow(COLUMNS)
        writer.writerows(zip(*(cells[c] for c in COLUMNS), strict=True))
    return cells, guarded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("separator", "output"),
    [(",", {}), (";", {}), (";", {"csv_formula_guard": False, "csv_bom": True})],
    ids=["comma", "semicolon", "semicolon-bom-unguarded"],
)
def test_a_100000_row_runs_results_csv_equals_its_input_cell_for_cell(
    separator: str, output: dict[str, bool], cli: Cli, tmp_path: Path
) -> None:
    cells, guarded = build_input(tmp_path / "contacts.csv", separator)
    if output.get("csv_formula_guard") is False:
        # only a cell that itself starts with `'` before a formula start gets one more, so reading back stays exact
        guarded = {c: [g and v.startswith("'") for v, g in zip(cells[c], guarded[c], strict=True)] for c in COLUMNS}
    spec = tmp_path / "spec.yaml"
    data = spec_data(
        input={"path": "contacts.csv", "separator": separator},
        send={"concurrency": 32},
        output={"results": "out/results.csv", **output},
    )
    spec.write_text(json.dumps(data), encoding="utf-8")

    code, _, err = cli("run", spec, "--quiet", "--summary-json", tmp_path / "summary.json")
    assert code == 1, err  # the invalid rows are not sent
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == ROWS
    assert summary["counts"]["invalid"] == 200

    results = tmp_path / "out" / "results.csv"
    raw = results.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8) == output.get("csv_bom", False)
    text = raw.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=separator))
    assert rows[0][: len(COLUMNS)] == COLUMNS
    assert rows[0][len(COLUMNS)] == "result_row"
    assert len(rows) == ROWS + 1
    for index, column in enumerate(COLUMNS):
        expected = ["'" + v if g else v for v, g in zip(cells[column], guarded[column], strict=True)]
        got = [row[index] for row in rows[1:]]
        first_difference = next((i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), None)
        assert first_difference is None, (column, first_difference, got[first_difference], expected[first_difference])
    assert summary["guarded_cells"] == sum(sum(flags) for flags in guarded.values())

    # fed back as the input of the same spec, every cell is the input's; polars reads an empty cell as null
    back = read_contacts(InputSpec(path=results, separator=separator), "csv", required=())
    assert back.columns == ["result_row", *COLUMNS]
    for column in COLUMNS:
        assert back[column].fill_null("").to_list() == cells[column], column
