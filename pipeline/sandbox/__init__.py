"""The embedded fake of the Sent.dm API: ``server`` holds the HTTP machinery.

Callers import from here, so the package's inner layout can change without touching them.
"""

from pipeline.sandbox.server import MAX_BODY_BYTES, MAX_HEADER_BYTES, MESSAGES_PATH, SandboxServer, serve_forever

__all__ = ["MAX_BODY_BYTES", "MAX_HEADER_BYTES", "MESSAGES_PATH", "SandboxServer", "serve_forever"]
