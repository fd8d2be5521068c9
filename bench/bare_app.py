"""The baseline: a bare Flask JSON endpoint, served under the same gunicorn config as the real app."""

from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@app.get("/api/bare")
def bare() -> Response:
    return jsonify(user={"id": 1, "email": "bench@example.com"}, session={"id": "x"})
