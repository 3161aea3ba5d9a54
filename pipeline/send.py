"""HTTP delivery: one shared httpx transport, a fixed pool of workers fed from a bounded stream, retries with
backoff, an overall deadline per request, and a run-wide stop - also at the first failure that every request would
share (an untrusted TLS certificate, a host name that does not resolve).

Requests are httpx.Request objects handed straight to the transport (transport.py's, or httpx's own when a proxy is
configured). httpx.AsyncClient was measured at 120-170 us of CPU per request on top of the transport - more than
the whole budget per message - and its features (cookies, redirects, auth flows) are not used here.

Knows nothing of polars or files: it takes `SendJob`s and reports one `SendOutcome` per attempted job through a
callback.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import socket
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.abc import ObjectReceiveStream

from pipeline.api import V1, Generation
from pipeline.api.base import Credentials
from pipeline.limits import Pacer
from pipeline.outcome import (
    FAILED,
    SENT,
    UNKNOWN,
    SystemicFailure,
    Verdict,
    classify_exception,
    describe_exception,
    systemic_failure,
)
from pipeline.transport import FastHTTPTransport

BeforeSend = Callable[["SendJob"], Awaitable[bool]]
# Where the server keeps Idempotency-Keys 24 hours, a message is resent with its key only within 23 of its first
# attempt: an hour's margin for clocks and queues, and never a resend the server could not recognise as one.
KEY_RESEND_WINDOW_S = 23 * 3600.0
_MAX_PAUSE_S = 3600.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name that does not resolve is looked up again after these pauses before the run stops: long enough to ride
# out a resolver's bad moment, short enough that a typo in api.base_url stops the run within two seconds.
_NAME_RECHECK_DELAYS_S = (0.5, 1.0)


@dataclass(frozen=True, slots=True)
class SendJob:
    row: int
    key: str  # the request's Idempotency-Key: the row's key, or a broadcast's
    body: bytes
    # a broadcast (one request to several numbers): each member's (row, row key, number); empty for one row
    members: tuple[tuple[int, str, str], ...] = ()
    # an earlier run sent it and lost the answer (a row in flight when that run died, or an `unknown` row sent again
    # by `retry`): it may have been delivered already, so failing now must not report it `failed`
    maybe_delivered: bool = False


@dataclass(frozen=True, slots=True)
class SendOutcome:
    row: int
    key: str
    status: str  # sent | failed | unknown
    verdict: Verdict
    http_status: int | None
    message_id: str | None
    error: str | None
    attempts: int
    sent_at: str
    latency_ms: float
    by_number: dict[str, str] | None = None  # a broadcast's answer: each number's message ids


@dataclass(frozen=True)
class SenderConfig:
    base_url: str
    sender_id: str  # v1, v2 ("" on v3)
    api_key: str = field(repr=False)
    generation: Generation = field(default_factory=V1)
    profile_id: str = ""  # v3, optional
    timeout_s: float = 30.0
    concurrency: int = 16
    max_attempts: int = 5
    max_retry_s: float = 300.0
    retry_ambiguous: bool = False
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    breaker_threshold: int = 50  # consecutive server/connection failures that mean "the service is down"
    ca_bundle: str | None = None  # PEM file of the CAs to trust for https instead of the system's (api.ca_bundle)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_attempts < 1 or self.timeout_s <= 0 or self.breaker_threshold < 1:
            raise ValueError("concurrency, max_attempts, breaker_threshold and timeout_s must be positive")


class RunControl:
    """Run-wide flags the workers obey: `stop()` stops taking new rows (an interrupt); `abort()` does the same and
    records why the run cannot go on (an authentication failure, an untrusted certificate, the circuit breaker)."""

    def __init__(self) -> None:
        self.stopping = False
        self.abort_reason: str | None = None
        self.interrupt_signal: int | None = None
        self.stopping_for_results = False  # a signal came while the results file was being written
        self.retrying = 0  # rows waiting out a backoff before their next attempt (shown while a run is slow)
        self.last_retry_error: str | None = None
        self._on_stop: list[Callable[[], None]] = []
        self._pauses: set[anyio.CancelScope] = set()

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the run starts stopping (at once if it already has)."""
        self._on_stop.append(callback)
        if self.stopping:
            callback()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for scope in list(self._pauses):
            scope.cancel()
        for callback in self._on_stop:
            callback()

    async def pause(self, delay_s: float) -> None:
        """Sleep `delay_s`, or less: a stop ends the pause at once. A backoff can last a minute (a server's
        Retry-After); an interrupt must not wait for it - schedulers send SIGKILL a few seconds after SIGTERM."""
        if self.stopping:
            return
        with anyio.CancelScope() as scope:
            self._pauses.add(scope)
            try:
                await anyio.sleep(delay_s)
            finally:
                self._pauses.discard(scope)

    def abort(self, reason: str) -> None:
        if self.abort_reason is None:
            self.abort_reason = reason
        self.stop()


_second_text: tuple[int, str] = (0, "")


def _now_iso() -> str:
    """UTC now as 2026-11-27T14:05:09.123Z; the part up to the second is formatted once a second (it showed in
    profiles when formatted per message)."""
    global _second_text
    now = time.time()
    second = int(now)
    if _second_text[0] != second:
        _second_text = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second_text[1]}.{int((now - second) * 1000):03d}Z"


def retry_after_s(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: Retry-After (seconds or HTTP-date), or X-RateLimit-Remaining: 0 with
    X-RateLimit-Reset (Unix seconds). None when it asks nothing."""
    wall = time.time() if now is None else now
    value = headers.get("retry-after")
    if value is not None:
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - wall
            except (TypeError, ValueError):
                seconds = math.nan
        if math.isfinite(seconds):
            return min(max(seconds, 0.0), _MAX_PAUSE_S)
    if headers.get("x-ratelimit-remaining", "").strip() == "0":
        try:
            reset = float(headers.get("x-ratelimit-reset", ""))
        except ValueError:
            return None
        return min(max(reset - wall, 0.0), _MAX_PAUSE_S)
    return None


# one attempt's (HTTP status, headers, verdict, error, message id, setup failure, reason to stop, ids by number)
_Attempt = tuple[
    int | None,
    httpx.Headers | None,
    Verdict,
    str | None,
    str | None,
    SystemicFailure | None,
    str | None,
    dict[str, str] | None,
]


class _Sender:
    def __init__(
        self,
        config: SenderConfig,
        transport: httpx.AsyncBaseTransport,
        control: RunControl,
        pacer: Pacer,
        on_outcome: Callable[[SendOutcome], None],
        before_send: BeforeSend | None,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.transport = transport
        self.control = control
        self.pacer = pacer
        self.on_outcome = on_outcome
        self.before_send = before_send
        self.rng = rng
        self.generation = config.generation
        self.url = httpx.URL(config.base_url.rstrip("/") + self.generation.messages_path)
        host = f"[{self.url.host}]" if ":" in self.url.host else self.url.host
        self.target = f"{host}:{self.url.port or _DEFAULT_PORTS.get(self.url.scheme, 0)}"  # for messages
        credentials = Credentials(config.api_key, sender_id=config.sender_id, profile_id=config.profile_id)
        self.headers = self.generation.headers(credentials)
        # retries after this long from a row's first attempt could not count on the server knowing its key
        self.max_retry_s = (
            min(config.max_retry_s, KEY_RESEND_WINDOW_S) if self.generation.keeps_keys else config.max_retry_s
        )
        self.consecutive_failures = 0

    async def worker(self, jobs: ObjectReceiveStream[SendJob]) -> None:
        async with jobs:
            async for job in jobs:
                # the row's turn comes before its in-flight mark: a row still waiting for a turn when the run stops
                # is left unmarked - not_attempted, sent by the next run - instead of marked in flight without
                # having gone out, which the next run would have to report as `unknown`
                if self.control.stopping or not await self.pacer.wait_turn():
                    continue  # drain without sending: these rows stay not_attempted
                if self.before_send is not None and not await self.before_send(job):
                    continue
                # once its in-flight mark is committed the row is sent even if a stop came meanwhile: skipping it
                # now would leave a row marked in flight that never left, reported `unknown` by the next run
                self._report(job, await self.deliver(job))

    def _report(self, job: SendJob, outcome: SendOutcome) -> None:
        """One outcome per row: a broadcast's members each get theirs, with their own message ids."""
        if not job.members:
            self.on_outcome(outcome)
            return
        for row, key, number in job.members:
            status, verdict, error, ids = outcome.status, outcome.verdict, outcome.error, None
            if status == SENT:
                ids = outcome.by_number.get(number) if outcome.by_number is not None else None
                if ids is None:
                    # accepted, but the answer does not say this number got a message: do not guess
                    status, verdict = UNKNOWN, Verdict.AMBIGUOUS
                    error = "the server accepted the request but its answer does not list this number"
            self.on_outcome(
                replace(
                    outcome,
                    row=row,
                    key=key,
                    status=status,
                    verdict=verdict,
                    error=error,
                    message_id=ids,
                    by_number=None,
                )
            )

    async def deliver(self, job: SendJob) -> SendOutcome:
        """Send one job (its first turn from the pacer already taken), retrying as its verdicts allow."""
        config = self.config
        first_start = time.monotonic()
        # an earlier attempt may have gone out: never report plain "failed" after that
        maybe_delivered = job.maybe_delivered
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                status, headers, verdict, error, msg_id, systemic, stop, by_number = await self._attempt(job)
            except anyio.get_cancelled_exc_class():
                # a forced stop with this request on the wire: whether it was delivered cannot be known
                self._report(job, self._interrupted(job, attempt, started))
                raise
            latency_ms = (time.perf_counter() - started) * 1000
            if systemic is not None and systemic.confirm and not await self._name_still_missing():
                # the name resolves after all (or the resolver cannot say): a bad moment, retried like any other
                verdict, systemic = Verdict.TRANSIENT, None
            self._watch_breaker(verdict, error)
            if verdict is Verdict.AMBIGUOUS:
                maybe_delivered = True
            wait_s = retry_after_s(headers) if headers is not None else None
            if status == 429 or wait_s is not None:
                source = "Retry-After" if headers is not None and "retry-after" in headers else "X-RateLimit-Reset"
                self.pacer.hold_back(wait_s, reason=f"server {source}", too_many_requests=status == 429)
            retryable = verdict is Verdict.TRANSIENT or (verdict is Verdict.AMBIGUOUS and config.retry_ambiguous)
            if retryable and attempt < config.max_attempts and not self.control.stopping:
                delay = self._backoff_s(attempt)
                if wait_s is not None:
                    delay = max(delay, wait_s)
                if time.monotonic() - first_start + delay <= self.max_retry_s:
                    self.control.retrying += 1
                    self.control.last_retry_error = error
                    try:
                        await self.control.pause(delay)
                    finally:
                        self.control.retrying -= 1
                    if await self.pacer.wait_turn():
                        continue
                    # the run stopped while this row waited to be retried: it ends with this attempt's outcome
            if verdict is Verdict.SENT:
                final = SENT
            elif maybe_delivered:
                final = UNKNOWN
            else:
                final = FAILED
            if verdict is Verdict.AUTH:
                self.control.abort(f"authentication failed ({error}); {self.generation.credentials_hint}")
            elif stop is not None:
                self.control.abort(stop)
            elif systemic is not None:
                self.control.abort(systemic.message(self.target))
            return SendOutcome(
                row=job.row,
                key=job.key,
                status=final,
                verdict=verdict,
                http_status=status,
                message_id=msg_id,
                error=error,
                attempts=attempt,
                sent_at=_now_iso(),
                latency_ms=round(latency_ms, 3),
                by_number=by_number,
            )

    @staticmethod
    def _interrupted(job: SendJob, attempt: int, started: float) -> SendOutcome:
        return SendOutcome(
            row=job.row,
            key=job.key,
            status=UNKNOWN,
            verdict=Verdict.AMBIGUOUS,
            http_status=None,
            message_id=None,
            error="interrupted while the request was in flight",
            attempts=attempt,
            sent_at=_now_iso(),
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def _attempt(self, job: SendJob) -> _Attempt:
        try:
            # asyncio's own timeout: anyio.fail_after was measured at 6% of a run's CPU, and the transport is
            # asyncio-only anyway
            async with asyncio.timeout(self.config.timeout_s):
                request = httpx.Request(
                    "POST", self.url, headers=[*self.headers, (b"idempotency-key", job.key.encode())], content=job.body
                )
                response = await self.transport.handle_async_request(request)
                content = await response.aread()
        except (httpx.HTTPError, TimeoutError) as exc:
            verdict = classify_exception(exc)
            systemic = systemic_failure(exc) if verdict is Verdict.SYSTEMIC else None
            return None, None, verdict, describe_exception(exc), None, systemic, None, None
        answer = self.generation.read_answer(response.status_code, content, secret=self.config.api_key)
        return (
            response.status_code,
            response.headers,
            answer.verdict,
            answer.error,
            answer.message_id,
            None,
            answer.stop,
            answer.by_number,
        )

    async def _name_still_missing(self) -> bool:
        """Look the API's host up again, a couple of times: True when it still has no address."""
        host = self.url.raw_host.decode("ascii")
        loop = asyncio.get_running_loop()
        for delay in _NAME_RECHECK_DELAYS_S:
            await self.control.pause(delay)
            if self.control.stopping:
                return False  # the run is stopping anyway (another row may have stopped it): nothing to decide
            try:
                async with asyncio.timeout(min(self.config.timeout_s, 5.0)):
                    await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except TimeoutError:
                return False  # a resolver that does not answer says nothing about the name
            except OSError as exc:
                failure = systemic_failure(exc)
                if failure is None or not failure.confirm:
                    return False
                continue
            return False  # it resolves now
        return True

    def _backoff_s(self, attempt: int) -> float:
        # exponential backoff with full jitter: spreads retries so they do not arrive together
        ceiling = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return self.rng.uniform(0, ceiling)

    def _watch_breaker(self, verdict: Verdict, error: str | None) -> None:
        if verdict in (Verdict.AMBIGUOUS, Verdict.TRANSIENT):
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.config.breaker_threshold:
                self.control.abort(
                    f"{self.consecutive_failures} requests in a row failed (last: {error}); the service looks down"
                )
        else:
            self.consecutive_failures = 0


def _ssl_context(config: SenderConfig) -> ssl.SSLContext | None:
    """The trust for an https base URL, the same through either transport: the CA bundle named by api.ca_bundle
    alone, or else OpenSSL's defaults - which honour SSL_CERT_FILE and SSL_CERT_DIR. None for plain http."""
    if urlsplit(config.base_url).scheme != "https":
        return None
    return ssl.create_default_context(cafile=config.ca_bundle)


def _transport(config: SenderConfig) -> httpx.AsyncBaseTransport:
    """transport.py's lean transport; httpx's own when the environment names a proxy for this URL (a local server -
    the sandbox, tests - is never proxied)."""
    parts = urlsplit(config.base_url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    connect_s = min(config.timeout_s, 10.0)
    context = _ssl_context(config)
    if proxy and host not in ("127.0.0.1", "localhost", "::1") and not urllib.request.proxy_bypass(host):
        return httpx.AsyncHTTPTransport(
            proxy=proxy,
            verify=context if context is not None else True,
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
    return FastHTTPTransport(max_connections=config.concurrency, connect_timeout_s=connect_s, ssl_context=context)


async def send_all(
    jobs: Iterable[SendJob],
    config: SenderConfig,
    *,
    on_outcome: Callable[[SendOutcome], None],
    before_send: BeforeSend | None = None,
    control: RunControl | None = None,
    pacer: Pacer | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    seed: int | None = None,
) -> None:
    """Send every job until done or stopped; `on_outcome` gets one outcome per attempted job. Jobs not attempted
    (after a stop or an abort) get no outcome. `before_send(job)` runs before a job's first request; it returns
    False to skip the job (the caller then decides whether to stop the run)."""
    control = control or RunControl()
    pacer = pacer or Pacer()
    # rows waiting for a turn (a rate limit, a server's pause) are released at once when the run stops
    control.on_stop(pacer.close)
    send_stream, receive_stream = anyio.create_memory_object_stream[SendJob](config.concurrency)
    async with transport or _transport(config) as opened:
        sender = _Sender(config, opened, control, pacer, on_outcome, before_send, random.Random(seed))
        async with anyio.create_task_group() as workers:
            for _ in range(config.concurrency):
                workers.start_soon(sender.worker, receive_stream.clone())
            receive_stream.close()
            async with send_stream:
                for job in jobs:
                    if control.stopping:
                        break
                    await send_stream.send(job)
