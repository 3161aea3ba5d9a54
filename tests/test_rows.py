"""Row validation, duplicate detection, payloads and idempotency keys, on real frames."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline import payload, validate
from pipeline.campaign import prepare_campaign
from pipeline.spec import CampaignSpec, load_spec
from tests.conftest import TEMPLATE, guid, spec_data, write_csv


def campaign(tmp_path: Path, rows: list[dict[str, str]], **overrides: object) -> CampaignSpec:
    write_csv(tmp_path / "contacts.csv", rows)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_data(**overrides)), encoding="utf-8")
    return load_spec(path, environ={})[0]


def outcome(tmp_path: Path, rows: list[dict[str, str]], **overrides: object) -> list[tuple[object, ...]]:
    prepared = prepare_campaign(campaign(tmp_path, rows, **overrides))
    return list(prepared.checked.select(payload.ROW, validate.STATUS, validate.ERROR).iter_rows())


def row(contact: str, name: str = "Ann", order: str = "1") -> dict[str, str]:
    return {"contact_id": contact, "first_name": name, "order_id": order}


def test_every_reason_a_row_is_invalid_is_reported(tmp_path: Path) -> None:
    rows = [row(guid(1)), row("not-a-guid", "", "7"), row("", "  ", ""), row(guid(4), "Dee", "")]
    assert outcome(tmp_path, rows) == [
        (1, None, None),
        (2, "invalid", "contact_id is not a GUID (column contact_id); variable name is empty (column first_name)"),
        (
            3,
            "invalid",
            "contact_id is empty (column contact_id); variable name is empty (column first_name); "
            "variable order_id is empty (column order_id)",
        ),
        (4, "invalid", "variable order_id is empty (column order_id)"),
    ]


def test_template_and_webhook_columns_are_checked_per_row(tmp_path: Path) -> None:
    rows = [
        {**row(guid(1)), "tpl": TEMPLATE, "hook": "https://example.com/h"},
        {**row(guid(2)), "tpl": "tpl-9", "hook": "example.com/h"},
        {**row(guid(3)), "tpl": TEMPLATE, "hook": ""},
    ]
    message = spec_data()["message"] | {"template_id": {"column": "tpl"}, "webhook_url": {"column": "hook"}}
    assert outcome(tmp_path, rows, message=message) == [
        (1, None, None),
        (
            2,
            "invalid",
            "template_id is not a GUID (column tpl); webhook_url is not an absolute http(s) URL (column hook)",
        ),
        (3, None, None),
    ]


def test_exact_duplicates_are_sent_once_and_point_at_the_first(tmp_path: Path) -> None:
    rows = [row(guid(1)), row(guid(2)), row(guid(1)), row(guid(1), "Other"), row(guid(1)), row("bad"), row("bad")]
    assert outcome(tmp_path, rows) == [
        (1, None, None),
        (2, None, None),
        (3, "duplicate", "duplicate of row 1"),
        (4, None, None),
        (5, "duplicate", "duplicate of row 1"),
        (6, "invalid", "contact_id is not a GUID (column contact_id)"),
        (7, "invalid", "contact_id is not a GUID (column contact_id)"),
    ]


def test_guid_case_and_spaces_do_not_make_a_different_contact(tmp_path: Path) -> None:
    upper = guid(1).upper().replace("0000-4000", "ABCD-4000")
    rows = [row(upper.lower()), row(f"  {upper} ")]
    assert outcome(tmp_path, rows)[1] == (2, "duplicate", "duplicate of row 1")


def test_payload_is_exactly_the_seed_body_with_string_values(tmp_path: Path) -> None:
    prepared = prepare_campaign(campaign(tmp_path, [row(guid(1), 'Zoë "Z"', "000123")]))
    body = json.loads(prepared.payloads[payload.BODY][0])
    assert body == {
        "contactId": guid(1),
        "templateId": TEMPLATE,
        "messageBody": {"name": 'Zoë "Z"', "order_id": "000123"},
    }
    assert list(body) == ["contactId", "templateId", "messageBody"]


def test_webhook_is_included_only_where_there_is_one(tmp_path: Path) -> None:
    rows = [{**row(guid(1)), "hook": "https://example.com/a"}, {**row(guid(2)), "hook": ""}]
    message = spec_data()["message"] | {"webhook_url": {"column": "hook"}}
    prepared = prepare_campaign(campaign(tmp_path, rows, message=message))
    bodies = [json.loads(b) for b in prepared.payloads[payload.BODY]]
    assert bodies[0]["webhookUrl"] == "https://example.com/a"
    assert "webhookUrl" not in bodies[1]


def test_parquet_numbers_and_dates_are_sent_as_text(tmp_path: Path) -> None:
    import datetime

    pl.DataFrame(
        {"contact_id": [guid(1)], "first_name": ["Ann"], "order_id": [123], "when": [datetime.date(2026, 11, 27)]}
    ).write_parquet(tmp_path / "c.parquet")
    message = spec_data()["message"]
    message["variables"] = {"order_id": {"column": "order_id"}, "when": {"column": "when"}}
    spec = campaign(tmp_path, [row(guid(1))], input={"path": "c.parquet"}, message=message)
    body = json.loads(prepare_campaign(spec).payloads[payload.BODY][0])
    assert body["messageBody"] == {"order_id": "123", "when": "2026-11-27"}


def test_idempotency_keys_are_stable_and_depend_on_campaign_and_content(tmp_path: Path) -> None:
    rows = [row(guid(1)), row(guid(2))]
    keys = prepare_campaign(campaign(tmp_path, rows)).payloads[payload.KEY].to_list()
    # the derivation is pinned: a change to it would make a resumed campaign resend every row
    content = f"36:{guid(1)}|36:{TEMPLATE}|4:name|3:Ann|8:order_id|1:1"
    assert keys[0] == hashlib.blake2b(f"13:test-campaign|{content}".encode(), digest_size=16).hexdigest()
    reordered = prepare_campaign(campaign(tmp_path, rows[::-1])).payloads[payload.KEY].to_list()
    assert reordered == keys[::-1]
    renamed = prepare_campaign(campaign(tmp_path, rows, name="other")).payloads[payload.KEY].to_list()
    assert set(renamed).isdisjoint(keys)
    changed = prepare_campaign(campaign(tmp_path, [row(guid(1), "Ann", "2")])).payloads[payload.KEY].to_list()
    assert changed[0] != keys[0]
    assert all(len(k) == 32 and k.isalnum() for k in keys)


def test_content_framing_cannot_be_fooled_by_separators_in_values(tmp_path: Path) -> None:
    message = spec_data()["message"]
    message["variables"] = {"a": {"column": "first_name"}, "b": {"column": "order_id"}}
    rows = [row(guid(1), "x|1:y", "z"), row(guid(1), "x", "y|1:z")]
    keys = prepare_campaign(campaign(tmp_path, rows, message=message)).payloads[payload.KEY].to_list()
    assert len(set(keys)) == 2


@pytest.mark.slow
def test_a_hundred_thousand_rows_validate_with_reasons_and_duplicates(tmp_path: Path) -> None:
    n = 100_000
    frame = pl.DataFrame(
        {
            "contact_id": [guid(i) if i % 1000 else "bad" for i in range(n)],
            "first_name": ["Ann"] * n,
            "order_id": [str(i % 50_000) for i in range(n)],
        }
    )
    frame.write_csv(tmp_path / "contacts.csv")
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_data()), encoding="utf-8")
    prepared = prepare_campaign(load_spec(tmp_path / "spec.yaml", environ={})[0])
    assert prepared.rows == n
    assert prepared.count(validate.INVALID) == 100
    assert prepared.count(validate.DUPLICATE) == 0
    assert prepared.payloads.height == n - 100
    assert prepared.payloads[payload.KEY].n_unique() == n - 100
