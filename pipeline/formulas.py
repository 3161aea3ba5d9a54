"""The spreadsheet formula guard of results CSVs: which text cells a spreadsheet could run as a formula, the `'` put
before them so it does not, and taking that `'` off again when a results CSV is read back as input.

A cell *could run as a formula* when it starts with `=`, `@`, tab or CR, or with `+` or `-` unless the whole cell is

- a plain number: a sign, then digit groups joined by single spaces, dots or commas, or a sign and a bare decimal
  part (`-3.20`, `-3,20`, `-0`, `+1,234.56`, `-1 234,56`, `-.5`), or
- a phone number: `+`, then digit groups or parenthesised digit groups, joined by nothing or by a single space, dot
  or hyphen (`+14155550123`, `+44 20 7946 0958`, `+1 (415) 555-0123`, `+1-415-555-0123`),

either followed by nothing but spaces.

Anything else after a sign (letters, `(` with letters, `+`/`-` inside a number, `|`, `!`, a trailing separator) could
call a function or reach another program through a spreadsheet, so it is guarded: `-2+3+cmd|' /C calc'!A0`,
`+SUM(A1)`, `-1-1`.

The `'` is itself data that a person may have written, so the scheme escapes the escape: a cell that is `'` repeated
k >= 1 times and then a cell that could run is written with one more `'`, whether or not the guard is on. Reading
removes one `'` from exactly the cells that are one or more `'` and then a cell that could run. So reading what was
written gives back every cell exactly, with the guard on or off, and the reader need not know which it was.
"""

from __future__ import annotations

import polars as pl

# [0-9], never \d: Rust's \d is any Unicode digit, and a spreadsheet may not take those as a number
_SIGNED_NUMBER = r"[+-](?:[0-9]+(?:[ .,][0-9]+)*|[.,][0-9]+)"
_PHONE = r"\+(?:[0-9]+|\([0-9]+\))(?:[ .\-]?(?:[0-9]+|\([0-9]+\)))*"
_RISKY_START = r"[=+\-@\t\r]"
# trailing spaces are common in exported columns and cannot make a number run
_PLAIN = f"(?:{_SIGNED_NUMBER}|{_PHONE}) *$"
QUOTE = "'"


def _after_quotes_could_run(cell: pl.Expr, quotes: str) -> pl.Expr:
    # every plain number and phone number starts with + or -, so "risky start and not plain" is the whole rule
    return cell.str.contains(f"^{quotes}{_RISKY_START}") & ~cell.str.contains(f"^{quotes}{_PLAIN}")


def could_run(cell: pl.Expr) -> pl.Expr:
    """True where a spreadsheet could run the cell as a formula (null for null cells)."""
    return _after_quotes_could_run(cell, "")


def needs_quote(cell: pl.Expr, *, formula_guard: bool) -> pl.Expr:
    """True where the writer puts a `'` before the cell: a cell that could run (only with the guard on), or a cell
    of one or more `'` and then one that could run (always, so that reading it back is exact)."""
    return _after_quotes_could_run(cell, "'*" if formula_guard else "'+")


def quote_cells(frame: pl.DataFrame, *, formula_guard: bool) -> tuple[pl.DataFrame, int]:
    """`frame` with a `'` before every text cell that `needs_quote`, and how many cells got one."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not text:
        return frame, 0
    marks = frame.select(needs_quote(pl.col(c), formula_guard=formula_guard).alias(c) for c in text)
    quoted = int(marks.select(pl.sum_horizontal(pl.all().sum())).item())
    if quoted == 0:
        return frame, 0
    return frame.with_columns(
        pl.when(marks[c]).then(pl.lit(QUOTE) + pl.col(c)).otherwise(pl.col(c)).alias(c) for c in text
    ), quoted


def unquote_cells(frame: pl.DataFrame) -> pl.DataFrame:
    """The inverse of `quote_cells`, with the guard on or off: one `'` off every cell of one or more `'` followed by
    a cell that could run."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(
        pl.when(_after_quotes_could_run(pl.col(c), "'+")).then(pl.col(c).str.slice(1)).otherwise(pl.col(c)).alias(c)
        for c in text
    )
