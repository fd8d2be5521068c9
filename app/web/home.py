"""The landing route and health probes."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, redirect, url_for
from werkzeug.wrappers import Response

from app.http.context import signed_in
from app.readiness import readiness
from app.web.common import landing

bp = Blueprint("web", __name__)


@bp.get("/")
def home() -> Response:
    who = signed_in()
    if who is None:
        return redirect(url_for("auth.signin"))
    return redirect(landing(who.is_admin, url_for("web.home")))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 while this process can serve sign-ins, else 503 naming the failed check (app.readiness)."""
    report = readiness(current_app).report()
    status = "ready" if report.ready else "not_ready"
    response = jsonify(status=status, checks=report.checks)
    response.headers["Cache-Control"] = "no-store"
    return response, (200 if report.ready else 503)
