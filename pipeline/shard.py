"""Sharding a campaign across processes or machines: which rows belong to shard I of N, and the file names each shard
writes. A row's shard follows from its idempotency key (a hash of the campaign name and the row's content), so the
assignment is the same on every machine and run, whatever the row order, and the N shards together are exactly the
campaign, with no row in two shards. Rows that repeat each other share a key, so they land in the same shard and
duplicate detection stays exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 10_000


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based, like Airflow's map_index
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD.match(text)
        if match is None:
            raise UsageError(f"--shard {text!r}: write I/N, e.g. 0/4 for the first of four shards")
        index, count = int(match.group(1)), int(match.group(2))
        if not 1 <= count <= MAX_SHARDS or not 0 <= index < count:
            raise UsageError(f"--shard {text!r}: N must be 1-{MAX_SHARDS} and I from 0 to N-1")
        return cls(index, count)

    @property
    def label(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def selects(self, keys: pl.Expr) -> pl.Expr:
        """True for the rows of this shard, given their 32-hex-digit idempotency keys."""
        # 15 hex digits = 60 bits: fits an Int64, and uniform because the key is a cryptographic hash
        return keys.str.slice(0, 15).str.to_integer(base=16) % self.count == self.index

    def path(self, path: Path) -> Path:
        """`results.csv` -> `results.shard-2-of-4.csv` (the same for the state database)."""
        return path.with_name(f"{path.stem}.{self.label}{path.suffix}")
