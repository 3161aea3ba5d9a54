"""The Sent.dm API generations the sender speaks, each one small module behind one interface (`Generation`): the
send endpoint's path and headers, which fields a message has and how its JSON body is built from them in bulk, and
how an answer reads. The sending, retry, state and results code never branches on the version.

    v1.py   the seed's POST /v1/messages/contact: contact GUIDs, `messageBody`; no server-side idempotency
    v2.py   POST /v2/messages/contact: v1 with `messageBody` renamed `templateVariables`
    v3.py   POST /v3/messages: E.164 phone numbers, templates by id or name, channels, Idempotency-Key kept 24 h
"""

from pipeline.api.base import Answer, Generation
from pipeline.api.v1 import V1
from pipeline.api.v2 import V2
from pipeline.api.v3 import V3

_GENERATIONS: dict[str, Generation] = {g.version: g for g in (V1(), V2(), V3())}


def generation(version: str) -> Generation:
    """The generation api.version names (the spec has checked it is one of them)."""
    return _GENERATIONS[version]


__all__ = ["V1", "V2", "V3", "Answer", "Generation", "generation"]
