"""The sandbox's outgoing webhooks: each status change of an accepted v3 message, posted and signed as Sent.dm does.

Every delivery carries `X-Webhook-ID` (the endpoint's id: the same on every delivery, never an event id),
`X-Webhook-Timestamp` (Unix seconds, of this attempt) and `X-Webhook-Signature` (`v1,<base64>`, from
``pipeline.webhooks.signature.sign``), and the body `{"field": "message", "sub_type": "message.<status>", "timestamp",
"payload": {account_id, message_id, message_status, channel, template_id}}`. Sent.dm's payload documents no field for
why a message failed, so by default the sandbox sends none either (a campaign reads the reason from
`GET /v3/messages/{id}`); ``include_reason`` adds it as `error_code`.

A delivery that gets no 2xx (or no answer) is tried again, up to ``RETRIES`` times with doubling waits, as Sent.dm
retries. Posts run on the server's event loop beside its answers. When the server stops, the poster keeps going
until every status change already scheduled is delivered or a deadline passes (a dead receiver never holds a run
longer than that), then counts what it could not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from pipeline.sandbox.lifecycle import FAILED, Step, iso_time
from pipeline.webhooks.signature import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

# the account every sandbox message belongs to
ACCOUNT_ID = "5a9d0b1e-5a9d-4b1e-8a9d-5a9d0b1e0000"
RETRIES = 3  # Sent.dm's default number of retries
FIRST_RETRY_S = 0.25
TIMEOUT_S = 5.0
CONCURRENT_POSTS = 8


@dataclass(frozen=True)
class WebhookTarget:
    """Where to post and how to sign. ``key`` is the decoded signing secret; its repr never shows it."""

    url: str
    key: bytes = field(repr=False)
    include_reason: bool = False

    @property
    def endpoint_id(self) -> str:
        """The endpoint's id, sent as `X-Webhook-ID`: one value per URL, as Sent.dm gives each endpoint one."""
        return "whep_" + uuid.uuid5(uuid.NAMESPACE_URL, self.url).hex

    @property
    def where(self) -> str:
        """The receiver's host and port, for messages: never the path or query, which may hold a token."""
        return urlsplit(self.url).netloc.rpartition("@")[2]


@dataclass(frozen=True)
class _Post:
    message_id: str
    channel: str
    template_id: str
    step: Step


class WebhookPoster:
    """Schedules each message's status changes for their moments and posts them when due. Only the server's event
    loop calls it."""

    def __init__(
        self, target: WebhookTarget, clock: Callable[[], float] | None = None, *, first_retry_s: float = FIRST_RETRY_S
    ) -> None:
        self.target = target
        self._clock = time.time if clock is None else clock  # the sandbox's clock: the steps' moments are on it
        self._first_retry_s = first_retry_s
        self._due: list[tuple[float, int, _Post]] = []
        self._order = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._posting: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._deadline: float | None = None  # loop time after which nothing more is tried
        self.scheduled = 0
        self.delivered = 0
        self.undelivered = 0

    def schedule(self, message_id: str, channel: str, template_id: str, steps: list[Step]) -> None:
        """Post each of ``steps`` at its moment (a moment already past: at once)."""
        loop = asyncio.get_running_loop()
        offset = loop.time() - self._clock()
        for step in steps:
            post = _Post(message_id, channel, template_id, step)
            heapq.heappush(self._due, (step.at + offset, next(self._order), post))
        self.scheduled += len(steps)
        if self._runner is None:
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(CONCURRENT_POSTS)
            # no proxy from the environment: the receiver is the operator's own, often on this machine
            self._client = httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False, follow_redirects=False)
            self._runner = loop.create_task(self._run())
        assert self._wakeup is not None
        self._wakeup.set()

    @property
    def last_due_s(self) -> float:
        """Seconds from now until the last scheduled status change is due (0 when none is left)."""
        if not self._due:
            return 0.0
        return max(0.0, max(due for due, _, _ in self._due) - asyncio.get_running_loop().time())

    async def finish(self, *, grace_s: float) -> None:
        """Deliver what is scheduled, giving up ``grace_s`` after the last status change is due; then count every
        status change not delivered and close."""
        if self._runner is None:
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.last_due_s + grace_s
        assert self._wakeup is not None
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained(), max(0.0, self._deadline - loop.time()))
        self._runner.cancel()
        unfinished = [task for task in self._posting if not task.done()]
        for task in unfinished:
            task.cancel()
        ended = await asyncio.gather(self._runner, *unfinished, return_exceptions=True)
        # a post cut short counted itself neither way
        self.undelivered += sum(isinstance(result, asyncio.CancelledError) for result in ended[1:])
        self.undelivered += len(self._due)
        self._due.clear()
        if self._client is not None:
            await self._client.aclose()

    async def _drained(self) -> None:
        assert self._wakeup is not None
        while self._due or self._posting:
            if self._posting:
                await asyncio.wait(list(self._posting))
            else:
                await asyncio.sleep(min(0.05, max(0.0, self._due[0][0] - asyncio.get_running_loop().time())))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._due:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait_s = self._due[0][0] - loop.time()
            if wait_s > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                continue
            _, _, post = heapq.heappop(self._due)
            task = loop.create_task(self._deliver(post))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)

    async def _deliver(self, post: _Post) -> None:
        body = self._body(post)
        loop = asyncio.get_running_loop()
        for attempt in range(RETRIES + 1):
            if await self._attempt(body):
                self.delivered += 1
                return
            if attempt == RETRIES:
                break
            wait_s = self._first_retry_s * 2**attempt
            if self._deadline is not None and loop.time() + wait_s >= self._deadline:
                break  # the server is stopping and this retry would come too late
            await asyncio.sleep(wait_s)
        self.undelivered += 1

    async def _attempt(self, body: bytes) -> bool:
        assert self._slots is not None
        assert self._client is not None
        target = self.target
        async with self._slots:
            timestamp = str(int(time.time()))  # the receiver checks it against its own clock: the real one
            headers = {
                "Content-Type": "application/json",
                ID_HEADER: target.endpoint_id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(target.key, target.endpoint_id, timestamp, body),
            }
            try:
                response = await self._client.post(target.url, content=body, headers=headers)
            except httpx.HTTPError:
                return False
            return 200 <= response.status_code < 300

    def _body(self, post: _Post) -> bytes:
        step = post.step
        payload: dict[str, object] = {
            "account_id": ACCOUNT_ID,
            "message_id": post.message_id,
            "message_status": step.status,
            "channel": post.channel,
            "template_id": post.template_id,
        }
        if step.status == FAILED and self.target.include_reason:
            payload["error_code"] = step.description
        event = {
            "field": "message",
            "sub_type": f"message.{step.status.lower()}",
            "timestamp": iso_time(step.at),
            "payload": payload,
        }
        return json.dumps(event, separators=(",", ":")).encode()
