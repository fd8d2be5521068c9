"""``GET /api/account-manager/accounts/<id>/headers`` — the headers (and, for a generic API key sent as a
query parameter, the parameters) a trusted server should add to a request made with this account.

This is the one JSON response that contains a secret, by design. Every call is audited before the secret
leaves (``account.headers.disclosed``: the service token as the actor, from where, the path, which header
names — never values), so a failed audit write means no disclosure; that event is the token's use record
too (no separate ``service_token.use``), so a call costs one audit write and one commit. ``last_used_at``
(account and token) moves at most once a minute. Access: a service token with
the scope ``accounts:headers`` (the CMS server) — never a browser session: a credential has no business
in a browser, and an admin's cookie riding a cross-site request must not be able to fetch one.
"""

from __future__ import annotations

from werkzeug.wrappers import Response

from app import audit
from app.api.registry import component, document
from app.api.security import api_audit_ctx, api_auth, api_blueprint, json_response
from app.connectors import accounts
from app.connectors.headers import disclose
from app.errors import AppError
from app.extensions import db_session, get_cipher
from app.models.base import ID_MAX

bp = api_blueprint("api_accounts", __name__)

_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
ACCOUNT_HEADERS = component(
    "AccountHeaders",
    {
        "type": "object",
        "required": ["headers", "query"],
        "additionalProperties": False,
        "properties": {
            "headers": {**_STRINGS, "description": "Header name → value to send (contains the credential)."},
            "query": {
                **_STRINGS,
                "description": "Query parameters to add (only a generic API key with auth_type `query`).",
            },
        },
    },
)
ACCOUNT_ID_PARAM = {
    "account_id": ({"type": "integer", "minimum": 1, "maximum": ID_MAX}, "The connected account's id."),
}


@bp.get("/account-manager/accounts/<int:account_id>/headers")
@api_auth("accounts:headers", cookies=False, audit_use=False)
@document(
    operation_id="getAccountHeaders",
    summary="Ready-to-send request headers for an API-key account",
    description=(
        "The headers (and query parameters) to add to a request made with this connected account, rendered "
        "from its provider's catalog entry: e.g. `Authorization: Bearer …` plus `OpenAI-Organization` for "
        "OpenAI, `x-api-key` + `anthropic-version` for Anthropic. **The response contains the credential**: "
        "every call is audited (`account.headers.disclosed`) and answered `Cache-Control: no-store`. "
        "Service tokens with the scope `accounts:headers` only: a session cookie, even an admin's, is 403. "
        "409 `conflict` when the account cannot be used, the same answer as refresh and the dialogs give for "
        "the same cause: its provider config is disabled, no secret is stored yet, or it is not an API-key "
        "account."
    ),
    response=ACCOUNT_HEADERS,
    path=ACCOUNT_ID_PARAM,
    errors=(404, 409),
    tags=("accounts",),
)
def account_headers(account_id: int) -> Response:
    db = db_session()
    try:
        result = disclose(db, get_cipher(), account_id, ctx=api_audit_ctx(), usable_modes=accounts.CONNECTABLE_MODES)
        db.commit()
    except AppError as exc:
        # The token's use is recorded even when nothing is disclosed (audit_use=False leaves it to us).
        db.rollback()
        audit.record(
            db,
            api_audit_ctx(),
            "account.headers.refused",
            target=f"connected_account:{account_id}",
            outcome="failure",
            details={"code": exc.code},
        )
        db.commit()
        raise
    return json_response({"headers": dict(result.headers), "query": dict(result.query)})
