"""`POST /v2/messages/contact`: v1 with one field renamed (`messageBody` -> `templateVariables`); the same headers,
the same answers (204 empty, or JSON), and no server-side idempotency either."""

from __future__ import annotations

from pipeline.api.v1 import V1


class V2(V1):
    version = "v2"
    messages_path = "/v2/messages/contact"
    variables_field = "templateVariables"
