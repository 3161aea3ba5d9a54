"""Row validation: every reason a row cannot be sent, and which rows repeat an earlier one.

All checks are polars expressions over the whole frame. A row gets every reason that applies, joined by "; ", so a
user fixes the file once. Reasons name the field and the column but never the value: they are grouped and counted
in reports, and values are people's data.
"""

from __future__ import annotations

import polars as pl

from pipeline.api import Generation
from pipeline.fields import CONTENT, ROW, variable_column
from pipeline.spec import MessageSpec

STATUS = "result_status"
ERROR = "result_error"
INVALID = "invalid"
DUPLICATE = "duplicate"
SUPPRESSED = "suppressed"  # the recipient is on a suppression list (`suppress`): never sent
DEFERRED = "deferred"  # outside the recipient's sending hours (`send.window`) now: sent by a run once it opens
VALID = "valid"  # in the output of commands that send nothing (validate --output, run --dry-run): would be sent
REASON_SEPARATOR = "; "
_SEED_HI, _SEED_LO = 0x5E17, 0xD0C5


def _reasons(message: MessageSpec, generation: Generation) -> list[pl.Expr]:
    reasons = generation.reasons(message)
    for i, (name, source) in enumerate(message.variables.items()):
        if source.column is None:
            continue
        value = pl.col(variable_column(i))
        reasons.append(
            pl.when(value.is_null() | (value.str.strip_chars() == "")).then(
                pl.lit(f"variable {name} is empty (column {source.column})")
            )
        )
    return reasons


def check_rows(
    fields: pl.DataFrame, message: MessageSpec, generation: Generation, extra: list[pl.Expr] | None = None
) -> pl.DataFrame:
    """`fields` (from payload.message_fields) plus `result_status` ("invalid", "duplicate" or null for a row to
    send) and `result_error` (every reason, or "duplicate of row N"). `extra`: more reasons (null where none)."""
    reasons = _reasons(message, generation) + (extra or [])
    error = (
        pl.concat_str(reasons, separator=REASON_SEPARATOR, ignore_nulls=True)
        if reasons
        else pl.lit(None, dtype=pl.String)
    )
    checked = fields.with_columns(pl.when(error != "").then(error).alias(ERROR))
    valid = pl.col(ERROR).is_null()
    # the first valid row with a given content is sent; later ones point at it
    first_row = pl.col(ROW).min().over(pl.when(valid).then(pl.col(CONTENT)))
    duplicate = valid & (first_row != pl.col(ROW))
    return checked.with_columns(
        pl.when(~valid).then(pl.lit(INVALID)).when(duplicate).then(pl.lit(DUPLICATE)).alias(STATUS),
        pl.when(duplicate).then(pl.format("duplicate of row {}", first_row)).otherwise(pl.col(ERROR)).alias(ERROR),
    )


def reason_counts(checked: pl.DataFrame, *, examples: int = 5) -> pl.DataFrame:
    """One row per distinct invalidity reason: `reason`, `rows` (count) and `example_rows` (first few row numbers),
    most frequent first."""
    return (
        checked.filter(pl.col(STATUS) == INVALID)
        .select(ROW, pl.col(ERROR).str.split(REASON_SEPARATOR).alias("reason"))
        .explode("reason")
        .group_by("reason")
        .agg(pl.len().alias("rows"), pl.col(ROW).sort().head(examples).alias("example_rows"))
        .sort(["rows", "reason"], descending=[True, False])
    )


class SeenKeys:
    """The set of row contents accepted so far in this pass over the input, for finding duplicates across batches
    in 12 bytes per row: each content is kept as a 96-bit hash (64 + 32 bits of two polars hashes with different
    seeds; a chance collision among 10 million rows is about 1 in 10^15) in
    sorted runs that are searched with binary search and merged as they grow (small runs into bigger ones, up to a
    cap, so a merge never needs much more memory than the runs it merges).

    polars' hash is fast and the same throughout one process, which is all a pass needs; it is never stored (the
    durable idempotency keys are payload.py's). Rows within one batch are compared by their full content."""

    _MAX_RUN = 1_000_000

    def __init__(self) -> None:
        self._runs: list[pl.DataFrame] = []

    def __len__(self) -> int:
        return sum(run.height for run in self._runs)

    def mark_duplicates(self, checked: pl.DataFrame) -> pl.DataFrame:
        """Rows of `checked` still to send whose key an earlier batch already had become `duplicate`; the rest are
        added to the set."""
        pending = checked.filter(pl.col(STATUS).is_null())
        if pending.height == 0:
            return checked
        split = pending.select(
            ROW,
            pl.col(CONTENT).hash(seed=_SEED_HI).alias("hi"),
            (pl.col(CONTENT).hash(seed=_SEED_LO) & 0xFFFFFFFF).cast(pl.UInt32).alias("lo"),
        )
        seen = self._contains(split)
        if seen.any():
            repeated = pl.col(ROW).is_in(split.filter(seen)[ROW].implode())
            checked = checked.with_columns(
                pl.when(repeated).then(pl.lit(DUPLICATE)).otherwise(pl.col(STATUS)).alias(STATUS),
                pl.when(repeated).then(pl.lit("duplicate of an earlier row")).otherwise(pl.col(ERROR)).alias(ERROR),
            )
            split = split.filter(~seen)
        self._add(split.select("hi", "lo"))
        return checked

    def _contains(self, split: pl.DataFrame) -> pl.Series:
        found = pl.repeat(False, split.height, eager=True)
        hi, lo = split["hi"], split["lo"]
        for run in self._runs:
            run_hi, run_lo = run["hi"], run["lo"]
            at = run_hi.search_sorted(hi, side="left")
            inside = at < run.height
            index = at.zip_with(inside, pl.repeat(0, split.height, dtype=at.dtype, eager=True))
            same_hi = inside & (run_hi.gather(index) == hi)
            exact = same_hi & (run_lo.gather(index) == lo)
            found = found | exact
            # contents whose 64-bit hashes agree (about one pair in 10^19): runs are sorted by that hash only, so
            # look at every entry that shares it
            for i in (same_hi & ~exact).arg_true():
                j = int(index[i]) + 1
                while j < run.height and run_hi[j] == hi[i]:
                    if run_lo[j] == lo[i]:
                        found[i] = True
                        break
                    j += 1
        return found

    def _add(self, keys: pl.DataFrame) -> None:
        if keys.height == 0:  # a batch of nothing but repeats: an empty run would make `_contains` gather from nothing
            return
        self._runs.append(keys.sort("hi"))
        while len(self._runs) >= 2:
            last, before = self._runs[-1], self._runs[-2]
            merged_size = last.height + before.height
            if last.height < before.height // 2 or merged_size > self._MAX_RUN:
                break
            self._runs[-2:] = [pl.concat([before, last]).sort("hi")]
