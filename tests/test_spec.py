"""The job spec: every rule, with the full text of each error a user can meet."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.errors import SpecError
from pipeline.spec import load_spec, parse_rate
from tests.conftest import SENDER, TEMPLATE, spec_data


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def error_of(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, environ=environ or {})
    return str(caught.value)


def test_sample_spec_loads_with_paths_relative_to_the_spec_file() -> None:
    spec, warnings = load_spec(Path("configs/campaign.yaml"), environ={})
    assert warnings == []
    assert spec.name == "order-shipped-2026-11"
    assert spec.input.path == Path("sample_data/contacts.csv").resolve()
    assert spec.output.results == Path("out/order-shipped-results.csv").resolve()
    assert spec.api.is_sandbox
    assert spec.input_format == "csv"
    assert spec.message.columns() == ["contact_id", "first_name", "order_id", "carrier"]


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path: Path) -> None:
    data = spec_data(send={"concurency": 8}, input={"path": "c.csv", "sep": ";"})
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  input.sep: unknown key. Hint: known keys here: encoding, format, path, separator\n"
        "  send.concurency: unknown key. Hint: did you mean `concurrency`?"
    )


def test_unknown_key_inside_a_variable_mapping(tmp_path: Path) -> None:
    data = spec_data()
    data["message"]["variables"]["name"] = {"colum": "first_name"}
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  message.variables.name.colum: unknown key. Hint: did you mean `column`?"
    )


def test_missing_required_keys_are_named_by_path(tmp_path: Path) -> None:
    data = spec_data()
    del data["name"]
    del data["message"]["contact_id"]
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  name: required key is missing. Hint: use letters, digits, '.', '_' or '-' "
        "(it names state files and idempotency keys)\n"
        "  message.contact_id: required key is missing (v1 sends to contact GUIDs). Hint: write "
        "`contact_id: {column: contact_id}`, or set `api.version: v3` to send to phone numbers."
    )


def test_wrong_types_show_the_value_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, spec_data(send={"concurrency": "many"}, api={"base_url": "sandbox", "timeout_s": -1}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  api.timeout_s: Input should be greater than 0 (got -1)\n"
        "  send.concurrency: Input should be a valid integer, unable to parse string as an integer (got 'many')"
    )


def test_a_field_written_as_a_bare_string_gets_the_mapping_hint(tmp_path: Path) -> None:
    data = spec_data()
    data["message"]["contact_id"] = "contact_id"
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  message.contact_id: must be a mapping, got 'contact_id'. Hint: write `{column: NAME}` or `{value: LITERAL}`"
    )


def test_literal_template_id_and_webhook_are_checked_once_in_the_spec(tmp_path: Path) -> None:
    data = spec_data()
    data["message"]["template_id"] = {"value": "tmpl-1"}
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  message.template_id: value 'tmpl-1' is not a GUID (like 7ba7b820-9dad-11d1-80b4-00c04fd430c8)"
    )
    data["message"]["template_id"] = {"value": TEMPLATE}
    data["message"]["webhook_url"] = {"value": "ftp://example.com/x"}
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  message.webhook_url: value 'ftp://example.com/x' is not an absolute http(s) URL"
    )


def test_results_extension_and_version_and_name(tmp_path: Path) -> None:
    path = write(tmp_path, spec_data(version=2, name="bad name!", output={"results": "out.xlsx"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  version: Input should be 1 (got 2). Hint: write `version: 1`\n"
        "  name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$' (got 'bad name!'). "
        "Hint: use letters, digits, '.', '_' or '-' (it names state files and idempotency keys)\n"
        "  output.results: results file must end in .csv, .parquet or .jsonl, not 'out.xlsx'"
    )


def test_missing_environment_variable_names_the_variable_and_the_key(tmp_path: Path) -> None:
    data = spec_data(api={"base_url": "https://api.sent.dm", "sender_id": "${SID}", "api_key": "${SENT_DM_API_KEY}"})
    path = write(tmp_path, data)
    assert error_of(path, {"SID": SENDER}) == (
        f"{path}: api.api_key: environment variable SENT_DM_API_KEY is not set. "
        "Hint: export SENT_DM_API_KEY=... before running, or write ${SENT_DM_API_KEY:-default} in the spec."
    )


def test_environment_values_defaults_and_literal_dollars(tmp_path: Path) -> None:
    data = spec_data(
        name="${CAMPAIGN:-fallback-name}",
        api={"base_url": "https://api.sent.dm/", "sender_id": "${SID}", "api_key": "${KEY}"},
    )
    data["message"]["variables"]["price"] = {"value": "$$5"}
    spec, warnings = load_spec(write(tmp_path, data), environ={"SID": SENDER, "KEY": "k-123"})
    assert warnings == []
    assert spec.name == "fallback-name"
    assert spec.api.base_url == "https://api.sent.dm"
    assert spec.api.credentials() == (SENDER, "k-123")
    assert spec.message.variables["price"].value == "$5"


def test_literal_api_key_warns_without_showing_it(tmp_path: Path) -> None:
    data = spec_data(api={"base_url": "https://api.sent.dm", "sender_id": SENDER, "api_key": "sk-live-SECRET"})
    path = write(tmp_path, data)
    spec, warnings = load_spec(path, environ={})
    assert warnings == [
        f"{path}: api.api_key is written in the spec. Secrets belong in the environment: "
        "write `api_key: ${SENT_DM_API_KEY}` and export the variable."
    ]
    assert "sk-live-SECRET" not in repr(spec)
    assert "sk-live-SECRET" not in str(spec.model_dump())


def test_real_api_needs_credentials_but_the_sandbox_does_not(tmp_path: Path) -> None:
    path = write(tmp_path, spec_data(api={"base_url": "https://api.sent.dm"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  api: sender_id is required when base_url is not 'sandbox' (use ${SENT_DM_SENDER_ID})\n"
        "  api: api_key is required when base_url is not 'sandbox' (use ${SENT_DM_API_KEY})"
    )
    path = write(tmp_path, spec_data(api={"base_url": "https://api.sent.dm", "sender_id": "abc", "api_key": "${K}"}))
    assert error_of(path, {"K": "x"}) == (
        f"{path}: the job spec is invalid:\n  api: sender_id is not a GUID (like 6ba7b810-9dad-11d1-80b4-00c04fd430c8)"
    )
    spec, _ = load_spec(write(tmp_path, spec_data()), environ={})
    assert spec.api.credentials()[0] == "00000000-0000-4000-8000-000000000000"


def test_base_url_must_be_http_or_sandbox(tmp_path: Path) -> None:
    path = write(tmp_path, spec_data(api={"base_url": "api.sent.dm"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  api.base_url: 'api.sent.dm' is neither an http(s) URL nor 'sandbox'"
    )


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nname: x\ninput:\n  path: [unclosed\n")
    message = error_of(path)
    assert message.startswith(f"{path}: not valid YAML at line ")
    assert message.endswith("Hint: check indentation and quoting.")


def test_empty_missing_and_non_mapping_specs(tmp_path: Path) -> None:
    assert error_of(write(tmp_path, "")) == (
        f"{tmp_path / 'spec.yaml'}: the job spec is empty. Hint: start from configs/campaign.yaml."
    )
    assert error_of(write(tmp_path, "- a\n- b\n")) == (
        f"{tmp_path / 'spec.yaml'}: the job spec must be a mapping of keys (version, name, input, ...)."
    )
    missing = tmp_path / "nope.yaml"
    assert error_of(missing) == (
        f"{missing}: job spec not found. Hint: check the path (it is relative to this folder)."
    )


def test_unknown_encoding_and_bad_rate(tmp_path: Path) -> None:
    path = write(tmp_path, spec_data(input={"path": "c.csv", "encoding": "klingon"}, send={"rate": "fast"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  input.encoding: unknown text encoding 'klingon' (e.g. utf-8, latin-1, cp1252, utf-16)\n"
        "  send.rate: rate 'fast' is not like '300/min' or '5/s'"
    )


@pytest.mark.parametrize(
    ("written", "separator"),
    [
        ('"\\t"', "\t"),
        ("tab", "\t"),
        ("Tab", "\t"),
        ("'\\t'", "\t"),
        ("semicolon", ";"),
        ('";"', ";"),
        ("comma", ","),
        ("pipe", "|"),
        ('"|"', "|"),
        ('" "', " "),
    ],
)
def test_the_separator_is_the_character_itself_once_loaded(tmp_path: Path, written: str, separator: str) -> None:
    text = yaml.safe_dump(spec_data(input={"path": "c.csv"}), sort_keys=False)
    path = write(tmp_path, text.replace("path: c.csv", f"path: c.csv\n  separator: {written}"))
    assert load_spec(path, environ={})[0].input.separator == separator


@pytest.mark.parametrize(("name", "separator"), [("c.tsv", "\t"), ("C.TSV", "\t"), ("c.tab", "\t"), ("c.csv", ",")])
def test_without_a_separator_a_tsv_file_is_tab_separated(tmp_path: Path, name: str, separator: str) -> None:
    spec, _ = load_spec(write(tmp_path, spec_data(input={"path": name})), environ={})
    assert spec.input.separator == separator
    spec, _ = load_spec(write(tmp_path, spec_data(input={"path": name, "separator": ";"})), environ={})
    assert spec.input.separator == ";"


def test_a_separator_that_is_not_one_character_or_a_known_name(tmp_path: Path) -> None:
    path = write(tmp_path, spec_data(input={"path": "c.csv", "separator": "tabs"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  input.separator: must be one character, or one of tab, comma, semicolon, pipe (got 'tabs'). "
        'Hint: write `separator: tab` or `separator: ";"`'
    )
    path = write(tmp_path, spec_data(input={"path": "c.csv", "separator": '"'}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  input.separator: the double quote cannot separate fields: it quotes them"
    )


@pytest.mark.parametrize(("text", "per_s"), [("300/min", 5.0), ("5/s", 5.0), ("7200 / hour", 2.0), ("0.5/s", 0.5)])
def test_rates_are_read_per_second(text: str, per_s: float) -> None:
    assert parse_rate(text) == per_s


def test_yaml_numbers_as_literal_values_become_text(tmp_path: Path) -> None:
    data = spec_data()
    data["message"]["variables"]["code"] = {"value": 7}
    spec, _ = load_spec(write(tmp_path, data), environ={})
    assert spec.message.variables["code"].value == "7"


def test_every_unset_variable_is_named_at_once(tmp_path: Path) -> None:
    data = spec_data(
        name="${CAMPAIGN}",
        api={"base_url": "https://api.sent.dm", "sender_id": "${SENT_DM_SENDER_ID}", "api_key": "${SENT_DM_API_KEY}"},
    )
    path = write(tmp_path, data)
    assert error_of(path, {}) == (
        f"{path}: 3 environment variables are not set:\n"
        "  name: CAMPAIGN\n"
        "  api.sender_id: SENT_DM_SENDER_ID\n"
        "  api.api_key: SENT_DM_API_KEY\n"
        "Hint: export CAMPAIGN=..., SENT_DM_SENDER_ID=..., SENT_DM_API_KEY=... before running, "
        "or write ${NAME:-default} in the spec."
    )


def test_an_empty_api_key_variable_says_it_is_set_but_empty(tmp_path: Path) -> None:
    data = spec_data(api={"base_url": "https://api.sent.dm", "sender_id": SENDER, "api_key": "${SENT_DM_API_KEY}"})
    path = write(tmp_path, data)
    assert error_of(path, {"SENT_DM_API_KEY": ""}) == (
        f"{path}: the job spec is invalid:\n"
        "  api.api_key: environment variable SENT_DM_API_KEY is set but empty. "
        "Hint: export SENT_DM_API_KEY=<your key> (from the Sent.dm dashboard)."
    )


def test_offline_commands_need_no_credentials_and_get_a_note(tmp_path: Path) -> None:
    data = spec_data(
        api={"base_url": "https://api.sent.dm", "sender_id": "${SENT_DM_SENDER_ID}", "api_key": "${SENT_DM_API_KEY}"}
    )
    path = write(tmp_path, data)
    spec, notes = load_spec(path, environ={}, offline=True)
    assert spec.api.missing_credentials() == ["sender_id", "api_key"]
    assert [type(n).__name__ for n in notes] == ["Note", "Note"]
    assert notes[1] == (
        f"{path}: api.api_key: environment variable SENT_DM_API_KEY is not set; this command sends nothing, so it "
        "is not needed now (`run` will need it)."
    )
    # other unset variables are still errors: they change what would be sent
    data["name"] = "${CAMPAIGN}"
    path = write(tmp_path, data)
    assert "name: environment variable CAMPAIGN is not set" in error_of_offline(path)


def error_of_offline(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path, environ={}, offline=True)
    return str(caught.value)


def sandbox_templates(templates: object) -> dict[str, object]:
    return spec_data(api={"base_url": "sandbox", "sandbox": {"templates": templates}})


def test_sandbox_templates_are_optional_and_default_to_approved_sms(tmp_path: Path) -> None:
    plain, _ = load_spec(write(tmp_path, spec_data(api={"base_url": "sandbox", "sandbox": {}})), environ={})
    data = sandbox_templates([{"id": TEMPLATE, "name": "order_shipped", "variables": ["name", "order_id"]}])
    spec, _ = load_spec(write(tmp_path, data), environ={})

    assert plain.api.sandbox is not None
    assert plain.api.sandbox.templates is None
    assert spec.api.sandbox is not None
    [template] = spec.api.sandbox.templates or ()
    assert template.model_dump() == {
        "id": TEMPLATE,
        "name": "order_shipped",
        "status": "APPROVED",
        "variables": ("name", "order_id"),
        "channels": ("sms",),
    }


def test_sandbox_template_errors_name_the_entry_and_key(tmp_path: Path) -> None:
    data = sandbox_templates(
        [
            {"id": "order-shipped", "name": "a", "status": "DRAFT", "channels": ["fax"]},
            {"id": TEMPLATE, "name": "b", "variabels": ["name"]},
            {"id": TEMPLATE, "name": "c", "channels": [], "variables": ["x", "x"]},
        ]
    )
    path = write(tmp_path, data)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  api.sandbox.templates[0].id: 'order-shipped' is not a GUID (like 7ba7b820-9dad-11d1-80b4-00c04fd430c8)\n"
        "  api.sandbox.templates[0].status: Input should be 'APPROVED', 'PENDING' or 'REJECTED' (got 'DRAFT')\n"
        "  api.sandbox.templates[0].channels[0]: Input should be 'sms', 'whatsapp' or 'rcs' (got 'fax')\n"
        "  api.sandbox.templates[1].variabels: unknown key. Hint: did you mean `variables`?\n"
        "  api.sandbox.templates[2]: channels must name at least one of sms, whatsapp, rcs"
    )


def test_two_sandbox_templates_may_not_share_an_id_or_a_name(tmp_path: Path) -> None:
    same_id = write(tmp_path, sandbox_templates([{"id": TEMPLATE, "name": "a"}, {"id": TEMPLATE.upper(), "name": "b"}]))
    assert error_of(same_id) == (
        f"{same_id}: the job spec is invalid:\n  api.sandbox.templates: two templates have the id '{TEMPLATE}'"
    )
    other = "5ba7b830-9dad-11d1-80b4-00c04fd430c8"
    same_name = write(tmp_path, sandbox_templates([{"id": TEMPLATE, "name": "a"}, {"id": other, "name": "a"}]))
    assert error_of(same_name) == (
        f"{same_name}: the job spec is invalid:\n  api.sandbox.templates: two templates have the name 'a'"
    )


# --- guard rails: send.window, send.timezone, send.default_timezone, send.max_messages, suppress -----------------


def v3_data(**overrides: object) -> dict[str, object]:
    data = spec_data(api={"base_url": "sandbox", "version": "v3"}, **overrides)
    data["message"] = {"to": {"column": "phone"}, "default_region": "US", "template_id": {"value": TEMPLATE}}
    return data


def window_of(tmp_path: Path, window: object) -> tuple[int, int, tuple[int, ...]]:
    spec, _ = load_spec(write(tmp_path, v3_data(send={"window": window})), environ={})
    assert spec.send.window is not None
    return spec.send.window.from_minute, spec.send.window.to_minute, spec.send.window.days


@pytest.mark.parametrize(
    ("days", "numbers"),
    [
        ("mon-fri", (0, 1, 2, 3, 4)),
        ("mon-sat", (0, 1, 2, 3, 4, 5)),
        ("mon,wed,fri", (0, 2, 4)),
        ("sat-sun", (5, 6)),
        ("mon-sun", (0, 1, 2, 3, 4, 5, 6)),
        ("MON-Fri", (0, 1, 2, 3, 4)),
        ("mon - wed, SAT", (0, 1, 2, 5)),
        ("fri-mon", (0, 4, 5, 6)),  # a range wraps round the week
        ("sun", (6,)),
        (["mon", "wed-thu"], (0, 2, 3)),
    ],
)
def test_window_days_are_ranges_and_lists_in_any_case(tmp_path: Path, days: object, numbers: tuple[int, ...]) -> None:
    assert window_of(tmp_path, {"from": "09:00", "to": "20:00", "days": days}) == (540, 1200, numbers)


def test_a_window_without_days_is_every_day_and_may_end_at_midnight(tmp_path: Path) -> None:
    assert window_of(tmp_path, {"from": "8:05", "to": "24:00"}) == (485, 1440, (0, 1, 2, 3, 4, 5, 6))
    spec, _ = load_spec(
        write(tmp_path, v3_data(send={"window": {"from": "09:00", "to": "20:00", "days": "mon-sat"}})), environ={}
    )
    assert spec.send.window is not None
    assert spec.send.window.describe() == "09:00-20:00 mon-sat"


def test_a_window_past_midnight_or_empty_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, v3_data(send={"window": {"from": "21:00", "to": "06:00"}}))
    message = (
        "the window is when messages may be sent, within one day of the recipient's time; a window past midnight "
        'is not supported. Hint: e.g. `window: {from: "09:00", to: "20:00"}`'
    )
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  send.window: from (21:00) must be before to (06:00): {message}"
    )
    path = write(tmp_path, v3_data(send={"window": {"from": "09:00", "to": "09:00"}}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  send.window: from (09:00) must be before to (09:00): {message}"
    )


def test_window_times_and_days_that_cannot_be_read(tmp_path: Path) -> None:
    window = {"from": "9am", "to": "24:01", "days": "mon-frx", "form": "09:00"}
    path = write(tmp_path, v3_data(send={"window": window}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  send.window.from: '9am' is not a time of day: write HH:MM in 24-hour time, 00:00 to 23:59\n"
        "  send.window.to: '24:01' is not a time of day: write HH:MM in 24-hour time, 00:00 to 24:00\n"
        "  send.window.days: 'mon-frx' is not a list of days. Hint: write days as mon, tue, wed, thu, fri, sat, sun: "
        "a range (mon-fri), a list (mon,wed,fri) or both (mon-wed,sat)\n"
        "  send.window.form: unknown key. Hint: did you mean `from`?"
    )


def test_an_unquoted_time_which_yaml_reads_as_a_number_asks_for_quotes(tmp_path: Path) -> None:
    text = yaml.safe_dump(v3_data(), sort_keys=False).replace("send:\n", "send:\n  window: {from: 9:30, to: 20:00}\n")
    path = write(tmp_path, text)
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  send.window.from: 570 is a number, not a time: YAML reads an unquoted 9:30 as one. "
        'Hint: quote the time, e.g. `from: "09:30"`\n'
        "  send.window.to: 1200 is a number, not a time: YAML reads an unquoted 20:00 as one. "
        'Hint: quote the time, e.g. `to: "20:00"`'
    )


def test_time_zones_are_checked_against_the_tz_database(tmp_path: Path) -> None:
    window = {"from": "09:00", "to": "20:00"}
    send = {"window": window, "timezone": {"value": "europe/london"}, "default_timezone": "Europe/Berln"}
    path = write(tmp_path, v3_data(send=send))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  send.timezone: 'europe/london' is not an IANA time zone. Hint: did you mean Europe/London?\n"
        "  send.default_timezone: 'Europe/Berln' is not an IANA time zone. Hint: did you mean Europe/Berlin?"
    )
    path = write(tmp_path, v3_data(send={"window": window, "default_timezone": "Mars/Olympus_Mons"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  send.default_timezone: 'Mars/Olympus_Mons' is not an IANA time zone. "
        "Hint: write a name such as Europe/Berlin or America/New_York"
    )
    send = {"window": window, "timezone": {"column": "tz"}, "default_timezone": "Europe/Berlin"}
    spec, _ = load_spec(write(tmp_path, v3_data(send=send)), environ={})
    assert spec.send.timezone is not None
    assert spec.send.timezone.column == "tz"
    assert spec.send.default_timezone == "Europe/Berlin"


def test_an_empty_default_timezone_variable_is_no_default(tmp_path: Path) -> None:
    send = {"window": {"from": "09:00", "to": "20:00"}, "default_timezone": "${TZ_DEFAULT:-}"}
    spec, _ = load_spec(write(tmp_path, v3_data(send=send)), environ={})
    assert spec.send.default_timezone is None


def test_time_zones_without_a_window_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, v3_data(send={"timezone": {"column": "tz"}, "default_timezone": "UTC"}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  send.timezone: applies only with send.window (a row's time zone says when its window is open). "
        "Hint: add send.window, or remove it.\n"
        "  send.default_timezone: applies only with send.window (a row's time zone says when its window is open). "
        "Hint: add send.window, or remove it."
    )


def test_a_window_on_v1_needs_a_way_to_know_each_rows_zone(tmp_path: Path) -> None:
    window = {"from": "09:00", "to": "20:00"}
    path = write(tmp_path, spec_data(send={"window": window}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  send.window: v1 addresses contact GUIDs, which say nothing of where a person is. Hint: set "
        "send.default_timezone (e.g. Europe/Berlin), or send.timezone: {column: NAME} naming each row's zone."
    )
    # named even when another key fails too
    path = write(tmp_path, spec_data(send={"window": window, "concurrency": 0}))
    assert error_of(path).endswith(
        "\n  send.window: v1 addresses contact GUIDs, which say nothing of where a person "
        "is. Hint: set send.default_timezone (e.g. Europe/Berlin), or send.timezone: "
        "{column: NAME} naming each row's zone."
    )
    spec, _ = load_spec(
        write(tmp_path, spec_data(send={"window": window, "default_timezone": "Europe/Berlin"})), environ={}
    )
    assert spec.send.default_timezone == "Europe/Berlin"


def test_max_messages_is_a_positive_count(tmp_path: Path) -> None:
    spec, _ = load_spec(write(tmp_path, spec_data(send={"max_messages": "${CAP:-50000}"})), environ={})
    assert spec.send.max_messages == 50000
    assert load_spec(write(tmp_path, spec_data()), environ={})[0].send.max_messages is None
    path = write(tmp_path, spec_data(send={"max_messages": 0}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  send.max_messages: Input should be greater than or equal to 1 (got 0)"
    )
    path = write(tmp_path, spec_data(send={"max_messages": True}))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n  send.max_messages: must be a number of messages, e.g. 50000 (got True)"
    )


def test_suppression_lists_are_paths_or_mappings_relative_to_the_spec_file(tmp_path: Path) -> None:
    lists = ["lists/opt-outs.csv", {"path": "../bounced.parquet", "column": "msisdn"}]
    spec, _ = load_spec(write(tmp_path, v3_data(suppress=lists)), environ={})
    assert [(entry.path, entry.column) for entry in spec.suppress] == [
        ((tmp_path / "lists/opt-outs.csv").resolve(), None),
        ((tmp_path.parent / "bounced.parquet").resolve(), "msisdn"),
    ]
    one, _ = load_spec(write(tmp_path, v3_data(suppress="opt-outs.csv")), environ={})
    assert [entry.path for entry in one.suppress] == [(tmp_path / "opt-outs.csv").resolve()]
    assert load_spec(write(tmp_path, v3_data()), environ={})[0].suppress == ()


def test_suppression_entries_that_name_no_file_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path, v3_data(suppress=["${OPT_OUTS:-}", {"path": "a.csv", "colum": "x"}, 3, {"column": "x"}]))
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  suppress[0].path: is empty: a suppression list that is not there would let every row through. "
        "Hint: name the file, relative to the spec file, or remove the entry\n"
        "  suppress[1].colum: unknown key. Hint: did you mean `column`?\n"
        "  suppress[2]: must be a mapping, got 3. Hint: write the file's path, or `{path: FILE, column: NAME}`\n"
        "  suppress[3].path: required key is missing. Hint: see the spec reference in README.md"
    )
    path = write(tmp_path, yaml.safe_dump(v3_data(), sort_keys=False) + "suppress:\n")
    assert error_of(path) == (
        f"{path}: the job spec is invalid:\n"
        "  suppress: is empty. Hint: list the suppression files (`suppress: [lists/opt-outs.csv]`), or remove the key"
    )


def test_the_sample_specs_load_unchanged_with_no_guard_rails(tmp_path: Path) -> None:
    for name in ("configs/campaign.yaml", "configs/campaign-v3.yaml"):
        spec, _ = load_spec(Path(name), environ={})
        assert spec.suppress == ()
        assert (spec.send.window, spec.send.timezone, spec.send.default_timezone, spec.send.max_messages) == (
            None,
            None,
            None,
            None,
        )
