"""Sent.dm's current generation: `POST /v3/messages` with `x-api-key` (and `x-profile-id` when set), an
Idempotency-Key on every request, body `{to: [E.164], template: {id | name, parameters}, channel?, sandbox?}`.

Answers are the v3 envelope: `{"success": true, "data": {"recipients": [{message_id, to, channel}]}}` or
`{"success": false, "error": {code, message, details}}`. Beyond the common classification (outcome.py):
409 CONFLICT_001 - the same key still in flight - is transient (wait, resend with the same key: the server answers
it with the first answer); 422 BUSINESS_003 - insufficient balance - stops the run, as every further row would fail
the same way. The server keeps keys 24 hours, so ambiguous failures are resent by default (CampaignSpec).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import polars as pl

from pipeline.api.base import USER_AGENT, Answer, Credentials, Generation, MessageState, optional_field
from pipeline.api.v1 import guid, guid_reason, text_of
from pipeline.fields import CHANNEL, ROW, TEMPLATE, TEMPLATE_NAME, TO, TO_ERROR
from pipeline.outcome import Verdict, classify_status, error_text, parse_body
from pipeline.spec import CHANNELS, MessageSpec

_ERROR_TEXT_CHARS = 300
_BALANCE = "BUSINESS_003"


class V3(Generation):
    version = "v3"
    messages_path = "/v3/messages"
    keeps_keys = True
    credentials_hint = "check api.api_key (and api.profile_id, when set)"

    def headers(self, credentials: Credentials) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-api-key", credentials.api_key.encode()),
            (b"content-type", b"application/json"),
            (b"user-agent", USER_AGENT.encode()),
        ]
        if credentials.profile_id:
            headers.append((b"x-profile-id", credentials.profile_id.encode()))
        return headers

    def recipient_fields(
        self, texts: pl.DataFrame, message: MessageSpec, *, numbers: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        assert message.to is not None  # the spec's version check
        from pipeline import phones  # phonenumbers' metadata takes ~0.1 s to load: only v3 campaigns pay for it

        decided = numbers
        if decided is None:
            written = texts.select(pl.col(ROW), text_of(message.to).alias(TO))[TO]
            decided = phones.normalise_phones(written, default_region=message.default_region)
        columns: list[pl.Expr | pl.Series] = [
            pl.col(ROW),
            decided[phones.E164].alias(TO),
            decided[phones.PHONE_ERROR].alias(TO_ERROR),
        ]
        if message.template_id is not None:
            columns.append(guid(message.template_id).alias(TEMPLATE))
        if message.template_name is not None:
            columns.append(text_of(message.template_name).str.strip_chars().alias(TEMPLATE_NAME))
        if message.channel is not None:
            # "SMS, whatsapp" -> "sms,whatsapp"; an empty cell lets Sent.dm pick
            listed = (
                text_of(message.channel)
                .str.to_lowercase()
                .str.replace_all(r"\s+", "")
                .str.replace_all(",+", ",")
                .str.strip_chars(",")
            )
            columns.append(pl.when(listed != "").then(listed).alias(CHANNEL))
        return texts.select(columns)

    def reasons(self, message: MessageSpec) -> list[pl.Expr]:
        assert message.to is not None
        where = f" (column {message.to.column})" if message.to.column is not None else " (message.to.value)"
        reasons: list[pl.Expr | None] = [
            # concatenated, not formatted: a column's name may hold braces
            pl.when(pl.col(TO_ERROR).is_not_null()).then(
                pl.concat_str(pl.lit("to: "), pl.col(TO_ERROR), pl.lit(where))
            ),
            guid_reason(TEMPLATE, message.template_id),
        ]
        name = message.template_name
        if name is not None and name.column is not None:
            value = pl.col(TEMPLATE_NAME)
            reasons.append(
                pl.when(value.is_null() | (value == "")).then(pl.lit(f"template_name is empty (column {name.column})"))
            )
        channel = message.channel
        if channel is not None and channel.column is not None:
            known = "|".join(CHANNELS)
            reasons.append(
                pl.when(
                    pl.col(CHANNEL).is_not_null() & ~pl.col(CHANNEL).str.contains(f"^(?:{known})(?:,(?:{known}))*$")
                ).then(
                    pl.lit(f"channel is not a comma-separated list of {', '.join(CHANNELS)} (column {channel.column})")
                )
            )
        return [r for r in reasons if r is not None]

    def identity(self, message: MessageSpec) -> list[pl.Expr]:
        template = TEMPLATE if message.template_id is not None else TEMPLATE_NAME
        parts = [pl.col(TO), pl.col(template)]
        if message.channel is not None:
            parts.append(pl.col(CHANNEL).fill_null(""))
        return parts

    def body(self, message: MessageSpec, parameters: pl.Expr | None, *, rehearsal: bool = False) -> pl.Expr:
        which = ("id", pl.col(TEMPLATE)) if message.template_id is not None else ("name", pl.col(TEMPLATE_NAME))
        template = [which[1].alias(which[0])]
        if parameters is not None:  # a template without variables takes no parameters
            template.append(parameters.alias("parameters"))
        fields: dict[str, pl.Expr] = {"to": pl.concat_list(pl.col(TO)), "template": pl.struct(template)}
        if rehearsal:
            fields["sandbox"] = pl.lit(True)
        if message.channel is None:
            return pl.struct([e.alias(k) for k, e in fields.items()]).struct.json_encode()
        listed = pl.col(CHANNEL).str.split(",")
        return optional_field(fields, "channel", listed, present=pl.col(CHANNEL).is_not_null())

    def read_answer(self, status: int, content: bytes, *, secret: str) -> Answer:
        verdict = classify_status(status)
        body = parse_body(content)
        if verdict is Verdict.SENT:
            if body is not None and body.get("success") is False:
                # a 2xx that says it failed: nothing certain about whether the message went out
                return Answer(Verdict.AMBIGUOUS, error=f"HTTP {status} with success: false")
            ids, by_number = _message_ids(body)
            return Answer(verdict, message_id=ids, by_number=by_number)
        error = body.get("error") if body is not None else None
        if not isinstance(error, dict):
            return Answer(verdict, error=error_text(status, content, body, secret=secret))
        code = str(error.get("code") or "")
        text = _error_line(status, code, error, secret)
        if status == 409:
            # CONFLICT_001: a request with this key is still being processed; its answer will be this one's
            return Answer(Verdict.TRANSIENT, error=text)
        if status == 422 and code == _BALANCE:
            return Answer(
                Verdict.SYSTEMIC,
                error=text,
                stop=f"the account cannot pay for more messages ({text}). Hint: top up the balance, then run "
                "again: rows not sent yet are sent then",
            )
        return Answer(verdict, error=text)

    def status_path(self, message_id: str) -> str | None:
        return f"{self.messages_path}/{quote(message_id, safe='')}"

    def read_status(self, status: int, content: bytes, *, secret: str) -> Answer:
        """`GET /v3/messages/{id}` -> `data: {id, status, channel, events: [{status, timestamp, description}]}`.
        A failure's reason is the description of the event that set the status (the latest one with that status);
        a 404 is a message the server does not know (permanent); other errors read as a send's do."""
        if not 200 <= status < 300:
            return self.read_answer(status, content, secret=secret)
        body = parse_body(content)
        data = body.get("data") if body is not None else None
        current = data.get("status") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(current, str) or not current:
            return Answer(Verdict.PERMANENT, error=f"HTTP {status}: the answer holds no message status")
        current = current.upper()
        events = data.get("events")
        setting = [
            e
            for e in (events if isinstance(events, list) else [])
            if isinstance(e, dict) and _upper(e.get("status")) == current
        ]
        event = setting[-1] if setting else {}
        state = MessageState(
            message_id=str(data.get("id") or ""),
            status=current,
            # a description of any other status is a note ("delivered to the handset"), not an error
            error=_text(event.get("description")) if current == "FAILED" else None,
            at=_text(event.get("timestamp")),
            channel=_text(data.get("channel")),
        )
        return Answer(Verdict.SENT, found=state)


def _upper(value: object) -> str | None:
    return value.upper() if isinstance(value, str) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _message_ids(body: dict[str, Any] | None) -> tuple[str | None, dict[str, str] | None]:
    """Every message id of the answer, comma-separated, and the same by number (`recipients` come in any order)."""
    data = body.get("data") if body is not None else None
    recipients = data.get("recipients") if isinstance(data, dict) else None
    if not isinstance(recipients, list):
        return None, None
    ids: list[str] = []
    by_number: dict[str, list[str]] = {}
    for recipient in recipients:
        if isinstance(recipient, dict) and recipient.get("message_id") is not None:
            ids.append(str(recipient["message_id"]))
            by_number.setdefault(str(recipient.get("to")), []).append(ids[-1])
    return ",".join(ids) or None, {number: ",".join(found) for number, found in by_number.items()}


def _error_line(status: int, code: str, error: dict[str, Any], secret: str) -> str:
    """`HTTP 400 VALIDATION_002: message - field: detail; field: detail` on one line."""
    text = str(error.get("message") or "")
    details = error.get("details")
    if isinstance(details, dict) and details:
        listed = "; ".join(
            f"{field}: {', '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
            for field, msgs in details.items()
        )
        text = f"{text} - {listed}" if text else listed
    text = re.sub(r"\s+", " ", text).strip()
    if secret:
        text = text.replace(secret, "***")
    head = f"HTTP {status} {code}".rstrip()
    return f"{head}: {text[:_ERROR_TEXT_CHARS]}" if text else head


# A v3 body begins with its recipients - `{"to":["+14155550123"],` - as `body` builds it: a broadcast (one request to
# several numbers) is the first member's body with the list of every member's number in their place.
_ONE_RECIPIENT = r'^\{"to":\["([^"]+)"\],'


def recipient_and_rest(body: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """A one-number body's number, and the rest of it: the message, the same for every member of a broadcast."""
    return body.str.extract(_ONE_RECIPIENT, 1), body.str.replace(_ONE_RECIPIENT, "{")


def broadcast_body(numbers: list[str], rest: str) -> str:
    """The body of one request to every number of `numbers` with the message `rest`."""
    listed = ",".join(f'"{number}"' for number in numbers)  # E.164: a `+` and digits, nothing to escape
    return f'{{"to":[{listed}],{rest[1:]}'
