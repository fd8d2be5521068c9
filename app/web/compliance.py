"""Console: the compliance report (the same snapshot as GET /api/compliance/report and the CLI)."""

from __future__ import annotations

from flask import Blueprint, render_template

from app.api.compliance import build_report
from app.extensions import db_session, get_settings
from app.web.common import admin_required

bp = Blueprint("compliance", __name__, url_prefix="/admin/compliance")


@bp.get("/")
@admin_required
def report() -> str:
    return render_template("admin/compliance.html", report=build_report(db_session(), get_settings()))
