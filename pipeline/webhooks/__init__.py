"""The webhook receiver: Sent.dm's signed status events, verified and kept in a durable store keyed by message id.

signature.py  the signing secret and the check of each delivery's signature and timestamp
events.py     a verified body -> one event (its dedupe key, message id, status, error) or why it is malformed
store.py      the SQLite store: schema, group-committed writes, the status order that never moves backwards
lookup.py     reading the store back: the latest status and the history per message id (for `track`)
server.py     the HTTP server (aiohttp): routes, limits, answers, graceful stop
"""

WEBHOOK_PATH = "/webhooks/sent"  # where Sent.dm posts: register https://YOUR-HOST/webhooks/sent
