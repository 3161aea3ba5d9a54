"""The embedded fake of the Sent.dm API, v1, v2 and v3 at once.

``server`` holds the HTTP machinery and dispatches by path to ``v1``, ``v2`` and ``v3``, one module per API
generation; ``templates``, ``idempotency`` and ``ratelimit`` hold what v3 keeps between requests, ``state`` the
options and counters, ``exchange`` the request and answer types. Callers import from here, so the package's inner
layout can change without touching them.
"""

from pipeline.sandbox.server import (
    ENDPOINTS,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MESSAGES_PATH,
    SandboxServer,
    serve_forever,
)

__all__ = ["ENDPOINTS", "MAX_BODY_BYTES", "MAX_HEADER_BYTES", "MESSAGES_PATH", "SandboxServer", "serve_forever"]
