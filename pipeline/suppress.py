"""Suppression lists (the spec's `suppress:`): the recipients a campaign must never text - opt-outs, complaints,
numbers that bounced - read from CSV or Parquet files, written in whatever format people write them, normalised the
way the input's recipients are, and the rows of a checked frame they match.

A list that cannot be used (missing, unreadable, without its column) is an InputError before anything is sent: a
run never goes ahead without a list it was told to honour. A value in a list that does not normalise (not a phone
number, not a GUID) could match no row; such values are counted, never shown (they are people's data).
Matching is one join of the rows' normalised recipients against the distinct listed values, however long the lists.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import objects, phones
from pipeline.errors import InputError
from pipeline.fields import CONTACT, TO
from pipeline.payload import as_text
from pipeline.source import WORKBOOK_SUFFIXES
from pipeline.spec import GUID_PATTERN, TAB_SEPARATED_SUFFIXES, CampaignSpec, SuppressSpec
from pipeline.validate import ERROR, STATUS

SUPPRESSED = "suppressed"  # result_status of a row whose recipient is on a suppression list

# columns of `Suppressions.values`
VALUE = "suppressed_value"  # a normalised recipient: E.164 (v3), a lower-case GUID (v1/v2)
LIST = "suppression_list"  # the file name of the first list that holds it

# the column a list names its recipients in, unless its entry says otherwise
DEFAULT_COLUMNS = {"v3": "phone", "v2": "contact_id", "v1": "contact_id"}
# separators a CSV list may use: the header line says which (the one that makes the named column a column)
_SEPARATORS = (",", ";", "\t", "|")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_HEADER_BYTES = 64 << 10
_LISTED = "_listed"


@dataclass(frozen=True)
class ListStats:
    """What one list held: `rows` entries, `blank` of them empty, `unusable` not a recipient (counted, not shown)."""

    path: Path
    column: str
    rows: int
    blank: int
    unusable: int

    def note(self, version: str) -> str | None:
        """A warning for the summary when some values could match no row; None when every value is usable."""
        if not self.unusable:
            return None
        what = "valid phone numbers" if version == "v3" else "GUIDs"
        return (
            f"{objects.display(self.path)}: {self.unusable} of {self.rows} values in column {self.column!r} are not "
            f"{what}; they can match no row and are ignored."
        )


@dataclass(frozen=True)
class Suppressions:
    """Every list's distinct normalised recipients (`suppressed_value`, with the `suppression_list` that first holds
    each), and what each list held."""

    values: pl.DataFrame
    lists: tuple[ListStats, ...]

    @property
    def count(self) -> int:
        return self.values.height


def default_column(version: str) -> str:
    """The column a list's recipients are read from when its entry names none: `phone` on v3, `contact_id` else."""
    return DEFAULT_COLUMNS[version]


def recipient_column(version: str) -> str:
    """The fields-frame column a list is matched against: the E.164 `to` (v3), the lower-case `contact_id` else."""
    return TO if version == "v3" else CONTACT


def load_campaign_suppressions(spec: CampaignSpec) -> Suppressions:
    """The lists of `spec.suppress` (paths resolved by load_spec), read with the spec's version and default region."""
    return load_suppressions(spec.suppress, version=spec.api.version, default_region=spec.message.default_region)


def load_suppressions(entries: Sequence[SuppressSpec], *, version: str, default_region: str | None) -> Suppressions:
    """Read and normalise every list, in spec order. Raises InputError naming the file and the fix when a list
    cannot be used."""
    frames, stats = [], []
    for position, entry in enumerate(entries):
        values, listed = load_list(entry, version=version, default_region=default_region, position=position)
        frames.append(values)
        stats.append(listed)
    empty = pl.DataFrame(schema={VALUE: pl.String, LIST: pl.String})
    values = pl.concat([empty, *frames]).unique(subset=VALUE, keep="first", maintain_order=True)
    return Suppressions(values=values, lists=tuple(stats))


def load_list(
    entry: SuppressSpec, *, version: str, default_region: str | None, position: int = 0
) -> tuple[pl.DataFrame, ListStats]:
    """One list's distinct normalised recipients (`suppressed_value`, `suppression_list`) and what it held. CSV or
    Parquet by the file's extension (`.parquet`/`.pq`); a CSV list's separator is `,`, `;`, tab or `|`, whichever
    makes the column one of its header's."""
    path = entry.path
    column = entry.column or default_column(version)
    where = f"suppression list (suppress[{position}])"
    objects.fetch(path, label=f"suppress[{position}]")  # a list in a bucket is read from a local copy
    if not path.exists():
        raise InputError(
            f"{path}: {where} not found. Hint: its path is relative to the spec file's folder; nothing is sent while "
            "a list cannot be read, so fix the path or remove the entry."
        )
    if not path.is_file():
        raise InputError(f"{path}: {where} is not a file. Hint: name the CSV or Parquet file itself.")
    if path.suffix.lower() in WORKBOOK_SUFFIXES:
        raise InputError(
            f"{path}: {where} is a spreadsheet workbook. Hint: export it as CSV or Parquet and name that file."
        )
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        written = _read_parquet(path, column, where)
    else:
        written = _read_csv(path, column, where)
    recipients = normalise_recipients(written, version=version, default_region=default_region)
    blank = written.is_null() | (written.str.strip_chars() == "")
    stats = ListStats(
        path=path,
        column=column,
        rows=written.len(),
        blank=int(blank.sum()),
        unusable=int((recipients.is_null() & ~blank).sum()),
    )
    values = (
        recipients.drop_nulls()
        .unique(maintain_order=True)
        .to_frame(VALUE)
        .with_columns(pl.lit(path.name, dtype=pl.String).alias(LIST))
    )
    return values, stats


def normalise_recipients(values: pl.Series, *, version: str, default_region: str | None) -> pl.Series:
    """Each value as the input's recipients are written once checked - E.164 for v3 (with `default_region` for
    numbers without a country code), a trimmed lower-case GUID for v1/v2 - or null when it is not one."""
    text = values.cast(pl.String)
    if version == "v3":
        return phones.normalise_phones(text, default_region=default_region)[phones.E164].alias(VALUE)
    guid = text.str.strip_chars().str.to_lowercase()
    return guid.to_frame(VALUE).select(pl.when(pl.col(VALUE).str.contains(GUID_PATTERN)).then(pl.col(VALUE)))[VALUE]


def mark_suppressed(checked: pl.DataFrame, suppressions: Suppressions, *, recipient: str) -> pl.DataFrame:
    """`checked` (rows with `result_status` null when they would be sent, and `result_error`) with each such row
    whose `recipient` column is listed marked `suppressed`, `result_error` naming the list: `on suppression list
    opt-outs.csv`. Rows already invalid or duplicate keep their status. Same rows, same order, same columns."""
    listed = suppressions.values.select(pl.col(VALUE).alias("_key"), pl.col(LIST).alias(_LISTED))
    joined = checked.with_columns(pl.col(recipient).cast(pl.String).alias("_key")).join(
        listed, on="_key", how="left", maintain_order="left"
    )
    hit = pl.col(STATUS).is_null() & pl.col(_LISTED).is_not_null()
    return joined.with_columns(
        pl.when(hit).then(pl.lit(SUPPRESSED)).otherwise(pl.col(STATUS)).alias(STATUS),
        pl.when(hit)
        .then(pl.concat_str(pl.lit("on suppression list "), pl.col(_LISTED)))
        .otherwise(pl.col(ERROR))
        .alias(ERROR),
    ).select(checked.columns)


# --- reading -------------------------------------------------------------------------------------------------------


def _read_parquet(path: Path, column: str, where: str) -> pl.Series:
    try:
        scan = pl.scan_parquet(path)
        names = list(scan.collect_schema().names())
        if column not in names:
            raise InputError(_missing_column(path, where, column, names))
        frame = scan.select(column).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"{path}: {where} is not a readable Parquet file: {_first_line(exc)}. Hint: nothing is sent while a "
            "list cannot be read: replace the file or remove the entry."
        ) from None
    # typed values (a column of integers) become the text the input's typed values would
    return as_text(frame, [column])[column]


def _read_csv(path: Path, column: str, where: str) -> pl.Series:
    try:
        with open(path, "rb") as raw:
            head = raw.read(_HEADER_BYTES)
    except OSError as exc:
        raise InputError(f"{path}: {where} cannot be read: {exc.strerror or exc}.") from None
    if not head.strip():
        raise InputError(
            f"{path}: {where} is empty. Hint: it needs a header line naming the column ({column!r}), then one "
            "recipient per line."
        )
    first_line = head.decode("utf-8-sig", errors="replace").splitlines()[0]
    preferred = "\t" if path.suffix.lower() in TAB_SEPARATED_SUFFIXES else ","
    headers = {sep: next(csv.reader([first_line], delimiter=sep)) for sep in (preferred, *_SEPARATORS)}
    found = [(sep, name) for sep, header in headers.items() for name in header if name.strip() == column]
    if not found:
        widest = max(headers.values(), key=len)
        raise InputError(_missing_column(path, where, column, widest))
    separator, name = found[0]
    try:
        # every column, though one is used: polars refuses a line with more fields than the header only then, and a
        # shifted line would put someone's number in another column, unsuppressed. Lossy: a stray byte in another
        # column must not stop the run; one in a recipient makes that value unusable.
        frame = pl.read_csv(path, separator=separator, infer_schema=False, encoding="utf8-lossy")
    except (pl.exceptions.PolarsError, OSError):
        # polars' message quotes the line, which holds people's data: say where instead
        line = _malformed_line(path, separator)
        near = f" at line {line}" if line is not None else ""
        raise InputError(
            f"{path}: {where} is not a well-formed CSV file{near} (more fields than the header, or a quote that is "
            "never closed). Hint: nothing is sent while a list cannot be read: fix the file or remove the entry."
        ) from None
    return frame[name]


def _malformed_line(path: Path, separator: str) -> int | None:
    """The line where the first record with more fields than the header, or with a quote never closed, starts."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as text:
        reader = csv.reader(text, delimiter=separator, strict=True)
        start = 1
        try:
            width = len(next(reader))
            for fields in reader:
                if len(fields) > width:
                    return start + 1
                start = reader.line_num
        except csv.Error:
            return start + 1
    return None


def _missing_column(path: Path, where: str, column: str, names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names) or "none"
    wanted = column.lower()
    lowered = {n.strip().lower(): n for n in names}
    close = (
        [n for key, n in lowered.items() if key == wanted]
        or [n for key, n in lowered.items() if wanted in key]  # `Phone_Number` for `phone`
        or [lowered[key] for key in difflib.get_close_matches(wanted, list(lowered), n=1)]
    )
    name_it = f"`suppress: [{{path: {path.name}, column: NAME}}]`"
    hint = f"did you mean {close[0]!r}? Name it in the spec: {name_it}" if close else f"name the column: {name_it}"
    return f"{path}: {where} has no column {column!r} (its columns: {shown}). Hint: {hint}."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
