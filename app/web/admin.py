"""The admin console: overview and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, render_template, request
from sqlalchemy import func, select

from app import audit
from app.extensions import db_session
from app.i18n import gettext as _
from app.models import AuditEvent, ConnectedAccount, ProviderConfig, User
from app.web.common import admin_required

bp = Blueprint("admin", __name__, url_prefix="/admin")

AUDIT_PAGE_SIZE = 50


@bp.get("/")
@admin_required
def index() -> str:
    db = db_session()
    counts = {
        "users": db.scalar(select(func.count()).select_from(User)) or 0,
        "provider_configs": db.scalar(select(func.count()).select_from(ProviderConfig)) or 0,
        "connected_accounts": db.scalar(select(func.count()).select_from(ConnectedAccount)) or 0,
        "audit_events": db.scalar(select(func.count()).select_from(AuditEvent)) or 0,
    }
    recent = audit.query(db, limit=8)
    return render_template("admin/index.html", counts=counts, recent=recent)


def _date_arg(name: str) -> tuple[datetime | None, str | None]:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None, None
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC), None
    except ValueError:
        return None, _("Use a date like %(example)s.", example="2026-11-25")


@bp.get("/audit")
@admin_required
def audit_log() -> str:
    db = db_session()
    filters = {k: request.args.get(k, "").strip()[:200] for k in ("action", "actor", "outcome", "target")}
    since, since_error = _date_arg("since")
    until, until_error = _date_arg("until")
    before = request.args.get("before", "")
    before_id = int(before) if before.isdigit() else None
    events = audit.query(
        db,
        action=filters["action"] or None,
        actor=filters["actor"] or None,
        outcome=filters["outcome"] or None,
        target=filters["target"] or None,
        since=since,
        until=until,
        limit=AUDIT_PAGE_SIZE,
        before_id=before_id,
    )
    next_before = events[-1].id if len(events) == AUDIT_PAGE_SIZE else None
    errors = {k: v for k, v in (("since", since_error), ("until", until_error)) if v}
    template = "admin/_audit_rows.html" if request.headers.get("HX-Request") else "admin/audit.html"
    return render_template(
        template,
        events=events,
        filters=filters,
        since=request.args.get("since", ""),
        until=request.args.get("until", ""),
        errors=errors,
        next_before=next_before,
    )
