"""Reading the contacts file (CSV or Parquet) into polars frames.

CSV is read as text, never type-inferred, so `000123` stays `000123`. A file that is not a clean table (missing,
empty, ragged rows, bad quoting, wrong encoding) is an InputError naming the file and, where it can be found, the
line. Polars does the reading; the standard `csv` module is used only after polars has refused a file, to find the
line to blame.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline.errors import InputError
from pipeline.spec import InputSpec

ROW_COLUMN = "result_row"
# Columns the tool writes into results files. When a results file is fed back as input (to reprocess failed rows),
# these are dropped on reading and written afresh.
RESULT_COLUMNS = (
    "result_row",
    "result_status",
    "result_http_status",
    "result_message_id",
    "result_error",
    "result_attempts",
    "result_sent_at",
    "result_latency_ms",
)
# A cell written as `'=...` in a results CSV was escaped so spreadsheets do not run it; see results.py.
_ESCAPED_CELL = r"^'+[=+\-@\t\r]"


def read_contacts(source: InputSpec, fmt: str, *, required: Sequence[str]) -> pl.DataFrame:
    """The whole input as a frame: the file's own columns (result columns of an earlier run removed) and
    `result_row`, the 1-based position of each row. Raises InputError when the file cannot be used."""
    path = source.path
    if not path.exists():
        raise InputError(f"{path}: input file not found. Hint: input.path is relative to the spec file's folder.")
    if not path.is_file():
        raise InputError(f"{path}: input path is not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: input file is empty. Hint: it needs a header line and at least one row.")
    frame = _read_parquet(path) if fmt == "parquet" else _read_csv(path, source.separator, source.encoding)
    if frame.height == 0:
        raise InputError(f"{path}: input file has a header but no rows. Nothing to send.")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        have = ", ".join(c for c in frame.columns if c not in RESULT_COLUMNS)
        raise InputError(
            f"{path}: column(s) {', '.join(missing)} named in the spec are not in the file. "
            f"The file has: {have}. Hint: fix the `column:` names under `message:` in the spec."
        )
    for name in required:
        dtype = frame.schema[name]
        if dtype.is_nested() or dtype == pl.Binary:
            raise InputError(f"{path}: column {name!r} has type {dtype}; mapped columns must hold text or numbers.")
    return frame.with_row_index(ROW_COLUMN, offset=1).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))


def _read_parquet(path: Path) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
    return frame.drop([c for c in RESULT_COLUMNS if c in frame.columns])


def _read_csv(path: Path, separator: str, encoding: str) -> pl.DataFrame:
    data: Path | bytes = path
    if codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig"):
        try:
            data = path.read_text(encoding=encoding).encode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"{path}: not valid {encoding} text at byte {exc.start}. Hint: set input.encoding."
            raise InputError(message) from None
    header = _header(path, data, separator)
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        names = ", ".join(map(repr, duplicated))
        raise InputError(f"{path}: line 1: the header names column(s) {names} more than once.")
    if any(not name.strip() for name in header):
        raise InputError(f"{path}: line 1: the header has a blank column name. Hint: every column needs a name.")
    try:
        frame = pl.read_csv(
            data,
            separator=separator,
            infer_schema=False,  # every column as text: no `000123` -> 123
            raise_if_empty=True,
        )
    except pl.exceptions.NoDataError:
        raise InputError(f"{path}: input file is empty. Hint: it needs a header line and at least one row.") from None
    except pl.exceptions.PolarsError as exc:
        problem = _diagnose_csv(path, data, separator)
        raise InputError(problem or f"{path}: malformed CSV: {_first_line(exc)}.") from None
    # polars pads a line with too few fields with nulls, like empty cells; only the strict reader can tell them
    # apart, and it is needed only when the last column has a null at all
    if frame.select(pl.col(frame.columns[-1]).null_count()).item():
        problem = _diagnose_csv(path, data, separator)
        if problem is not None:
            raise InputError(problem)
    frame = frame.drop([c for c in RESULT_COLUMNS if c in frame.columns])
    if "result_status" in header:
        frame = unescape_formulas(frame)
    return frame


def unescape_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Undo the spreadsheet escaping of a results CSV (see results.py), so values round-trip exactly."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    return frame.with_columns(
        pl.when(pl.col(c).str.contains(_ESCAPED_CELL)).then(pl.col(c).str.slice(1)).otherwise(pl.col(c)).alias(c)
        for c in text
    )


def _open_text(path: Path, data: Path | bytes) -> io.TextIOBase:
    if isinstance(data, bytes):
        return io.StringIO(data.decode("utf-8-sig"), newline="")
    return open(path, encoding="utf-8-sig", newline="")  # the caller closes it with `with`


def _header(path: Path, data: Path | bytes, separator: str) -> list[str]:
    try:
        with _open_text(path, data) as text:
            return next(csv.reader(text, delimiter=separator), [])
    except UnicodeDecodeError as exc:
        raise InputError(_bad_utf8(path, exc)) from None
    except csv.Error as exc:
        raise InputError(f"{path}: line 1: malformed header: {exc}.") from None


def _diagnose_csv(path: Path, data: Path | bytes, separator: str) -> str | None:
    """The first line the strict stdlib reader rejects, described for the user; None if it finds nothing."""
    try:
        with _open_text(path, data) as text:
            reader = csv.reader(text, delimiter=separator, strict=True)
            width = len(next(reader, []))
            start = reader.line_num + 1
            for row in reader:
                if len(row) != width:
                    return (
                        f"{path}: line {start}: {len(row)} field(s) where the header has {width}. "
                        "Hint: quote fields that contain the separator, or fix the row."
                    )
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        return _bad_utf8(path, exc)
    except csv.Error as exc:
        return (
            f"{path}: line {reader.line_num}: malformed CSV ({exc}). "
            'Hint: a field with quotes must be quoted whole, with inner quotes doubled ("").'
        )
    return None


def _bad_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    # the decoder's offset is relative to a buffer; decode the whole file once to find the absolute one
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        offset = exc.start
    except UnicodeDecodeError as whole:
        offset = whole.start
    line = raw[:offset].count(b"\n") + 1
    return f"{path}: line {line}: not valid UTF-8 text. Hint: set input.encoding (e.g. latin-1 or cp1252)."


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return re.split(r"\n", text, maxsplit=1)[0] if text else type(exc).__name__
