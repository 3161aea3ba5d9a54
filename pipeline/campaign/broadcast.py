"""Broadcasts (v3, send.batch_recipients > 1): rows whose message - template, parameters, channel - is the same
share one request of up to N numbers, since accounts are limited in requests, not in numbers per request.

A request's Idempotency-Key derives from its members' row keys, and its body and members are committed with the
members' in-flight marks (state.py), so a run that died with it in flight resends exactly that request with that
key, and the server answers the repeat instead of texting anyone twice. A row that was once sent on its own is
sent on its own again, under its own key, for the same reason.

When every part of the message is a literal (one broadcast to everyone), groups fill across the input's read
blocks; when a part comes from a column, rows are grouped within their block only, so no row waits for rows that
may never come.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import polars as pl

from pipeline import payload
from pipeline.api.v3 import broadcast_body, recipient_and_rest
from pipeline.campaign.outcomes import PENDING_FLAG, SEND_KEY
from pipeline.send import SendJob
from pipeline.spec import CampaignSpec
from pipeline.state import PendingRequest

_NUMBER = "number"
_REST = "rest"


def request_key(campaign: str, member_keys: list[str]) -> str:
    """32 hex characters: BLAKE2b-128 of the campaign and the members' keys, in the request's order."""
    text = f"{len(campaign.encode())}:{campaign}|" + "|".join(member_keys)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Broadcasts:
    """Turns chosen rows into requests of up to `size` numbers."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.campaign = spec.name
        self.size = spec.send.batch_recipients
        message = spec.message
        parts = [message.template_id or message.template_name, *message.variables.values(), message.channel]
        self.across_blocks = all(part is None or part.value is not None for part in parts)
        self._open: dict[str, list[tuple[int, str, str]]] = {}  # message -> members waiting for more

    def jobs(self, chosen: pl.DataFrame) -> Iterator[SendJob]:
        """Requests for `chosen` (result_row, payload, idempotency_key, pending, send_key), as soon as they can go."""
        # a row sent before goes alone: its answer was lost (pending), or it is sent again under a key of its own
        # because its delivery failed
        on_its_own = pl.col(PENDING_FLAG) | (pl.col(SEND_KEY) != pl.col(payload.KEY))
        alone = chosen.filter(on_its_own)
        for row, body, key, pending, wire_key in alone.select(
            payload.ROW, payload.BODY, payload.KEY, PENDING_FLAG, SEND_KEY
        ).iter_rows():
            own_key = wire_key if wire_key != key else None
            yield SendJob(row=row, key=key, body=body.encode(), maybe_delivered=pending, idempotency_key=own_key)
        number, rest = recipient_and_rest(pl.col(payload.BODY))
        groups = (
            chosen.filter(~on_its_own)
            .select(payload.ROW, payload.KEY, number.alias(_NUMBER), rest.alias(_REST))
            .group_by(_REST, maintain_order=True)
            .agg(payload.ROW, payload.KEY, _NUMBER)
        )
        for message, rows, keys, numbers in groups.iter_rows():
            waiting = self._open.setdefault(message, [])
            waiting.extend(zip(rows, keys, numbers, strict=True))
            while len(waiting) >= self.size:
                yield self._job(message, waiting[: self.size])
                del waiting[: self.size]
            if waiting and not self.across_blocks:
                yield self._job(message, waiting)
                waiting.clear()
            if not waiting:
                del self._open[message]

    def rest(self) -> Iterator[SendJob]:
        """The groups still open once the input is read."""
        for message, waiting in self._open.items():
            yield self._job(message, waiting)
        self._open.clear()

    def _job(self, message: str, members: list[tuple[int, str, str]]) -> SendJob:
        numbers = [number for _, _, number in members]
        body = broadcast_body(numbers, message).encode()
        if len(members) == 1:  # one number: the row's own request, under its own key, as without broadcasts
            row, key, _ = members[0]
            return SendJob(row=row, key=key, body=body)
        key = request_key(self.campaign, [key for _, key, _ in members])
        return SendJob(row=members[0][0], key=key, body=body, members=tuple(members))


def resumed(request: PendingRequest) -> SendJob:
    """A broadcast an earlier run left in flight, to be sent again exactly as it was (members' rows are unknown
    here and not needed: outcomes are recorded by key)."""
    members = tuple((0, key, number) for key, number in request.members)
    return SendJob(row=0, key=request.request_key, body=request.body.encode(), members=members, maybe_delivered=True)
