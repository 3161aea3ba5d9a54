"""A fast local mock of Sent.dm's `POST /v1/messages/contact` and `POST /v3/messages`, for benchmarks only.

It answers every well-formed POST to the seed path with `200 {"messageId": "<uuid>"}`, and every POST to the v3 path
with `202` and the v3 envelope (`{"success": true, "data": {"recipients": [{message_id, to, channel}...]}, ...}`,
one recipient per number and channel of the body), after a configurable latency, over HTTP/1.1 with keep-alive.
`GET /v3/templates/{id}` (and `?name=`) describe one template - the sandbox's `order_shipped`, which the benchmark
sends - so that the product's template check before a v3 run passes; these lookups are not counted as messages.
Parsing is deliberately minimal (find the end of the headers, read Content-Length; the seed body is skipped, the v3
body is parsed only for its numbers and channels) so that the server is never what limits a client on the other
end of the loopback.

It records the arrival time (`time.monotonic()`, which on Linux is one clock for every process, so the benchmark
can compare it with the moment it started a client) of every message request, and a few control paths let the benchmark
reset, reconfigure and read those records between runs:

    GET  /_bench/stats               {"count", "non_2xx", "template_lookups", "first", "last", "cpu_s", "latency_ms"}
    GET  /_bench/times               {"times": [arrival, ...]} since the last reset
    POST /_bench/reset?latency_ms=N  forget all records and answer with N ms of latency from now on

Run on its own:

    .venv/bin/python bench/mock_server.py [--port 0] [--latency-ms 0]

It prints its base URL (e.g. `http://127.0.0.1:40123`) as the first line on stdout, serves until SIGTERM or SIGINT
(or, with `--exit-on-stdin-eof`, until its stdin closes), then closes its socket and exits 0. uvloop is used when it
is installed, never required.

One process only: on a 2-core machine the client under test needs the other core, and a second server process
(SO_REUSEPORT) only competes with it; see bench/README.md for the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import signal
import sys
import time
import typing
from array import array
from urllib.parse import parse_qs, urlsplit

SEED_PATH = b"/v1/messages/contact"
V3_PATH = b"/v3/messages"
TEMPLATES_PREFIX = b"/v3/templates"
# the one template the mock knows: the sandbox's order_shipped (pipeline/sandbox/templates.py)
TEMPLATE = {
    "id": "7ba7b820-9dad-11d1-80b4-00c04fd430c8",
    "name": "order_shipped",
    "status": "APPROVED",
    "variables": ["name", "order_id", "carrier"],
    "channels": ["sms", "whatsapp"],
    "category": "UTILITY",
}
CONTROL_PREFIX = b"/_bench/"
# Anything bigger than this without a complete header block is not a client we want to serve.
MAX_HEADER_BYTES = 64 * 1024


class Recorder:
    """What the benchmark reads back: request arrivals, failures, and the server's configured latency."""

    def __init__(self, latency_ms: float) -> None:
        self.latency_s = latency_ms / 1000
        self.arrivals = array("d")  # 8 bytes a request: a million requests cost 8 MB
        self.non_2xx = 0
        self.template_lookups = 0
        # message ids only need to look like UUIDs and be unique, so a counter is cheaper than uuid4()
        self.ids = itertools.count(1)

    def reset(self, latency_ms: float) -> None:
        self.latency_s = latency_ms / 1000
        self.arrivals = array("d")
        self.non_2xx = 0
        self.template_lookups = 0

    def stats(self) -> dict[str, object]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "count": len(self.arrivals),
            "non_2xx": self.non_2xx,
            "template_lookups": self.template_lookups,
            "first": self.arrivals[0] if self.arrivals else None,
            "last": self.arrivals[-1] if self.arrivals else None,
            # lets the benchmark show the server's own CPU use, i.e. that it was not the bottleneck
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "latency_ms": self.latency_s * 1000,
        }


def _response(status: str, body: bytes, *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + connection
        + b"\r\n"
        + body
    )


class MockProtocol(asyncio.Protocol):
    """One client connection. Requests are handled in arrival order; clients do not pipeline, so delayed answers
    (all with the same latency) also leave in order."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports (0.23) are not registered as asyncio.Transport subclasses, but are ones
        self.transport = typing.cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # a read may hold several requests, or only part of one: handle every complete request in the buffer
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._send_now(_response("431 Request Header Fields Too Large", b"{}", close=True), close=True)
                return
            head = bytes(self.buffer[:end])
            length = _content_length(head)
            if length is None:
                # chunked or missing length: no client in this benchmark should send that, so fail it loudly
                answer = _response("411 Length Required", b'{"message":"Content-Length required"}', close=True)
                self._send_now(answer, close=True)
                return
            total = end + 4 + length
            if len(self.buffer) < total:
                return  # the body has not all arrived yet
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self._handle(head, body)

    def _handle(self, head: bytes, body: bytes) -> None:
        request_line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        parts = request_line.split(b" ")
        method, target = (parts[0], parts[1]) if len(parts) >= 3 else (b"", b"")
        if target.startswith(CONTROL_PREFIX):
            self._send_now(self._control(method, target), close=True)
            return
        recorder = self.recorder
        if method == b"GET" and target.startswith(TEMPLATES_PREFIX):
            recorder.template_lookups += 1
            self._send_now(_template_answer(target))
            return
        recorder.arrivals.append(time.monotonic())
        if method == b"POST" and target == SEED_PATH and body:
            message_id = f"00000000-0000-4000-8000-{next(recorder.ids):012x}"
            answer = _response("200 OK", b'{"messageId": "' + message_id.encode() + b'"}')
        elif method == b"POST" and target == V3_PATH and body:
            answer = _v3_answer(body, recorder)
        else:
            answer = None
        if answer is None:
            recorder.non_2xx += 1
            message = b'{"message":"only POST /v1/messages/contact and /v3/messages with a JSON body"}'
            self._send_now(_response("404 Not Found", message))
            return
        if recorder.latency_s > 0:
            self.loop.call_later(recorder.latency_s, self._send_now, answer)
        else:
            self._send_now(answer)

    def _control(self, method: bytes, target: bytes) -> bytes:
        url = urlsplit(target.decode("latin-1"))
        recorder = self.recorder
        if url.path == "/_bench/stats":
            payload: dict[str, object] = recorder.stats()
        elif url.path == "/_bench/times":
            payload = {"times": recorder.arrivals.tolist()}
        elif url.path == "/_bench/reset" and method == b"POST":
            latency = float(parse_qs(url.query).get("latency_ms", ["0"])[0])
            recorder.reset(latency)
            payload = recorder.stats()
        else:
            return _response("404 Not Found", b'{"message":"unknown control path"}', close=True)
        # control answers close the connection: the benchmark uses a fresh urllib request each time
        return _response("200 OK", json.dumps(payload).encode(), close=True)

    def _send_now(self, answer: bytes, close: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away while we were "thinking"
        transport.write(answer)
        if close:
            transport.close()


# A v3 send's numbers and channels: JSON arrays of plain strings (E.164 numbers, channel names), found with a regex
# rather than a JSON parser - parsing and re-serialising each body made the mock, not the client, the limit at zero
# latency (13,000 requests/s from the raw client, against 56,000 on v1).
_TO = re.compile(rb'"to"\s*:\s*\[([^\]]*)\]')
_CHANNEL = re.compile(rb'"channel"\s*:\s*\[([^\]]*)\]')
_HEAD = b'{"success":true,"data":{"status":"QUEUED","template_id":"' + TEMPLATE["id"].encode() + b'","recipients":['
_SMS = [b'"sms"']


def _v3_answer(body: bytes, recorder: Recorder) -> bytes | None:
    """202 with the v3 envelope: one recipient per number and channel; None for a body that is not a v3 send."""
    found = _TO.search(body)
    numbers = [n.strip() for n in found.group(1).split(b",")] if found else []
    if not numbers or not all(len(n) > 2 and n[:1] == b'"' and n[-1:] == b'"' for n in numbers):
        return None
    listed = _CHANNEL.search(body)
    channels = [c.strip() for c in listed.group(1).split(b",")] if listed and listed.group(1).strip() else _SMS
    recipients = []
    for number in numbers:
        for channel in channels:
            message_id = f"00000000-0000-4000-8000-{next(recorder.ids):012x}".encode()
            recipients.append(b'{"message_id":"' + message_id + b'","to":' + number + b',"channel":' + channel + b"}")
    tail = b'},"error":null,"meta":{"request_id":"' + message_id + b'","version":"v3"}}'
    return _response("202 Accepted", _HEAD + b",".join(recipients) + b"]" + tail)


def _template_answer(target: bytes) -> bytes:
    """`GET /v3/templates/{id}` or `GET /v3/templates?name=NAME`: the one template, or 404."""
    url = urlsplit(target.decode("latin-1"))
    if url.path == "/v3/templates":
        listed = [TEMPLATE] if parse_qs(url.query).get("name") == [TEMPLATE["name"]] else []
        return _response("200 OK", json.dumps({"success": True, "data": listed, "error": None}).encode())
    if url.path == f"/v3/templates/{TEMPLATE['id']}":
        return _response("200 OK", json.dumps({"success": True, "data": TEMPLATE, "error": None}).encode())
    error = {"code": "RESOURCE_002", "message": "template not found"}
    return _response("404 Not Found", json.dumps({"success": False, "data": None, "error": error}).encode())


def _content_length(head: bytes) -> int | None:
    # header names are case-insensitive; lowering a few hundred bytes is cheaper than splitting into a dict
    lowered = head.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at < 0:
        # a request without a body (the control GETs) is fine as long as it is not chunked
        return None if b"\r\ntransfer-encoding:" in lowered else 0
    start = at + len(b"\r\ncontent-length:")
    stop = lowered.find(b"\r\n", start)
    try:
        return int(lowered[start : stop if stop >= 0 else None])
    except ValueError:
        return None


async def serve(port: int, latency_ms: float, watch_stdin: bool) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder(latency_ms)
    # a deep backlog: a contender may open a hundred connections at the same instant
    server = await loop.create_server(lambda: MockProtocol(recorder), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if watch_stdin:
        # the benchmark holds our stdin open; if it dies without stopping us (kill -9), stdin reaches EOF and we go
        # too, instead of lingering on the machine
        def on_stdin() -> None:
            if not os.read(sys.stdin.fileno(), 4096):
                loop.remove_reader(sys.stdin.fileno())
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
    try:
        await stop.wait()
    finally:
        # no wait_closed(): it would wait for idle keep-alive connections that a client may never close;
        # leaving the loop closes them
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fast local mock of Sent.dm POST /v1/messages/contact and /v3/messages"
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when stdin closes (parent died)")
    args = parser.parse_args(argv)
    main_task = serve(args.port, args.latency_ms, args.exit_on_stdin_eof)
    try:
        import uvloop  # optional: only when the machine already has it
    except ImportError:
        asyncio.run(main_task)
    else:
        uvloop.run(main_task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
