"""A signed-in user's own account pages."""

from __future__ import annotations

from flask import Blueprint, render_template

from app.auth import sessions
from app.extensions import db_session
from app.web.common import login_required, signed_in

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.get("/")
@login_required
def index() -> str:
    who = signed_in()
    assert who is not None
    return render_template(
        "account/index.html",
        user=who.user,
        sessions=sessions.live_sessions(db_session(), who.user.id),
        current_session=who.record.id,
    )
