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
CONTENT = "content"  # everything that goes into the request, unambiguously: a row's identity
BODY = "payload"
KEY = "idempotency_key"


def variable_column(index: int) -> str:
    """Name of the fields-frame column holding the index-th variable (user variable names may be anything)."""
    return f"var_{index}"
