"""The phone rules kept on disk (`rules_cache`): loaded, they decide every number as freshly built ones do; a
folder that is missing, damaged or cannot be written only means building them again."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline import digit_automata, phones, rules_cache
from tests.test_phones import generated_inputs


@pytest.fixture
def fresh_world(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A cache folder of this test's own, and phones.py made to load its rules again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    phones._built_world.cache_clear()
    yield tmp_path
    phones._built_world.cache_clear()


def decisions(region: str | None) -> list[tuple[object, ...]]:
    return phones.normalise_phones(pl.Series(generated_inputs(), dtype=pl.String), default_region=region).rows()


def test_rules_loaded_from_disk_decide_as_rules_just_built(fresh_world: Path) -> None:
    built = phones._world()
    kept = list((fresh_world / "sentdm-batch").iterdir())
    assert len(kept) == 1
    assert (kept[0] / "values.json").is_file()
    expected = {region: decisions(region) for region in ("US", "GB", "AR", None)}
    phones._built_world.cache_clear()
    loaded = phones._world()
    assert loaded is not built
    for field in dataclasses.fields(loaded):
        mine, theirs = getattr(loaded, field.name), getattr(built, field.name)
        if isinstance(mine, pl.Series):
            assert mine.equals(theirs), field.name
        elif not isinstance(mine, digit_automata.Automata):
            assert mine == theirs, field.name
    assert loaded.automata.pairs.equals(built.automata.pairs)
    assert {region: decisions(region) for region in expected} == expected


def test_a_damaged_folder_is_not_used(fresh_world: Path) -> None:
    phones._world()
    (kept,) = (fresh_world / "sentdm-batch").iterdir()
    (kept / "automata.pairs.arrow").write_bytes(b"not arrow")
    assert rules_cache.load(phones._World, kept) is None
    phones._built_world.cache_clear()
    assert phones.normalise_phones(pl.Series(["(415) 555-0123"]), default_region="US").row(0) == ("+14155550123", None)


def test_a_cache_folder_that_cannot_be_written_is_no_error(fresh_world: Path) -> None:
    (fresh_world / "sentdm-batch").write_text("a file where the folder would go")
    assert phones.normalise_phones(pl.Series(["+44 20 7946 0958"]), default_region=None).row(0) == (
        "+442079460958",
        None,
    )


def test_the_folder_name_changes_with_the_versions_and_the_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Other:
        count: int

    first = rules_cache.folder(phones._World, "phone-rules", "a1")
    assert first is not None
    assert rules_cache.folder(phones._World, "phone-rules", "a2") != first
    assert rules_cache.folder(Other, "phone-rules", "a1") != first


def test_no_home_folder_means_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert rules_cache.folder(phones._World, "phone-rules", "a1") is None
