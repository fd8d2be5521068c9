"""The landing route and health probes."""

from __future__ import annotations

from flask import Blueprint, jsonify, redirect, url_for
from sqlalchemy import text
from werkzeug.wrappers import Response

from app.extensions import get_database, get_settings
from app.migrate import is_at_head
from app.web.common import signed_in

bp = Blueprint("web", __name__)


@bp.get("/")
def home() -> Response:
    who = signed_in()
    if who is None:
        return redirect(url_for("auth.signin"))
    if who.is_admin:
        return redirect(url_for("admin.index"))
    return redirect(url_for("account.index"))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks: dict[str, str] = {}
    engine = get_database().engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        checks["migrations"] = "ok" if is_at_head(engine) else "behind head: run `ami-auth db upgrade`"
    except Exception as exc:  # readiness reports any failure instead of raising it
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    checks["keys"] = "ok" if get_settings().master_keys else "no master key loaded"
    ready = all(v == "ok" for v in checks.values())
    return jsonify(status="ready" if ready else "not_ready", checks=checks), (200 if ready else 503)
