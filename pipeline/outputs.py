"""Where a command writes, and the check that keeps it from destroying anything: before any row is read or sent, no
output path may be the input file, the spec, or another output of the same command (compared after resolving links,
and as the same file behind a hard link), and an existing file is replaced only when it is one the tool wrote - a
results file has the `result_*` columns, a state database is SQLite, a summary is a JSON summary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

import polars as pl

from pipeline import objects
from pipeline.errors import OutputError

_RESULT_MARKERS = ("result_row", "result_status")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PEEK_BYTES = 64 << 10


class Kind(Enum):
    """What an output holds, which decides what an existing file there must look like to be replaced."""

    RESULTS = "results"
    STATE = "state"
    SUMMARY = "summary"
    OWN = "own"  # files only the tool writes beside its outputs (lock, manifest): a clash with the input still counts


@dataclass(frozen=True)
class Output:
    label: str  # how the user names it: "output.results", "--summary-json"
    path: Path
    kind: Kind


def dry_run_path(path: Path) -> Path:
    """Where a dry run writes its results: beside the real file, never over it."""
    return path.with_name(f"{path.stem}.dry-run{path.suffix}")


def server_dry_run_path(path: Path) -> Path:
    """Where `run --server-dry-run` writes its results: beside the real file, never over it."""
    return path.with_name(f"{path.stem}.server-dry-run{path.suffix}")


def test_send_path(path: Path) -> Path:
    """Where `run --test-to` writes its results: beside the real file, never over it."""
    return path.with_name(f"{path.stem}.test-send{path.suffix}")


def check_outputs(inputs: Sequence[tuple[str, Path]], outputs: Sequence[Output]) -> None:
    """Raise OutputError, naming both paths and the fix, if an output would overwrite an input, two outputs are one
    file, or an output would replace a file the tool did not write."""
    for i, out in enumerate(outputs):
        for label, path in inputs:
            if _same_file(out.path, path):
                raise OutputError(
                    f"{out.path}: {out.label} is the same file as {label} ({path}); writing it would destroy "
                    f"{label}. Hint: point {out.label} at another file."
                )
        for other in outputs[:i]:
            if _same_file(out.path, other.path):
                raise OutputError(
                    f"{out.path}: {out.label} and {other.label} are the same file; one would overwrite the other. "
                    f"Hint: give {out.label} a path of its own."
                )
    for out in outputs:
        _check_replaceable(out)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, and case-insensitive file systems
    except OSError:
        return False  # one of them does not exist yet


def _check_replaceable(out: Output) -> None:
    path = out.path
    if path.exists() and not path.is_file():
        # a rename over a folder or device would replace it, or fail only after every message was sent
        raise OutputError(f"{path}: {out.label} exists and is not a regular file. Hint: choose another path.")
    # an object in a bucket is looked at through a copy of what tells: a summary whole, a table's head, a Parquet
    # file's footer
    part: Literal["whole", "head", "parquet-footer"] = "whole"
    if out.kind is Kind.RESULTS:
        part = "parquet-footer" if path.suffix.lower() == ".parquet" else "head"
    with objects.existing_copy(path, label=out.label, part=part, head_bytes=_PEEK_BYTES) as existing:
        if existing is None:
            return
        copy, size = existing
        if out.kind is Kind.OWN or size == 0:
            return
        found = _describe_foreign(copy, out.kind, size)
    if found is not None:
        raise OutputError(
            f"{path}: {out.label} would overwrite an existing file that is not {_WHAT[out.kind]} (found {found}). "
            "Hint: choose another path, or move that file away if it may go."
        )


_WHAT = {
    Kind.RESULTS: "a results file",
    Kind.STATE: "a campaign state database",
    Kind.SUMMARY: "a run summary",
}


def _describe_foreign(path: Path, kind: Kind, size: int) -> str | None:
    """None when `path` is a file of `kind` that the tool wrote; otherwise a short description of what it is."""
    try:
        if kind is Kind.STATE:
            with open(path, "rb") as file:
                head = file.read(len(_SQLITE_MAGIC))
            return None if head == _SQLITE_MAGIC else _sniff(path, size)
        if kind is Kind.SUMMARY:
            return None if _is_summary(path) else _sniff(path, size)
        columns = _columns(path)
    except OSError as exc:
        return f"a file that cannot be read: {exc.strerror or exc}"
    if columns is None:
        return _sniff(path, size)
    if all(marker in columns for marker in _RESULT_MARKERS):
        return None
    shown = ", ".join(repr(c) for c in columns[:6]) + (", ..." if len(columns) > 6 else "")
    return f"a table with columns {shown} and no result_* columns"


def _columns(path: Path) -> list[str] | None:
    """The column names of a CSV, Parquet or JSON Lines table at `path`, or None if it is not one."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return list(pl.read_parquet_schema(path))
        except (pl.exceptions.PolarsError, OSError):
            return None
    with open(path, "rb") as file:
        first = file.readline(_PEEK_BYTES)
    try:
        text = first.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        return None
    if suffix == ".jsonl":
        try:
            record = json.loads(text)
        except ValueError:
            return None
        return list(record) if isinstance(record, dict) else None
    # any separator: the names are looked up, not split exactly
    for separator in (",", ";", "\t", "|"):
        if separator in text:
            return [name.strip().strip('"') for name in text.split(separator)]
    return [text.strip('"')] if text else None


def _is_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "campaign" in data


def _sniff(path: Path, size: int) -> str:
    with open(path, "rb") as file:
        head = file.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive or spreadsheet workbook"
    if head.startswith(_SQLITE_MAGIC):
        return "a SQLite database"
    if head.startswith(b"PAR1"):
        return "a Parquet file"
    if b"\x00" in head:
        return "a binary file"
    return f"a text file of {size:,} bytes"
