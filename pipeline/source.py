"""Reading the contacts file (CSV or Parquet) into polars frames, batch by batch, so memory stays flat however large
the file is.

CSV is read as text, never type-inferred, so `000123` stays `000123`. The file is cut into blocks of whole records
(a newline outside quotes ends a record) and polars parses each block. A file that is not a clean table (missing,
empty, ragged rows, bad quoting, wrong encoding) is an InputError naming the file and, where it can be found, the
line; the standard `csv` module is used only after polars has refused a block, to find the line to blame.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.errors import InputError
from pipeline.formulas import unquote_cells
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
BLOCK_BYTES = 2 << 20  # 20,000-40,000 typical rows: big enough for polars to be fast, small enough to stay flat
PARQUET_BATCH_ROWS = 50_000
_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class ContactSource:
    """An opened, checked input: its columns, its row count when the format tells it cheaply, and its batches."""

    spec: InputSpec
    fmt: str
    columns: list[str]  # the file's own columns, result columns of an earlier run removed
    total_rows: int | None  # known for Parquet (metadata); None for CSV until it has been read

    def batches(self) -> Iterator[pl.DataFrame]:
        """Frames of consecutive rows with `result_row`, the 1-based position in the file, as the first column."""
        raw = _parquet_batches(self.spec.path) if self.fmt == "parquet" else _csv_batches(self.spec, self.columns)
        offset = 1
        unescape = "result_status" in self._file_columns
        for frame in raw:
            frame = frame.drop([c for c in RESULT_COLUMNS if c in frame.columns])
            if unescape and self.fmt == "csv":
                frame = unescape_formulas(frame)
            yield frame.with_row_index(ROW_COLUMN, offset=offset).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
            offset += frame.height
        if offset == 1:
            raise InputError(f"{self.spec.path}: input file has a header but no rows. Nothing to send.")

    @property
    def _file_columns(self) -> list[str]:
        return _csv_header(self.spec) if self.fmt == "csv" else self.columns


def open_contacts(source: InputSpec, fmt: str, *, required: Sequence[str]) -> ContactSource:
    """Check that the input exists, is a table, and has the required columns; read no rows yet."""
    path = source.path
    if not path.exists():
        raise InputError(f"{path}: input file not found. Hint: input.path is relative to the spec file's folder.")
    if not path.is_file():
        raise InputError(f"{path}: input path is not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: input file is empty. Hint: it needs a header line and at least one row.")
    if fmt == "parquet":
        schema, total = _parquet_schema(path)
    else:
        header = _csv_header(source)
        schema, total = {name: pl.String() for name in header}, None
    columns = [c for c in schema if c not in RESULT_COLUMNS]
    missing = [c for c in required if c not in schema]
    if missing:
        raise InputError(
            f"{path}: column(s) {', '.join(missing)} named in the spec are not in the file. "
            f"The file has: {', '.join(columns)}. Hint: fix the `column:` names under `message:` in the spec."
        )
    for name in required:
        dtype = schema[name]
        if dtype.is_nested() or dtype == pl.Binary:
            raise InputError(f"{path}: column {name!r} has type {dtype}; mapped columns must hold text or numbers.")
    if total == 0:
        raise InputError(f"{path}: input file has a header but no rows. Nothing to send.")
    return ContactSource(spec=source, fmt=fmt, columns=columns, total_rows=total)


def read_contacts(source: InputSpec, fmt: str, *, required: Sequence[str]) -> pl.DataFrame:
    """The whole input in one frame (for small files and tests; campaigns stream with `open_contacts`)."""
    return pl.concat(open_contacts(source, fmt, required=required).batches())


def unescape_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Undo the spreadsheet escaping of a results CSV (see formulas.py), so values round-trip exactly."""
    return unquote_cells(frame)


# --- Parquet -------------------------------------------------------------------------------------------------------


def _parquet_schema(path: Path) -> tuple[dict[str, pl.DataType], int]:
    try:
        scan = pl.scan_parquet(path)
        schema = dict(scan.collect_schema())
        total = int(scan.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
    return schema, total


def _parquet_batches(path: Path) -> Iterator[pl.DataFrame]:
    scan = pl.scan_parquet(path)
    offset = 0
    while True:
        try:
            frame = scan.slice(offset, PARQUET_BATCH_ROWS).collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
        if frame.height == 0:
            return
        yield frame
        offset += frame.height


# --- CSV -----------------------------------------------------------------------------------------------------------


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _csv_header(source: InputSpec) -> list[str]:
    path = source.path
    try:
        if _is_utf8(source.encoding):
            # only the first line: a bad byte further down is reported by the batch reader, with its line number
            with open(path, "rb") as raw:
                first_line = raw.readline().decode("utf-8-sig")
            header = next(csv.reader(io.StringIO(first_line, newline=""), delimiter=source.separator), [])
        else:
            with open(path, encoding=source.encoding, newline="") as text:
                header = next(csv.reader(text, delimiter=source.separator), [])
    except UnicodeDecodeError:
        raise InputError(_bad_text(path, source.encoding, 1)) from None
    except csv.Error as exc:
        raise InputError(f"{path}: line 1: malformed header: {exc}.") from None
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        names = ", ".join(map(repr, duplicated))
        raise InputError(f"{path}: line 1: the header names column(s) {names} more than once.")
    if any(not name.strip() for name in header):
        raise InputError(f"{path}: line 1: the header has a blank column name. Hint: every column needs a name.")
    return header


def _utf8_chunks(source: InputSpec) -> Iterator[tuple[bytes, int]]:
    """The file as UTF-8 bytes in chunks, with the line number each chunk starts at."""
    path, line = source.path, 1
    decoder = None if _is_utf8(source.encoding) else codecs.getincrementaldecoder(source.encoding)()
    with open(path, "rb") as raw:
        first = True
        while True:
            chunk = raw.read(BLOCK_BYTES)
            if decoder is not None:
                try:
                    chunk = decoder.decode(chunk, final=not chunk).encode("utf-8")
                except UnicodeDecodeError:
                    raise InputError(_bad_text(path, source.encoding, line)) from None
            elif first and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
            first = False
            if not chunk:
                return
            yield chunk, line
            line += chunk.count(b"\n")


def _record_blocks(source: InputSpec) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole records (never cutting a quoted field in two), with each block's first line number."""
    pending, pending_line = b"", 1
    for chunk, line in _utf8_chunks(source):
        if not pending:
            pending_line = line
        pending += chunk
        cut = _end_of_last_record(pending)
        if cut > 0:
            block, pending = pending[:cut], pending[cut:]
            yield block, pending_line
            pending_line += block.count(b"\n")
    if pending:
        yield pending, pending_line


def _end_of_last_record(data: bytes) -> int:
    """Index just after the last newline that is outside quotes (quotes pair up, doubled ones included), or 0."""
    end = data.rfind(b"\n")
    while end >= 0:
        if data.count(b'"', 0, end) % 2 == 0:
            return end + 1
        end = data.rfind(b"\n", 0, end)
    return 0


def _csv_batches(source: InputSpec, columns: list[str]) -> Iterator[pl.DataFrame]:
    header = _csv_header(source)
    schema = {name: pl.String() for name in header}
    first = True
    for block, line in _record_blocks(source):
        try:
            frame = pl.read_csv(
                block,
                separator=source.separator,
                has_header=first,
                schema=schema,  # every column as text, and exactly as many fields as the header
                raise_if_empty=False,
            )
        except pl.exceptions.PolarsError as exc:
            problem = _diagnose_block(source, block, line, len(header), skip_header=first)
            raise InputError(problem or f"{source.path}: malformed CSV near line {line}: {_first_line(exc)}.") from None
        # polars pads a line with too few fields with nulls, like empty cells; only the strict reader can tell them
        # apart, and it is needed only when the last column has a null at all
        if frame.height and frame.select(pl.col(header[-1]).null_count()).item():
            problem = _diagnose_block(source, block, line, len(header), skip_header=first)
            if problem is not None:
                raise InputError(problem)
        first = False
        yield frame


def _diagnose_block(source: InputSpec, block: bytes, first_line: int, width: int, *, skip_header: bool) -> str | None:
    """The first line in `block` the strict stdlib reader rejects, described for the user; None if it finds none."""
    path = source.path
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _bad_text(path, "utf-8", first_line + block[: exc.start].count(b"\n"))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=source.separator, strict=True)
    start = first_line
    try:
        if skip_header:
            next(reader, None)
            start = first_line + reader.line_num
        for row in reader:
            if len(row) != width:
                return (
                    f"{path}: line {start}: {len(row)} field(s) where the header has {width}. "
                    "Hint: quote fields that contain the separator, or fix the row."
                )
            start = first_line + reader.line_num
    except csv.Error as exc:
        return (
            f"{path}: line {first_line + reader.line_num - 1}: malformed CSV ({exc}). "
            'Hint: a field with quotes must be quoted whole, with inner quotes doubled ("").'
        )
    return None


def _bad_text(path: Path, encoding: str, near_line: int) -> str:
    if _is_utf8(encoding):
        return f"{path}: line {near_line}: not valid UTF-8 text. Hint: set input.encoding (e.g. latin-1 or cp1252)."
    return f"{path}: near line {near_line}: not valid {encoding} text. Hint: check input.encoding."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
