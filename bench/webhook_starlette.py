"""The contender to the product's aiohttp server: the same receiver core (pipeline.webhooks.server.Receiver: verify,
parse, group-committed store) behind uvicorn + Starlette. Used by `bench/webhooks.py --server starlette` only.

    .venv/bin/pip install uvicorn httptools starlette   # uvloop: a project dependency, picked as the product does
    SENT_DM_WEBHOOK_SECRET=whsec_... .venv/bin/python bench/webhook_starlette.py --port 8080 --store FILE
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.webhooks.server import Receiver
from pipeline.webhooks.signature import WebhookSecret
from pipeline.webhooks.store import EventStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--http", default="httptools", help="uvicorn's HTTP parser: httptools (C) or h11")
    args = parser.parse_args()
    store = EventStore(Path(args.store))
    receiver = Receiver(secret=WebhookSecret.from_env(os.environ), store=store, log=lambda event, fields: None)

    async def deliveries(request: Request) -> JSONResponse:
        body = await request.body()
        status, answer = await receiver.receive(request.headers, body, remote=None)
        return JSONResponse(answer, status_code=status)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/webhooks/sent", deliveries, methods=["POST"]), Route("/healthz", health)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, loop="auto", http=args.http, access_log=False, log_level="warning"
    )
    try:
        uvicorn.Server(config).run()  # handles SIGTERM/SIGINT itself: stops accepting, finishes in-flight requests
    finally:
        store.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
