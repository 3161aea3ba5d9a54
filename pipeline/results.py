"""The results file: one row per input row, in input order, the input's columns unchanged followed by the result
columns. Written atomically (temp file in the same folder, fsync, rename) as CSV, Parquet or JSON Lines, chosen by
the file's extension. A CSV is UTF-8, with the input's separator unless `output.csv_separator` names another, a byte
order mark only with `output.csv_bom`, and a `'` before cells a spreadsheet could run as a formula unless
`output.csv_formula_guard` is off (formulas.py has the rule; source.py takes the `'` off when a results CSV is read
back as input, so values round-trip exactly).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl

from pipeline.errors import OutputError
from pipeline.formulas import quote_cells
from pipeline.source import ROW_COLUMN
from pipeline.spec import CampaignSpec

RESULT_SCHEMA: dict[str, type[pl.DataType]] = {
    "result_row": pl.Int64,
    "result_status": pl.String,
    "result_http_status": pl.Int64,
    "result_message_id": pl.String,
    "result_error": pl.String,
    "result_attempts": pl.Int64,
    "result_sent_at": pl.String,
    "result_latency_ms": pl.Float64,
}


# v3 only (the recipient is a phone number): the number as sent, in E.164; placed right after result_status
TO_COLUMN = "result_to"
# What `track` learnt of each row's messages (campaign/delivery.py decides a row's status from its messages'): last
# in the file, present once `track` has run for the campaign
DELIVERY_SCHEMA: dict[str, type[pl.DataType]] = {
    "result_delivery_status": pl.String,  # QUEUED ROUTED SENT DELIVERED READ FAILED; empty when nothing is known
    "result_delivery_error": pl.String,  # why it failed (ERR_CONSENT_BLOCKED...), when known
    "result_delivery_at": pl.String,  # the time of the event that set the status, as Sent.dm gave it
    "result_delivery_channel": pl.String,  # the channel of the message that gave the row its status
}


@dataclass(frozen=True)
class CsvOptions:
    """How a results CSV is written (other formats ignore these)."""

    separator: str = ","
    bom: bool = False
    formula_guard: bool = True

    @classmethod
    def of(cls, spec: CampaignSpec) -> CsvOptions:
        """The spec's choices; the separator defaults to the input's, so a `;` file comes back a `;` file."""
        output = spec.output
        return cls(
            separator=output.csv_separator or spec.input.separator,
            bom=output.csv_bom,
            formula_guard=output.csv_formula_guard,
        )


def assemble_results(frame: pl.DataFrame, outcomes: pl.DataFrame) -> pl.DataFrame:
    """`frame` (the input with `result_row`) joined with `outcomes` (`result_row` and any of the result columns,
    one row per input row), columns in the documented order."""
    schema = result_schema(with_to=TO_COLUMN in outcomes.columns)
    if "result_delivery_status" in outcomes.columns:
        schema = {**schema, **DELIVERY_SCHEMA}
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in outcomes]
    typed = outcomes.with_columns(missing).select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    input_columns = [c for c in frame.columns if c != ROW_COLUMN]
    joined = frame.join(typed, on=ROW_COLUMN, how="left", maintain_order="left")
    return joined.select(*input_columns, *schema)


def result_schema(*, with_to: bool) -> dict[str, type[pl.DataType]]:
    """The result columns in order: RESULT_SCHEMA, with `result_to` after `result_status` on v3."""
    if not with_to:
        return RESULT_SCHEMA
    names = list(RESULT_SCHEMA)
    at = names.index("result_status") + 1
    return {name: RESULT_SCHEMA.get(name, pl.String) for name in [*names[:at], TO_COLUMN, *names[at:]]}


def write_results(
    results: pl.DataFrame, path: Path, *, after_sending: bool = False, csv: CsvOptions | None = None
) -> int:
    """Replace `path` with `results` atomically; returns how many cells the CSV guard prefixed with `'`. Raises
    OutputError (no traceback) when it cannot."""
    writer = ResultsWriter(path, after_sending=after_sending, csv=csv)
    writer.write(results)
    writer.close()
    return writer.guarded_cells


class ResultsWriter:
    """Writes a results file batch by batch into a temp file beside it, and puts it in place atomically on `close`.
    Memory stays flat: CSV and JSON Lines are appended; Parquet batches go to part files that are streamed into one
    file at the end."""

    def __init__(self, path: Path, *, after_sending: bool = False, csv: CsvOptions | None = None) -> None:
        self.path = path
        self.after_sending = after_sending
        self.csv = csv or CsvOptions()
        self.suffix = path.suffix.lower()
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._parts: list[Path] = []
        self._out: BinaryIO | None = None
        self.rows = 0
        self.guarded_cells = 0  # CSV cells written with a `'` before them, over all batches
        self._guard(lambda: path.parent.mkdir(parents=True, exist_ok=True))

    def write(self, batch: pl.DataFrame) -> None:
        self._guard(lambda: self._write(batch))
        self.rows += batch.height

    def _write(self, batch: pl.DataFrame) -> None:
        if self.suffix == ".parquet":
            part = self.temp.with_name(f"{self.temp.name}.part-{len(self._parts):05d}.parquet")
            batch.write_parquet(part)
            self._parts.append(part)
            return
        if self._out is None:
            self._out = open(self.temp, "wb")  # noqa: SIM115 - kept open across batches, closed in close()/abort()
            if self.suffix != ".jsonl" and self.csv.bom:
                self._out.write(codecs.BOM_UTF8)
        if self.suffix == ".jsonl":
            batch.write_ndjson(self._out)
            return
        quoted, guarded = quote_cells(batch, formula_guard=self.csv.formula_guard)
        quoted.write_csv(self._out, include_header=self.rows == 0, separator=self.csv.separator)
        self.guarded_cells += guarded

    def close(self) -> None:
        """Flush, fsync, and rename over the results file."""
        self._guard(self._finish)

    def _finish(self) -> None:
        if self.suffix == ".parquet":
            pl.scan_parquet(self._parts).sink_parquet(self.temp)
            for part in self._parts:
                part.unlink()
            with open(self.temp, "rb") as written:
                os.fsync(written.fileno())
        else:
            if self._out is None:
                self._out = open(self.temp, "wb")  # noqa: SIM115 - closed just below
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None
        os.replace(self.temp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Remove what was written; the results file stays as it was."""
        if self._out is not None:
            self._out.close()
            self._out = None
        for part in self._parts:
            part.unlink(missing_ok=True)
        self.temp.unlink(missing_ok=True)

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except (OSError, pl.exceptions.PolarsError) as exc:
            self.abort()
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise OutputError(
                f"{self.path}: cannot write the results file: {reason}. Hint: free disk space or choose another "
                "output.results; the run's state is kept, so running again only rewrites the results.",
                after_sending=self.after_sending,
            ) from None


def check_writable(path: Path) -> None:
    """Fail before anything is sent if the results folder cannot take a file."""
    if path.exists() and not path.is_file():
        # a rename over a device or folder would replace it, or fail only after every message was sent
        raise OutputError(f"{path}: the results path exists and is not a regular file. Hint: fix output.results.")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"{path}: the results file cannot be written there: {exc.strerror or exc}. Hint: fix output.results."
        ) from None


def _fsync_dir(folder: Path) -> None:
    # the rename is durable only once the folder's entry is on disk
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
