"""Reading the contacts file (CSV or Parquet) into polars frames, batch by batch, so memory stays flat however large
the file is.

CSV is read as text, never type-inferred, so `000123` stays `000123`. The file is cut into blocks of whole records
(a newline outside quotes ends a record) and polars parses each block. A file that is not a clean table (missing,
empty, ragged rows, bad quoting, wrong encoding, a spreadsheet workbook) is an InputError naming the file and, where
it can be found, the line; the standard `csv` module is used only after polars has refused a block, to find the line
to blame.

What spreadsheet exports leave behind is tolerated, not an error: lines that are blank or hold nothing but separators
are skipped (and counted: they are not rows), and a column with no name in the header is dropped with a note, unless
the spec needs it.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline import objects
from pipeline.errors import InputError
from pipeline.formulas import unquote_cells
from pipeline.spec import InputSpec

ROW_COLUMN = "result_row"
# Columns the tool writes into results files. When a results file is fed back as input (to reprocess failed rows),
# these are dropped on reading and written afresh.
RESULT_COLUMNS = (
    "result_row",
    "result_status",
    "result_to",
    "result_http_status",
    "result_message_id",
    "result_error",
    "result_attempts",
    "result_sent_at",
    "result_latency_ms",
)
BLOCK_BYTES = 2 << 20  # 20,000-40,000 typical rows: big enough for polars to be fast, small enough to stay flat
PARQUET_BATCH_ROWS = 50_000
# No contact row is this long: a record still open after this many blocks is a quote that was never closed, and
# reading on would pull the rest of the file into memory as one field.
MAX_RECORD_BLOCKS = 16
_BOM = codecs.BOM_UTF8
WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xlsb", ".xls", ".ods", ".numbers")
_ZIP_MAGIC = b"PK\x03\x04"  # .xlsx, .ods (and any zip archive)
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls (the compound file of Office 97-2003)
# What a one-column header most likely meant, by the character it is full of, and how the spec says it.
_SEPARATOR_GUESSES = {";": '";"', "\t": "tab", "|": '"|"', ",": '","'}


@dataclass
class _LineCount:
    lines: int = 0


@dataclass(frozen=True)
class ContactSource:
    """An opened, checked input: its columns, its row count when the format tells it cheaply, and its batches.

    `notes` are messages for the user about what was tolerated (e.g. an unnamed column left out);
    `skipped_blank_lines` counts the blank and separator-only lines the latest pass over the batches skipped."""

    spec: InputSpec
    fmt: str
    columns: list[str]  # the file's own named columns, result columns of an earlier run removed
    total_rows: int | None  # known for Parquet (metadata); None for CSV until it has been read
    notes: list[str] = field(default_factory=list)
    # every column as polars sees it: the file's names, with a stand-in name for each unnamed one
    parsed_columns: list[str] = field(default_factory=list)
    unnamed_columns: list[str] = field(default_factory=list)  # stand-in names of unnamed columns, dropped on reading
    _skipped: _LineCount = field(default_factory=_LineCount, repr=False, compare=False)

    @property
    def skipped_blank_lines(self) -> int:
        """Blank and separator-only CSV lines skipped so far in the latest pass over `batches()` (they are not rows
        and get no row number)."""
        return self._skipped.lines

    def batches(self) -> Iterator[pl.DataFrame]:
        """Frames of consecutive rows with `result_row`, the 1-based position in the file, as the first column."""
        self._skipped.lines = 0
        if self.fmt == "parquet":
            raw = _parquet_batches(self.spec.path)
        else:
            raw = _csv_batches(self.spec, self.parsed_columns, self.unnamed_columns, self._skipped)
        offset = 1
        unescape = "result_status" in self.parsed_columns
        dropped = [c for c in (*RESULT_COLUMNS, *self.unnamed_columns) if c in self.parsed_columns]
        for frame in raw:
            frame = frame.drop(dropped)
            if unescape and self.fmt == "csv":
                frame = unescape_formulas(frame)
            yield frame.with_row_index(ROW_COLUMN, offset=offset).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
            offset += frame.height
        if offset == 1:
            skipped = self._skipped.lines
            blank = f" (and {skipped} blank or separator-only line(s), skipped)" if skipped else ""
            raise InputError(f"{self.spec.path}: input file has a header but no rows{blank}. Nothing to send.")


def open_contacts(source: InputSpec, fmt: str, *, required: Sequence[str]) -> ContactSource:
    """Check that the input exists, is a table, and has the required columns; read no rows yet."""
    path = source.path
    objects.fetch(path)  # an object in a bucket is read from a local copy, streamed there in blocks
    if not path.exists():
        raise InputError(f"{path}: input file not found. Hint: input.path is relative to the spec file's folder.")
    if not path.is_file():
        raise InputError(f"{path}: input path is not a file.")
    _refuse_workbooks(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: input file is empty. Hint: it needs a header line and at least one row.")
    if fmt == "parquet":
        schema, total = _parquet_schema(path)
        names = list(schema)
        parsed = names
    else:
        names = _csv_header(source)
        parsed = _stand_in_names(names)
        schema, total = {name: pl.String() for name in parsed}, None
    unnamed = [position for position, name in enumerate(names, 1) if not name.strip()]
    stand_ins = [parsed[position - 1] for position in unnamed]
    named = {name: dtype for name, dtype in schema.items() if name not in stand_ins}
    columns = [c for c in named if c not in RESULT_COLUMNS]
    missing = [c for c in required if c not in named]
    if missing:
        raise InputError(_missing_columns(source, missing, names, columns, unnamed))
    for name in required:
        dtype = named[name]
        if dtype.is_nested() or dtype in (pl.Binary, pl.Object) or isinstance(dtype, pl.Duration):
            raise InputError(
                f"{path}: column {name!r} has type {dtype}; mapped columns must hold text, numbers, dates or times."
            )
    if total == 0:
        raise InputError(f"{path}: input file has a header but no rows. Nothing to send.")
    notes = []
    if unnamed:
        shown = objects.display(path)
        notes.append(f"{shown}: {_columns(unnamed)} no name; unused by the spec, ignored and left out of the results.")
    return ContactSource(
        spec=source,
        fmt=fmt,
        columns=columns,
        total_rows=total,
        notes=notes,
        parsed_columns=parsed,
        unnamed_columns=stand_ins,
    )


def read_contacts(source: InputSpec, fmt: str, *, required: Sequence[str]) -> pl.DataFrame:
    """The whole input in one frame (for small files and tests; campaigns stream with `open_contacts`)."""
    return pl.concat(open_contacts(source, fmt, required=required).batches())


def unescape_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """Undo the spreadsheet escaping of a results CSV (see formulas.py), so values round-trip exactly."""
    return unquote_cells(frame)


# --- what the file is, and what it calls its columns ---------------------------------------------------------------


def _refuse_workbooks(path: Path) -> None:
    """An Excel or OpenDocument workbook, by its name or (renamed to .csv) by its first bytes, is refused with the
    way out; reading one is a spreadsheet program's job."""
    with open(path, "rb") as raw:
        magic = raw.read(len(_OLE_MAGIC))
    workbook = path.suffix.lower() in WORKBOOK_SUFFIXES or magic == _OLE_MAGIC
    if not workbook and magic.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                inside = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            inside = []
        workbook = any(name.startswith("xl/") or name in ("mimetype", "content.xml") for name in inside)
        if not workbook:
            raise InputError(
                f"{path}: this is a zip archive, not a CSV or Parquet file. Hint: unzip it and point input.path at "
                "the file inside."
            )
    if workbook:
        raise InputError(
            f"{path}: this is a spreadsheet workbook, not a CSV or Parquet file. Hint: export it as CSV or Parquet "
            "(in Excel: File > Save As > CSV UTF-8) and point input.path at the exported file."
        )


def _stand_in_names(header: list[str]) -> list[str]:
    """The header with each unnamed column called `column_N` (N its position), made unique against the real names,
    so polars can hold it until it is dropped."""
    taken = set(header)
    names = []
    for position, name in enumerate(header, 1):
        if not name.strip():
            name = f"column_{position}"
            while name in taken:
                name += "_"
            taken.add(name)
        names.append(name)
    return names


def _columns(positions: list[int]) -> str:
    """[7] -> 'column 7 has', [3, 7, 8, 9] -> 'columns 3, 7-9 have' (Excel can leave dozens of empty columns at the
    right)."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    listed = ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return f"column {listed} has" if len(positions) == 1 else f"columns {listed} have"


def _missing_columns(
    source: InputSpec, missing: list[str], header: list[str], columns: list[str], unnamed: list[int]
) -> str:
    """Why the spec's columns are not found, with the likeliest fix first: a wrong separator, a near name, a column
    whose name was left blank."""
    wanted = ", ".join(map(repr, missing))
    message = f"{source.path}: column(s) {wanted} named in the spec are not in the file."
    if len(header) == 1:
        guess = max(_SEPARATOR_GUESSES, key=header[0].count)
        if guess != source.separator and header[0].count(guess):
            shown = "tab" if guess == "\t" else f"`{guess}`"
            return (
                f"{message} Its header line is one column, {header[0]!r}. "
                f"Hint: this looks {shown}-separated: set `input.separator: {_SEPARATOR_GUESSES[guess]}`."
            )
    for name in missing:
        near = _near_name(name, columns)
        if near is not None:
            message += f" For {name!r}, did you mean {near}?"
    message += f" The file has: {', '.join(map(repr, columns))}."
    if unnamed:
        which = "one of them" if len(unnamed) > 1 else "it"
        message += (
            f" {_columns(unnamed).capitalize()} no name: if the spec means {which}, write its name in the header."
        )
    return message + " Hint: fix the `column:` names under `message:` in the spec, or the file's header line."


def _near_name(name: str, columns: list[str]) -> str | None:
    """The file's column `name` most likely means, shown quoted with how it differs; None if none is close."""
    for column in columns:
        if column.strip() == name.strip():
            return f"{column!r} (the file's name has spaces around it)"
    for column in columns:
        if column.strip().casefold() == name.strip().casefold():
            return f"{column!r} (only the case differs)"
    folded = {column.strip().casefold(): column for column in columns}
    close = difflib.get_close_matches(name.strip().casefold(), list(folded), n=1)
    return f"{folded[close[0]]!r}" if close else None


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
    if not any(name.strip() for name in header):
        raise InputError(
            f"{path}: line 1: the header line is blank. Hint: the first line must name the columns; "
            "remove any blank lines above it."
        )
    named = [name for name in header if name.strip()]
    duplicated = sorted({name for name in named if named.count(name) > 1})
    if duplicated:
        names = ", ".join(map(repr, duplicated))
        raise InputError(f"{path}: line 1: the header names column(s) {names} more than once.")
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
    """Blocks of whole records (never cutting a quoted field in two), with each block's first line number.

    What is left after the last complete record starts a record whose first line leaves a quote open (else there
    would be a record end after it): if the file ends there, or the record outgrows any real row, that quote is
    never closed, and it is blamed on the line it opened on, not on the end of the file it swallowed."""
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
        elif len(pending) > MAX_RECORD_BLOCKS * BLOCK_BYTES:
            raise InputError(_unclosed_quote(source.path, pending_line))
    if pending:
        if pending.count(b'"') % 2:
            raise InputError(_unclosed_quote(source.path, pending_line))
        yield pending, pending_line


def _end_of_last_record(data: bytes) -> int:
    """Index just after the last newline that is outside quotes (quotes pair up, doubled ones included), or 0."""
    quotes_before, upto = data.count(b'"'), len(data)
    end = data.rfind(b"\n")
    while end >= 0:
        # count only the stretch since the previous newline tried, so a long open quote costs one pass, not one per line
        quotes_before -= data.count(b'"', end, upto)
        upto = end
        if quotes_before % 2 == 0:
            return end + 1
        end = data.rfind(b"\n", 0, end)
    return 0


@dataclass(frozen=True)
class _Layout:
    """How wide a CSV record may be: the header's width, or short only by unnamed columns at its right end (Excel
    writes them for some rows and not others)."""

    names: list[str]  # as polars parses them, stand-in names for unnamed columns included
    min_width: int  # up to and including the last named column

    @property
    def width(self) -> int:
        return len(self.names)

    def fits(self, fields: int) -> bool:
        return self.min_width <= fields <= self.width


def _csv_batches(
    source: InputSpec, names: list[str], unnamed: list[str], skipped: _LineCount
) -> Iterator[pl.DataFrame]:
    named = [i for i, name in enumerate(names) if name not in unnamed]
    layout = _Layout(names=names, min_width=named[-1] + 1 if named else len(names))
    # a short row is padded with nulls by polars; a null in the last column that must be there is the sign of one
    last_needed = names[layout.min_width - 1]
    # a line with nothing but separators (every cell empty), or nothing but spaces (polars pads the other cells)
    separators_only = pl.all_horizontal([pl.col(name).is_null() | (pl.col(name) == "") for name in names])
    spaces_only = pl.all_horizontal(
        [pl.col(names[0]).str.strip_chars() == "", *(pl.col(n).is_null() for n in names[1:])]
    )
    blank = (separators_only | spaces_only).fill_null(False)
    first = True
    for block, line in _record_blocks(source):
        frame, diagnosed = _parse_block(source, block, line, layout, has_header=first)
        # blank lines are not rows: an export's padding, not contacts
        blank_lines = frame.select(blank.sum()).item()
        if blank_lines:
            skipped.lines += blank_lines
            frame = frame.filter(~blank)
        if not diagnosed and frame.height and frame.select(pl.col(last_needed).null_count()).item():
            problem = _diagnose_block(source, block, line, layout, skip_header=first)
            if problem is not None:
                raise InputError(problem)
        first = False
        yield frame


def _parse_block(
    source: InputSpec, block: bytes, line: int, layout: _Layout, *, has_header: bool
) -> tuple[pl.DataFrame, bool]:
    """The block as a frame of text columns, and whether the strict reader already passed every line of it."""
    try:
        return _read_block(source, block, layout, has_header=has_header, lenient=False), False
    except pl.exceptions.PolarsError as exc:
        refused = exc
    problem = _diagnose_block(source, block, line, layout, skip_header=has_header)
    if problem is not None:
        raise InputError(problem)
    # The strict reader found every line well-formed, so polars refused only what a spreadsheet export pads with: a
    # blank or separator-only line wider or narrower than the header (polars sizes a block by its first line), or
    # rows missing trailing unnamed cells. Read it again, padding and cutting lines to the header's width.
    try:
        return _read_block(source, block, layout, has_header=has_header, lenient=True), True
    except pl.exceptions.PolarsError:
        raise InputError(f"{source.path}: malformed CSV near line {line}: {_first_line(refused)}.") from None


def _read_block(source: InputSpec, block: bytes, layout: _Layout, *, has_header: bool, lenient: bool) -> pl.DataFrame:
    return pl.read_csv(
        block,
        separator=source.separator,
        has_header=has_header,
        schema={name: pl.String() for name in layout.names},  # all text, and as many fields as the header
        raise_if_empty=False,
        truncate_ragged_lines=lenient,
        missing_columns="insert" if lenient else "raise",
        extra_columns="ignore" if lenient else "raise",
    )


def _diagnose_block(
    source: InputSpec, block: bytes, first_line: int, layout: _Layout, *, skip_header: bool
) -> str | None:
    """The first line in `block` the strict stdlib reader rejects, described for the user; None if it finds none.
    Blank and separator-only lines are not rows, and pass whatever their width."""
    path = source.path
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _bad_text(path, "utf-8", first_line + block[: exc.start].count(b"\n"))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=source.separator, strict=True)
    start = first_line  # where the record being read began
    try:
        if skip_header:
            next(reader, None)
            start = first_line + reader.line_num
        for row in reader:
            if not layout.fits(len(row)) and not _is_blank(row):
                return (
                    f"{path}: line {start}: {len(row)} field(s) where the header has {layout.width}. "
                    "Hint: quote fields that contain the separator, or fix the row."
                )
            start = first_line + reader.line_num
    except csv.Error as exc:
        stopped = first_line + reader.line_num - 1
        if stopped > start:
            # the record ran on over several lines: a quote opened on its first line took the lines after it in
            return (
                f"{path}: line {start}: a quote opened on this line is not closed where the field ends (the reader "
                f"gave up at line {stopped}: {exc}). Hint: close the quote; a quote inside a field needs the whole "
                'field quoted and the quote doubled ("").'
            )
        return (
            f"{path}: line {start}: malformed CSV ({exc}). "
            'Hint: a field with quotes must be quoted whole, with inner quotes doubled ("").'
        )
    return None


def _is_blank(row: list[str]) -> bool:
    """The stdlib reader's view of what `_csv_batches` skips: a line of separators only, or of spaces only."""
    return not any(row) or (len(row) == 1 and not row[0].strip())


def _unclosed_quote(path: Path, line: int) -> str:
    return (
        f'{path}: line {line}: a quote (") opened on this line is never closed, so everything after it would be '
        "one field. Hint: close the quote; a quote inside a field needs the whole field quoted and the quote doubled: "
        '"12"" pizza".'
    )


def _bad_text(path: Path, encoding: str, near_line: int) -> str:
    if _is_utf8(encoding):
        return f"{path}: line {near_line}: not valid UTF-8 text. Hint: set input.encoding (e.g. latin-1 or cp1252)."
    return f"{path}: near line {near_line}: not valid {encoding} text. Hint: check input.encoding."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
