"""The YAML job spec: parsing, `${VAR}` interpolation, validation, and the frozen `CampaignSpec` the rest of the
package works from. Every problem is reported with the spec's file name, the dotted key path and a hint; unknown keys
are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import difflib
import os
import re
import ssl
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline import objects
from pipeline.errors import SpecError
from pipeline.sandbox.lifecycle import DEFAULT_DELIVERY_MS, DEFAULT_FAILURE_RATE, DEFAULT_READ_RATE
from pipeline.state_location import PostgresState, is_postgres_url

GUID_PATTERN = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
URL_PATTERN = r"^https?://[^\s/?#]+[^\s]*$"
SANDBOX = "sandbox"
# The sandbox accepts any credentials; these stand in when a sandbox spec names none.
SANDBOX_SENDER_ID = "00000000-0000-4000-8000-000000000000"
SANDBOX_API_KEY = "sandbox-key"  # a placeholder the local fake server accepts, not a secret
RESULT_FORMATS = (".csv", ".parquet", ".jsonl")
# Separators a spec may name in words: a tab cannot be typed visibly, and `;` or `|` read badly in YAML.
SEPARATOR_NAMES = {"tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
TAB_SEPARATED_SUFFIXES = (".tsv", ".tab")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class FieldSource(_Strict):
    """Where a payload field comes from: a column of the input, or one literal for every row."""

    column: str | None = Field(default=None, min_length=1)
    value: str | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_to_text(cls, raw: object) -> object:
        # YAML reads `value: 12345` as an int; the API wants strings, and the user meant the text they typed.
        if isinstance(raw, bool):
            return str(raw).lower()
        if isinstance(raw, int | float):
            return str(raw)
        return raw

    @model_validator(mode="after")
    def _exactly_one(self) -> FieldSource:
        if (self.column is None) == (self.value is None):
            raise ValueError("must be either {column: NAME} or {value: LITERAL}")
        return self


class InputSpec(_Strict):
    """The contacts file. `separator` is always the one character itself once loaded (`tab` becomes a tab), and
    when the spec names none it follows the file: a tab for `.tsv`, a comma otherwise."""

    path: Path
    format: Literal["csv", "parquet"] | None = None
    # not stripped like every other string: a tab is whitespace, and "\t" is a separator users need
    separator: Annotated[str, StringConstraints(strip_whitespace=False)] = ","
    encoding: str = "utf-8"

    @model_validator(mode="before")
    @classmethod
    def _separator_by_extension(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("separator") is not None or "path" not in data:
            return data
        suffix = Path(str(data["path"])).suffix.lower()
        return {**data, "separator": "\t" if suffix in TAB_SEPARATED_SUFFIXES else ","}

    @field_validator("path", mode="before")
    @classmethod
    def _url_or_path(cls, raw: object) -> object:
        return _local_location(raw)

    @field_validator("separator", mode="before")
    @classmethod
    def _one_character(cls, raw: object) -> object:
        return parse_separator(raw) if isinstance(raw, str) else raw

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        try:
            codecs.lookup(name)
        except LookupError:
            raise ValueError(f"unknown text encoding {name!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
        return name


class MessageSpec(_Strict):
    """What each message says and to whom. Which keys apply depends on api.version (see `version_problems`):
    v1/v2 address a contact GUID (`contact_id`), v3 a phone number (`to`, read with `default_region`)."""

    contact_id: FieldSource | None = None  # v1, v2
    to: FieldSource | None = None  # v3
    default_region: str | None = None  # v3: ISO 3166 alpha-2 region of numbers written without +country code
    template_id: FieldSource | None = None
    template_name: FieldSource | None = None  # v3
    variables: dict[str, FieldSource] = Field(default_factory=dict)
    webhook_url: FieldSource | None = None  # v1, v2
    channel: FieldSource | None = None  # v3: comma-separated channels (sms, whatsapp, rcs)
    # How typed (Parquet) columns become text: "readable" (0.3, 3, 2026-03-01 09:30:00) or "cast", polars' own cast
    # (0.30000000000000004, 3.0, 2026-03-01 09:30:00.000000), the rule of sentdm-batch 0.1.0, kept so a campaign
    # begun under it can finish without its rows getting new idempotency keys, and being sent again.
    value_text: Literal["readable", "cast"] = "readable"

    @field_validator("variables")
    @classmethod
    def _names_not_blank(cls, variables: dict[str, FieldSource]) -> dict[str, FieldSource]:
        for name in variables:
            if not name.strip():
                raise ValueError("variable names must not be blank")
        return variables

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, region: str | None) -> str | None:
        if not region:
            return None  # `${VAR:-}` left empty: no default region, as if the key were absent
        import phonenumbers  # only specs that name a region pay for the import

        code = region.strip().upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{region!r} is not a region code phonenumbers knows: use ISO 3166 alpha-2, e.g. US, GB")
        return code

    @field_validator("contact_id", "template_id", "webhook_url")
    @classmethod
    def _literal_well_formed(cls, source: FieldSource | None, info: ValidationInfo) -> FieldSource | None:
        if source is None or source.value is None:
            return source
        pattern, shape = _LITERAL_SHAPES[str(info.field_name)]
        if not re.match(pattern, source.value):
            raise ValueError(f"value {source.value!r} is not {shape}")
        return source

    @field_validator("channel")
    @classmethod
    def _channel_literal(cls, source: FieldSource | None) -> FieldSource | None:
        if source is None or source.value is None:
            return source
        listed = split_channels(source.value)
        if not listed or any(c not in CHANNELS for c in listed):
            raise ValueError(
                f"value {source.value!r} is not a comma-separated list of {', '.join(CHANNELS)}. "
                'Hint: e.g. `channel: {value: "sms,whatsapp"}`, or leave it out to let Sent.dm pick'
            )
        return source

    def sources(self) -> list[FieldSource]:
        """Every field source the message reads, in spec order."""
        named = [self.contact_id, self.to, self.template_id, self.template_name, *self.variables.values()]
        named += [self.webhook_url, self.channel]
        return [s for s in named if s is not None]

    def columns(self) -> list[str]:
        """Input columns the message reads, in spec order, without repeats."""
        return list(dict.fromkeys(s.column for s in self.sources() if s.column is not None))


CHANNELS = ("sms", "whatsapp", "rcs")
# what a literal of these fields must look like, and how to say so
_LITERAL_SHAPES = {
    "contact_id": (GUID_PATTERN, "a GUID (like 7ba7b820-9dad-11d1-80b4-00c04fd430c8)"),
    "template_id": (GUID_PATTERN, "a GUID (like 7ba7b820-9dad-11d1-80b4-00c04fd430c8)"),
    "webhook_url": (URL_PATTERN, "an absolute http(s) URL"),
}


def split_channels(text: str) -> list[str]:
    """`"sms, WhatsApp"` -> `["sms", "whatsapp"]`: the rule for literals; payload.py applies the same to columns."""
    return [part.strip().lower() for part in text.split(",") if part.strip()]


class SandboxTemplateSpec(_Strict):
    """A v3 template the sandbox knows: what ``GET /v3/templates/{id}`` describes and what a send must fill in."""

    id: str
    name: str = Field(min_length=1)
    status: Literal["APPROVED", "PENDING", "REJECTED"] = "APPROVED"
    variables: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    channels: tuple[Literal["sms", "whatsapp", "rcs"], ...] = ("sms",)

    @field_validator("id")
    @classmethod
    def _guid(cls, value: str) -> str:
        if not re.match(GUID_PATTERN, value):
            raise ValueError(f"{value!r} is not a GUID (like 7ba7b820-9dad-11d1-80b4-00c04fd430c8)")
        return value

    @model_validator(mode="after")
    def _channels_and_no_repeats(self) -> SandboxTemplateSpec:
        if not self.channels:
            raise ValueError("channels must name at least one of sms, whatsapp, rcs")
        for key in ("variables", "channels"):
            names: tuple[str, ...] = getattr(self, key)
            if len(set(names)) != len(names):
                raise ValueError(f"{key} names an entry twice")
        return self


class SandboxWebhooksSpec(_Strict):
    """Where the sandbox posts its messages' status changes, signed as Sent.dm signs them; an empty url: nowhere."""

    url: str = ""
    secret: SecretStr | None = None  # a whsec_... value, normally ${SENT_DM_WEBHOOK_SECRET}
    include_reason: bool = False  # FAILED events carry the reason as error_code (Sent.dm's documented ones do not)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if url and not re.match(URL_PATTERN, url):
            raise ValueError("must be an absolute http(s) URL, such as http://127.0.0.1:8080/webhooks/sent")
        return url

    @field_validator("secret")
    @classmethod
    def _whsec(cls, secret: SecretStr | None) -> SecretStr | None:
        text = "" if secret is None else secret.get_secret_value().strip()
        if not text:
            return None
        # the messages never quote the value
        if not text.startswith("whsec_"):
            raise ValueError("must be a signing secret starting with whsec_ (write ${SENT_DM_WEBHOOK_SECRET})")
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise ValueError("the part after whsec_ is not valid base64: copy the whole signing secret")
        return SecretStr(text)

    @model_validator(mode="after")
    def _secret_with_url(self) -> SandboxWebhooksSpec:
        if self.url and self.secret is None:
            raise ValueError(
                "url is set but secret is empty: write `secret: ${SENT_DM_WEBHOOK_SECRET}` and export the "
                "receiver's signing secret (whsec_...), or leave url empty to post nothing"
            )
        return self


class SandboxSpec(_Strict):
    latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    seed: int | None = None
    templates: tuple[SandboxTemplateSpec, ...] | None = None  # None: the sandbox's defaults (order_shipped, ...)
    # v3 delivery: time from acceptance to each message's last status (between half and all of it), the share of
    # accepted messages that end FAILED, the share of delivered WhatsApp/RCS messages read; defaults in lifecycle.py
    delivery_ms: float = Field(default=DEFAULT_DELIVERY_MS, ge=0, le=600_000)
    delivery_failure_rate: float = Field(default=DEFAULT_FAILURE_RATE, ge=0, le=1)
    read_rate: float = Field(default=DEFAULT_READ_RATE, ge=0, le=1)
    webhooks: SandboxWebhooksSpec = SandboxWebhooksSpec()

    @field_validator("templates")
    @classmethod
    def _unique(cls, templates: tuple[SandboxTemplateSpec, ...] | None) -> tuple[SandboxTemplateSpec, ...] | None:
        for key in ("id", "name"):
            seen: set[str] = set()
            for template in templates or ():
                value = template.id.lower() if key == "id" else template.name
                if value in seen:
                    raise ValueError(f"two templates have the {key} {value!r}")
                seen.add(value)
        return templates


class ApiSpec(_Strict):
    version: Literal["v1", "v2", "v3"] = "v1"
    base_url: str = "https://api.sent.dm"
    sender_id: str | None = None  # v1, v2
    profile_id: str | None = None  # v3, optional: sent as x-profile-id when not empty
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    ca_bundle: Path | None = None  # PEM bundle of the CAs to trust instead of the system's; checked in load_spec
    sandbox: SandboxSpec | None = None

    @field_validator("base_url")
    @classmethod
    def _url_or_sandbox(cls, url: str) -> str:
        if url == SANDBOX:
            return url
        if not re.match(URL_PATTERN, url):
            raise ValueError(f"{url!r} is neither an http(s) URL nor 'sandbox'")
        return url.rstrip("/")

    @field_validator("ca_bundle")
    @classmethod
    def _https_only(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("base_url")  # absent when base_url itself was invalid
        if path is not None and isinstance(url, str) and not url.startswith("https://"):
            raise ValueError("only an https:// base_url uses a CA bundle (remove it, or use https://)")
        return path

    @model_validator(mode="after")
    def _credentials(self) -> ApiSpec:
        # whether credentials are required depends on the command (validate and --dry-run send nothing): see
        # load_spec; here only their form is checked
        if self.is_sandbox:
            return self
        if self.sandbox is not None:
            raise ValueError("`sandbox:` options apply only when base_url is 'sandbox'")
        if self.sender_id and not re.match(GUID_PATTERN, self.sender_id):
            raise ValueError("sender_id is not a GUID (like 6ba7b810-9dad-11d1-80b4-00c04fd430c8)")
        if self.profile_id and not re.match(GUID_PATTERN, self.profile_id):
            raise ValueError("profile_id is not a GUID (like 6ba7b810-9dad-11d1-80b4-00c04fd430c8)")
        return self

    def missing_credentials(self) -> list[str]:
        """The credential keys a request to a real API needs that this spec leaves empty."""
        if self.is_sandbox:
            return []
        missing = [] if self.sender_id or self.version == "v3" else ["sender_id"]
        if self.api_key is None or not self.api_key.get_secret_value():
            missing.append("api_key")
        return missing

    @property
    def is_sandbox(self) -> bool:
        return self.base_url == SANDBOX

    def credentials(self) -> tuple[str, str]:
        """(sender id, api key) to send with; the sandbox's stand-ins where a sandbox spec names none."""
        sender_id = self.sender_id or SANDBOX_SENDER_ID
        api_key = self.api_key.get_secret_value() if self.api_key is not None else SANDBOX_API_KEY
        return sender_id, api_key


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order: Monday is 0
_CLOCK = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
MINUTES_PER_DAY = 24 * 60


def parse_clock(text: str, *, end: bool = False) -> int:
    """`"09:00"` -> 540: minutes after midnight of a 24-hour `H:MM`/`HH:MM` time; `"24:00"` (1440) only as the
    `end` of a window, for "until midnight"."""
    written = text.strip()
    if end and written == "24:00":
        return MINUTES_PER_DAY
    match = _CLOCK.match(written)
    if match is None:
        last = "24:00" if end else "23:59"
        raise ValueError(f"{text!r} is not a time of day: write HH:MM in 24-hour time, 00:00 to {last}")
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_days(text: str) -> tuple[int, ...]:
    """`"mon-fri"`, `"mon,wed,fri"`, `"sat-sun"`, `"Mon-Wed, fri"` -> the weekday numbers they name (Monday 0),
    sorted. A range runs forward through the week and may wrap: `fri-mon` is fri, sat, sun, mon."""
    days: set[int] = set()
    for part in text.split(","):
        ends = [name.strip() for name in part.lower().split("-")]
        if len(ends) not in (1, 2) or any(name not in WEEKDAYS for name in ends):
            raise ValueError(
                f"{text!r} is not a list of days. Hint: write days as {', '.join(WEEKDAYS)}: a range (mon-fri), "
                "a list (mon,wed,fri) or both (mon-wed,sat)"
            )
        first, last = WEEKDAYS.index(ends[0]), WEEKDAYS.index(ends[-1])
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return tuple(sorted(days))


class WindowSpec(_Strict):
    """When messages may be sent, in each recipient's own time: from `from` (inclusive) to `to` (exclusive) on the
    listed days. A window past midnight (21:00-06:00) is refused: it is when people sleep, and is most likely a spec
    that wrote the quiet hours instead of the sending hours."""

    from_minute: int = Field(alias="from")  # minutes after local midnight
    to_minute: int = Field(alias="to")  # up to 1440 (24:00)
    days: tuple[int, ...] = tuple(range(7))  # datetime.weekday() numbers; default every day

    @field_validator("from_minute", "to_minute", mode="before")
    @classmethod
    def _clock(cls, raw: object, info: ValidationInfo) -> object:
        key = "from" if info.field_name == "from_minute" else "to"
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= MINUTES_PER_DAY:
            # YAML 1.1 reads an unquoted 20:00 as the number 1200 (base-60), but 0930 or 1200 may be meant as is
            raise ValueError(
                f"{raw} is a number, not a time: YAML reads an unquoted {raw // 60}:{raw % 60:02d} as one. "
                f'Hint: quote the time, e.g. `{key}: "{raw // 60:02d}:{raw % 60:02d}"`'
            )
        if not isinstance(raw, str):
            raise ValueError(f'must be a time such as "09:00" (got {raw!r})')
        return parse_clock(raw, end=key == "to")

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, raw: object) -> object:
        if isinstance(raw, list | tuple) and raw and all(isinstance(part, str) for part in raw):
            raw = ",".join(raw)  # `days: [mon, wed]` says the same as `days: mon,wed`
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"must name days such as mon-fri or mon,wed,fri (got {raw!r})")
        return parse_days(raw)

    @model_validator(mode="after")
    def _from_before_to(self) -> WindowSpec:
        if self.from_minute >= self.to_minute:
            raise ValueError(
                f"from ({clock_text(self.from_minute)}) must be before to ({clock_text(self.to_minute)}): the window "
                "is when messages may be sent, within one day of the recipient's time; a window past midnight is "
                'not supported. Hint: e.g. `window: {from: "09:00", to: "20:00"}`'
            )
        return self

    def describe(self) -> str:
        """`09:00-20:00 mon-sat` (or `... every day`), for messages."""
        return f"{clock_text(self.from_minute)}-{clock_text(self.to_minute)} {days_text(self.days)}"


def clock_text(minute: int) -> str:
    """540 -> `09:00`."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def days_text(days: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 4, 5) -> `mon-sat`; (0, 2, 4) -> `mon,wed,fri`; all seven -> `every day`."""
    if len(days) == 7:
        return "every day"
    if days == tuple(range(days[0], days[-1] + 1)) and len(days) > 2:
        return f"{WEEKDAYS[days[0]]}-{WEEKDAYS[days[-1]]}"
    return ",".join(WEEKDAYS[d] for d in days)


def check_time_zone(name: str) -> str:
    """`name` if it is an IANA time zone zoneinfo can load (`Europe/Berlin`, `UTC`); a ValueError saying so and
    suggesting the nearest name otherwise."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        known = zoneinfo.available_timezones()
        by_case = {zone.lower(): zone for zone in known}
        close = [by_case[name.lower()]] if name.lower() in by_case else difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}?" if close else "write a name such as Europe/Berlin or America/New_York"
        raise ValueError(f"{name!r} is not an IANA time zone. Hint: {hint}") from None
    return name


class SendSpec(_Strict):
    concurrency: int = Field(default=16, ge=1, le=1000)
    rate: str | None = None  # "300/min", "5/s"; None = no client-side limit
    burst: int | None = Field(default=None, ge=1, le=100_000)
    max_attempts: int = Field(default=5, ge=1, le=100)
    max_retry_s: float = Field(default=300.0, ge=0, le=86_400)
    backoff_s: float = Field(default=0.5, ge=0, le=60)  # first retry waits up to this long, doubling after
    retry_ambiguous: bool | None = None  # None: the API generation's default (yes on v3, which keeps keys)
    # v3: rows with the same template, parameters and channel share one request of up to this many numbers
    batch_recipients: int = Field(default=1, ge=1, le=1000)
    # Guard rails. A run that would send more than this refuses to start: the guard against the wrong input file.
    max_messages: int | None = Field(default=None, ge=1)
    window: WindowSpec | None = None  # sending hours in each recipient's own time (pipeline/window.py)
    timezone: FieldSource | None = None  # each row's IANA zone; default: the phone number's (v3)
    default_timezone: str | None = None  # for rows whose zone cannot be known otherwise

    @field_validator("max_messages", mode="before")
    @classmethod
    def _count_not_flag(cls, raw: object) -> object:
        if isinstance(raw, bool):  # `max_messages: yes` would otherwise be a cap of 1
            raise ValueError(f"must be a number of messages, e.g. 50000 (got {raw!r})")
        return raw

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if not name:
            return None  # `${VAR:-}` left empty: no default zone, as if the key were absent
        return check_time_zone(name)

    @field_validator("timezone")
    @classmethod
    def _known_literal_zone(cls, source: FieldSource | None) -> FieldSource | None:
        if source is not None and source.value is not None:
            check_time_zone(source.value)
        return source

    @field_validator("rate")
    @classmethod
    def _rate_format(cls, rate: str | None) -> str | None:
        if rate is not None:
            parse_rate(rate)
        return rate

    @property
    def rate_per_s(self) -> float | None:
        return parse_rate(self.rate) if self.rate is not None else None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """'300/min' -> 5.0 requests per second."""
    match = _RATE.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"rate {text!r} is not like '300/min' or '5/s'")
    return float(match.group(1)) / _PER_S[match.group(2)]


def parse_separator(text: str) -> str:
    """A CSV separator as a spec writes it (input.separator, output.csv_separator): one character, or a name from
    SEPARATOR_NAMES; `\\t` (a backslash and a t, as YAML reads `'\\t'`) is a tab too."""
    word = text.strip().lower()
    if word in SEPARATOR_NAMES:
        return SEPARATOR_NAMES[word]
    if word == "\\t":  # nobody separates fields by a backslash and a t
        return "\t"
    if text == '"':
        raise ValueError("the double quote cannot separate fields: it quotes them")
    # polars reads and writes one byte; a line break would end every record
    if len(text) == 1 and text.isascii() and text not in "\r\n":
        return text
    raise ValueError(
        f"must be one character, or one of {', '.join(SEPARATOR_NAMES)} (got {text!r}). "
        'Hint: write `separator: tab` or `separator: ";"`'
    )


_CSV_OPTIONS = ("csv_separator", "csv_bom", "csv_formula_guard")


class OutputSpec(_Strict):
    results: Path
    # a path (SQLite; default: CAMPAIGN.state.sqlite beside the results file) or a postgresql:// URL
    state: Path | PostgresState | None = None
    csv_separator: str | None = None  # default: input.separator
    csv_bom: bool = False
    csv_formula_guard: bool = True

    @field_validator("state", mode="before")
    @classmethod
    def _state_location(cls, value: object) -> object:
        if isinstance(value, str) and "://" in value:
            if objects.is_object_url(value):
                raise ValueError(
                    "cannot be in object storage: the state is a database that is written row by row. Hint: use a "
                    "postgresql:// URL (the state then outlives any one machine), or a local path"
                )
            if not is_postgres_url(value):
                # the text is not repeated: a URL may carry a password
                raise ValueError(
                    "must be a path (a SQLite file) or a postgresql:// URL; no other URL scheme is supported"
                )
            return PostgresState(value)
        return value

    @field_validator("results", mode="before")
    @classmethod
    def _url_or_path(cls, raw: object) -> object:
        return _local_location(raw)

    @field_validator("results")
    @classmethod
    def _known_format(cls, path: Path) -> Path:
        if path.suffix.lower() not in RESULT_FORMATS:
            raise ValueError(f"results file must end in .csv, .parquet or .jsonl, not {path.name!r}")
        return path

    # "plain" skips the model's whitespace stripping, which would turn a tab or a space into nothing
    @field_validator("csv_separator", mode="plain")
    @classmethod
    def _separator(cls, text: object) -> str | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"must be text such as ';' or tab, not {text!r}")
        return parse_separator(text)

    @model_validator(mode="after")
    def _csv_options_only_for_csv(self) -> OutputSpec:
        given = [key for key in _CSV_OPTIONS if key in self.model_fields_set]
        if given and self.results.suffix.lower() != ".csv":
            # a setting that cannot apply is most likely a mistake in the spec, like an unknown key
            raise ValueError(f"{', '.join(given)} apply only to .csv results, not {self.results.name!r}")
        return self


def _local_location(raw: object) -> object:
    """An s3://, gs://, az:// or file:// URL as the local path the tool works with (pipeline/objects.py); a path is
    left to be resolved against the spec's folder."""
    if isinstance(raw, str) and "://" in raw:
        return objects.local_path(raw)
    return raw


class SuppressSpec(_Strict):
    """One suppression list: a CSV or Parquet file of recipients never to send to, and the column that names them
    (None: `phone` on v3, `contact_id` on v1/v2; see pipeline/suppress.py)."""

    path: Path
    column: str | None = Field(default=None, min_length=1)

    @field_validator("path", mode="before")
    @classmethod
    def _not_empty(cls, raw: object) -> object:
        # Path("") is the current folder: an empty entry (an unset ${VAR:-}) must not pass as a list
        if isinstance(raw, str) and not raw.strip():
            raise ValueError(
                "is empty: a suppression list that is not there would let every row through. Hint: name the "
                "file, relative to the spec file, or remove the entry"
            )
        return _local_location(raw)


class CampaignSpec(_Strict):
    """A validated job spec. Paths are absolute (resolved against the spec file's folder)."""

    version: Literal[1]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    input: InputSpec
    message: MessageSpec
    api: ApiSpec
    send: SendSpec = SendSpec()
    output: OutputSpec
    # recipients never to send to: `suppress: [opt-outs.csv, {path: bounced.parquet, column: msisdn}]`
    suppress: tuple[SuppressSpec, ...] = ()
    spec_path: Path = Path("<spec>")

    @field_validator("suppress", mode="before")
    @classmethod
    def _paths_or_mappings(cls, raw: object) -> object:
        if raw is None:
            raise ValueError(
                "is empty. Hint: list the suppression files (`suppress: [lists/opt-outs.csv]`), or remove the key"
            )
        if isinstance(raw, str | dict):  # one list written without brackets
            raw = [raw]
        if isinstance(raw, list):
            return [{"path": entry} if isinstance(entry, str) else entry for entry in raw]
        return raw

    @model_validator(mode="after")
    def _keys_of_the_version(self) -> CampaignSpec:
        problems = version_problems(dict(self.message), dict(self.api), dict(self.send))
        problems += window_problems(dict(self.api), dict(self.send))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def input_columns(self) -> list[str]:
        """Input columns the campaign reads: the message's, and each row's time zone (send.timezone)."""
        zone = self.send.timezone
        extra = [zone.column] if zone is not None and zone.column is not None else []
        return list(dict.fromkeys([*self.message.columns(), *extra]))

    @property
    def retry_ambiguous(self) -> bool:
        """Whether ambiguous failures are sent again: send.retry_ambiguous, by default only where the server keeps
        Idempotency-Keys (v3), so that a repeat is answered with the first answer instead of texting twice."""
        chosen = self.send.retry_ambiguous
        return self.api.version == "v3" if chosen is None else chosen

    @property
    def input_format(self) -> Literal["csv", "parquet"]:
        if self.input.format is not None:
            return self.input.format
        return "parquet" if self.input.path.suffix.lower() in (".parquet", ".pq") else "csv"


# Keys that belong to some API generations only, with what to write instead on the others.
_VERSION_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "message.contact_id": (("v1", "v2"), "v3 addresses phone numbers: use message.to (and message.default_region)"),
    "message.webhook_url": (("v1", "v2"), "v3 reports delivery by webhooks set up in the Sent.dm dashboard"),
    "message.to": (("v3",), "v1 and v2 address contacts by GUID: use message.contact_id"),
    "message.default_region": (("v3",), "it reads phone numbers, which only v3 takes"),
    "message.template_name": (("v3",), "v1 and v2 name templates by GUID: use message.template_id"),
    "message.channel": (("v3",), "v1 and v2 let Sent.dm pick the channel"),
    "api.sender_id": (("v1", "v2"), "v3 authenticates with api.api_key alone"),
    "api.profile_id": (("v3",), "a profile is chosen only on v3"),
}


def version_problems(
    message: Mapping[str, Any], api: Mapping[str, Any], send: Mapping[str, Any] | None = None
) -> list[str]:
    """`key: problem. Hint: fix` for every key of `message` and `api` (a spec's sections, as mappings) that does not
    fit api.version, and every key the version needs that is missing. Empty values (`${VAR:-}`) count as absent."""
    version = api.get("version") or "v1"
    if version not in ("v1", "v2", "v3"):
        return []  # reported as an invalid value of api.version
    sections = {"message": message, "api": api}

    def given(key: str) -> bool:
        section, name = key.split(".")
        return sections[section].get(name) not in (None, "")

    problems = []
    for key, (versions, instead) in _VERSION_KEYS.items():
        if given(key) and version not in versions:
            where = " and ".join(versions)
            problems.append(
                f"{key}: belongs to api.version {where}, not {version}. Hint: {instead}, or set api.version."
            )
    batch = (send or {}).get("batch_recipients")
    if version != "v3" and batch not in (None, 1, "1"):
        problems.append(
            f"send.batch_recipients: belongs to api.version v3, not {version} (only v3 sends one request to several "
            "numbers). Hint: remove it, or set api.version: v3."
        )
    if version == "v3":
        if not given("message.to"):
            problems.append(
                "message.to: required key is missing (v3 sends to phone numbers). Hint: write `to: {column: phone}`."
            )
        if given("message.template_id") == given("message.template_name"):
            problems.append(
                "message.template_id: give either template_id or template_name on v3. "
                "Hint: `template_name: {value: order_shipped}` names an approved template."
            )
    else:
        if not given("message.contact_id"):
            problems.append(
                f"message.contact_id: required key is missing ({version} sends to contact GUIDs). "
                "Hint: write `contact_id: {column: contact_id}`, or set `api.version: v3` to send to phone numbers."
            )
        if not given("message.template_id"):
            problems.append(
                "message.template_id: required key is missing. Hint: write `template_id: {value: GUID}` or "
                "`{column: NAME}`."
            )
        if not message.get("variables"):
            body = "messageBody" if version == "v1" else "templateVariables"
            problems.append(
                f"message.variables: required key is missing ({version} refuses an empty {body}). "
                "Hint: map the template's variables, e.g. `name: {column: first_name}`."
            )
    return problems


def window_problems(api: Mapping[str, Any], send: Mapping[str, Any]) -> list[str]:
    """`key: problem. Hint: fix` for the time-zone keys of `send` (a spec's section, as a mapping) that cannot
    apply: zones without a window, and a window on v1/v2 with no way to know any row's zone."""

    def given(name: str) -> bool:
        return send.get(name) not in (None, "")

    problems = [
        f"send.{name}: applies only with send.window (a row's time zone says when its window is open). "
        "Hint: add send.window, or remove it."
        for name in ("timezone", "default_timezone")
        if given(name) and not given("window")
    ]
    version = api.get("version") or "v1"
    if given("window") and version in ("v1", "v2") and not given("timezone") and not given("default_timezone"):
        problems.append(
            f"send.window: {version} addresses contact GUIDs, which say nothing of where a person is. Hint: set "
            "send.default_timezone (e.g. Europe/Berlin), or send.timezone: {column: NAME} naming each row's zone."
        )
    return problems


# --- loading -----------------------------------------------------------------------------------------------------

_HINTS = {
    "name": "use letters, digits, '.', '_' or '-' (it names state files and idempotency keys)",
    "version": "write `version: 1`",
}


class Note(str):
    """A remark about the spec that is not a problem (printed as `note:`, where other warnings say `warning:`)."""

    __slots__ = ()


# the keys a request needs and validate / --dry-run do not: an unset variable there is a note for those commands
_CREDENTIAL_KEYS = {"api.sender_id": "sender_id", "api.api_key": "api_key"}
_CREDENTIAL_VARIABLES = {"sender_id": "SENT_DM_SENDER_ID", "api_key": "SENT_DM_API_KEY"}


@dataclass
class _EnvRefs:
    """What interpolation found: the variables each key read, and the ones that are not set."""

    used: dict[str, list[str]] = field(default_factory=dict)  # dotted key -> variable names it reads
    unset: list[tuple[str, str]] = field(default_factory=list)  # (dotted key, variable) without a default


# the keys the command line may set in place of the spec (`--input`, `--results`, `--state`): where the campaign's
# files and state live, which differ between a laptop and a deployment while the rest of the spec stays the same
LOCATION_KEYS = {"input.path": "--input", "output.results": "--results", "output.state": "--state"}


def load_spec(
    path: str | Path,
    *,
    environ: dict[str, str] | None = None,
    offline: bool = False,
    locations: Mapping[str, str] | None = None,
) -> tuple[CampaignSpec, list[str]]:
    """Read, interpolate and validate a job spec. Returns the spec and any warnings (`Note`s among them); raises
    SpecError listing every problem at once.

    `offline` is for commands that make no network call (validate, run --dry-run): the API credentials are not
    needed then, so leaving them unset is a note, not an error. `locations` (keys of LOCATION_KEYS) replace those
    keys of the spec, as given (no `${VAR}` interpolation); a relative path in them is relative to the spec file,
    like the spec's own, so the command line passes absolute ones."""
    spec_path = Path(path)
    env = dict(os.environ) if environ is None else environ
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"{spec_path}: job spec not found. Hint: check the path (it is relative to this folder)."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{spec_path}: cannot read the job spec: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise SpecError(
            f"{spec_path}: not valid YAML{where}: {problem}. Hint: check indentation and quoting."
        ) from None
    if raw is None:
        raise SpecError(f"{spec_path}: the job spec is empty. Hint: start from configs/campaign.yaml.")
    if not isinstance(raw, dict):
        raise SpecError(f"{spec_path}: the job spec must be a mapping of keys (version, name, input, ...).")

    warnings: list[str] = []
    api_key = raw.get("api", {}).get("api_key") if isinstance(raw.get("api"), dict) else None
    if isinstance(api_key, str) and api_key and "${" not in api_key:
        warnings.append(
            f"{spec_path}: api.api_key is written in the spec. Secrets belong in the environment: "
            "write `api_key: ${SENT_DM_API_KEY}` and export the variable."
        )
    refs = _EnvRefs()
    data = _interpolate(raw, env, refs, ())
    unset = refs.unset
    if offline:
        for key, name in [u for u in unset if u[0] in _CREDENTIAL_KEYS]:
            warnings.append(
                Note(
                    f"{spec_path}: {key}: environment variable {name} is not set; this command sends nothing, so "
                    "it is not needed now (`run` will need it)."
                )
            )
            data["api"].pop(_CREDENTIAL_KEYS[key], None)
        unset = [u for u in unset if u[0] not in _CREDENTIAL_KEYS]
    unset = [u for u in unset if u[0] not in (locations or {})]  # replaced anyway: their variables are not needed
    if unset:
        raise SpecError(_unset_message(spec_path, unset))
    for key, value in (locations or {}).items():
        section, name = key.split(".")
        data.setdefault(section, {})
        if isinstance(data[section], dict):
            data[section][name] = value
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        message = _format_validation_error(spec_path, exc, data)
        if locations:
            given = ", ".join(f"{key} from {LOCATION_KEYS[key]}" for key in locations)
            message += f"\n(given on the command line, not in the spec: {given})"
        raise SpecError(message) from None
    if not offline:
        _require_credentials(spec_path, spec.api, refs, env)
    base = spec_path.resolve().parent
    state = spec.output.state
    if isinstance(state, PostgresState) and state.has_password:
        warnings.append(
            f"{spec_path}: output.state has a password in its URL (shown as ***). Secrets belong in the environment: "
            "remove it from the URL and set PGPASSWORD, or put it in ~/.pgpass."
        )
    _check_state_beside_objects(spec_path, spec.output)
    ca_bundle = spec.api.ca_bundle
    if ca_bundle is not None:
        ca_bundle = (base / ca_bundle).resolve()
        _check_ca_bundle(spec_path, ca_bundle)
    resolved = spec.model_copy(
        update={
            "spec_path": spec_path.resolve(),
            "input": spec.input.model_copy(update={"path": (base / spec.input.path).resolve()}),
            "api": spec.api.model_copy(update={"ca_bundle": ca_bundle}),
            "suppress": tuple(
                entry.model_copy(update={"path": (base / entry.path).resolve()}) for entry in spec.suppress
            ),
            "output": spec.output.model_copy(
                update={
                    "results": (base / spec.output.results).resolve(),
                    "state": (base / state).resolve() if isinstance(state, Path) else state,
                }
            ),
        }
    )
    return resolved, warnings


def _check_state_beside_objects(spec_path: Path, output: OutputSpec) -> None:
    """Results in a bucket mean the run's machine may not be there next time: its state must not be left on it."""
    url = objects.url_of(output.results)
    if url is None or output.state is not None:
        return
    raise SpecError(
        f"{spec_path}: output.state: output.results is in object storage ({url}), so the campaign state cannot be "
        "kept beside it, and a state on this machine's disk would be lost with the machine: a retried run elsewhere "
        "would send every row again. Hint: set output.state to a postgresql:// URL (the password in PGPASSWORD or "
        "~/.pgpass), or to a path on a disk that outlives the run if every run of the campaign uses that disk."
    )


def _check_ca_bundle(spec_path: Path, path: Path) -> None:
    """Load the bundle as the sender will: a wrong path or a file OpenSSL cannot use is a spec error, found before
    anything is sent."""
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        problem = f"no certificate OpenSSL can read in it ({str(exc.reason or exc).lower().replace('_', ' ')})"
    except OSError as exc:
        problem = exc.strerror or str(exc)
    else:
        return
    raise SpecError(
        f"{spec_path}: api.ca_bundle: cannot use {path}: {problem}. Hint: the path is relative to the spec file; "
        "point it at a PEM file with the certificate of the CA that signed the server's certificate."
    )


def _unset_message(spec_path: Path, unset: list[tuple[str, str]]) -> str:
    if len(unset) == 1:
        key, name = unset[0]
        return (
            f"{spec_path}: {key}: environment variable {name} is not set. "
            f"Hint: export {name}=... before running, or write ${{{name}:-default}} in the spec."
        )
    names = list(dict.fromkeys(name for _, name in unset))
    lines = [f"{spec_path}: {len(names)} environment variables are not set:"]
    lines += [f"  {key}: {name}" for key, name in unset]
    lines.append(
        f"Hint: export {', '.join(f'{n}=...' for n in names)} before running, or write ${{NAME:-default}} in the spec."
    )
    return "\n".join(lines)


def _require_credentials(spec_path: Path, api: ApiSpec, refs: _EnvRefs, env: dict[str, str]) -> None:
    """A command that sends needs both credentials; name the variable when it is set but empty."""
    problems = []
    for field_name in api.missing_credentials():
        key = f"api.{field_name}"
        empty = [name for name in refs.used.get(key, []) if env.get(name) == ""]
        if empty:
            problems.append(
                f"  {key}: environment variable {empty[0]} is set but empty. Hint: export {empty[0]}=<your "
                f"{'key' if field_name == 'api_key' else 'sender id'}> (from the Sent.dm dashboard)."
            )
        else:
            problems.append(
                f"  api: {field_name} is required when base_url is not 'sandbox' "
                f"(use ${{{_CREDENTIAL_VARIABLES[field_name]}}})"
            )
    if problems:
        raise SpecError("\n".join([f"{spec_path}: the job spec is invalid:", *problems]))


def _interpolate(node: Any, env: dict[str, str], refs: _EnvRefs, key_path: tuple[str | int, ...]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; `$$` is a literal dollar sign. Unset variables without a
    default are collected in `refs` (all of them, so one message can name them all)."""
    if isinstance(node, dict):
        return {k: _interpolate(v, env, refs, (*key_path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, refs, (*key_path, i)) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        refs.used.setdefault(_dotted(key_path), []).append(name)
        if name in env:
            return env[name]
        if default is not None:
            return default
        refs.unset.append((_dotted(key_path), name))
        return ""

    return _ENV_REF.sub(substitute, node)


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for arg in get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        # a list of models, e.g. api.sandbox.templates: the entries' model
        nested = _submodel(arg) if get_args(arg) else None
        if nested is not None:
            return nested
    return None


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model that owns the last key of `loc`, to list or suggest the keys it knows."""
    model: type[BaseModel] | None = CampaignSpec
    dict_values: type[BaseModel] | None = None
    for part in loc:
        if dict_values is not None:  # `part` is a user's key inside a dict, e.g. a variable name
            model, dict_values = dict_values, None
            continue
        if isinstance(part, int):  # a position in a list of models: the model stays the entries'
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        if get_origin(field.annotation) is dict:
            model, dict_values = None, _submodel(get_args(field.annotation)[1])
        else:
            model = _submodel(field.annotation)
    return model


def _format_validation_error(spec_path: Path, exc: ValidationError, data: Any) -> str:
    lines = [f"{spec_path}: the job spec is invalid:"]
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _dotted(loc)
        kind = error["type"]
        if not loc and kind == "value_error":  # the spec as a whole: version_problems, listed above already
            continue
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            # a key that is a Python keyword (`from`) is a field by another name, spelt in the spec as its alias
            fields = model.model_fields.items() if model is not None else []
            known = sorted(info.alias or name for name, info in fields if name != "spec_path")
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys here: {', '.join(known)}"
            lines.append(f"  {key}: unknown key. Hint: {hint}")
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            model = _model_at(loc)
            if model is FieldSource:
                hint = "write `{column: NAME}` or `{value: LITERAL}`"
            elif model is SuppressSpec:
                hint = "write the file's path, or `{path: FILE, column: NAME}`"
            else:
                hint = "indent the keys under it"
            got_text = "a string" if "webhooks" in key else repr(error.get("input"))  # it may be the secret
            lines.append(f"  {key}: must be a mapping, got {got_text}. Hint: {hint}")
        elif kind == "missing":
            hint = _HINTS.get(key, "see the spec reference in README.md")
            lines.append(f"  {key}: required key is missing. Hint: {hint}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            got = error.get("input")
            # a custom rule's message already names the value; a type error shows it (never the API key's)
            scalar = not isinstance(got, dict | list) and got is not None
            secret = "api_key" in key or "secret" in key
            shown = f" (got {got!r})" if scalar and kind != "value_error" and not secret else ""
            hint_text = f". Hint: {_HINTS[key]}" if key in _HINTS else ""
            lines.append(f"  {key}: {message}{shown}{hint_text}")
    message_section = data.get("message") if isinstance(data, dict) else None
    api_section = data.get("api") if isinstance(data, dict) else None
    send_section = data.get("send") if isinstance(data, dict) else None
    if isinstance(message_section, dict) and isinstance(api_section, dict):
        # what the chosen API generation needs, named even when other keys fail (then the spec-wide check, which
        # needs every key valid, does not run)
        sent = send_section if isinstance(send_section, dict) else None
        lines.extend(f"  {line}" for line in version_problems(message_section, api_section, sent))
    if isinstance(api_section, dict) and isinstance(send_section, dict):
        lines.extend(f"  {line}" for line in window_problems(api_section, send_section))
    return "\n".join(lines)
