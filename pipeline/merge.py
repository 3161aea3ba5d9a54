"""Merging the results of a sharded campaign: each shard run leaves its results file and a small manifest beside it
(campaign, shard, shard count, rows); `merge_shards` checks that the set is complete and from one campaign, and writes
the campaign's results file in input order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import objects
from pipeline.errors import OutputError, UsageError
from pipeline.outputs import Kind, Output, check_outputs
from pipeline.results import RESULT_SCHEMA, CsvOptions, write_results
from pipeline.shard import Shard
from pipeline.source import unescape_formulas
from pipeline.spec import CampaignSpec

MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.name + MANIFEST_SUFFIX)


def write_shard_manifest(results_path: Path, campaign: str, shard: Shard, *, rows: int) -> None:
    data = {"campaign": campaign, "shard": shard.index, "shards": shard.count, "rows": rows}
    path = manifest_path(results_path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(
            f"{path}: cannot write the shard manifest: {exc.strerror or exc}", after_sending=True
        ) from None


@dataclass(frozen=True)
class MergeSummary:
    campaign: str
    shards: int
    rows: int
    counts: dict[str, int]
    results_path: str


def merge_shards(spec: CampaignSpec) -> MergeSummary:
    """Combine `results.shard-I-of-N.EXT` files into `results.EXT`. Raises UsageError for an incomplete set, shards of
    another campaign, or overlapping rows."""
    target = spec.output.results
    pattern = f"{target.stem}.shard-*-of-*{target.suffix}{MANIFEST_SUFFIX}"
    objects.fetch_matching(target.parent, pattern, label="merge")  # shards' manifests in a bucket
    manifests = sorted(target.parent.glob(pattern))
    if not manifests:
        raise UsageError(
            f"{target.parent}: no shard results of {target.name} to merge (looked for {pattern}). "
            "Hint: run the shards first with `run SPEC --shard I/N`."
        )
    found: dict[int, dict[int, Path]] = {}
    for path in manifests:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("campaign") != spec.name:
            raise UsageError(
                f"{path}: these shard results belong to campaign {data.get('campaign')!r}, not {spec.name!r}; "
                "refusing to merge results of different campaigns."
            )
        found.setdefault(int(data["shards"]), {})[int(data["shard"])] = path
    if len(found) > 1:
        raise UsageError(
            f"{target.parent}: shard results of {target.name} for different shard counts ({sorted(found)}); "
            "remove the stale ones and merge again."
        )
    count, shards = next(iter(found.items()))
    missing = sorted(set(range(count)) - set(shards))
    if missing:
        raise UsageError(
            f"{target.parent}: cannot merge {target.name}: shard(s) {', '.join(map(str, missing))} of {count} "
            "have no results yet. Hint: run them with `run SPEC --shard I/N`, then merge."
        )
    parts = [shards[i].with_name(shards[i].name.removesuffix(MANIFEST_SUFFIX)) for i in range(count)]
    inputs = [("input.path", spec.input.path), ("the job spec", spec.spec_path)]
    inputs += [(f"the results of shard {i}", part) for i, part in enumerate(parts)]
    check_outputs(inputs, [Output("output.results", target, Kind.RESULTS)])
    for i, part in enumerate(parts):
        objects.fetch(part, label=f"the results of shard {i}")
    csv = CsvOptions.of(spec)  # the shards were written with the spec's options too
    frames = [_read(part, csv.separator) for part in parts]
    # diagonal: shards tracked (with the delivery columns) and shards not yet tracked combine, the latter empty there
    merged = pl.concat(frames, how="diagonal_relaxed").sort("result_row")
    if merged["result_row"].is_duplicated().any():
        raise UsageError(f"{target.parent}: shard results overlap (a row appears in two shards); not merging.")
    # the shards' `'` were taken off on reading, so writing guards each cell once, as a run would
    write_results(merged, target, csv=csv)
    counts = dict(merged.group_by("result_status").len().sort("result_status").iter_rows())
    return MergeSummary(
        spec.name, count, merged.height, {str(k): int(v) for k, v in counts.items()}, objects.display(target)
    )


def _read(path: Path, separator: str) -> pl.DataFrame:
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif path.suffix == ".jsonl":
            frame = pl.read_ndjson(path)
        else:
            frame = unescape_formulas(pl.read_csv(path, infer_schema=False, separator=separator))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UsageError(f"{path}: cannot read these shard results: {str(exc).splitlines()[0]}") from None
    return frame.with_columns(pl.col(name).cast(dtype) for name, dtype in RESULT_SCHEMA.items())
