"""``GET /api/account-manager/accounts/<id>/headers`` — the headers (and, for a generic API key sent as a
query parameter, the parameters) a trusted server should add to a request made with this account.

This is the one JSON response that contains a secret, by design. Every call is audited
(``account.headers.disclosed``: who, from where, which header names) and moves ``last_used_at`` (at most
once a minute). Access: an admin session for now; the CMS issue switches it to a service token with the
``accounts:headers`` scope (``api_auth``). The response is ``Cache-Control: no-store`` like all of /api.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.connectors import accounts
from app.connectors.headers import request_auth
from app.extensions import db_session, get_cipher
from app.web.common import admin_required, audit_ctx

bp = Blueprint("api_accounts", __name__, url_prefix="/api/account-manager")


@bp.get("/accounts/<int:account_id>/headers")
@admin_required
def account_headers(account_id: int) -> Response:
    db = db_session()
    account = accounts.get_account(db, account_id)
    result = request_auth(db, get_cipher(), account, ctx=audit_ctx(), per_call_audit=True)
    db.commit()
    return jsonify({"headers": dict(result.headers), "query": dict(result.query)})
