"""The allocator setting `python -m pipeline` picks before polars loads: quick for small local CSV inputs, flat
otherwise, and never over a value the user set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import allocator


@pytest.fixture
def flat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.VARIABLE, allocator.FLAT)


def spec(folder: Path, input_path: str) -> Path:
    path = folder / "campaign.yaml"
    path.write_text(f"version: 1\nname: c\ninput:\n  path: {input_path}\n", encoding="utf-8")
    return path


def sized(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        out.truncate(size)
    return path


@pytest.mark.usefixtures("flat")
def test_a_small_csv_named_by_the_spec_gets_the_quick_setting(tmp_path: Path) -> None:
    sized(tmp_path / "contacts.csv", 1_000)
    allocator.choose_for_command(["validate", str(spec(tmp_path, "contacts.csv")), "--offline"])
    assert os.environ[allocator.VARIABLE] == allocator.QUICK


@pytest.mark.usefixtures("flat")
def test_a_large_csv_keeps_memory_flat(tmp_path: Path) -> None:
    sized(tmp_path / "contacts.csv", allocator.QUICK_UP_TO + 1)
    allocator.choose_for_command(["run", str(spec(tmp_path, "contacts.csv"))])
    assert os.environ[allocator.VARIABLE] == allocator.FLAT


@pytest.mark.usefixtures("flat")
def test_the_input_option_is_the_file_that_counts(tmp_path: Path) -> None:
    small = sized(tmp_path / "small.csv", 10)
    sized(tmp_path / "big.csv", allocator.QUICK_UP_TO + 1)
    allocator.choose_for_command(["run", str(spec(tmp_path, "small.csv")), "--input", str(tmp_path / "big.csv")])
    assert os.environ[allocator.VARIABLE] == allocator.FLAT
    allocator.choose_for_command(["run", str(spec(tmp_path, "big.csv")), f"--input={small}"])
    assert os.environ[allocator.VARIABLE] == allocator.QUICK


@pytest.mark.usefixtures("flat")
@pytest.mark.parametrize("input_path", ["s3://bucket/contacts.csv", "${CONTACTS}", "contacts.parquet", "missing.csv"])
def test_what_cannot_be_sized_keeps_the_flat_setting(tmp_path: Path, input_path: str) -> None:
    sized(tmp_path / "contacts.parquet", 10)
    allocator.choose_for_command(["validate", str(spec(tmp_path, input_path))])
    assert os.environ[allocator.VARIABLE] == allocator.FLAT


def test_a_value_the_user_set_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.VARIABLE, "narenas:1")
    sized(tmp_path / "contacts.csv", 10)
    allocator.choose_for_command(["validate", str(spec(tmp_path, "contacts.csv"))])
    allocator.choose_default()
    assert os.environ[allocator.VARIABLE] == "narenas:1"


def test_polars_own_default_is_replaced_by_the_flat_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.VARIABLE, "dirty_decay_ms:500,muzzy_decay_ms:1000")
    allocator.choose_default()
    assert os.environ[allocator.VARIABLE] == allocator.FLAT
