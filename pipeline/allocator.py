"""How polars' allocator (jemalloc) gives freed memory back, chosen before polars is loaded (it reads
`_RJEM_MALLOC_CONF` once, when it loads).

Returning freed pages at once keeps memory flat as inputs grow - batch after batch, pages kept for a while were
most of the peak (measured on 1M rows: 230 MB -> 175 MB) - but every page used again must then be faulted back in:
on 1,000,000 v3 rows that was 2-3 s of system time, more than the work itself. So there are two settings:

- FLAT (the default, and for large inputs): dirty pages are handed back at once; they go through jemalloc's
  "muzzy" state (MADV_FREE), which keeps the peak where it was and costs less system time than purging outright.
- QUICK (for command-line runs on inputs up to QUICK_UP_TO bytes): freed pages are kept for a few milliseconds,
  which costs about 30-40 MB of peak memory and saves most of that system time. At 64 MiB of CSV the peak stays
  well under 300 MB (measured: 1,000,000 v3 rows 277 MB, v1 213 MB; 10,000,000 v1 rows would be 311 MB).

A value the user put in the environment wins, as does any value set before this package was imported.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "_RJEM_MALLOC_CONF"
FLAT = "dirty_decay_ms:0,muzzy_decay_ms:5000"
QUICK = "dirty_decay_ms:5,muzzy_decay_ms:0"
QUICK_UP_TO = 64 * 2**20
# the default polars puts into the environment when it is imported (so a parent process that imported polars passes
# it on to its children): not a user's choice
_POLARS_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"
_TEXT_INPUTS = (".csv", ".tsv", ".txt")


def choose_default() -> None:
    """FLAT, unless the environment has a value of its own: for any use of the package (tests, Airflow tasks)."""
    if os.environ.get(VARIABLE, _POLARS_DEFAULT) == _POLARS_DEFAULT:
        os.environ[VARIABLE] = FLAT


def choose_for_command(arguments: list[str]) -> None:
    """QUICK instead of FLAT when the command's input is a local text file of at most QUICK_UP_TO bytes. Called by
    `python -m pipeline` before anything loads polars; a guess it cannot make (a URL, a variable in the path, no
    spec) leaves FLAT. Only speed and memory depend on it, never a result."""
    if os.environ.get(VARIABLE) != FLAT:
        return
    size = _input_size(arguments)
    if size is not None and size <= QUICK_UP_TO:
        os.environ[VARIABLE] = QUICK


def _input_size(arguments: list[str]) -> int | None:
    try:
        path = _input_path(arguments)
        if path is None or path.suffix.lower() not in _TEXT_INPUTS:
            return None
        return path.stat().st_size
    except (OSError, ValueError):
        return None


def _input_path(arguments: list[str]) -> Path | None:
    for n, argument in enumerate(arguments):
        if argument == "--input" and n + 1 < len(arguments):
            return _local(arguments[n + 1], Path.cwd())
        if argument.startswith("--input="):
            return _local(argument.partition("=")[2], Path.cwd())
    specs = [Path(a) for a in arguments if a.endswith((".yaml", ".yml")) and not a.startswith("-")]
    if len(specs) != 1 or not specs[0].is_file():
        return None
    import yaml  # light, and needed by the spec anyway

    document = yaml.safe_load(specs[0].read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("input"), dict):
        return None
    given = document["input"].get("path")
    return _local(given, specs[0].resolve().parent) if isinstance(given, str) else None


def _local(given: str, base: Path) -> Path | None:
    if "$" in given or "://" in given:
        return None
    path = Path(given).expanduser()
    return path if path.is_absolute() else base / path
