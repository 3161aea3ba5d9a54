"""Column names of the fields frame: one text column per message field, built by payload.message_fields with the
API generation's `recipient_fields`, read by validation, duplicate detection and body building."""

ROW = "result_row"
CONTACT = "contact_id"  # v1, v2: the contact GUID, trimmed and lower-cased
TO = "to"  # v3: the number in E.164, null when it is not a valid number
TO_ERROR = "to_error"  # v3: why `to` is null (phones.py's reasons)
TEMPLATE = "template_id"  # the template GUID, trimmed and lower-cased (null when the spec names templates by name)
TEMPLATE_NAME = "template_name"  # v3
CHANNEL = "channel"  # v3: the channels as JSON-ready text "sms,whatsapp", null when Sent.dm picks
WEBHOOK = "webhook_url"  # v1, v2
# send.window (pipeline/window.py fills them; the campaign's guards carry them through)
ZONES = "time_zones"  # List[String]: the row's zones; null when none is known
ZONE_ERROR = "time_zone_error"  # why the zone a row names cannot be used; null when it can
WINDOW_OPEN = "window_open"  # open now in every one of the row's zones
OPENS_AT = "window_opens_at"  # UTC; null when open now or not within the horizon
CLOSES_AT = "window_closes_at"  # UTC; when the open spell (the current one, or the next) ends in one of the zones
DEFERRED_REASON = "window_reason"  # why the row is not sendable now; null when it is
CONTENT = "content"  # everything that goes into the request, unambiguously: a row's identity
BODY = "payload"
KEY = "idempotency_key"


def variable_column(index: int) -> str:
    """Name of the fields-frame column holding the index-th variable (user variable names may be anything)."""
    return f"var_{index}"
