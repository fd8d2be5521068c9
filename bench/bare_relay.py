"""The proxy bench's floor: the least a relay on this stack does, served like the real app (gunicorn, the same
configuration: 2 gthread workers). One Flask route hands each request to one kept-alive httpx client bound for
``BENCH_UPSTREAM`` with the key ``BENCH_KEY`` added, and streams the answer back as it comes.

Nothing else: no token check, no account, no audit event, no SSRF guard, no hooks, no watch for a departed
caller. What this relay adds over a direct call is what gunicorn, Flask and httpx cost by themselves on this
machine at this moment; what the real proxy adds over this relay is AMI Auth's own work (bench/proxy.py prints
both). Not a way to run a proxy: it is a measuring stick.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
from flask import Flask, Response, jsonify, request

app = Flask(__name__)
_UPSTREAM = os.environ.get("BENCH_UPSTREAM", "")
_AUTH = f"Bearer {os.environ.get('BENCH_KEY', '')}"
_PASSED = ("content-type",)
_client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=512, max_keepalive_connections=512))


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@app.route("/relay/<path:path>", methods=["GET", "POST"])
def relay(path: str) -> Response:
    headers = {"Authorization": _AUTH, **{k: v for k, v in request.headers.items() if k.lower() in _PASSED}}
    outbound = _client.build_request(request.method, f"{_UPSTREAM}/{path}", headers=headers, content=request.get_data())
    upstream = _client.send(outbound, stream=True)

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.iter_raw()
        finally:
            upstream.close()

    passed = [(k, v) for k, v in upstream.headers.items() if k.lower() in ("content-type", "content-length")]
    return Response(body(), status=upstream.status_code, headers=passed, direct_passthrough=True)
