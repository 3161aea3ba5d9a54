"""Rules built once per machine, kept on disk: phones.py's phone rules, which take ~0.7 s to build from
libphonenumber's metadata and ~20 ms to load.

They are kept in the user's cache folder (`$XDG_CACHE_HOME`, else `~/.cache`) under `sentdm-batch/`, in a folder
named for what they were built from (the phonenumbers and polars versions and this module's format), so an upgrade
builds them anew. A folder that cannot be read or written is no error: the rules are then built in the process.
Plain values are JSON and tables Arrow IPC files: nothing is unpickled. A folder appears whole or not at all (it is
written under a temporary name, then renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

FORMAT = 1
T = TypeVar("T")


def folder(kind: type, name: str, *versions: str) -> Path | None:
    """Where the rules called `name`, a `kind` built from `versions`, are kept (None without a home folder). The
    folder's name also carries a fingerprint of `kind`'s fields, so a change to them is a new folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:  # a container may run under a user with no home folder
            home = Path.home()
        except (RuntimeError, KeyError):
            return None
        if home == Path("/"):
            return None
        base = str(home / ".cache")
    fingerprint = hashlib.sha256(_shape(kind).encode()).hexdigest()[:12]
    tag = "-".join([name, *versions, f"format{FORMAT}", fingerprint]).replace(os.sep, "_")
    return Path(base) / "sentdm-batch" / tag


def _shape(kind: type) -> str:
    hints = typing.get_type_hints(kind)
    parts = []
    for field in dataclasses.fields(kind):
        hint = hints[field.name]
        nested = isinstance(hint, type) and dataclasses.is_dataclass(hint)
        parts.append(f"{field.name}:{_shape(hint) if nested else hint}")
    return "(" + ",".join(parts) + ")"


def load(kind: type[T], where: Path | None) -> T | None:
    """The rules kept at `where`, as a `kind` (a dataclass), or None if there are none or they cannot be read."""
    if where is None or not where.is_dir():
        return None
    try:
        plain = json.loads((where / "values.json").read_text(encoding="utf-8"))
        return _rebuilt(kind, plain, where)
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None


def save(rules: object, where: Path | None) -> None:
    """Keeps `rules` (a dataclass of JSON values, frozensets, Series and such dataclasses) at `where`, unless a
    process has done so already; a failure to write is ignored."""
    if where is None or where.exists():
        return
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{where.name}-", dir=where.parent))
    except OSError:
        return
    try:
        plain = _flattened(rules, temporary, "")
        (temporary / "values.json").write_text(json.dumps(plain), encoding="utf-8")
        temporary.rename(where)  # fails if another process got there first: theirs is as good
    except OSError:
        pass
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _flattened(rules: object, where: Path, prefix: str) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for field in dataclasses.fields(rules):  # type: ignore[arg-type]
        value = getattr(rules, field.name)
        name = prefix + field.name
        if isinstance(value, pl.Series):
            value.to_frame(field.name).write_ipc(where / f"{name}.arrow")
            plain[field.name] = {"table": f"{name}.arrow"}
        elif dataclasses.is_dataclass(value):
            plain[field.name] = {"fields": _flattened(value, where, f"{name}.")}
        elif isinstance(value, frozenset):
            plain[field.name] = {"set": sorted(value)}
        else:
            plain[field.name] = {"value": value}
    return plain


def _rebuilt(kind: type[T], plain: dict[str, Any], where: Path) -> T:
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(kind):  # type: ignore[arg-type]
        stored = plain[field.name]
        if "table" in stored:
            values[field.name] = pl.read_ipc(where / stored["table"]).to_series()
        elif "fields" in stored:
            values[field.name] = _rebuilt(hints[field.name], stored["fields"], where)
        elif "set" in stored:
            values[field.name] = frozenset(stored["set"])
        else:
            values[field.name] = stored["value"]
    return kind(**values)
